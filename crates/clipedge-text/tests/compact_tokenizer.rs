//! The compact tokenizer against the HF `tokenizers` reference ([`TextTokenizer`] on the same
//! package's tokenizer.json): ids, truncated flags and error kinds for every string of the
//! committed corpus (tests/data/tokenizer_corpus.json) plus seeded random mixes of its classes;
//! and the committed tokenizer.bin files against a fresh pack of tokenizer.json.
#![cfg(all(feature = "hf-tokenizer", feature = "pack"))]

use std::path::PathBuf;

use clipedge_text::compact::{pack_hf_tokenizer, CompactTokenizer, TokenizerKind};
use clipedge_text::{TextError, TextTokenizer, Tokens};

/// Generated strings per package on top of the corpus.
const GENERATED: usize = 2_000;

fn package_file(package: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(package)
        .join(file)
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn corpus() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer_corpus.json");
    serde_json::from_slice(&read(path)).unwrap()
}

/// splitmix64: a seeded generator without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const CLASSES: &[&[&str]] = &[
    &["photo", "Dog", "RUNNING", "beach", "sunset", "über", "naïve", "cafe\u{301}", "café", "Ǆ", "ﬁne"],
    &["한국어", "서울", "日本語", "カタカナ", "ｶﾀｶﾅ", "中文", "北京", "ภาษาไทย", "हिन्दी", "العربية", "Ελληνικά", "Русский"],
    &["😀", "👍🏽", "👨\u{200d}👩\u{200d}👧", "🏳\u{fe0f}\u{200d}🌈", "🇺🇸", "🇯🇵", "❤\u{fe0f}", "1\u{fe0f}\u{20e3}", "✨"],
    &["'s", "'T", "'re", "'VE", "'m", "'LL", "'d", "’s", "'", "don't", "IT'S", "l'eau"],
    &[" ", "\t", "\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{200b}", "\u{feff}", "\u{85}", "\u{180e}", "  "],
    &["\u{0}", "\u{1}", "\u{7f}", "\u{9f}", "\u{fffd}", "\u{e000}", "\u{ad}", "\u{200e}", "\u{301}", "\u{fff9}"],
    &["https://example.com/a?b=c", "user@example.com", "www.x.org", "C:\\dir", "v1.2.3", "#tag", "@user"],
    &["0", "42", "3.14", "1,000", "½", "²", "١٢٣", "１２３", "Ⅻ", "-7", "100%", "$5"],
    &["!!!", "?!", "...", "—", "…", "(", ")", "[", "]", "\"", "&amp;", "&lt;", "***", "::"],
    &["<|endoftext|>", "<|startoftext|>", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "<|endoftext|", "[cls]"],
    &["supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
];

const SEPARATORS: &[&str] = &[
    " ", " ", " ", "", "\t", "\u{a0}", "\n", ", ", "-", "  ", "'",
];

/// Seeded random mixes of the corpus' classes: short queries, sentences and, now and then,
/// captions long enough to be truncated.
fn generated(seed: u64, count: usize) -> Vec<String> {
    let mut random = Random(seed);
    (0..count)
        .map(|_| {
            let pieces = match random.below(20) {
                0 => 100 + random.below(500),
                1..=3 => 20 + random.below(60),
                _ => 1 + random.below(10),
            };
            let mut text = String::new();
            for index in 0..pieces {
                if index > 0 {
                    let separator = random.pick(SEPARATORS);
                    text.push_str(separator);
                }
                let class = random.pick(CLASSES);
                let piece = random.pick(class);
                match random.below(8) {
                    0 => text.push_str(&piece.to_uppercase()),
                    1 => text.push_str(&piece.repeat(1 + random.below(3))),
                    _ => text.push_str(piece),
                }
            }
            text
        })
        .collect()
}

fn outcome(result: Result<Tokens, TextError>) -> String {
    match result {
        Ok(tokens) => {
            assert!(tokens.type_ids.iter().all(|&id| id == 0));
            assert_eq!(tokens.type_ids.len(), tokens.ids.len());
            format!("{:?} truncated={}", tokens.ids, tokens.truncated)
        }
        Err(TextError::EmptyInput) => "EmptyInput".to_owned(),
        Err(TextError::NoTokens) => "NoTokens".to_owned(),
        Err(other) => format!("error: {other}"),
    }
}

