//! `clipedge embed` end to end on the committed models.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn model(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    dir.to_str().unwrap().to_string()
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn embeds_arguments_as_json_lines_with_normalized_vectors() {
    let output = Command::new(env!("CARGO_BIN_EXE_clipedge"))
        .args([
            "embed",
            "--model",
            &model("minilm-l6-v2"),
            "a dog on the beach",
            "서울의 밤거리",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output.stdout);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let embedding: Vec<f64> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(embedding.len(), 384);
        let norm = embedding.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        assert!(line["tokens"].as_u64().unwrap() >= 3);
        assert!(line["encode_ms"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(lines[0]["text"], "a dog on the beach");
}

#[test]
fn reads_stdin_and_reports_bad_lines_without_losing_good_ones() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clipedge"))
        .args(["embed", "--model", &model("tiny-clip"), "--no-vector"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("a red car\n   \nblue sky\n".as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let lines = json_lines(&output.stdout);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["tokens"], 5); // BOS, a, red, car, EOT
    assert!(lines[0].get("embedding").is_none());
    assert_eq!(lines[1]["error"], "text is empty");
    assert_eq!(lines[2]["text"], "blue sky");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 3 texts could not be embedded"));
}

#[test]
fn a_missing_model_package_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_clipedge"))
        .args(["embed", "--model", "/no/such/model", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot load model package /no/such/model"),
        "{stderr}"
    );
    assert!(stderr.contains("model.toml"), "{stderr}");
}
