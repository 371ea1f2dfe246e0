//! The normalizer: a short program of ops, each reproducing one HF normalizer step exactly.
//! The packer folds runs of HF's per-character `Replace` steps into one [`NormalizerOp::CharMap`]
//! (their composition), so CLIP's 250 ftfy-style replacements cost one pass here.

use unicode_normalization_alignments::char::{
    canonical_combining_class, compose, decompose_canonical,
};

#[cfg(feature = "pack")]
use super::format::Writer;
use super::format::{
    invalid, Reader, OP_BERT, OP_CHAR_MAP, OP_LOWERCASE, OP_NFC, OP_REPLACE, OP_STRIP,
    OP_WHITESPACE_RUNS,
};
use super::tables::{BERT_CONTROL, NONSPACING_MARK};
use crate::TextError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NormalizerOp {
    /// Each listed character becomes its string (possibly empty); others stay.
    CharMap {
        /// (character, start, end) into `replacements`, sorted by character.
        entries: Vec<(u32, u32, u32)>,
        replacements: String,
    },
    /// Every non-overlapping occurrence of `pattern`, left to right, becomes `content`.
    Replace {
        pattern: String,
        content: String,
    },
    /// Every run of White_Space characters (regex `\s+`) becomes `content`.
    WhitespaceRuns {
        content: String,
    },
    Nfc,
    Strip {
        left: bool,
        right: bool,
    },
    /// Per-character `char::to_lowercase` (no final-sigma rule), like HF.
    Lowercase,
    Bert {
        clean_text: bool,
        handle_chinese_chars: bool,
        strip_accents: bool,
        lowercase: bool,
    },
}

