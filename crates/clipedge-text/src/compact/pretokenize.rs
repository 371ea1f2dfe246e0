//! The two pre-tokenizers, written out by hand instead of through a regex engine.

use super::normalize::in_table;
use super::tables::{BERT_PUNCTUATION, LETTER, NUMBER};

fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    in_table(LETTER, c)
}

fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    in_table(NUMBER, c)
}

const CONTRACTIONS: [&str; 7] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

/// CLIP's split regex `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` with the
/// regex crate's leftmost-first semantics, keeping the matches (HF `Split`, invert, Removed).
/// Every character but whitespace starts a match, so the scan only skips whitespace; at a match
/// start the alternatives are tried in order, and each repetition is greedy.
pub(super) fn clip_words<'a>(text: &'a str, mut word: impl FnMut(&'a str)) {
    let mut position = 0;
    while let Some(c) = text[position..].chars().next() {
        let rest = &text[position..];
        if c.is_whitespace() {
            position += c.len_utf8();
            continue;
        }
        let length = if let Some(contraction) = CONTRACTIONS.iter().find(|&&p| rest.starts_with(p))
        {
            contraction.len()
        } else if is_letter(c) {
            run_length(rest, is_letter)
        } else if is_number(c) {
            c.len_utf8()
        } else {
            run_length(rest, |c| {
                !(c.is_whitespace() || is_letter(c) || is_number(c))
            })
        };
        word(&rest[..length]);
        position += length;
    }
}

fn run_length(text: &str, keep: impl Fn(char) -> bool) -> usize {
    text.char_indices()
        .find(|&(_, c)| !keep(c))
        .map_or(text.len(), |(index, _)| index)
}

fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || in_table(BERT_PUNCTUATION, c)
}

/// BertPreTokenizer: split on whitespace (dropped), then every punctuation character on its own.
pub(super) fn bert_words<'a>(text: &'a str, mut word: impl FnMut(&'a str)) {
    let mut start = None;
    for (index, c) in text.char_indices() {
        let is_space = c.is_whitespace();
        if is_space || is_bert_punctuation(c) {
            if let Some(word_start) = start.take() {
                word(&text[word_start..index]);
            }
            if !is_space {
                word(&text[index..index + c.len_utf8()]);
            }
        } else if start.is_none() {
            start = Some(index);
        }
    }
    if let Some(word_start) = start {
        word(&text[word_start..]);
    }
}

#[cfg(test)]
mod tests {
    use unicode_categories::UnicodeCategories;

    use super::super::normalize::in_table;
    use super::super::tables::{BERT_CONTROL, NONSPACING_MARK};
    use super::*;

    /// The generated tables against the crates HF `tokenizers` uses, on every code point.
    #[test]
    fn unicode_tables_match_the_reference_crates() {
        let letter = regex::Regex::new(r"^\p{L}$").unwrap();
        let number = regex::Regex::new(r"^\p{N}$").unwrap();
        let space = regex::Regex::new(r"^\s$").unwrap();
        let mut buffer = [0u8; 4];
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let text = c.encode_utf8(&mut buffer);
            assert_eq!(is_letter(c), letter.is_match(text), "letter {c:?}");
            assert_eq!(is_number(c), number.is_match(text), "number {c:?}");
            assert_eq!(c.is_whitespace(), space.is_match(text), "space {c:?}");
            let control = c.is_other_control() || c.is_other_format() || c.is_other_private_use();
            assert_eq!(in_table(BERT_CONTROL, c), control, "control {c:?}");
            assert_eq!(
                is_bert_punctuation(c),
                c.is_ascii_punctuation() || c.is_punctuation(),
                "punctuation {c:?}"
            );
            assert_eq!(
                in_table(NONSPACING_MARK, c),
                c.is_mark_nonspacing(),
                "mark {c:?}"
            );
        }
    }

    fn clip(text: &str) -> Vec<&str> {
        let mut words = Vec::new();
        clip_words(text, |word| words.push(word));
        words
    }

    fn bert(text: &str) -> Vec<&str> {
        let mut words = Vec::new();
        bert_words(text, |word| words.push(word));
        words
    }

    #[test]
    fn clip_split_follows_the_regex_alternation_order() {
        assert_eq!(clip("it's a dog's"), ["it", "'s", "a", "dog", "'s"]);
        assert_eq!(clip("'''s !'s"), ["'''", "s", "!'", "s"]);
        assert_eq!(clip("abc123 x²"), ["abc", "1", "2", "3", "x", "²"]);
        assert_eq!(clip("héllo,world!!"), ["héllo", ",", "world", "!!"]);
        assert_eq!(clip(" \t "), Vec::<&str>::new());
    }

    #[test]
    fn bert_split_isolates_punctuation() {
        assert_eq!(
            bert("hey friend!  how?!"),
            ["hey", "friend", "!", "how", "?", "!"]
        );
        assert_eq!(bert("a$b"), ["a", "$", "b"]);
        assert_eq!(bert("   "), Vec::<&str>::new());
    }
}
