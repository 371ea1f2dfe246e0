//! Parity of the Rust encoder with reference outputs that onnxruntime produced once from the
//! fp32 models (`models/<name>/reference.json`, padded inputs), and of the tokenizer with the
//! reference CLIP tokenizer.

use std::path::PathBuf;

use clipedge_text::{Engine, ModelCard, PackageBytes, TextEncoder, TextError, Tokens};
use serde_json::Value;

fn package(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

fn read_json(path: PathBuf) -> Value {
    let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn ids_of(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_i64().unwrap())
        .collect()
}

fn floats_of(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The card text with the int8 engine's lines taken out: the package as the ONNX engine sees it.
fn onnx_only(card: &str) -> String {
    card.lines()
        .filter(|line| {
            !line.starts_with("int8_file") && !line.starts_with("compact_tokenizer_file")
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Loads a package with `engine` and checks every reference text: same ids, embedding within
/// `min_cosine`.
fn check_reference(name: &str, min_cosine: f32, engine: Engine) -> TextEncoder {
    let encoder = TextEncoder::load_with_engine(package(name), engine).unwrap();
    let reference = read_json(package(name).join("reference.json"));
    let entries = reference.as_array().unwrap();
    assert!(entries.len() >= 8, "{name}: too few reference texts");
    for entry in entries {
        let text = entry["text"].as_str().unwrap();
        let encoding = encoder.encode(text).unwrap();
        let tokens = encoder.tokenize(text).unwrap();
        assert_eq!(tokens.ids, ids_of(&entry["ids"]), "{name}: ids of {text:?}");
        assert_eq!(encoding.tokens, tokens.ids.len());
        let similarity = cosine(&encoding.embedding, &floats_of(&entry["embedding"]));
        assert!(
            similarity >= min_cosine,
            "{name}: cosine {similarity} < {min_cosine} for {text:?}"
        );
        let norm: f32 = encoding.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{name}: embedding not normalized ({norm})"
        );
    }
    encoder
}

#[test]
fn tiny_clip_matches_onnxruntime_reference() {
    check_reference("tiny-clip", 0.9999, Engine::Onnx);
}

/// The int8 engine (int8 weights, 8-bit activations) against the fp32 reference.
#[test]
fn tiny_clip_int8_engine_matches_fp32_reference() {
    let encoder = check_reference("tiny-clip", 0.999, Engine::Int8);
    assert_eq!(encoder.engine(), Engine::Int8);
    assert_eq!(
        TextEncoder::load(package("tiny-clip")).unwrap().engine(),
        Engine::Int8,
        "a package with text.int8 runs the int8 engine by default"
    );
}

/// The cards' fingerprints are those of the files their engines run.
#[test]
fn fingerprints_match_package_files() {
    for name in ["tiny-clip", "minilm-l6-v2"] {
        let card = card_of(name);
        assert_eq!(
            card.package_fingerprint(&package(name)).unwrap(),
            card.fingerprint,
            "{name}"
        );
    }
}

#[test]
fn clip_tokenizer_matches_open_clip_ids() {
    let encoder = TextEncoder::load_with_engine(package("tiny-clip"), Engine::Onnx).unwrap();
    let reference = read_json(package("tiny-clip").join("tokenizer_reference.json"));
    let entries = reference["entries"].as_array().unwrap();
    assert!(entries.len() >= 30);
    let mut mismatches = Vec::new();
    for entry in entries {
        let text = entry["text"].as_str().unwrap();
        let expected = ids_of(&entry["ids"]);
        match encoder.tokenize(text) {
            Ok(tokens) if tokens.ids == expected => {
                let untruncated = ids_of(&entry["ids_untruncated"]);
                assert_eq!(
                    tokens.truncated,
                    untruncated.len() > expected.len(),
                    "{text:?}"
                );
            }
            Ok(tokens) => {
                mismatches.push(format!("{text:?}: got {:?} want {expected:?}", tokens.ids))
            }
            Err(error) => mismatches.push(format!("{text:?}: {error}")),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// CLIP's causal mask and EOT pooling make the padded 77-position run equal the unpadded one;
/// the reference proves it against onnxruntime, this proves it inside tract too.
#[test]
fn unpadded_clip_run_equals_padded_run() {
    let encoder = TextEncoder::load_with_engine(package("tiny-clip"), Engine::Onnx).unwrap();
    for text in ["a dog running on the beach", "서울의 밤거리 풍경", "red"] {
        let tokens = encoder.tokenize(text).unwrap();
        let unpadded = encoder.encode_tokens(&tokens).unwrap();
        let mut padded_ids = tokens.ids.clone();
        padded_ids.resize(77, 0);
        let padded = Tokens {
            type_ids: vec![0; 77],
            ids: padded_ids,
            truncated: false,
        };
        let padded = encoder.encode_tokens(&padded).unwrap();
        let similarity = cosine(&unpadded.embedding, &padded.embedding);
        assert!(similarity > 0.99999, "{text:?}: {similarity}");
    }
}

#[test]
fn over_long_text_is_truncated_with_eot_last() {
    let encoder = TextEncoder::load_with_engine(package("tiny-clip"), Engine::Onnx).unwrap();
    let long_text = "a dog running on the beach ".repeat(200);
    let tokens = encoder.tokenize(&long_text).unwrap();
    assert_eq!(tokens.ids.len(), 77);
    assert_eq!(tokens.ids[0], 49406);
    assert_eq!(tokens.ids[76], 49407);
    assert!(tokens.truncated);
    let encoding = encoder.encode(&long_text).unwrap();
    assert_eq!(encoding.tokens, 77);
    assert!(encoding.truncated);
    assert!(!encoder.encode("a dog").unwrap().truncated);
}

#[test]
fn empty_and_token_free_text_are_clear_errors() {
    let encoder = TextEncoder::load_with_engine(package("tiny-clip"), Engine::Onnx).unwrap();
    for text in ["", "   ", "\n\t "] {
        assert!(
            matches!(encoder.encode(text), Err(TextError::EmptyInput)),
            "{text:?}"
        );
    }
    assert_eq!(TextError::EmptyInput.to_string(), "text is empty");
}

#[test]
fn bad_packages_are_load_errors_not_panics() {
    let card = std::fs::read_to_string(package("tiny-clip").join("model.toml")).unwrap();
    let tokenizer = std::fs::read(package("tiny-clip").join("tokenizer.json")).unwrap();
    let onnx = std::fs::read(package("tiny-clip").join("text.onnx")).unwrap();

    let missing = TextEncoder::load(package("tiny-clip").join("no-such-package"))
        .err()
        .unwrap();
    assert!(matches!(missing, TextError::Io { .. }), "{missing}");

    let truncated_model = from_bytes(&card, &tokenizer, &onnx[..onnx.len() / 2])
        .err()
        .unwrap();
    assert!(
        matches!(truncated_model, TextError::ModelLoad { .. }),
        "{truncated_model}"
    );

    let bad_tokenizer = from_bytes(&card, b"{not json", &onnx).err().unwrap();
    assert!(
        matches!(bad_tokenizer, TextError::Tokenizer { .. }),
        "{bad_tokenizer}"
    );

    let wrong_output = card.replace("output = \"text_embeds\"", "output = \"no_such_output\"");
    let error = from_bytes(&wrong_output, &tokenizer, &onnx).err().unwrap();
    assert!(error.to_string().contains("no_such_output"), "{error}");

    let wrong_dim = card.replace("dim = 16", "dim = 17");
    let encoder = from_bytes(&wrong_dim, &tokenizer, &onnx).unwrap();
    assert!(matches!(
        encoder.encode("a dog"),
        Err(TextError::Inference { .. })
    ));

    let bad_card = card.replace("pooling = \"pooled\"", "pooling = \"max\"");
    assert!(matches!(
        from_bytes(&bad_card, &tokenizer, &onnx),
        Err(TextError::Card { .. })
    ));
}

fn from_bytes(card: &str, tokenizer: &[u8], onnx: &[u8]) -> Result<TextEncoder, TextError> {
    TextEncoder::from_package(PackageBytes {
        card_toml: &onnx_only(card),
        tokenizer: tokenizer.to_vec(),
        tower: onnx.to_vec(),
        external_data: None,
    })
}

fn card_of(name: &str) -> ModelCard {
    ModelCard::from_toml(&std::fs::read_to_string(package(name).join("model.toml")).unwrap())
        .unwrap()
}

#[test]
fn minilm_quantized_matches_fp32_reference() {
    let tolerance = card_of("minilm-l6-v2").reference_tolerance.unwrap_or(0.995);
    assert!(
        tolerance >= 0.995,
        "card tolerance {tolerance} is looser than the acceptance bar"
    );
    check_reference("minilm-l6-v2", tolerance, Engine::Onnx);
    check_reference("minilm-l6-v2", tolerance, Engine::Int8);
}

/// Real semantics: a query is nearer its paraphrase than an unrelated text, for every triple.
#[test]
fn minilm_ranks_paraphrases_above_unrelated_texts() {
    let encoder = TextEncoder::load_with_engine(package("minilm-l6-v2"), Engine::Onnx).unwrap();
    let triples = [
        (
            "a dog running on the beach",
            "a puppy playing on the sand by the sea",
            "quarterly tax spreadsheet",
        ),
        (
            "a red sports car",
            "a fast crimson automobile",
            "a bowl of vegetable soup",
        ),
        (
            "snow-covered mountains at sunrise",
            "alpine peaks with snow in the morning light",
            "a cat sleeping on a sofa",
        ),
        (
            "a plate of spaghetti",
            "pasta with tomato sauce",
            "an airplane taking off",
        ),
        (
            "children playing football",
            "kids kicking a soccer ball in a park",
            "an old typewriter on a desk",
        ),
        (
            "a bird flying over the ocean",
            "a seagull gliding above the waves",
            "a pile of unpaid invoices",
        ),
    ];
    for (query, near, far) in triples {
        let embed = |text: &str| encoder.encode(text).unwrap().embedding;
        let (q, n, f) = (embed(query), embed(near), embed(far));
        let (near_score, far_score) = (cosine(&q, &n), cosine(&q, &f));
        assert!(
            near_score > far_score + 0.1,
            "{query:?}: near {near_score} vs far {far_score}"
        );
    }
}

#[test]
fn minilm_truncates_at_its_own_max_tokens() {
    let encoder = TextEncoder::load_with_engine(package("minilm-l6-v2"), Engine::Onnx).unwrap();
    let max_tokens = encoder.card().max_tokens;
    let encoding = encoder.encode(&"the quick brown fox ".repeat(300)).unwrap();
    assert_eq!(encoding.tokens, max_tokens);
    assert!(encoding.truncated);
}

/// The Worker's path (bytes in memory) gives the same embedding as the native path (files), for
/// the engine each package runs by default.
#[test]
fn package_bytes_load_equals_directory_load() {
    for name in ["tiny-clip", "minilm-l6-v2"] {
        let dir = package(name);
        let card_text = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        let card = ModelCard::from_toml(&card_text).unwrap();
        let files = card.files_for(card.engine()).unwrap();
        let tower = std::fs::read(dir.join(&files.tower)).unwrap();
        let data = files
            .external_data
            .map(|name| std::fs::read(dir.join(name)).unwrap());
        let tokenizer = std::fs::read(dir.join(&files.tokenizer)).unwrap();
        let from_memory = TextEncoder::from_package(PackageBytes {
            card_toml: &card_text,
            tokenizer: tokenizer.clone(),
            tower,
            external_data: data,
        })
        .unwrap();
        let from_dir = TextEncoder::load(&dir).unwrap();
        let text = "a dog running on the beach";
        assert_eq!(
            from_memory.encode(text).unwrap().embedding,
            from_dir.encode(text).unwrap().embedding,
            "{name}"
        );
    }
}

/// Both engines tokenize alike and embed within the int8 engine's tolerance of each other on
/// everyday queries, multilingual and over-long ones included.
#[test]
fn the_int8_engine_agrees_with_the_onnx_engine() {
    let texts = [
        "a dog running on the beach",
        "red",
        "Ein Hund läuft am Strand entlang",
        "海辺を走る犬",
        "해변을 달리는 개",
        "a photo of a cat 🐱 on a sofa, https://example.com/cat.jpg",
        &"the quick brown fox jumps over the lazy dog ".repeat(40),
    ];
    for (name, min_cosine) in [("tiny-clip", 0.999), ("minilm-l6-v2", 0.997)] {
        let onnx = TextEncoder::load_with_engine(package(name), Engine::Onnx).unwrap();
        let int8 = TextEncoder::load_with_engine(package(name), Engine::Int8).unwrap();
        for text in texts {
            assert_eq!(
                onnx.tokenize(text).unwrap(),
                int8.tokenize(text).unwrap(),
                "{name}: tokens of {text:?}"
            );
            let similarity = cosine(
                &onnx.encode(text).unwrap().embedding,
                &int8.encode(text).unwrap().embedding,
            );
            assert!(
                similarity >= min_cosine,
                "{name}: cosine {similarity} < {min_cosine} for {text:?}"
            );
        }
    }
}

/// tiny-clip rewritten the way `export_clip.py --external-data` writes a package: every
/// initializer's bytes in `text.onnx.data`, the graph pointing at them.
fn external_data_package(dir: &std::path::Path) -> (String, Vec<u8>, Vec<u8>, Vec<u8>) {
    use prost::Message;
    use tract_onnx::pb::{ModelProto, StringStringEntryProto};
    let source = package("tiny-clip");
    let onnx = std::fs::read(source.join("text.onnx")).unwrap();
    let mut proto = ModelProto::decode(onnx.as_slice()).unwrap();
    let mut data = Vec::new();
    let graph = proto.graph.as_mut().unwrap();
    for tensor in &mut graph.initializer {
        if tensor.raw_data.is_empty() {
            continue;
        }
        let offset = data.len();
        data.extend_from_slice(&tensor.raw_data);
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.to_string(),
            value,
        };
        tensor.external_data = vec![
            entry("location", "text.onnx.data".to_string()),
            entry("offset", offset.to_string()),
            entry("length", tensor.raw_data.len().to_string()),
        ];
        tensor.data_location = Some(1);
        tensor.raw_data.clear();
    }
    assert!(!data.is_empty(), "tiny-clip has raw-data initializers");
    let rewritten = proto.encode_to_vec();
    let card = onnx_only(&std::fs::read_to_string(source.join("model.toml")).unwrap());
    let tokenizer = std::fs::read(source.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("model.toml"), &card).unwrap();
    std::fs::write(dir.join("tokenizer.json"), &tokenizer).unwrap();
    std::fs::write(dir.join("text.onnx"), &rewritten).unwrap();
    std::fs::write(dir.join("text.onnx.data"), &data).unwrap();
    (card, tokenizer, rewritten, data)
}

#[test]
fn external_weights_load_from_memory_without_a_file_system() {
    let work = tempfile::tempdir().unwrap();
    let (card, tokenizer, onnx, data) = external_data_package(work.path());
    let original = TextEncoder::load_with_engine(package("tiny-clip"), Engine::Onnx).unwrap();
    let from_dir = TextEncoder::load(work.path()).unwrap();
    // The Worker's path: the weight file is moved into the graph, no directory is touched.
    let from_memory = TextEncoder::from_package(PackageBytes {
        card_toml: &card,
        tokenizer: tokenizer.clone(),
        tower: onnx.clone(),
        external_data: Some(data.clone()),
    })
    .unwrap();
    for text in ["a dog running on the beach", "ein Hund"] {
        let expected = original.encode(text).unwrap().embedding;
        assert_eq!(from_dir.encode(text).unwrap().embedding, expected);
        assert_eq!(from_memory.encode(text).unwrap().embedding, expected);
    }

    // A weight file too short for the graph is a load error naming the tensor, not a panic.
    let short = TextEncoder::from_package(PackageBytes {
        card_toml: &card,
        tokenizer: tokenizer.clone(),
        tower: onnx.clone(),
        external_data: Some(data[..data.len() / 2].to_vec()),
    });
    match short {
        Err(TextError::ModelLoad { reason }) => assert!(reason.contains("outside"), "{reason}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a truncated weight file loaded"),
    }
}