pub(super) fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let code = c as u32;
    table
        .binary_search_by(|&(low, high)| {
            if high < code {
                std::cmp::Ordering::Less
            } else if low > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

impl NormalizerOp {
    #[cfg(feature = "pack")]
    pub(super) fn write(&self, out: &mut Writer) {
        match self {
            NormalizerOp::CharMap {
                entries,
                replacements,
            } => {
                out.u32(OP_CHAR_MAP);
                out.u32(entries.len() as u32);
                for &(c, start, end) in entries {
                    out.u32(c);
                    out.u32(start);
                    out.u32(end);
                }
                out.bytes_padded(replacements.as_bytes());
            }
            NormalizerOp::Replace { pattern, content } => {
                out.u32(OP_REPLACE);
                out.bytes_padded(pattern.as_bytes());
                out.bytes_padded(content.as_bytes());
            }
            NormalizerOp::WhitespaceRuns { content } => {
                out.u32(OP_WHITESPACE_RUNS);
                out.bytes_padded(content.as_bytes());
            }
            NormalizerOp::Nfc => out.u32(OP_NFC),
            NormalizerOp::Strip { left, right } => {
                out.u32(OP_STRIP);
                out.u32(u32::from(*left));
                out.u32(u32::from(*right));
            }
            NormalizerOp::Lowercase => out.u32(OP_LOWERCASE),
            NormalizerOp::Bert {
                clean_text,
                handle_chinese_chars,
                strip_accents,
                lowercase,
            } => {
                out.u32(OP_BERT);
                for flag in [clean_text, handle_chinese_chars, strip_accents, lowercase] {
                    out.u32(u32::from(*flag));
                }
            }
        }
    }

    pub(super) fn read_all(section: &[u8]) -> Result<Vec<NormalizerOp>, TextError> {
        let mut reader = Reader::new(section, "normalizer");
        let count = reader.u32()?;
        let mut ops = Vec::new();
        for _ in 0..count {
            let op = match reader.u32()? {
                OP_CHAR_MAP => {
                    let entry_count = reader.u32()? as usize;
                    let mut entries = Vec::with_capacity(entry_count.min(section.len() / 12));
                    for _ in 0..entry_count {
                        entries.push((reader.u32()?, reader.u32()?, reader.u32()?));
                    }
                    let replacements = reader.string()?;
                    let sorted = entries.windows(2).all(|pair| pair[0].0 < pair[1].0);
                    let in_bounds = entries.iter().all(|&(_, start, end)| {
                        start <= end && replacements.get(start as usize..end as usize).is_some()
                    });
                    if !sorted || !in_bounds {
                        return Err(invalid("tokenizer.bin: character map is malformed"));
                    }
                    NormalizerOp::CharMap {
                        entries,
                        replacements,
                    }
                }
                OP_REPLACE => NormalizerOp::Replace {
                    pattern: reader.string()?,
                    content: reader.string()?,
                },
                OP_WHITESPACE_RUNS => NormalizerOp::WhitespaceRuns {
                    content: reader.string()?,
                },
                OP_NFC => NormalizerOp::Nfc,
                OP_STRIP => NormalizerOp::Strip {
                    left: reader.flag()?,
                    right: reader.flag()?,
                },
                OP_LOWERCASE => NormalizerOp::Lowercase,
                OP_BERT => NormalizerOp::Bert {
                    clean_text: reader.flag()?,
                    handle_chinese_chars: reader.flag()?,
                    strip_accents: reader.flag()?,
                    lowercase: reader.flag()?,
                },
                tag => {
                    return Err(invalid(format!(
                        "tokenizer.bin: unknown normalizer op {tag}"
                    )))
                }
            };
            if let NormalizerOp::Replace { pattern, .. } = &op {
                if pattern.is_empty() {
                    return Err(invalid("tokenizer.bin: empty replace pattern"));
                }
            }
            ops.push(op);
        }
        reader.finish()?;
        Ok(ops)
    }

    /// Heap bytes this op holds.
    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            NormalizerOp::CharMap {
                entries,
                replacements,
            } => entries.capacity() * 12 + replacements.capacity(),
            NormalizerOp::Replace { pattern, content } => pattern.capacity() + content.capacity(),
            NormalizerOp::WhitespaceRuns { content } => content.capacity(),
            _ => 0,
        }
    }

    pub(super) fn apply(&self, text: String) -> String {
        match self {
            NormalizerOp::CharMap {
                entries,
                replacements,
            } => {
                let lookup = |c: char| {
                    entries
                        .binary_search_by_key(&(c as u32), |&(key, _, _)| key)
                        .ok()
                        .map(|index| {
                            let (_, start, end) = entries[index];
                            &replacements[start as usize..end as usize]
                        })
                };
                if !text.chars().any(|c| lookup(c).is_some()) {
                    return text;
                }
                let mut out = String::with_capacity(text.len());
                for c in text.chars() {
                    match lookup(c) {
                        Some(replacement) => out.push_str(replacement),
                        None => out.push(c),
                    }
                }
                out
            }
            NormalizerOp::Replace { pattern, content } => {
                if !text.contains(pattern.as_str()) {
                    return text;
                }
                text.replace(pattern.as_str(), content)
            }
            NormalizerOp::WhitespaceRuns { content } => {
                let mut out = String::with_capacity(text.len());
                let mut in_run = false;
                for c in text.chars() {
                    if c.is_whitespace() {
                        if !in_run {
                            out.push_str(content);
                        }
                        in_run = true;
                    } else {
                        out.push(c);
                        in_run = false;
                    }
                }
                out
            }
            NormalizerOp::Nfc => {
                if text.is_ascii() {
                    return text;
                }
                nfc(&text)
            }
            NormalizerOp::Strip { left, right } => {
                let mut slice = text.as_str();
                if *left {
                    slice = slice.trim_start();
                }
                if *right {
                    slice = slice.trim_end();
                }
                if slice.len() == text.len() {
                    return text;
                }
                slice.to_owned()
            }
            NormalizerOp::Lowercase => lowercase(&text),
            NormalizerOp::Bert {
                clean_text,
                handle_chinese_chars,
                strip_accents,
                lowercase: lower,
            } => {
                let mut text = text;
                if *clean_text {
                    text = text
                        .chars()
                        .filter(|&c| !(c == '\0' || c == '\u{fffd}' || is_bert_control(c)))
                        .map(|c| if is_bert_whitespace(c) { ' ' } else { c })
                        .collect();
                }
                if *handle_chinese_chars && text.chars().any(is_chinese_char) {
                    let mut spaced = String::with_capacity(text.len() + 16);
                    for c in text.chars() {
                        if is_chinese_char(c) {
                            spaced.push(' ');
                            spaced.push(c);
                            spaced.push(' ');
                        } else {
                            spaced.push(c);
                        }
                    }
                    text = spaced;
                }
                if *strip_accents {
                    // NFD first so that composed letters give up their accents as marks.
                    text = nfd(&text)
                        .into_iter()
                        .filter(|&c| !in_table(NONSPACING_MARK, c))
                        .collect();
                }
                if *lower {
                    text = lowercase(&text);
                }
                text
            }
        }
    }
}

// NFD and NFC as `unicode-normalization-alignments` 0.1.12 computes them (its iterators ported
// step by step, without the alignment bookkeeping), over its canonical tables only: its
// iterators also link the compatibility tables, 83 KB of wasm that nothing here uses.

