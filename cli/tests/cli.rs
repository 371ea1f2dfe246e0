//! The `clipedge` binary end to end: `datagen` → `build` → `search`, and its error reporting.
//!
//! Each command prints one JSON object as its last stdout line (external benchmark harnesses
//! parse it); failures print `error: ...` on stderr and exit 1, usage errors exit 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

const N: usize = 3_000;
const DIM: usize = 64;
const QUERIES: usize = 50;
const TRUTH_K: usize = 20;

fn clipedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clipedge"))
        .args(args)
        .env_remove("CLIPEDGE_LOG")
        .output()
        .expect("run clipedge")
}

/// Runs a command that must succeed and returns its last stdout line as JSON.
fn run_json(args: &[&str]) -> Value {
    let output = clipedge(args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "clipedge {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line on stdout");
    serde_json::from_str(last).unwrap_or_else(|error| panic!("{error}: {last:?}"))
}

/// Runs a command that must fail with `code`; returns its stderr.
fn run_failing(args: &[&str], code: i32) -> String {
    let output = clipedge(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "clipedge {args:?}: stderr {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "a failing command printed a result: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

/// Asserts a runtime failure (exit 1) whose `error:` line mentions every part of `expected`.
fn assert_fails_with(args: &[&str], expected: &[&str]) {
    let stderr = run_failing(args, 1);
    assert!(stderr.starts_with("error: "), "{stderr}");
    for part in expected {
        assert!(
            stderr.contains(part),
            "{args:?}: {part:?} not in {stderr:?}"
        );
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A temporary directory with `clipedge datagen` output in it.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    fn new(format: &str) -> (Workspace, Value) {
        let dir = tempfile::tempdir().unwrap();
        let summary = run_json(&[
            "datagen",
            "--out",
            path_str(dir.path()),
            "--n",
            &N.to_string(),
            "--dim",
            &DIM.to_string(),
            "--queries",
            &QUERIES.to_string(),
            "--k",
            &TRUTH_K.to_string(),
            "--format",
            format,
        ]);
        (Workspace { dir }, summary)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        path_str(&self.path(name)).to_string()
    }

    fn build(&self, vectors: &str, index: &str, extra: &[&str]) -> Value {
        let vectors = self.arg(vectors);
        let index = self.arg(index);
        let mut args = vec![
            "build",
            "--vectors",
            &vectors,
            "--out",
            &index,
            "--nlist",
            "32",
            "--pq-m",
            "16",
            "--iterations",
            "8",
        ];
        args.extend_from_slice(extra);
        run_json(&args)
    }
}

/// Rows of an `.ivecs` file, each checked to be `dim` wide.
fn read_ivecs(path: &Path) -> Vec<Vec<i32>> {
    let bytes = std::fs::read(path).unwrap();
    let words: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|word| i32::from_le_bytes(word.try_into().unwrap()))
        .collect();
    assert_eq!(bytes.len() % 4, 0);
    let mut rows = Vec::new();
    let mut rest = &words[..];
    while let Some((&dim, tail)) = rest.split_first() {
        let (row, tail) = tail.split_at(dim as usize);
        rows.push(row.to_vec());
        rest = tail;
    }
    rows
}

fn write_vecs(path: &Path, rows: &[Vec<[u8; 4]>]) {
    let mut bytes = Vec::new();
    for row in rows {
        bytes.extend_from_slice(&(row.len() as i32).to_le_bytes());
        for value in row {
            bytes.extend_from_slice(value);
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn number(value: &Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {value}"))
}

#[test]
fn datagen_build_and_search_round_trip_for_8_and_4_bit_codes() {
    let (work, summary) = Workspace::new("fvecs");
    assert_eq!(summary["n"], N);
    assert_eq!(summary["dim"], DIM);
    for file in [
        "base.fvecs",
        "queries.fvecs",
        "gt.ivecs",
        "queries_in.fvecs",
        "gt_in.ivecs",
    ] {
        assert!(work.path(file).is_file(), "{file}");
        assert!(summary["files"]
            .as_array()
            .unwrap()
            .contains(&Value::from(file)));
    }
    assert_eq!(
        std::fs::metadata(work.path("base.fvecs")).unwrap().len() as usize,
        N * (4 + 4 * DIM)
    );
    let truth = read_ivecs(&work.path("gt.ivecs"));
    assert_eq!(truth.len(), QUERIES);
    assert!(truth.iter().all(|row| row.len() == TRUTH_K));

    for bits in ["8", "4"] {
        let index = format!("index{bits}");
        let report = work.build("base.fvecs", &index, &["--pq-bits", bits]);
        assert_eq!(report["n"], N);
        assert_eq!(report["d"], DIM);
        assert_eq!(report["nlist"], 32);
        assert_eq!(report["pq_bits"].to_string(), bits);
        assert_eq!(report["rerank"], "fp16");
        assert!(work.path(&index).join("CURRENT").is_file());

        for (queries, truth) in [
            ("queries.fvecs", "gt.ivecs"),
            ("queries_in.fvecs", "gt_in.ivecs"),
        ] {
            let ids = work.arg(&format!("ids{bits}.ivecs"));
            let jsonl = work.arg(&format!("hits{bits}.jsonl"));
            let result = run_json(&[
                "search",
                "--index",
                &work.arg(&index),
                "--queries",
                &work.arg(queries),
                "--truth",
                &work.arg(truth),
                "--k",
                "10",
                "--nprobe",
                "32",
                "--out",
                &ids,
                "--jsonl",
                &jsonl,
            ]);
            let what = format!("bits {bits} {queries}");
            assert_eq!(result["queries"], QUERIES, "{what}");
            assert!(number(&result, "/open_s") >= 0.0, "{what}");
            assert!(number(&result, "/latency_ms/p50") > 0.0, "{what}");
            assert!(number(&result, "/latency_ms/p99") >= number(&result, "/latency_ms/p50"));
            // The list cache serves later queries, so fewer than one GET a query on average.
            assert!(number(&result, "/gets_per_query") > 0.0, "{what}");
            assert!(number(&result, "/bytes_per_query") > 0.0, "{what}");
            assert_eq!(result["index"]["pq_bits"].to_string(), bits);
            let recall = number(&result, "/recall_at_k");
            // Measured: 1.0 with 8-bit codes, 0.93-0.96 with 4-bit codes of 16 sub-quantizers.
            assert!(recall >= 0.85, "{what}: recall@10 {recall}");

            let rows = read_ivecs(Path::new(&ids));
            assert_eq!(rows.len(), QUERIES, "{what}");
            for row in &rows {
                assert_eq!(row.len(), 10);
                assert!(row.iter().all(|id| (0..N as i32).contains(id)), "{row:?}");
            }
            let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            assert_eq!(lines.len(), QUERIES);
            for (query, (line, row)) in lines.iter().zip(&rows).enumerate() {
                assert_eq!(line["query"], query);
                let line_ids: Vec<i64> = line["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_i64().unwrap())
                    .collect();
                assert_eq!(
                    line_ids,
                    row.iter().map(|id| i64::from(*id)).collect::<Vec<_>>()
                );
                assert_eq!(line["scores"].as_array().unwrap().len(), 10);
            }
        }
    }

    // Without the list cache every query reads its lists from storage.
    let uncached = run_json(&[
        "search",
        "--index",
        &work.arg("index8"),
        "--queries",
        &work.arg("queries.fvecs"),
        "--nprobe",
        "4",
        "--cache-mb",
        "0",
    ]);
    assert!(number(&uncached, "/gets_per_query") >= 1.0, "{uncached}");
    assert_eq!(number(&uncached, "/lists_per_query"), 4.0);
    assert!(uncached["recall_at_k"].is_null(), "no --truth, no recall");

    // The Worker's plan in process: on this flat index the calls together scan exactly the
    // nprobe lists the reader scans, and each call reranks its own candidates, so recall is
    // at least the reader's.
    let search_4bit = |extra: &[&str]| {
        let mut args = vec![
            "search".to_string(),
            "--index".to_string(),
            work.arg("index4"),
            "--queries".to_string(),
            work.arg("queries.fvecs"),
            "--truth".to_string(),
            work.arg("gt.ivecs"),
            "--nprobe".to_string(),
            "8".to_string(),
            "--rerank".to_string(),
            "2".to_string(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_json(&args)
    };
    let reader = search_4bit(&[]);
    for functions in ["1", "3"] {
        let edge = search_4bit(&[
            "--edge-calls",
            "3",
            "--min-lists-per-call",
            "1",
            "--edge-functions",
            functions,
        ]);
        assert_eq!(edge["edge_calls"], 3, "{edge}");
        assert_eq!(number(&edge, "/lists_per_query"), 8.0, "{edge}");
        assert!(
            number(&edge, "/recall_at_k") >= number(&reader, "/recall_at_k"),
            "edge plan {edge} against the reader {reader}"
        );
    }
    assert!(reader.get("edge_calls").is_none(), "{reader}");
    assert_fails_with(
        &[
            "search",
            "--index",
            &work.arg("index4"),
            "--queries",
            &work.arg("queries.fvecs"),
            "--edge-calls",
            "2",
            "--call-margin",
            "0.5",
        ],
        &["--call-margin must be a number of at least 1", "0.5"],
    );

    // Queries of another dimension than the index.
    let narrow: Vec<Vec<[u8; 4]>> = (0..3).map(|_| vec![0.25f32.to_le_bytes(); 32]).collect();
    write_vecs(&work.path("narrow.fvecs"), &narrow);
    assert_fails_with(
        &[
            "search",
            "--index",
            &work.arg("index8"),
            "--queries",
            &work.arg("narrow.fvecs"),
        ],
        &["dimension 32", "64"],
    );
}

#[test]
fn npy_vectors_build_the_same_index_as_fvecs() {
    let (fvecs, _) = Workspace::new("fvecs");
    let (npy, summary) = Workspace::new("npy");
    assert!(summary["files"]
        .as_array()
        .unwrap()
        .contains(&Value::from("base.npy")));
    fvecs.build("base.fvecs", "index", &[]);
    npy.build("base.npy", "index", &[]);
    let mut answers = Vec::new();
    for work in [&fvecs, &npy] {
        let result = run_json(&[
            "search",
            "--index",
            &work.arg("index"),
            "--queries",
            &work.arg("queries.fvecs"),
            "--truth",
            &work.arg("gt.ivecs"),
            "--out",
            &work.arg("ids.ivecs"),
        ]);
        assert!(number(&result, "/recall_at_k") > 0.5);
        answers.push(std::fs::read(work.path("ids.ivecs")).unwrap());
    }
    assert_eq!(
        answers[0], answers[1],
        "same vectors and seed, different answers"
    );
}

#[test]
fn build_input_errors_name_the_problem() {
    let (work, _) = Workspace::new("fvecs");
    std::fs::copy(work.path("base.fvecs"), work.path("base.txt")).unwrap();
    let base = work.arg("base.fvecs");
    let out = work.arg("index");
    let build = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["build", "--out", &out, "--nlist", "16", "--pq-m", "16"]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            build(&["--vectors", &work.arg("missing.fvecs")]),
            vec!["missing.fvecs", "read"],
        ),
        (
            build(&["--vectors", &work.arg("base.txt")]),
            vec!["base.txt", ".fvecs or .npy"],
        ),
        (
            build(&["--vectors", &base, "--pq-bits", "5"]),
            vec!["--pq-bits", "5"],
        ),
        (
            build(&["--vectors", &base, "--rerank-vectors", "foo"]),
            vec!["--rerank-vectors", "foo"],
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails_with(&args, &expected);
    }
    // --pq-m that does not divide the dimension.
    let args = [
        "build",
        "--vectors",
        &base,
        "--out",
        &out,
        "--nlist",
        "16",
        "--pq-m",
        "7",
    ];
    assert_fails_with(&args, &["m = 7", "dim = 64"]);
    // More lists than vectors.
    let too_many = (N + 1).to_string();
    let args = [
        "build",
        "--vectors",
        &base,
        "--out",
        &out,
        "--nlist",
        &too_many,
        "--pq-m",
        "16",
    ];
    assert_fails_with(&args, &["nlist", &N.to_string()]);
    // Nothing was published by the failed builds.
    assert!(!work.path("index").join("CURRENT").exists());
}

#[test]
fn a_missing_file_is_reported_once_per_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.fvecs");
    let stderr = run_failing(
        &[
            "build",
            "--vectors",
            path_str(&missing),
            "--out",
            path_str(&dir.path().join("index")),
            "--nlist",
            "4",
            "--pq-m",
            "4",
        ],
        1,
    );
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
}

#[test]
fn search_input_errors_name_the_problem() {
    let (work, _) = Workspace::new("fvecs");
    let empty = tempfile::tempdir().unwrap();
    assert_fails_with(
        &[
            "search",
            "--index",
            path_str(empty.path()),
            "--queries",
            &work.arg("queries.fvecs"),
        ],
        &["no index", "CURRENT"],
    );

    // A truth file with fewer rows than there are queries.
    let short_truth: Vec<Vec<[u8; 4]>> = (0..QUERIES - 1)
        .map(|row| {
            (0..10)
                .map(|rank| (row as i32 + rank).to_le_bytes())
                .collect()
        })
        .collect();
    write_vecs(&work.path("short.ivecs"), &short_truth);
    assert_fails_with(
        &[
            "search",
            "--index",
            path_str(empty.path()),
            "--queries",
            &work.arg("queries.fvecs"),
            "--truth",
            &work.arg("short.ivecs"),
        ],
        &[
            "short.ivecs",
            &format!("{} rows for {QUERIES} queries", QUERIES - 1),
        ],
    );
    assert_fails_with(
        &[
            "search",
            "--index",
            path_str(empty.path()),
            "--queries",
            &work.arg("nope.fvecs"),
        ],
        &["nope.fvecs"],
    );
}

#[test]
fn usage_errors_exit_with_code_2() {
    let stderr = run_failing(&["build", "--bogus-flag"], 2);
    assert!(stderr.contains("--bogus-flag"), "{stderr}");
    let stderr = run_failing(&["search", "--index", "x"], 2);
    assert!(
        stderr.contains("--queries"),
        "missing required flag: {stderr}"
    );
    run_failing(&["no-such-command"], 2);
    run_failing(&["datagen", "--out", "x", "--n", "ten"], 2);
}

#[test]
fn local_stack_points_to_the_developer_tool() {
    assert_fails_with(
        &["local-stack", "up", "--port", "0"],
        &["clipedge-dev local-stack"],
    );
    assert_fails_with(&["local-stack", "--help"], &["clipedge-dev"]);
}

/// The package-time steps reproduce the committed tiny-clip package: `pack-tokenizer` on a copy
/// whose card names neither int8 file writes the same `tokenizer.bin`, names both files and
/// restores the committed fingerprint; `fingerprint --check` then agrees and fails once a
/// weight byte changes; `synth` writes a B/32 package the encoder loads.
#[test]
fn model_packaging_reproduces_the_committed_tiny_clip_package() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-clip");
    let work = TempDir::new().unwrap();
    let package = work.path().join("tiny-clip");
    std::fs::create_dir_all(&package).unwrap();
    for name in ["tokenizer.json", "text.int8", "text.onnx"] {
        std::fs::copy(source.join(name), package.join(name)).unwrap();
    }
    let committed_card = std::fs::read_to_string(source.join("model.toml")).unwrap();
    let bare_card: String = committed_card
        .lines()
        .filter(|line| !line.starts_with("int8_file") && !line.starts_with("compact_tokenizer"))
        .map(|line| {
            if line.starts_with("fingerprint") {
                "fingerprint = \"0000000000000000\"\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(package.join("model.toml"), bare_card).unwrap();
    let dir = package.to_str().unwrap();

    let packed = run_json(&["model", "pack-tokenizer", dir]);
    assert_eq!(packed["engine"], "int8", "{packed}");
    let committed_fingerprint = committed_card
        .lines()
        .find(|line| line.starts_with("fingerprint"))
        .and_then(|line| line.split('"').nth(1))
        .unwrap();
    assert_eq!(packed["fingerprint"], committed_fingerprint, "{packed}");
    assert_eq!(
        std::fs::read(package.join("tokenizer.bin")).unwrap(),
        std::fs::read(source.join("tokenizer.bin")).unwrap()
    );
    run_json(&["model", "fingerprint", dir, "--check"]);

    let mut weights = std::fs::read(package.join("text.int8")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::write(package.join("text.int8"), weights).unwrap();
    assert_fails_with(&["model", "fingerprint", dir, "--check"], &["fingerprint"]);

    let synthetic = work.path().join("b32");
    let synth = run_json(&[
        "model",
        "synth",
        "--arch",
        "clip-b32",
        "--tokenizer-from",
        source.to_str().unwrap(),
        "--out",
        synthetic.to_str().unwrap(),
    ]);
    assert_eq!(synth["engine"], "int8", "{synth}");
    let embedded = run_json(&[
        "embed",
        "--model",
        synthetic.to_str().unwrap(),
        "a dog running on the beach",
    ]);
    assert_eq!(embedded["embedding"].as_array().unwrap().len(), 512);
    assert_eq!(embedded["tokens"], 8);
}
