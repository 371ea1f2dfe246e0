//! The compact tokenizer: CLIP byte-level BPE and BERT WordPiece over a packed `tokenizer.bin`
//! (layout in docs/format.md, "Model package: tokenizer.bin"), giving exactly the ids of the HF
//! `tokenizer.json` it was packed from ([`crate::TextTokenizer`], checked string by string in
//! tests/compact_tokenizer.rs).
//!
//! Why: the HF tokenizer holds its vocabulary and merges in hash maps of owned strings
//! (13 MiB resident for CLIP) and parses JSON to get there (~22 MiB transient); a Worker
//! isolate has 128 MB. Here the file is the data structure: the vocabulary (one string blob,
//! an offset table and an index sorted for binary search) and the merges ((left, right) →
//! rank, merged id, sorted) are used in place, and loading parses only a few hundred bytes
//! (normalizer program, special tokens).
//!
//! What is reproduced: the added-token split on the raw text (non-normalized tokens,
//! leftmost-longest), the normalizer steps HF CLIP and BERT packages use (see
//! [`pack_hf_tokenizer`] for the list; anything else is refused when packing), CLIP's split
//! regex + byte-level mapping or BertPreTokenizer, BPE (lowest rank first, `</w>` suffix) or
//! WordPiece (greedy longest match, `##`), right truncation of the content to
//! `max_tokens - specials`, and the single-sequence template (`<|startoftext|>` … `<|endoftext|>`,
//! `[CLS]` … `[SEP]`).

mod format;
mod model;
mod normalize;
#[cfg(feature = "pack")]
mod pack;
mod pretokenize;
mod tables;

use std::ops::Range;

use format::{
    invalid, u32_at, Header, Reader, ADDED_TOKENS, KIND_CLIP_BPE, KIND_WORDPIECE, MERGES,
    MERGE_ROW_BYTES, MODEL, NONE, NORMALIZER, TEMPLATE, VOCAB_OFFSETS, VOCAB_SORTED, VOCAB_STRINGS,
};
use normalize::NormalizerOp;
#[cfg(feature = "pack")]
pub use pack::pack_hf_tokenizer;

use crate::{TextError, Tokens};

/// Which model the file drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    ClipBpe,
    WordPiece,
}

#[derive(Debug)]
enum Model {
    Bpe {
        /// Id of each byte as a one-character symbol: `[byte]` inside a word, `[256 + byte]`
        /// as its last character (with the end-of-word suffix). NONE: not in the vocabulary.
        initial_ids: Box<[u32; 512]>,
        merges: Range<usize>,
    },
    WordPiece {
        continuing_prefix: String,
        max_input_chars_per_word: usize,
    },
}

#[derive(Debug)]
pub struct CompactTokenizer {
    bytes: Vec<u8>,
    kind: TokenizerKind,
    vocab_size: usize,
    unk_id: Option<u32>,
    vocab_offsets: Range<usize>,
    vocab_strings: Range<usize>,
    vocab_sorted: Range<usize>,
    /// Non-normalized added tokens matched in the raw text, longest first.
    added_tokens: Vec<(String, u32)>,
    normalizer: Vec<NormalizerOp>,
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
    model: Model,
    max_tokens: usize,
}

