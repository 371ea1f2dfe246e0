//! The int8 engine: the committed `text.int8` files against their fp32 references, the int8
//! path against its own f32 reference on seeded models of both families (the B/32 text
//! architecture included), kernel agreement, and malformed files.

use std::path::PathBuf;

use clipedge_text::int8::{
    synthetic_model, Family, Int8Config, Int8Model, Int8Pooling, Kernel, FORMAT_VERSION,
};
use clipedge_text::TextError;
use serde_json::Value;

fn package(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    (dot / (norm(a) * norm(b))) as f32
}

/// Cosine of the int8 model against `reference.json` for every text; returns the worst.
fn reference_cosine(name: &str) -> f32 {
    let bytes = std::fs::read(package(name).join("text.int8")).unwrap();
    let model = Int8Model::from_bytes(bytes).unwrap();
    let reference: Value =
        serde_json::from_slice(&std::fs::read(package(name).join("reference.json")).unwrap())
            .unwrap();
    let entries = reference.as_array().unwrap();
    assert!(entries.len() >= 8);
    let mut worst = 1.0f32;
    for entry in entries {
        let ids: Vec<u32> = entry["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap() as u32)
            .collect();
        let expected: Vec<f32> = entry["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let embedding = model.forward(&ids).unwrap();
        assert_eq!(embedding.len(), expected.len());
        for kernel in Kernel::available() {
            assert_eq!(
                model.forward_with_kernel(&ids, kernel).unwrap(),
                embedding,
                "{name}: kernel {} differs",
                kernel.name()
            );
        }
        let reference = model.forward_reference(&ids).unwrap();
        eprintln!(
            "{name}: {} tokens: int8 {:.6}, dequantized-weights f32 {:.6}",
            ids.len(),
            cosine(&embedding, &expected),
            cosine(&reference, &expected)
        );
        worst = worst.min(cosine(&embedding, &expected));
    }
    worst
}

#[test]
fn tiny_clip_matches_the_fp32_reference() {
    let worst = reference_cosine("tiny-clip");
    eprintln!("tiny-clip: worst cosine {worst}");
    assert!(worst >= 0.999, "tiny-clip: worst cosine {worst}");
}

#[test]
fn minilm_matches_the_fp32_reference() {
    let worst = reference_cosine("minilm-l6-v2");
    eprintln!("minilm-l6-v2: worst cosine {worst}");
    assert!(worst >= 0.995, "minilm-l6-v2: worst cosine {worst}");
}

fn small(family: Family) -> Int8Config {
    let mut config = match family {
        Family::Clip => Int8Config::clip_b32(),
        Family::Bert => Int8Config::minilm_l6(),
    };
    // Odd sizes on purpose: widths and MLP not multiples of 16 or 32.
    config.vocab = 300;
    config.width = 60;
    config.heads = 4;
    config.mlp = 150;
    config.layers = 3;
    config.max_positions = 77;
    if family == Family::Clip {
        config.proj_dim = 40;
    }
    config
}

fn ids(length: usize, vocab: u32, seed: u32) -> Vec<u32> {
    (0..length as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97)) % vocab)
        .collect()
}

fn check_against_reference(model: &Int8Model, lengths: &[usize], min_cosine: f32) {
    for &length in lengths {
        let ids = ids(length, model.vocab() as u32, length as u32);
        let reference = model.forward_reference(&ids).unwrap();
        let quantized = model.forward(&ids).unwrap();
        assert_eq!(quantized.len(), model.output_dim());
        let similarity = cosine(&quantized, &reference);
        eprintln!("{:?} {length} tokens: cosine {similarity}", model.family());
        assert!(
            similarity >= min_cosine,
            "{:?} at {length} tokens: cosine {similarity}",
            model.family()
        );
        for kernel in Kernel::available() {
            assert_eq!(
                model.forward_with_kernel(&ids, kernel).unwrap(),
                quantized,
                "kernel {} differs at {length} tokens",
                kernel.name()
            );
        }
    }
}

#[test]
fn small_models_of_both_families_follow_the_f32_reference() {
    for family in [Family::Clip, Family::Bert] {
        let config = small(family);
        let model = Int8Model::from_bytes(synthetic_model(&config, 11)).unwrap();
        assert_eq!(model.family(), family);
        assert_eq!(model.output_dim(), config.output_dim());
        check_against_reference(&model, &[1, 2, 5, 17, 77], 0.999);
    }
    let mut cls = small(Family::Bert);
    cls.pooling = Int8Pooling::Cls;
    let model = Int8Model::from_bytes(synthetic_model(&cls, 12)).unwrap();
    check_against_reference(&model, &[3, 9], 0.999);
}

#[test]
fn clip_b32_architecture_follows_the_f32_reference() {
    let config = Int8Config::clip_b32();
    let bytes = synthetic_model(&config, 2026);
    let model = Int8Model::from_bytes(bytes).unwrap();
    assert_eq!(model.width(), 512);
    assert_eq!(model.output_dim(), 512);
    assert!(model.weight_bytes() > 60 << 20 && model.weight_bytes() < 66 << 20);
    check_against_reference(&model, &[2, 7, 20], 0.999);
}

#[test]
fn bad_ids_are_errors() {
    let model = Int8Model::from_bytes(synthetic_model(&small(Family::Clip), 1)).unwrap();
    assert!(model.forward(&[]).is_err());
    assert!(model.forward(&[300]).is_err());
    assert!(model.forward(&[1; 78]).is_err());
}

fn load_error(bytes: Vec<u8>) -> String {
    match Int8Model::from_bytes(bytes) {
        Err(TextError::ModelLoad { reason }) => reason,
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("a malformed file loaded"),
    }
}

#[test]
fn malformed_files_are_rejected_without_panics() {
    let good = synthetic_model(&small(Family::Bert), 3);
    assert!(Int8Model::from_bytes(good.clone()).is_ok());

    // Every truncation point, coarsely, and a few fine ones around the header and table.
    let cuts = (0..200)
        .chain((0..good.len()).step_by(997))
        .chain([good.len() - 1]);
    for cut in cuts {
        let _ = load_error(good[..cut].to_vec());
    }
    assert!(load_error(Vec::new()).contains("shorter"));

    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(load_error(bad).contains("magic"));

    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(load_error(bad).contains("version"));

    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&7u32.to_le_bytes());
    assert!(load_error(bad).contains("family"));

    // Huge dimensions must be refused before anything is sized by them.
    let mut bad = good.clone();
    bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(load_error(bad).contains("vocab"));

    // The first tensor's offset past the end of the file, and a length that disagrees.
    let mut bad = good.clone();
    bad[64..72].copy_from_slice(&((good.len() as u64 + 64) & !63).to_le_bytes());
    assert!(load_error(bad).contains("past the end"));
    let mut bad = good.clone();
    bad[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(!load_error(bad).is_empty());
    let mut bad = good.clone();
    bad[72..80].copy_from_slice(&1u64.to_le_bytes());
    assert!(load_error(bad).contains("bytes"));
    let mut bad = good;
    bad[52..56].copy_from_slice(&1u32.to_le_bytes());
    assert!(load_error(bad).contains("entries"));
}