/// Canonical decomposition, then canonical ordering: each run after a starter is stably sorted
/// by combining class when the next starter arrives (and at the end).
fn nfd(text: &str) -> Vec<char> {
    let mut classes_and_chars: Vec<(u8, char)> = Vec::with_capacity(text.len());
    let mut pending_start = 0;
    for c in text.chars() {
        decompose_canonical(c, |d| {
            let class = canonical_combining_class(d);
            if class == 0 {
                classes_and_chars[pending_start..].sort_by_key(|&(class, _)| class);
                pending_start = classes_and_chars.len();
            }
            classes_and_chars.push((class, d));
        });
    }
    classes_and_chars[pending_start..].sort_by_key(|&(class, _)| class);
    classes_and_chars.into_iter().map(|(_, c)| c).collect()
}

/// NFD, then canonical composition: each character composes with the last starter unless a
/// character of the same or a higher class came between them ("blocked").
fn nfc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut composee: Option<char> = None;
    let mut last_class: Option<u8> = None;
    let mut blocked: Vec<char> = Vec::new();
    for c in nfd(text) {
        let class = canonical_combining_class(c);
        let Some(starter) = composee else {
            if class != 0 {
                out.push(c);
            } else {
                composee = Some(c);
            }
            continue;
        };
        if let Some(previous_class) = last_class {
            if previous_class >= class {
                if class == 0 {
                    out.push(starter);
                    out.extend(blocked.drain(..));
                    composee = Some(c);
                    last_class = None;
                } else {
                    blocked.push(c);
                    last_class = Some(class);
                }
                continue;
            }
        }
        if let Some(composed) = compose(starter, c) {
            composee = Some(composed);
            continue;
        }
        if last_class.is_none() && class == 0 {
            out.push(starter);
            composee = Some(c);
            continue;
        }
        blocked.push(c);
        last_class = Some(class);
    }
    if let Some(starter) = composee {
        out.push(starter);
    }
    out.extend(blocked);
    out
}

fn lowercase(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        out.extend(c.to_lowercase());
    }
    out
}

/// BertNormalizer's whitespace: tab, newline and carriage return count although they are Cc.
fn is_bert_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_bert_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && in_table(BERT_CONTROL, c)
}

/// The CJK blocks BertNormalizer puts spaces around (not Hangul, Hiragana or Katakana).
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use unicode_normalization_alignments::UnicodeNormalization;

    use super::{nfc, nfd};

    fn reference_nfc(text: &str) -> String {
        text.nfc().map(|(c, _)| c).collect()
    }

    fn reference_nfd(text: &str) -> String {
        text.nfd().map(|(c, _)| c).collect()
    }

    /// The port against the crate's own iterators: every code point alone and after a starter,
    /// and seeded random runs of starters, combining marks (of several classes) and jamo.
    #[test]
    fn nfc_and_nfd_match_the_crate() {
        let mut text = String::new();
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            for prefix in ["", "a", "\u{1100}", "\u{ac00}"] {
                text.clear();
                text.push_str(prefix);
                text.push(c);
                assert_eq!(nfc(&text), reference_nfc(&text), "{text:?}");
                assert_eq!(
                    nfd(&text).into_iter().collect::<String>(),
                    reference_nfd(&text)
                );
            }
        }
        let pieces: Vec<char> = "aeiouAEOUsSnNcCzZ\u{391}\u{3b1}\u{3c9}\u{413}\u{418}\u{627}\u{928}\u{915}\u{9c7}\u{b47}\u{1100}\u{1161}\u{11a8}\u{ac00}\u{304b}\u{30cf}\u{300}\u{301}\u{302}\u{303}\u{308}\u{30a}\u{323}\u{327}\u{328}\u{345}\u{31b}\u{35c}\u{93c}\u{9be}\u{b3e}\u{3099}\u{309a}\u{5b0}\u{5c1}\u{5bc}\u{1ab0}\u{20d0}\u{1d165}\u{1d16d}\u{f71}\u{f72}\u{f80} x"
            .chars()
            .collect();
        let mut state = 0x5EED_u64;
        for _ in 0..200_000 {
            text.clear();
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let length = 1 + (state >> 60) as usize;
            for index in 0..length {
                let pick = (state >> (index * 4 % 56)) as usize ^ (index * 31);
                text.push(pieces[pick % pieces.len()]);
            }
            assert_eq!(nfc(&text), reference_nfc(&text), "{text:?}");
            assert_eq!(
                nfd(&text).into_iter().collect::<String>(),
                reference_nfd(&text)
            );
        }
    }
}
