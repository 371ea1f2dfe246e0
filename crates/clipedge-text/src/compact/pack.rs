//! `tokenizer.json` → `tokenizer.bin`. Only settings the runtime reproduces exactly are
//! accepted; anything else is refused with the setting named, so a package never tokenizes
//! differently from its JSON without anyone noticing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::format::{
    invalid, Header, Writer, ADDED_TOKENS, HEADER_BYTES, KIND_CLIP_BPE, KIND_WORDPIECE, MERGES,
    MERGE_ROW_BYTES, MODEL, NONE, NORMALIZER, SECTION_COUNT, TEMPLATE, VOCAB_OFFSETS, VOCAB_SORTED,
    VOCAB_STRINGS,
};
use super::normalize::NormalizerOp;
use crate::TextError;

/// CLIP's pre-tokenizer split pattern, the only one the BPE runtime implements.
const CLIP_SPLIT_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Most characters one folded character map may cover (guards against huge classes).
const MAX_CHAR_MAP_DOMAIN: usize = 1 << 16;

fn unsupported(what: impl std::fmt::Display) -> TextError {
    invalid(format!("tokenizer.json: unsupported setting: {what}"))
}

fn field<'a>(value: &'a Value, name: &str, context: &str) -> Result<&'a Value, TextError> {
    value
        .get(name)
        .ok_or_else(|| invalid(format!("tokenizer.json: {context} has no \"{name}\"")))
}

fn string_field<'a>(value: &'a Value, name: &str, context: &str) -> Result<&'a str, TextError> {
    field(value, name, context)?
        .as_str()
        .ok_or_else(|| invalid(format!("tokenizer.json: {context}.{name} is not a string")))
}

fn bool_field(value: &Value, name: &str, context: &str) -> Result<bool, TextError> {
    field(value, name, context)?
        .as_bool()
        .ok_or_else(|| invalid(format!("tokenizer.json: {context}.{name} is not a boolean")))
}

/// Requires `value.name` to be absent, null or `expected` (a setting the runtime fixes).
fn require(value: &Value, name: &str, expected: &Value, context: &str) -> Result<(), TextError> {
    match value.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(actual) if actual == expected => Ok(()),
        Some(actual) => Err(unsupported(format!("{context}.{name} = {actual}"))),
    }
}

/// One HF normalizer step before folding.
enum Step {
    /// Per-character replacement: every character of `set` becomes `content`.
    Chars {
        set: Vec<(char, char)>,
        content: String,
    },
    Op(NormalizerOp),
}