/// Checks every string at each `max_tokens`; returns the number of (string, max_tokens) checks.
fn check_parity(package: &str, kind: TokenizerKind, seed: u64, max_tokens_list: &[usize]) -> usize {
    let json = read(package_file(package, "tokenizer.json"));
    let packed = read(package_file(package, "tokenizer.bin"));
    let mut strings = corpus();
    strings.extend(generated(seed, GENERATED));
    let mut checked = 0;
    let mut failures = Vec::new();
    // (ok, truncated, EmptyInput, NoTokens) among the reference outcomes: what was covered.
    let mut kinds = [0usize; 4];
    for &max_tokens in max_tokens_list {
        let reference = TextTokenizer::from_bytes(&json, max_tokens).unwrap();
        let compact = CompactTokenizer::from_bytes(packed.as_slice(), max_tokens).unwrap();
        assert_eq!(compact.kind(), kind);
        for text in &strings {
            let expected = outcome(reference.tokenize(text));
            let kind = match expected.as_str() {
                "EmptyInput" => 2,
                "NoTokens" => 3,
                ok if ok.ends_with("truncated=true") => 1,
                _ => 0,
            };
            kinds[kind] += 1;
            let actual = outcome(compact.tokenize(text));
            checked += 1;
            if expected != actual && failures.len() < 20 {
                failures.push(format!(
                    "max_tokens {max_tokens} text {text:?}\n  hf:      {expected}\n  compact: {actual}"
                ));
            }
        }
    }
    println!(
        "{package}: {} strings x max_tokens {max_tokens_list:?} = {checked} checks \
         (ok {}, truncated {}, EmptyInput {}, NoTokens {}), {} mismatches",
        strings.len(),
        kinds[0],
        kinds[1],
        kinds[2],
        kinds[3],
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    checked
}

#[test]
fn clip_bpe_matches_hf_tokenizer() {
    let checked = check_parity("tiny-clip", TokenizerKind::ClipBpe, 0xC11F, &[77, 5, 2]);
    assert!(checked >= 3 * 2_000);
}

#[test]
fn wordpiece_matches_hf_tokenizer() {
    let checked = check_parity(
        "minilm-l6-v2",
        TokenizerKind::WordPiece,
        0xBE27,
        &[256, 512, 5],
    );
    assert!(checked >= 3 * 2_000);
}

#[test]
fn committed_tokenizer_bin_is_a_fresh_pack() {
    for package in ["tiny-clip", "minilm-l6-v2"] {
        let packed = pack_hf_tokenizer(&read(package_file(package, "tokenizer.json"))).unwrap();
        // CLIPEDGE_REPACK=1 rewrites the committed files (after a format or tokenizer change).
        if std::env::var_os("CLIPEDGE_REPACK").is_some() {
            std::fs::write(package_file(package, "tokenizer.bin"), &packed).unwrap();
        }
        let committed = read(package_file(package, "tokenizer.bin"));
        assert!(
            packed == committed,
            "models/{package}/tokenizer.bin is stale: repack tokenizer.json"
        );
    }
}

#[test]
fn vocabulary_lookups_round_trip() {
    let compact =
        CompactTokenizer::from_bytes(read(package_file("minilm-l6-v2", "tokenizer.bin")), 256)
            .unwrap();
    assert_eq!(compact.vocab_size(), 30522);
    assert_eq!(compact.token_to_id("[CLS]"), Some(101));
    assert_eq!(compact.id_to_token(102), Some("[SEP]"));
    for id in (0..30522).step_by(97) {
        let token = compact.id_to_token(id).unwrap();
        assert_eq!(compact.token_to_id(token), Some(id), "{token:?}");
    }
    assert_eq!(compact.token_to_id("no-such-token-here"), None);
}

type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

fn pack_modified(package: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut json: serde_json::Value =
        serde_json::from_slice(&read(package_file(package, "tokenizer.json"))).unwrap();
    edit(&mut json);
    match pack_hf_tokenizer(&serde_json::to_vec(&json).unwrap()) {
        Ok(_) => "packed".to_owned(),
        Err(error) => error.to_string(),
    }
}

#[test]
fn packer_refuses_settings_it_does_not_reproduce() {
    use serde_json::json;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "minilm-l6-v2",
            Box::new(|json| json["normalizer"] = json!({"type": "NFKC"})),
            "normalizer NFKC",
        ),
        (
            "minilm-l6-v2",
            Box::new(|json| json["model"]["type"] = json!("Unigram")),
            "model type Unigram",
        ),
        (
            "minilm-l6-v2",
            Box::new(|json| json["pre_tokenizer"] = json!({"type": "Whitespace"})),
            "pre_tokenizer",
        ),
        (
            "minilm-l6-v2",
            Box::new(|json| json["added_tokens"][0]["normalized"] = json!(true)),
            "normalized = true",
        ),
        (
            "minilm-l6-v2",
            Box::new(|json| json["post_processor"] = json!({"type": "BertProcessing"})),
            "post_processor",
        ),
        (
            "tiny-clip",
            Box::new(|json| json["model"]["dropout"] = json!(0.1)),
            "model.dropout",
        ),
        (
            "tiny-clip",
            Box::new(|json| json["model"]["byte_fallback"] = json!(true)),
            "model.byte_fallback",
        ),
        (
            "tiny-clip",
            Box::new(|json| {
                json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!("\\w+")
            }),
            "pre_tokenizer",
        ),
        (
            "tiny-clip",
            Box::new(|json| {
                json["normalizer"]["normalizers"][0]["pattern"]["Regex"] = json!("[^a-z]")
            }),
            "Replace normalizer regex",
        ),
    ];
    for (package, edit, expected) in cases {
        let message = pack_modified(package, edit);
        assert!(
            message.contains("unsupported") && message.contains(expected),
            "expected a refusal naming {expected:?}, got {message:?}"
        );
    }
}