impl CompactTokenizer {
    /// Loads a `tokenizer.bin` (a `&[u8]` is copied once, a `Vec<u8>` is kept as is). Ids are
    /// truncated to `max_tokens` in all, special tokens included, which must leave room for them.
    pub fn from_bytes(
        bytes: impl Into<Vec<u8>>,
        max_tokens: usize,
    ) -> Result<CompactTokenizer, TextError> {
        let mut bytes: Vec<u8> = bytes.into();
        bytes.shrink_to_fit();
        let header = Header::read(&bytes)?;
        let kind = match header.kind {
            KIND_CLIP_BPE => TokenizerKind::ClipBpe,
            KIND_WORDPIECE => TokenizerKind::WordPiece,
            other => return Err(invalid(format!("tokenizer.bin: unknown kind {other}"))),
        };
        let vocab_size = header.vocab_size as usize;
        let sections = &header.sections;
        let section = |index: usize| &bytes[sections[index].clone()];

        // The vocabulary is used in place; check once here what lookups index without checks.
        let offsets = section(VOCAB_OFFSETS);
        let strings_length = sections[VOCAB_STRINGS].len();
        // In u64: a corrupt size must not overflow usize on wasm32.
        let vocab_entries = vocab_size as u64;
        if offsets.len() as u64 != 4 * (vocab_entries + 1)
            || section(VOCAB_SORTED).len() as u64 != 4 * vocab_entries
        {
            return Err(invalid(
                "tokenizer.bin: vocabulary tables do not match its size",
            ));
        }
        let mut previous = 0;
        for index in 0..=vocab_size {
            let offset = u32_at(offsets, 4 * index) as usize;
            if offset < previous || offset > strings_length || (index == 0 && offset != 0) {
                return Err(invalid("tokenizer.bin: vocabulary offsets are malformed"));
            }
            previous = offset;
        }
        let sorted = section(VOCAB_SORTED);
        if (0..vocab_size).any(|index| u32_at(sorted, 4 * index) as usize >= vocab_size) {
            return Err(invalid("tokenizer.bin: vocabulary index is malformed"));
        }
        let check_id = |id: u32| -> Result<u32, TextError> {
            if id as usize >= vocab_size {
                return Err(invalid(format!(
                    "tokenizer.bin: token id {id} is out of range"
                )));
            }
            Ok(id)
        };
        let unk_id = match header.unk_id {
            NONE => None,
            id => Some(check_id(id)?),
        };

        let mut reader = Reader::new(section(ADDED_TOKENS), "added tokens");
        let mut added_tokens = Vec::new();
        for _ in 0..reader.u32()? {
            let id = check_id(reader.u32()?)?;
            let content = reader.string()?;
            if content.is_empty() {
                return Err(invalid("tokenizer.bin: empty added token"));
            }
            added_tokens.push((content, id));
        }
        reader.finish()?;
        // Leftmost-longest: at one position the longest token wins.
        added_tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));

        let normalizer = NormalizerOp::read_all(section(NORMALIZER))?;

        let mut reader = Reader::new(section(TEMPLATE), "template");
        let read_ids = |reader: &mut Reader| -> Result<Vec<u32>, TextError> {
            let count = reader.u32()?;
            (0..count).map(|_| check_id(reader.u32()?)).collect()
        };
        let prefix_ids = read_ids(&mut reader)?;
        let suffix_ids = read_ids(&mut reader)?;
        reader.finish()?;
        let special_count = prefix_ids.len() + suffix_ids.len();
        if max_tokens < special_count {
            return Err(invalid(format!(
                "max_tokens {max_tokens} leaves no room for the {special_count} special tokens"
            )));
        }

        let model_section = section(MODEL);
        let model = match kind {
            TokenizerKind::ClipBpe => {
                if model_section.len() != 4 * 512 {
                    return Err(invalid("tokenizer.bin: bpe byte table is malformed"));
                }
                let mut initial_ids = Box::new([NONE; 512]);
                for (index, id) in initial_ids.iter_mut().enumerate() {
                    let value = u32_at(model_section, 4 * index);
                    *id = if value == NONE {
                        NONE
                    } else {
                        check_id(value)?
                    };
                }
                let merges = sections[MERGES].clone();
                if merges.len() % MERGE_ROW_BYTES != 0 {
                    return Err(invalid("tokenizer.bin: merges table is malformed"));
                }
                let rows = &bytes[merges.clone()];
                let mut previous_key = None;
                for row in rows.chunks_exact(MERGE_ROW_BYTES) {
                    let key = (u32_at(row, 0), u32_at(row, 4));
                    let merged = u32_at(row, 12);
                    let ids_valid = [key.0, key.1, merged]
                        .iter()
                        .all(|&id| (id as usize) < vocab_size);
                    if !ids_valid || previous_key.is_some_and(|previous| previous >= key) {
                        return Err(invalid("tokenizer.bin: merges table is malformed"));
                    }
                    previous_key = Some(key);
                }
                Model::Bpe {
                    initial_ids,
                    merges,
                }
            }
            TokenizerKind::WordPiece => {
                let mut reader = Reader::new(model_section, "wordpiece");
                let continuing_prefix = reader.string()?;
                reader.finish()?;
                if unk_id.is_none() {
                    return Err(invalid("tokenizer.bin: wordpiece needs an unknown token"));
                }
                Model::WordPiece {
                    continuing_prefix,
                    max_input_chars_per_word: header.max_input_chars_per_word as usize,
                }
            }
        };

        Ok(CompactTokenizer {
            kind,
            vocab_size,
            unk_id,
            vocab_offsets: sections[VOCAB_OFFSETS].clone(),
            vocab_strings: sections[VOCAB_STRINGS].clone(),
            vocab_sorted: sections[VOCAB_SORTED].clone(),
            added_tokens,
            normalizer,
            prefix_ids,
            suffix_ids,
            model,
            max_tokens,
            bytes,
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Heap bytes this tokenizer holds (the file it keeps plus what loading built).
    pub fn resident_bytes(&self) -> usize {
        let model = match &self.model {
            Model::Bpe { .. } => 512 * 4,
            Model::WordPiece {
                continuing_prefix, ..
            } => continuing_prefix.capacity(),
        };
        self.bytes.capacity()
            + self.added_tokens.capacity() * std::mem::size_of::<(String, u32)>()
            + self
                .added_tokens
                .iter()
                .map(|(content, _)| content.capacity())
                .sum::<usize>()
            + self.normalizer.capacity() * std::mem::size_of::<NormalizerOp>()
            + self
                .normalizer
                .iter()
                .map(NormalizerOp::heap_bytes)
                .sum::<usize>()
            + (self.prefix_ids.capacity() + self.suffix_ids.capacity()) * 4
            + model
    }

    /// The string of token `id`.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        let bytes = self.token_bytes(id)?;
        std::str::from_utf8(bytes).ok()
    }

    /// The id of `token` in the vocabulary (binary search over the sorted index).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lookup(token.as_bytes())
    }

    fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let index = id as usize;
        if index >= self.vocab_size {
            return None;
        }
        let offsets = &self.bytes[self.vocab_offsets.clone()];
        let start = u32_at(offsets, 4 * index) as usize;
        let end = u32_at(offsets, 4 * index + 4) as usize;
        Some(&self.bytes[self.vocab_strings.start + start..self.vocab_strings.start + end])
    }

    fn lookup(&self, key: &[u8]) -> Option<u32> {
        let sorted = &self.bytes[self.vocab_sorted.clone()];
        let (mut low, mut high) = (0, self.vocab_size);
        while low < high {
            let middle = (low + high) / 2;
            let id = u32_at(sorted, 4 * middle);
            let candidate = self.token_bytes(id).unwrap_or_default();
            match candidate.cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(id),
            }
        }
        None
    }

    /// (rank, merged id) of the BPE merge of `left` then `right`.
    fn merge(&self, merges: &Range<usize>, left: u32, right: u32) -> Option<(u32, u32)> {
        let rows = &self.bytes[merges.clone()];
        let key = (left, right);
        let (mut low, mut high) = (0, rows.len() / MERGE_ROW_BYTES);
        while low < high {
            let middle = (low + high) / 2;
            let row = middle * MERGE_ROW_BYTES;
            match (u32_at(rows, row), u32_at(rows, row + 4)).cmp(&key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => {
                    return Some((u32_at(rows, row + 8), u32_at(rows, row + 12)))
                }
            }
        }
        None
    }

    /// Token ids for `text`, the same as [`crate::TextTokenizer::tokenize`] on the
    /// `tokenizer.json` this file was packed from.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, TextError> {
        if text.trim().is_empty() {
            return Err(TextError::EmptyInput);
        }
        // HF tokenizes everything, truncates the sequence to what the template leaves, then adds
        // the specials. Only the first `budget` ids and whether there are more matter, so the
        // work stops one id past the budget: a huge text costs its normalization, no more BPE.
        let budget = self.max_tokens - self.prefix_ids.len() - self.suffix_ids.len();
        let limit = budget + 1;
        let mut content = Vec::new();
        let mut segment_start = 0;
        let mut position = 0;
        while position < text.len() && content.len() < limit {
            let rest = &text[position..];
            let found = self
                .added_tokens
                .iter()
                .find(|(token, _)| rest.starts_with(token.as_str()));
            match found {
                Some((token, id)) => {
                    self.tokenize_segment(&text[segment_start..position], limit, &mut content);
                    content.push(*id);
                    position += token.len();
                    segment_start = position;
                }
                None => {
                    position += rest.chars().next().map_or(1, char::len_utf8);
                }
            }
        }
        self.tokenize_segment(&text[segment_start..position], limit, &mut content);

        let truncated = content.len() > budget;
        content.truncate(budget);
        // In-text special tokens and unknowns count as content, as in HF's special-tokens mask.
        if content.is_empty() {
            return Err(TextError::NoTokens);
        }
        let ids: Vec<i64> = self
            .prefix_ids
            .iter()
            .chain(&content)
            .chain(&self.suffix_ids)
            .map(|&id| i64::from(id))
            .collect();
        Ok(Tokens {
            type_ids: vec![0; ids.len()],
            ids,
            truncated,
        })
    }

    /// Appends the ids of a text piece between added tokens, stopping at `limit` ids in all.
    fn tokenize_segment(&self, segment: &str, limit: usize, out: &mut Vec<u32>) {
        if segment.is_empty() || out.len() >= limit {
            return;
        }
        let mut normalized = segment.to_owned();
        for op in &self.normalizer {
            normalized = op.apply(normalized);
        }
        match &self.model {
            Model::Bpe {
                initial_ids,
                merges,
            } => {
                let mut symbols = Vec::new();
                pretokenize::clip_words(&normalized, |word| {
                    if out.len() >= limit {
                        return;
                    }
                    self.bpe_word(word.as_bytes(), initial_ids, merges, &mut symbols, out);
                });
            }
            Model::WordPiece {
                continuing_prefix,
                max_input_chars_per_word,
            } => {
                let mut key = Vec::new();
                pretokenize::bert_words(&normalized, |word| {
                    if out.len() >= limit {
                        return;
                    }
                    self.wordpiece_word(
                        word,
                        continuing_prefix,
                        *max_input_chars_per_word,
                        &mut key,
                        out,
                    );
                });
            }
        }
    }
}