/// Packs an HF `tokenizer.json` (CLIP byte-level BPE or BERT WordPiece) into `tokenizer.bin`.
///
/// Accepted: model `BPE` (no dropout, no byte fallback, no unknown fusing, merges not ignored,
/// no continuing-subword prefix) with pre-tokenizer `Sequence[Split(CLIP regex, Removed,
/// invert), ByteLevel(no prefix space, no regex)]`, or model `WordPiece` with
/// `BertPreTokenizer`; normalizers `Sequence`, `Replace` (string, `\s+`, or a character class
/// `[...]` of characters, `\x{..}` escapes and ranges), `NFC`, `Strip`, `Lowercase`,
/// `BertNormalizer`; post-processor `TemplateProcessing` (single: special tokens around
/// sequence A, type id 0) or none; added tokens that are matched on the raw text (not
/// normalized, not single-word, no strip). `truncation`, `padding` and `decoder` are not
/// packed: the runtime always truncates right at its `max_tokens`, never pads, never decodes.
pub fn pack_hf_tokenizer(json: &[u8]) -> Result<Vec<u8>, TextError> {
    let root: Value = serde_json::from_slice(json)
        .map_err(|error| invalid(format!("tokenizer.json is not valid json: {error}")))?;
    let model = field(&root, "model", "tokenizer")?;
    let model_type = string_field(model, "type", "model")?;

    let vocab_object = field(model, "vocab", "model")?
        .as_object()
        .ok_or_else(|| invalid("tokenizer.json: model.vocab is not an object"))?;
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(vocab_object.len());
    let mut tokens: Vec<Option<&str>> = vec![None; vocab_object.len()];
    for (token, id) in vocab_object {
        let id = id
            .as_u64()
            .filter(|&id| (id as usize) < tokens.len())
            .ok_or_else(|| unsupported(format!("vocabulary ids are not 0..{}", tokens.len())))?;
        tokens[id as usize] = Some(token.as_str());
        vocab.insert(token.as_str(), id as u32);
    }
    let tokens: Vec<&str> = tokens
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported("vocabulary ids are not contiguous"))?;
    let id_of = |token: &str, what: &str| -> Result<u32, TextError> {
        vocab.get(token).copied().ok_or_else(|| {
            invalid(format!(
                "tokenizer.json: {what} {token:?} is not in the vocabulary"
            ))
        })
    };

    let mut added_tokens = Writer::default();
    let added = match root.get("added_tokens") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => value
            .as_array()
            .ok_or_else(|| invalid("tokenizer.json: added_tokens is not an array"))?
            .clone(),
    };
    added_tokens.u32(added.len() as u32);
    for token in &added {
        let content = string_field(token, "content", "added token")?;
        for flag in ["single_word", "lstrip", "rstrip", "normalized"] {
            if token.get(flag).and_then(Value::as_bool).unwrap_or(false) {
                return Err(unsupported(format!(
                    "added token {content:?} has {flag} = true"
                )));
            }
        }
        let id = field(token, "id", "added token")?.as_u64();
        let vocab_id = id_of(content, "added token")?;
        if id != Some(u64::from(vocab_id)) {
            return Err(unsupported(format!(
                "added token {content:?} has an id other than its vocabulary id"
            )));
        }
        if content.is_empty() {
            return Err(unsupported("empty added token"));
        }
        added_tokens.u32(vocab_id);
        added_tokens.bytes_padded(content.as_bytes());
    }

    let mut normalizer = Writer::default();
    let ops = normalizer_ops(root.get("normalizer").unwrap_or(&Value::Null))?;
    normalizer.u32(ops.len() as u32);
    for op in &ops {
        op.write(&mut normalizer);
    }

    let template = template(
        root.get("post_processor").unwrap_or(&Value::Null),
        tokens.len(),
    )?;

    let pre_tokenizer = root.get("pre_tokenizer").unwrap_or(&Value::Null);
    let mut model_section = Writer::default();
    let mut merges_section = Writer::default();
    let kind;
    let mut unk_id = NONE;
    let mut max_input_chars_per_word = 0;
    match model_type {
        "BPE" => {
            kind = KIND_CLIP_BPE;
            check_clip_pre_tokenizer(pre_tokenizer)?;
            require(model, "dropout", &Value::Null, "model")?;
            for flag in ["fuse_unk", "byte_fallback", "ignore_merges"] {
                require(model, flag, &Value::Bool(false), "model")?;
            }
            require(
                model,
                "continuing_subword_prefix",
                &Value::from(""),
                "model",
            )?;
            let suffix = match model.get("end_of_word_suffix") {
                None | Some(Value::Null) => "",
                Some(value) => value.as_str().ok_or_else(|| {
                    invalid("tokenizer.json: model.end_of_word_suffix is not a string")
                })?,
            };
            if let Some(unk) = model.get("unk_token").and_then(Value::as_str) {
                unk_id = id_of(unk, "unk_token")?;
            }
            let byte_chars = byte_level_chars();
            for with_suffix in [false, true] {
                for &c in &byte_chars {
                    let mut symbol = c.to_string();
                    if with_suffix {
                        symbol.push_str(suffix);
                    }
                    model_section.u32(vocab.get(symbol.as_str()).copied().unwrap_or(NONE));
                }
            }
            // HF keeps the last rank of a pair listed twice (its map is built in list order).
            let mut merges: BTreeMap<(u32, u32), (u32, u32)> = BTreeMap::new();
            let list = field(model, "merges", "model")?
                .as_array()
                .ok_or_else(|| invalid("tokenizer.json: model.merges is not an array"))?;
            for (rank, merge) in list.iter().enumerate() {
                let (left, right) = merge_pair(merge)?;
                let merged = format!("{left}{right}");
                let ids = (id_of(left, "merge token")?, id_of(right, "merge token")?);
                merges.insert(ids, (rank as u32, id_of(&merged, "merged token")?));
            }
            for ((left, right), (rank, merged)) in merges {
                for value in [left, right, rank, merged] {
                    merges_section.u32(value);
                }
            }
            debug_assert_eq!(merges_section.bytes.len() % MERGE_ROW_BYTES, 0);
        }
        "WordPiece" => {
            kind = KIND_WORDPIECE;
            if string_field(pre_tokenizer, "type", "pre_tokenizer").ok() != Some("BertPreTokenizer")
            {
                return Err(unsupported(format!(
                    "pre_tokenizer {pre_tokenizer} for WordPiece"
                )));
            }
            unk_id = id_of(string_field(model, "unk_token", "model")?, "unk_token")?;
            let prefix = string_field(model, "continuing_subword_prefix", "model")?;
            max_input_chars_per_word = field(model, "max_input_chars_per_word", "model")?
                .as_u64()
                .and_then(|value| u32::try_from(value).ok())
                .ok_or_else(|| {
                    invalid("tokenizer.json: model.max_input_chars_per_word is not a number")
                })?;
            model_section.bytes_padded(prefix.as_bytes());
        }
        other => return Err(unsupported(format!("model type {other}"))),
    }

    let mut vocab_offsets = Writer::default();
    let mut vocab_strings = Writer::default();
    vocab_offsets.u32(0);
    for token in &tokens {
        vocab_strings.bytes.extend_from_slice(token.as_bytes());
        vocab_offsets.u32(vocab_strings.bytes.len() as u32);
    }
    let mut sorted: Vec<u32> = (0..tokens.len() as u32).collect();
    sorted.sort_by_key(|&id| tokens[id as usize].as_bytes());
    let mut vocab_sorted = Writer::default();
    for id in sorted {
        vocab_sorted.u32(id);
    }

    let mut sections: [Vec<u8>; SECTION_COUNT] = Default::default();
    sections[VOCAB_OFFSETS] = vocab_offsets.bytes;
    sections[VOCAB_STRINGS] = vocab_strings.bytes;
    sections[VOCAB_SORTED] = vocab_sorted.bytes;
    sections[ADDED_TOKENS] = added_tokens.bytes;
    sections[NORMALIZER] = normalizer.bytes;
    sections[TEMPLATE] = template.bytes;
    sections[MODEL] = model_section.bytes;
    sections[MERGES] = merges_section.bytes;

    let mut header = Header {
        kind,
        vocab_size: tokens.len() as u32,
        unk_id,
        max_input_chars_per_word,
        sections: Default::default(),
    };
    let mut body = Writer::default();
    for (index, section) in sections.iter().enumerate() {
        let start = HEADER_BYTES + body.bytes.len();
        body.bytes.extend_from_slice(section);
        header.sections[index] = start..start + section.len();
        body.pad();
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.bytes.len());
    header.write(&mut out);
    debug_assert_eq!(out.len(), HEADER_BYTES);
    out.extend_from_slice(&body.bytes);
    Ok(out)
}