/// A huge text stops being tokenized one id past the budget: still the ids and flag of HF,
/// which tokenizes all of it.
#[test]
fn huge_text_matches_hf() {
    let huge = "a photo of a dog running on the beach, <|endoftext|> [CLS] 日本語 ".repeat(5_000);
    for (package, max_tokens) in [("tiny-clip", 77), ("minilm-l6-v2", 256)] {
        let reference =
            TextTokenizer::from_bytes(&read(package_file(package, "tokenizer.json")), max_tokens)
                .unwrap();
        let compact =
            CompactTokenizer::from_bytes(read(package_file(package, "tokenizer.bin")), max_tokens)
                .unwrap();
        let started = std::time::Instant::now();
        let tokens = compact.tokenize(&huge).unwrap();
        println!(
            "{package}: {} bytes tokenized in {:.2} ms",
            huge.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        assert!(tokens.truncated);
        assert_eq!(tokens, reference.tokenize(&huge).unwrap());
    }
}

/// Corrupt files must fail to load or tokenize without panicking: loading checks what the
/// lookups later index without checks.
#[test]
fn corrupt_files_never_panic() {
    for package in ["minilm-l6-v2", "tiny-clip"] {
        let packed = read(package_file(package, "tokenizer.bin"));
        // Where the small sections (added tokens, normalizer, template, model, merges) start:
        // section 3's offset in the header's section table.
        let small_sections = u32::from_le_bytes(packed[56..60].try_into().unwrap()) as usize;
        let mut random = Random(7);
        for round in 0..800 {
            let mut corrupt = packed.clone();
            for _ in 0..1 + random.below(3) {
                let position = match round % 3 {
                    0 => random.below(96),
                    1 => small_sections + random.below(packed.len() - small_sections),
                    _ => random.below(packed.len()),
                };
                corrupt[position] = random.next() as u8;
            }
            if round % 50 == 0 {
                corrupt.truncate(random.below(corrupt.len()));
            }
            if let Ok(tokenizer) = CompactTokenizer::from_bytes(corrupt, 16) {
                for text in ["a photo of a dog", "[CLS] café 日本 😀 <|endoftext|>", "x"] {
                    let _ = tokenizer.tokenize(text);
                }
            }
        }
    }
}

#[test]
fn from_bytes_rejects_malformed_files() {
    let packed = read(package_file("tiny-clip", "tokenizer.bin"));
    assert!(CompactTokenizer::from_bytes(&b"not a tokenizer"[..], 77).is_err());
    assert!(CompactTokenizer::from_bytes(&packed[..packed.len() / 2], 77).is_err());
    let mut wrong_version = packed.clone();
    wrong_version[8] = 99;
    let message = CompactTokenizer::from_bytes(wrong_version, 77)
        .unwrap_err()
        .to_string();
    assert!(message.contains("version 99"), "{message}");
    // Room for <|startoftext|> and <|endoftext|> is required.
    assert!(CompactTokenizer::from_bytes(packed.as_slice(), 1).is_err());
    // Exactly the specials: nothing left for the text, as in HF.
    let compact = CompactTokenizer::from_bytes(packed, 2).unwrap();
    assert!(matches!(
        compact.tokenize("a dog"),
        Err(TextError::NoTokens)
    ));
}
