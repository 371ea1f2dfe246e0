//! The nightly job with both ends on a real S3-compatible server (s3s-fs): a clip-retrieval
//! folder at `s3://bucket/laion` in, a published generation at `s3://bucket/index` out. The
//! second run reuses its local mirror of the source.
//!
//! Needs `CLIPEDGE_S3S_FS` (set by `scripts/test.sh`) and the `clipedge-index-builder` binary
//! (`cargo test --workspace --no-run` builds it).

use std::process::Command;

use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};
use clipedge_tests::lambda_harness::{workspace_binary, S3Server};
use serde_json::Value;

const DIM: usize = 32;

fn run_builder(server: &S3Server, spill: &std::path::Path) -> (Value, String) {
    let output = Command::new(workspace_binary(
        "clipedge-index-builder",
        "clipedge-index-builder",
    ))
    .envs(server.aws_env())
    .env("CLIPEDGE_LOG", "warn")
    .args([
        "run",
        "--source",
        "s3://bucket/laion",
        "--out",
        "s3://bucket/index",
        "--device",
        "cpu",
        "--nlist",
        "16",
        "--pq-m",
        "8",
        "--pq-bits",
        "8",
        "--rerank-vectors",
        "fp16",
        "--gate-sample",
        "50",
        "--gate-nprobe",
        "16",
        "--min-recall",
        "0.5",
        "--batch-rows",
        "700",
    ])
    .arg("--spill-dir")
    .arg(spill)
    .output()
    .expect("run clipedge-index-builder");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.lines().last().expect("a report line"))
        .unwrap_or_else(|error| panic!("{error}: {stdout}"));
    (report, stderr)
}

#[test]
fn the_nightly_job_reads_its_source_from_s3_and_publishes_there() {
    let server = S3Server::start("bucket");
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(DIM, 5));
    let data = generator.base(2_000);
    for (index, chunk) in data.chunks(800 * DIM).enumerate() {
        let path = server.object_path(
            "bucket",
            &format!("laion/embeddings/img_emb/img_emb_{index}.npy"),
        );
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        clipedge_datagen::write_npy_f16(&path, chunk, DIM).unwrap();
    }
    let texts = generator.queries(30, QueryKind::OutOfDistribution);
    let text_path = server.object_path("bucket", "laion/embeddings/text_emb/text_emb_0.npy");
    std::fs::create_dir_all(text_path.parent().unwrap()).unwrap();
    clipedge_datagen::write_npy_f16(&text_path, &texts, DIM).unwrap();

    let spill = tempfile::tempdir().unwrap();
    let (first, stderr) = run_builder(&server, spill.path());
    assert_eq!(first["n"], 2_000, "{first}");
    assert_eq!(first["published"], true, "{first}");
    // 50 sampled image vectors and 30 text embeddings (all there are).
    assert_eq!(first["gate_queries"], 80, "{first}");
    assert!(
        stderr.contains("mirrored 4 file(s)") && stderr.contains("fetched) from s3://bucket/laion"),
        "{stderr}"
    );
    let current = std::fs::read(server.object_path("bucket", "index/CURRENT")).unwrap();
    let pointer: Value = serde_json::from_slice(&current).unwrap();
    assert_eq!(pointer["generation"], first["generation"]);

    // The mirror is complete: the next run fetches nothing.
    let (second, stderr) = run_builder(&server, spill.path());
    assert!(stderr.contains("(0 fetched)"), "{stderr}");
    assert_eq!(second["n"], 2_000);
    assert_ne!(second["generation"], first["generation"]);
}