fn merge_pair(merge: &Value) -> Result<(&str, &str), TextError> {
    let malformed = || invalid(format!("tokenizer.json: malformed merge {merge}"));
    match merge {
        // Older files: "left right".
        Value::String(text) => text.split_once(' ').ok_or_else(malformed),
        Value::Array(pair) if pair.len() == 2 => Ok((
            pair[0].as_str().ok_or_else(malformed)?,
            pair[1].as_str().ok_or_else(malformed)?,
        )),
        _ => Err(malformed()),
    }
}

/// GPT-2's byte → character table (ByteLevel): printable Latin-1 bytes map to themselves, the
/// rest to U+0100 onwards in byte order.
fn byte_level_chars() -> Vec<char> {
    let printable = |byte: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&byte)
            || (0xA1..=0xAC).contains(&byte)
            || (0xAE..=0xFF).contains(&byte)
    };
    let mut next = 256;
    (0..256u32)
        .map(|byte| {
            if printable(byte) {
                char::from_u32(byte).unwrap_or_default()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or_default()
            }
        })
        .collect()
}

fn check_clip_pre_tokenizer(pre_tokenizer: &Value) -> Result<(), TextError> {
    let refuse = || {
        unsupported(format!(
            "pre_tokenizer {pre_tokenizer} for BPE (only CLIP's split + ByteLevel)"
        ))
    };
    if pre_tokenizer.get("type").and_then(Value::as_str) != Some("Sequence") {
        return Err(refuse());
    }
    let steps = pre_tokenizer
        .get("pretokenizers")
        .and_then(Value::as_array)
        .ok_or_else(refuse)?;
    let [split, byte_level] = steps.as_slice() else {
        return Err(refuse());
    };
    let split_ok = split.get("type").and_then(Value::as_str) == Some("Split")
        && split.pointer("/pattern/Regex").and_then(Value::as_str) == Some(CLIP_SPLIT_PATTERN)
        && split.get("behavior").and_then(Value::as_str) == Some("Removed")
        && split.get("invert").and_then(Value::as_bool) == Some(true);
    let byte_level_ok = byte_level.get("type").and_then(Value::as_str) == Some("ByteLevel")
        && byte_level.get("add_prefix_space").and_then(Value::as_bool) == Some(false)
        && byte_level.get("use_regex").and_then(Value::as_bool) == Some(false);
    if !split_ok || !byte_level_ok {
        return Err(refuse());
    }
    Ok(())
}

fn template(post_processor: &Value, vocab_size: usize) -> Result<Writer, TextError> {
    let mut prefix = Vec::new();
    let mut suffix = Vec::new();
    if !post_processor.is_null() {
        if post_processor.get("type").and_then(Value::as_str) != Some("TemplateProcessing") {
            return Err(unsupported(format!(
                "post_processor {}",
                post_processor.get("type").unwrap_or(&Value::Null)
            )));
        }
        let single = field(post_processor, "single", "post_processor")?
            .as_array()
            .ok_or_else(|| invalid("tokenizer.json: post_processor.single is not an array"))?;
        let special_tokens = post_processor.get("special_tokens");
        let mut seen_sequence = false;
        for piece in single {
            if let Some(sequence) = piece.get("Sequence") {
                let is_a = sequence.get("id").and_then(Value::as_str) == Some("A");
                if seen_sequence
                    || !is_a
                    || sequence.get("type_id").and_then(Value::as_u64) != Some(0)
                {
                    return Err(unsupported(format!("post_processor.single piece {piece}")));
                }
                seen_sequence = true;
                continue;
            }
            let special = piece
                .get("SpecialToken")
                .ok_or_else(|| unsupported(format!("post_processor.single piece {piece}")))?;
            if special.get("type_id").and_then(Value::as_u64) != Some(0) {
                return Err(unsupported(format!(
                    "post_processor.single piece {piece} (type id)"
                )));
            }
            let name = string_field(special, "id", "post_processor special token")?;
            let ids = special_tokens
                .and_then(|tokens| tokens.get(name))
                .and_then(|token| token.get("ids"))
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    invalid(format!("tokenizer.json: special token {name:?} has no ids"))
                })?;
            let target = if seen_sequence {
                &mut suffix
            } else {
                &mut prefix
            };
            for id in ids {
                let id = id
                    .as_u64()
                    .filter(|&id| (id as usize) < vocab_size)
                    .ok_or_else(|| invalid(format!("tokenizer.json: special token {name:?} has an id outside the vocabulary")))?;
                target.push(id as u32);
            }
        }
        if !seen_sequence {
            return Err(unsupported("post_processor.single without sequence A"));
        }
    }
    let mut out = Writer::default();
    for ids in [&prefix, &suffix] {
        out.u32(ids.len() as u32);
        for &id in ids {
            out.u32(id);
        }
    }
    Ok(out)
}

fn normalizer_ops(normalizer: &Value) -> Result<Vec<NormalizerOp>, TextError> {
    let mut steps = Vec::new();
    flatten_normalizer(normalizer, &mut steps)?;
    // Fold each run of per-character steps into one map: their exact composition, so a later
    // step also rewrites what an earlier one produced (ŉ → ʼn → 'n in CLIP's).
    let mut ops = Vec::new();
    let mut run: Vec<(Vec<(char, char)>, String)> = Vec::new();
    for step in steps {
        match step {
            Step::Chars { set, content } => run.push((set, content)),
            Step::Op(op) => {
                if !run.is_empty() {
                    ops.push(fold_char_steps(&run)?);
                    run.clear();
                }
                ops.push(op);
            }
        }
    }
    if !run.is_empty() {
        ops.push(fold_char_steps(&run)?);
    }
    Ok(ops)
}

fn fold_char_steps(run: &[(Vec<(char, char)>, String)]) -> Result<NormalizerOp, TextError> {
    let mut domain = BTreeSet::new();
    for (set, _) in run {
        for &(low, high) in set {
            for code in u32::from(low)..=u32::from(high) {
                if let Some(c) = char::from_u32(code) {
                    domain.insert(c);
                }
                if domain.len() > MAX_CHAR_MAP_DOMAIN {
                    return Err(unsupported(
                        "normalizer character classes cover too many characters",
                    ));
                }
            }
        }
    }
    let in_set =
        |set: &[(char, char)], c: char| set.iter().any(|&(low, high)| low <= c && c <= high);
    let mut entries = Vec::new();
    let mut replacements = String::new();
    for c in domain {
        let mut text = c.to_string();
        for (set, content) in run {
            let mut next = String::with_capacity(text.len());
            for d in text.chars() {
                if in_set(set, d) {
                    next.push_str(content);
                } else {
                    next.push(d);
                }
            }
            text = next;
        }
        if text.chars().eq([c]) {
            continue;
        }
        let start = replacements.len() as u32;
        replacements.push_str(&text);
        entries.push((c as u32, start, replacements.len() as u32));
    }
    Ok(NormalizerOp::CharMap {
        entries,
        replacements,
    })
}

fn flatten_normalizer(normalizer: &Value, steps: &mut Vec<Step>) -> Result<(), TextError> {
    if normalizer.is_null() {
        return Ok(());
    }
    let kind = string_field(normalizer, "type", "normalizer")?;
    match kind {
        "Sequence" => {
            let list = field(normalizer, "normalizers", "normalizer")?
                .as_array()
                .ok_or_else(|| invalid("tokenizer.json: normalizer.normalizers is not an array"))?;
            for inner in list {
                flatten_normalizer(inner, steps)?;
            }
        }
        "Replace" => {
            let content = string_field(normalizer, "content", "Replace normalizer")?.to_owned();
            let pattern = field(normalizer, "pattern", "Replace normalizer")?;
            if let Some(literal) = pattern.get("String").and_then(Value::as_str) {
                let mut chars = literal.chars();
                match (chars.next(), chars.next()) {
                    (None, _) => {} // HF matches nothing with an empty pattern.
                    (Some(c), None) => steps.push(Step::Chars {
                        set: vec![(c, c)],
                        content,
                    }),
                    _ => steps.push(Step::Op(NormalizerOp::Replace {
                        pattern: literal.to_owned(),
                        content,
                    })),
                }
            } else if let Some(regex) = pattern.get("Regex").and_then(Value::as_str) {
                if regex == r"\s+" {
                    steps.push(Step::Op(NormalizerOp::WhitespaceRuns { content }));
                } else {
                    let set = parse_char_class(regex).ok_or_else(|| {
                        unsupported(format!("Replace normalizer regex {regex:?} (only \\s+ and [...] character classes)"))
                    })?;
                    steps.push(Step::Chars { set, content });
                }
            } else {
                return Err(unsupported(format!("Replace normalizer pattern {pattern}")));
            }
        }
        "NFC" => steps.push(Step::Op(NormalizerOp::Nfc)),
        "Lowercase" => steps.push(Step::Op(NormalizerOp::Lowercase)),
        "Strip" => steps.push(Step::Op(NormalizerOp::Strip {
            left: bool_field(normalizer, "strip_left", "Strip normalizer")?,
            right: bool_field(normalizer, "strip_right", "Strip normalizer")?,
        })),
        "BertNormalizer" => {
            let lowercase = bool_field(normalizer, "lowercase", "BertNormalizer")?;
            let strip_accents = match normalizer.get("strip_accents") {
                None | Some(Value::Null) => lowercase,
                Some(value) => value.as_bool().ok_or_else(|| {
                    invalid("tokenizer.json: BertNormalizer.strip_accents is not a boolean")
                })?,
            };
            steps.push(Step::Op(NormalizerOp::Bert {
                clean_text: bool_field(normalizer, "clean_text", "BertNormalizer")?,
                handle_chinese_chars: bool_field(
                    normalizer,
                    "handle_chinese_chars",
                    "BertNormalizer",
                )?,
                strip_accents,
                lowercase,
            }));
        }
        other => return Err(unsupported(format!("normalizer {other}"))),
    }
    Ok(())
}

/// Parses a regex that is one character class of literal characters, `\x{..}` escapes and
/// ranges, e.g. `[\x{0}-\x{8}\x{B}‘-‛]`. None for anything else (negation, other escapes,
/// nested classes), which the caller refuses.
fn parse_char_class(regex: &str) -> Option<Vec<(char, char)>> {
    let inner = regex.strip_prefix('[')?.strip_suffix(']')?;
    if inner.is_empty() || inner.starts_with('^') {
        return None;
    }
    let mut chars = inner.chars().peekable();
    let mut items = Vec::new();
    let next_char = |chars: &mut std::iter::Peekable<std::str::Chars>| -> Option<char> {
        let c = chars.next()?;
        match c {
            '\\' => {
                if chars.next()? != 'x' || chars.next()? != '{' {
                    return None;
                }
                let mut hex = String::new();
                for d in chars.by_ref() {
                    if d == '}' {
                        return char::from_u32(u32::from_str_radix(&hex, 16).ok()?);
                    }
                    hex.push(d);
                }
                None
            }
            '[' | ']' | '-' | '&' | '~' => None,
            c => Some(c),
        }
    };
    while chars.peek().is_some() {
        let low = next_char(&mut chars)?;
        if chars.peek() == Some(&'-') {
            chars.next();
            let high = next_char(&mut chars)?;
            if high < low {
                return None;
            }
            items.push((low, high));
        } else {
            items.push((low, low));
        }
    }
    Some(items)
}
