//! The whole serverless query path, end to end on real components: the Worker built for wasm32
//! and run by `wrangler dev` (workerd), the scanner under `cargo lambda watch`, s3s-fs as S3,
//! all brought up by `clipedge-dev local-stack up` (the command developers use). The same index is
//! served in-process by `clipedge serve`, and the two must answer alike.
//!
//! Needs the built Worker (`scripts/build-worker.sh`, run by `scripts/test.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clipedge_format::CurrentPointer;
use clipedge_tests::api_cases::{
    bad_searches, build_demo_index, build_flagged_index, check_clip_retrieval_front,
    check_flagged_index, check_paging, check_several_indexes, list_at_shard_offset,
    run_clip_client, EmbeddedServer,
};
use clipedge_tests::lambda_harness::{workspace_binary, workspace_root};
use serde_json::{json, Value};

fn worker_build() -> PathBuf {
    let build = std::env::var("CLIPEDGE_WORKER_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("worker/build"));
    assert!(
        build.join("index.js").exists(),
        "{} has no built Worker: run scripts/build-worker.sh (scripts/test.sh does)",
        build.display()
    );
    build
}

/// The developer tool that runs the local stack.
fn clipedge_dev() -> PathBuf {
    workspace_binary("clipedge-dev", "clipedge-dev")
}

/// `clipedge-dev local-stack up`, and `down` when dropped (pass or fail).
struct Stack {
    state: PathBuf,
    info: Value,
}

impl Stack {
    fn up(index: &Path, state: &Path, vars: &[&str]) -> Stack {
        Stack::up_with_model(index, state, "models/tiny-clip", vars, &[])
    }

    fn up_with_model(
        index: &Path,
        state: &Path,
        model: &str,
        vars: &[&str],
        flags: &[&str],
    ) -> Stack {
        let mut command = Command::new(clipedge_dev());
        command
            .current_dir(workspace_root())
            .args(["local-stack", "up", "--port", "0", "--model", model])
            .arg("--index")
            .arg(index)
            .arg("--state")
            .arg(state)
            .arg("--worker-build")
            .arg(worker_build());
        for var in vars {
            command.args(["--var", var]);
        }
        command.args(flags);
        let output = command.output().expect("run clipedge-dev local-stack up");
        assert!(
            output.status.success(),
            "local-stack up failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .last()
            .expect("local-stack up prints its stack");
        Stack {
            state: state.to_path_buf(),
            info: serde_json::from_str(line).expect("the stack line is JSON"),
        }
    }

    fn url(&self) -> &str {
        self.info["worker_url"].as_str().unwrap()
    }

    fn pid(&self, name: &str) -> u32 {
        self.info["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|process| process["name"] == name)
            .and_then(|process| process["pid"].as_u64())
            .unwrap_or_else(|| panic!("the stack has no {name}")) as u32
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new(clipedge_dev())
            .args(["local-stack", "down", "--state"])
            .arg(&self.state)
            .status();
    }
}

struct Answer {
    status: u16,
    body: Value,
    server_timing: String,
    headers: reqwest::header::HeaderMap,
}

fn call(runtime: &tokio::runtime::Runtime, url: String, body: Option<String>) -> Answer {
    runtime.block_on(call_with(&reqwest::Client::new(), url, body))
}

/// One GET (no body) or JSON POST; the status, the JSON body (or its text) and Server-Timing.
async fn call_with(client: &reqwest::Client, url: String, body: Option<String>) -> Answer {
    call_with_headers(client, url, body, &[]).await
}

/// [`call_with`] with request headers added; the answer keeps the response headers too.
async fn call_with_headers(
    client: &reqwest::Client,
    url: String,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = match body {
        Some(body) => client
            .post(url)
            .header("content-type", "application/json")
            .body(body),
        None => client.get(url),
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("http call");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let server_timing = headers
        .get("server-timing")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        body,
        server_timing,
        headers,
    }
}

fn search(runtime: &tokio::runtime::Runtime, base: &str, body: &Value) -> Answer {
    call(runtime, format!("{base}/v1/search"), Some(body.to_string()))
}

/// The Worker's object source (presigned GETs, or the R2 binding) passes the suite every
/// backend passes (`clipedge_io::conformance`), run inside workerd.
fn assert_object_source_conforms(runtime: &tokio::runtime::Runtime, edge: &str) {
    let suite = call(
        runtime,
        format!("{edge}/v1/conformance/object-source"),
        None,
    );
    assert_eq!(suite.status, 200, "{}", suite.body);
    assert_eq!(suite.body["passed"], true, "{}", suite.body);
}

fn ids(answer: &Answer) -> Vec<u64> {
    answer.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {}", answer.body))
        .iter()
        .map(|result| result["id"].as_u64().unwrap())
        .collect()
}

/// The same results: ids, captions and URLs in order, scores equal up to `tolerance` (0 for
/// vector and id queries, whose query vectors are bit-identical on both sides). Positions may
/// swap only between scores closer than the tolerance.
fn assert_same_results(edge: &Answer, embedded: &Answer, tolerance: f64, what: &str) {
    assert_eq!(edge.status, 200, "{what}: edge {}", edge.body);
    assert_eq!(embedded.status, 200, "{what}: embedded {}", embedded.body);
    let edge_results = edge.body["results"].as_array().unwrap();
    let embedded_results = embedded.body["results"].as_array().unwrap();
    assert_eq!(edge_results.len(), embedded_results.len(), "{what}");
    assert!(!edge_results.is_empty(), "{what}: no results");
    for (position, (a, b)) in edge_results.iter().zip(embedded_results).enumerate() {
        let (score_a, score_b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!(
            (score_a - score_b).abs() <= tolerance,
            "{what}: position {position}: edge {a} vs embedded {b}"
        );
        if a["id"] != b["id"] {
            assert!(tolerance > 0.0, "{what}: position {position}: {a} vs {b}");
            continue;
        }
        assert_eq!(a["caption"], b["caption"], "{what}");
        assert_eq!(a["url"], b["url"], "{what}");
    }
    assert_eq!(edge.body["partial"], false, "{what}");
}

/// Two items with the same image and caption: the same vector under any model, one content hash.
fn duplicate_pair() -> (u64, u64) {
    let items = std::fs::read_to_string(workspace_root().join("demo/items.jsonl")).unwrap();
    let mut first_by_item = std::collections::HashMap::new();
    for line in items.lines() {
        let item: Value = serde_json::from_str(line).unwrap();
        let key = (item["image"].to_string(), item["caption"].to_string());
        let id = item["id"].as_u64().unwrap();
        if let Some(first) = first_by_item.insert(key, id) {
            return (first, id);
        }
    }
    panic!("the demo dataset has no duplicate items");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_edge_worker_answers_like_the_embedded_server_end_to_end() {
    let runtime = runtime();
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    build_demo_index(&index, "models/tiny-clip");

    let stack = Stack::up_with_model(
        &index,
        &work.path().join("stack"),
        "models/tiny-clip",
        &[
            "CLIPEDGE_SCANNER_TIMEOUT_MS=2000",
            "CLIPEDGE_MIN_LISTS_PER_CALL=2",
            // Read CURRENT on every request, so the generation switch below shows at once.
            "CLIPEDGE_CURRENT_TTL_MS=0",
        ],
        // The same index once more, as a second named index (CLIPEDGE_INDEXES).
        &[
            "--conformance",
            "--extra-index",
            &format!("second={}", index.display()),
        ],
    );
    let edge = stack.url().to_string();
    assert_object_source_conforms(&runtime, &edge);
    let embedded = EmbeddedServer::start(&index, "models/tiny-clip");
    let generation = CurrentPointer::from_json(&std::fs::read(index.join("CURRENT")).unwrap())
        .unwrap()
        .generation;

    // Health names the published generation, from the edge.
    let health = call(&runtime, format!("{edge}/v1/health"), None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["generation"], generation.as_str());
    assert_eq!(health.body["front"], "edge");
    assert_eq!(health.body["count"], 4083);
    assert!(health.body["memory_bytes"].as_u64().unwrap() > 0);
    // The Worker's int8 kernel: relaxed SIMD by default (which path its dot takes depends on
    // the CPU), simd128 where the engine's relaxed dot saturates (x86_64 without AVX-VNNI)
    // and with CLIPEDGE_WASM_SIMD=simd128.
    let text_kernel = health.body["text_kernel"].as_str().unwrap_or_default();
    assert!(
        text_kernel.starts_with("relaxed-simd, ") || text_kernel.starts_with("simd128"),
        "text_kernel: {text_kernel}"
    );

    // A list the scanner cannot verify: the answer is partial and names it (checked first,
    // before the scanner has cached the list). The original bytes are put back afterwards.
    let shard = work
        .path()
        .join("stack/s3/clipedge/indexes/local/generations")
        .join(&generation)
        .join("shard-00000.bin");
    let original = std::fs::read(&shard).unwrap();
    let flipped_offset = original.len() as u64 / 2;
    let broken_list = list_at_shard_offset(&index, &generation, flipped_offset);
    let mut corrupted = original.clone();
    corrupted[flipped_offset as usize] ^= 0x5a;
    std::fs::write(&shard, &corrupted).unwrap();
    let partial = search(
        &runtime,
        &edge,
        &json!({"text": "a penguin", "k": 10, "nprobe": 4096}),
    );
    std::fs::write(&shard, &original).unwrap();
    assert_eq!(partial.status, 200, "{}", partial.body);
    assert_eq!(partial.body["partial"], true, "{}", partial.body);
    assert_eq!(
        partial.body["failed_lists"],
        json!([broken_list]),
        "{}",
        partial.body
    );
    assert_eq!(ids(&partial).len(), 10, "the other lists still answer");

    // The same answers as the embedded server: text (encoded in wasm vs natively), a raw
    // vector and "more like this" by id, at several probe widths.
    let mut vector = vec![0.0f32; 16];
    vector[3] = 1.0;
    vector[7] = -0.5;
    let cases = [
        (json!({"text": "a penguin", "k": 10}), 1e-4),
        (
            json!({"text": "electric guitar", "k": 20, "nprobe": 8, "rerank": 50}),
            1e-4,
        ),
        (
            json!({"text": "ein roter Apfel", "k": 5, "nprobe": 63, "dedup": false}),
            1e-4,
        ),
        (json!({"vector": vector, "k": 15, "nprobe": 12}), 0.0),
        (json!({"id": 5, "k": 10, "nprobe": 16}), 0.0),
    ];
    for (query, tolerance) in &cases {
        let from_edge = search(&runtime, &edge, query);
        let from_embedded = search(&runtime, &embedded.url, query);
        assert_same_results(&from_edge, &from_embedded, *tolerance, &query.to_string());
        for stage in ["encode", "probe", "scan", "merge"] {
            assert!(
                from_edge.server_timing.contains(stage),
                "{}",
                from_edge.server_timing
            );
            assert!(from_edge.body["timings"][stage].is_number());
        }
        assert!(from_edge.body["stats"]["gets"].as_u64().unwrap() >= 1);
        // What the query cost in scanner invocations is in the answer (each is billed).
        assert!(from_edge.body["stats"]["scanner_calls"].as_u64().unwrap() >= 1);
        assert!(from_edge.body["stats"]["scanner_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(from_embedded.body["stats"]["scanner_calls"], 0);
    }

    // Items and their images come through the edge too.
    let item = call(&runtime, format!("{edge}/v1/items/5"), None);
    assert_eq!(item.status, 200);
    assert_eq!(
        item.body,
        call(&runtime, format!("{}/v1/items/5", embedded.url), None).body
    );
    let image_url = format!("{edge}{}", item.body["url"].as_str().unwrap());
    let image = runtime.block_on(async {
        reqwest::get(image_url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let image_name = item.body["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("/media/");
    assert_eq!(
        image.as_ref(),
        std::fs::read(index.join("media").join(image_name))
            .unwrap()
            .as_slice()
    );
    let page = call(&runtime, format!("{edge}/"), None);
    assert_eq!(page.status, 200);

    // De-duplication by content hash removes the planted duplicate, and is on by default.
    let (first, second) = duplicate_pair();
    let without = search(
        &runtime,
        &edge,
        &json!({"id": first, "k": 10, "dedup": false}),
    );
    let without_ids = ids(&without);
    assert!(
        without_ids.contains(&first) && without_ids.contains(&second),
        "{without_ids:?}"
    );
    let with = search(&runtime, &edge, &json!({"id": first, "k": 10}));
    let with_ids = ids(&with);
    assert_eq!(with_ids.len(), 10);
    assert_eq!(
        with_ids
            .iter()
            .filter(|id| **id == first || **id == second)
            .count(),
        1,
        "{with_ids:?}"
    );

    // Bad input: the documented 4xx, the same as the embedded server's (one table for both).
    for case in bad_searches() {
        for base in [&edge, &embedded.url] {
            let answer = call(
                &runtime,
                format!("{base}/v1/search"),
                Some(case.body.clone()),
            );
            assert_eq!(
                answer.status, case.status,
                "{base} {}: {}",
                case.what, answer.body
            );
            assert_eq!(
                answer.body["error"]["code"], case.code,
                "{base} {}: {}",
                case.what, answer.body
            );
            assert!(!answer.body["error"]["message"].as_str().unwrap().is_empty());
        }
    }
    let wrong_method = call(&runtime, format!("{edge}/v1/search"), None);
    assert_eq!(wrong_method.status, 405);

    // clip-retrieval's endpoints: the same checks on both fronts (ClipClient's body without a
    // content type, metadata on the first num_images only, 10,000 ids, its bad inputs as 4xx).
    let edge_name = runtime.block_on(check_clip_retrieval_front(&edge));
    assert_eq!(edge_name, "local", "the last segment of CLIPEDGE_INDEX");
    let embedded_name = runtime.block_on(check_clip_retrieval_front(&embedded.url));
    assert_eq!(embedded_name, "index");
    // Paging, 10,000 results and the safety filter without an NSFW column, at the edge.
    runtime.block_on(check_paging(&edge));
    run_clip_client(&edge, &edge_name);
    // Several indexes: each selected by name (its own generation cache in the isolate, its own
    // index root named in the scanner calls), the second one's media under /indexes/second/.
    runtime.block_on(check_several_indexes(&edge, &["local", "second"], true));
    run_clip_client(&edge, "second");
    let wrong_method = call(
        &runtime,
        format!("{edge}/v1/health"),
        Some("{}".to_string()),
    );
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.body);
    assert_eq!(wrong_method.body["error"]["code"], "method_not_allowed");
    assert_eq!(call(&runtime, format!("{edge}/nowhere"), None).status, 404);

    // A new generation is published while the stack runs (written straight into the S3
    // server's files, CURRENT last): the Worker follows CURRENT and its scanners read the new
    // generation, with the same answers (same data, same seed).
    let next_index = work.path().join("next-index");
    build_demo_index(&next_index, "models/tiny-clip");
    let next_pointer = std::fs::read(next_index.join("CURRENT")).unwrap();
    let next_generation = CurrentPointer::from_json(&next_pointer).unwrap().generation;
    assert_ne!(next_generation, generation);
    let bucket_root = work.path().join("stack/s3/clipedge/indexes/local");
    let published = bucket_root.join("generations").join(&next_generation);
    std::fs::create_dir_all(&published).unwrap();
    for entry in std::fs::read_dir(next_index.join("generations").join(&next_generation)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), published.join(entry.file_name())).unwrap();
    }
    std::fs::write(bucket_root.join("CURRENT"), &next_pointer).unwrap();
    let health = call(&runtime, format!("{edge}/v1/health"), None);
    assert_eq!(
        health.body["generation"],
        next_generation.as_str(),
        "{}",
        health.body
    );
    let query = json!({"text": "a penguin", "k": 10});
    assert_same_results(
        &search(&runtime, &edge, &query),
        &search(&runtime, &embedded.url, &query),
        1e-4,
        "after the generation switch",
    );

    // The scanner stops: every call fails (timed out, then retried once), and the edge answers
    // 502 with the reason instead of an empty success.
    let scanner_pid = stack.pid("clipedge-scanner");
    let _ = Command::new("kill").arg(scanner_pid.to_string()).status();
    let failed = search(&runtime, &edge, &json!({"text": "a penguin", "k": 5}));
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert_eq!(failed.body["error"]["code"], "scanners_failed");
    assert!(
        failed.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scanner"),
        "{}",
        failed.body
    );
}

/// The bundled demo (MiniLM captions) served by the edge Worker, driven in Chromium by the same
/// page test as `clipedge serve`'s (`tests/browser/search.mjs`): the Worker serves the page, the
/// API and the images.
#[test]
fn the_demo_page_works_in_chromium_through_the_edge_worker() {
    // The demo index the CLI tests build (same place, same key: built once per target dir).
    let index = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-index");
    build_demo_index(&index, "models/minilm-l6-v2");
    let work = tempfile::tempdir().unwrap();
    let stack = Stack::up_with_model(
        &index,
        &work.path().join("stack"),
        "models/minilm-l6-v2",
        &[],
        &[],
    );
    let artifacts = workspace_root().join("test-artifacts/browser-edge");
    let output = Command::new("node")
        .arg(workspace_root().join("tests/browser/search.mjs"))
        .arg("--url")
        .arg(stack.url())
        .arg("--out")
        .arg(&artifacts)
        .output()
        .expect("run node (scripts/test.sh installs nodejs, chromium and playwright-core)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "browser test against the Worker failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(artifacts.join("search.png").is_file());
}

/// The deployment's way of reading: the Worker takes the index and the model through an R2
/// binding (wrangler's local R2) instead of presigned S3 GETs, and answers the same. The
/// isolate's embedding LRU is off here, so a repeated text must come from the data centre's
/// Cache API layer (what a cold isolate meets), with the same answer and no encode.
#[test]
fn the_edge_worker_reads_through_an_r2_binding() {
    let runtime = runtime();
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    build_demo_index(&index, "models/tiny-clip");
    // An index with a near-duplicate pair and LAION's NSFW column, as a second named index.
    let flagged = work.path().join("flagged");
    let item_0 = runtime.block_on(build_flagged_index(&flagged));
    let stack = Stack::up_with_model(
        &index,
        &work.path().join("stack"),
        "models/tiny-clip",
        &["CLIPEDGE_EMBED_CACHE_ENTRIES=0"],
        &[
            "--r2",
            "--conformance",
            "--extra-index",
            &format!("flagged={}", flagged.display()),
        ],
    );
    let edge = stack.url().to_string();
    assert_object_source_conforms(&runtime, &edge);
    let embedded = EmbeddedServer::start(&index, "models/tiny-clip");
    let health = call(&runtime, format!("{edge}/v1/health"), None);
    assert_eq!(health.status, 200, "{}", health.body);
    for (query, tolerance) in [
        (json!({"text": "a penguin", "k": 10}), 1e-4),
        (json!({"id": 5, "k": 10}), 0.0),
    ] {
        let from_edge = search(&runtime, &edge, &query);
        assert!(
            from_edge.server_timing.contains("scan"),
            "{}",
            from_edge.server_timing
        );
        assert_same_results(
            &from_edge,
            &search(&runtime, &embedded.url, &query),
            tolerance,
            &format!("r2 {query}"),
        );
    }

    // "a penguin" again, with extra whitespace: the Cache API answers, the encoder does not run.
    let query = json!({"text": "  a   penguin ", "k": 10});
    let repeated = search(&runtime, &edge, &query);
    assert!(
        repeated.server_timing.contains("encode-cache;desc=edge"),
        "{}",
        repeated.server_timing
    );
    assert!(
        !repeated.server_timing.contains("tokens;desc="),
        "{}",
        repeated.server_timing
    );
    assert_same_results(
        &repeated,
        &search(&runtime, &embedded.url, &query),
        1e-4,
        "from the edge cache",
    );
    // Another text is encoded, not confused with a cached one.
    let other = search(&runtime, &edge, &json!({"text": "a red apple", "k": 10}));
    assert!(
        other.server_timing.contains("tokens;desc=")
            && !other.server_timing.contains("encode-cache"),
        "{}",
        other.server_timing
    );

    let item = call(&runtime, format!("{edge}/v1/items/5"), None);
    assert_eq!(
        item.body,
        call(&runtime, format!("{}/v1/items/5", embedded.url), None).body
    );

    // Near-duplicate removal (the Worker reads the stored vectors) and the NSFW filter (it
    // reads the records) at the edge, as on serve.
    runtime.block_on(check_flagged_index(&edge, "flagged", &item_0));
}

/// A fresh isolate takes many first requests at once, as a public site's does: distinct texts,
/// six in flight (the browser's and the Worker's connection limit), `CURRENT` re-read on every
/// request. Every request must answer 200 with results — none may use, or wait on, I/O that
/// another request started (workerd answers that with "Cannot perform I/O on behalf of a
/// different request", or cancels the waiter as hung) — and the model must load once.
#[test]
fn concurrent_first_requests_in_a_fresh_isolate_all_answer() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    build_demo_index(&index, "models/tiny-clip");
    let stack = Stack::up(
        &index,
        &work.path().join("stack"),
        &["CLIPEDGE_CURRENT_TTL_MS=0"],
    );
    let edge = stack.url().to_string();
    let words = [
        "penguin", "guitar", "apple", "house", "tree", "car", "cat", "dog", "boat", "flower",
        "bird", "clock", "star", "moon", "fish", "book", "chair", "lamp", "train", "horse", "hat",
        "shoe", "cup", "key", "bell", "bread", "drum", "kite", "leaf", "rocket",
    ];
    let queries: Vec<Value> = (0..60)
        .map(|index| {
            let text = format!(
                "a {} next to a {}",
                words[index % words.len()],
                words[(index * 7 + 3) % words.len()]
            );
            // Some health and vector requests in the mix: they need the generation, not the model.
            match index % 10 {
                4 => Value::Null,
                9 => json!({"vector": vec![0.25f32; 16], "k": 5}),
                _ => json!({"text": text, "k": 10}),
            }
        })
        .collect();
    let answers: Vec<(Value, Answer)> = runtime.block_on(async {
        use futures::StreamExt;
        let client = reqwest::Client::new();
        futures::stream::iter(queries.into_iter().map(|query| {
            let client = client.clone();
            let edge = edge.clone();
            async move {
                let answer = if query.is_null() {
                    call_with(&client, format!("{edge}/v1/health"), None).await
                } else {
                    call_with(
                        &client,
                        format!("{edge}/v1/search"),
                        Some(query.to_string()),
                    )
                    .await
                };
                (query, answer)
            }
        }))
        .buffer_unordered(6)
        .collect()
        .await
    });
    let failures: Vec<String> = answers
        .iter()
        .filter(|(_, answer)| answer.status != 200)
        .map(|(query, answer)| format!("{query} → {} {}", answer.status, answer.body))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} concurrent first requests failed:\n{}",
        failures.len(),
        answers.len(),
        failures.join("\n")
    );
    for (query, answer) in &answers {
        if !query.is_null() {
            assert!(
                !answer.body["results"].as_array().unwrap().is_empty(),
                "{query}: {}",
                answer.body
            );
        }
    }
    let model_builds = answers
        .iter()
        .filter(|(_, answer)| answer.server_timing.contains("model-build"))
        .count();
    assert_eq!(model_builds, 1, "the model must be built once per isolate");
}

/// One call with extra request headers: status, the response's headers and its JSON body.
fn call_headers(
    runtime: &tokio::runtime::Runtime,
    url: String,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let answer = runtime.block_on(call_with_headers(
        &client,
        url,
        body.map(Value::to_string),
        headers,
    ));
    (answer.status, answer.headers, answer.body)
}

/// The public-API front in workerd (mixed mode): a key from the hashed key table gets its
/// tier's limit, a wrong key 403, a malformed header 401; anonymous callers are served until
/// the anonymous tier's rate-limit binding (wrangler dev's simulation) answers 429 with
/// `Retry-After`; health stays open; CORS echoes only the allowed origin; every metered answer
/// leaves one usage line (key name and hash prefix, never the key or the query text) that
/// `scripts/usage_report.py` sums. Then keyed mode: no key is 401 `missing_api_key`.
#[test]
fn keys_rate_limits_and_usage_at_the_edge() {
    let runtime = runtime();
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    build_demo_index(&index, "models/tiny-clip");
    let key = "edge-test-key-7f3a9c";
    let keys = json!([
        {"sha256": clipedge_api::keys::key_hash_hex(key), "name": "acme", "tier": "pro",
         "monthly_quota": 1000}
    ])
    .to_string();
    let secret = format!("CLIPEDGE_API_KEYS={keys}");
    let stack = Stack::up_with_model(
        &index,
        &work.path().join("stack"),
        "models/tiny-clip",
        &[
            "CLIPEDGE_AUTH_MODE=mixed",
            "CLIPEDGE_TIER_LIMITS=anonymous=RL_ANON/60,pro=RL_PRO/60",
            "CLIPEDGE_CORS_ORIGINS=https://app.example.com",
            "CLIPEDGE_USAGE_DATASET=USAGE",
        ],
        &[
            "--secret",
            &secret,
            "--ratelimit",
            "RL_ANON=3/60",
            "--ratelimit",
            "RL_PRO=100/60",
            "--usage-dataset",
            "USAGE",
            // The Worker's console.log lines (the usage records) into logs/wrangler.log.
            "--wrangler-log-level",
            "log",
        ],
    );
    let edge = stack.url().to_string();
    let search_url = format!("{edge}/v1/search");
    let query = json!({"text": "a penguin on the beach", "k": 5});
    let bearer = format!("Bearer {key}");

    // Health (the local stack polled it many times already) and the page are not limited.
    for _ in 0..5 {
        let (status, _, body) = call_headers(&runtime, format!("{edge}/v1/health"), None, &[]);
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, _) = call_headers(&runtime, format!("{edge}/"), None, &[]);
    assert_eq!(status, 200);

    let (status, headers, body) = call_headers(
        &runtime,
        search_url.clone(),
        Some(&query),
        &[
            ("authorization", bearer.as_str()),
            ("origin", "https://app.example.com"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(!body["results"].as_array().unwrap().is_empty(), "{body}");
    assert_eq!(
        headers["access-control-allow-origin"], "https://app.example.com",
        "an allowed origin is echoed"
    );
    let (_, headers, _) = call_headers(
        &runtime,
        search_url.clone(),
        Some(&query),
        &[
            ("authorization", bearer.as_str()),
            ("origin", "https://evil.example"),
        ],
    );
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "another origin gets no CORS grant"
    );

    let (status, _, body) = call_headers(
        &runtime,
        search_url.clone(),
        Some(&query),
        &[("authorization", "Bearer not-a-key")],
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, _, body) = call_headers(
        &runtime,
        search_url.clone(),
        Some(&query),
        &[("authorization", key)],
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "missing_api_key");

    // Anonymous: the anonymous tier allows 3 a minute from this address. (Were the simulated
    // window to roll over mid-loop, a few more would pass: at most two windows' worth.)
    let mut anonymous_served = 0;
    let mut refused = None;
    for _ in 0..10 {
        let (status, headers, body) = call_headers(&runtime, search_url.clone(), Some(&query), &[]);
        match status {
            200 => anonymous_served += 1,
            429 => {
                refused = Some((headers, body));
                break;
            }
            other => panic!("anonymous search answered {other}: {body}"),
        }
    }
    let (headers, body) = refused.expect("the anonymous tier's limit answers 429");
    assert!(
        (3..=6).contains(&anonymous_served),
        "{anonymous_served} served before the limit"
    );
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(headers["retry-after"], "60");
    // The key's own limit is separate: still served.
    let (status, _, body) = call_headers(
        &runtime,
        search_url.clone(),
        Some(&query),
        &[("authorization", bearer.as_str())],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call_headers(
        &runtime,
        format!("{edge}/v1/items/3"),
        None,
        &[("authorization", bearer.as_str())],
    );
    assert_eq!(status, 200, "{body}");

    // Usage: 3 keyed searches + 1 item lookup for acme, the answered anonymous searches (refused
    // requests are not metered).
    let expected_lines = 4 + anonymous_served;
    let log_path = stack.state.join("logs/wrangler.log");
    let mut usage = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        usage = log
            .lines()
            .filter(|line| line.contains(r#""event":"clipedge_usage""#))
            .map(str::to_string)
            .collect();
        if usage.len() >= expected_lines {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(usage.len(), expected_lines, "{usage:#?}");
    for line in &usage {
        assert!(!line.contains(key), "a usage line holds the key: {line}");
        assert!(
            !line.contains("penguin"),
            "a usage line holds the query: {line}"
        );
    }
    let keyed: Value = usage
        .iter()
        .map(|line| serde_json::from_str::<Value>(&line[line.find('{').unwrap()..]).unwrap())
        .find(|record| record["key"] == "acme" && record["route"] == "search")
        .unwrap();
    assert_eq!(keyed["tier"], "pro");
    assert_eq!(
        keyed["index"], "local",
        "the default index of the stack: {keyed}"
    );
    assert_eq!(keyed["queries"], 1);
    assert!(keyed["scanner_calls"].as_u64().unwrap() >= 1, "{keyed}");
    assert!(keyed["gets"].as_u64().unwrap() >= 1, "{keyed}");
    assert!(keyed["bytes"].as_u64().unwrap() > 0, "{keyed}");
    assert!(clipedge_api::keys::key_hash_hex(key).starts_with(keyed["key_id"].as_str().unwrap()));

    let report = Command::new("python3")
        .arg(workspace_root().join("scripts/usage_report.py"))
        .args(["--month", "all", "--json"])
        .arg(&log_path)
        .output()
        .expect("run scripts/usage_report.py");
    assert!(report.status.success(), "{report:?}");
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["keys"]["acme"]["queries"], 3, "{report}");
    assert_eq!(report["keys"]["acme"]["requests"], 4, "{report}");
    assert_eq!(
        report["keys"]["anonymous"]["queries"], anonymous_served,
        "{report}"
    );
    drop(stack);

    // Keyed mode: no anonymous access at all.
    let keyed_stack = Stack::up_with_model(
        &index,
        &work.path().join("keyed-stack"),
        "models/tiny-clip",
        &["CLIPEDGE_AUTH_MODE=keyed"],
        &["--secret", &secret],
    );
    let keyed_url = format!("{}/v1/search", keyed_stack.url());
    let (status, headers, body) = call_headers(
        &runtime,
        keyed_url.clone(),
        Some(&query),
        &[("origin", "https://app.example.com")],
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "missing_api_key");
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "keyed mode grants no origin unless CLIPEDGE_CORS_ORIGINS names it"
    );
    let (status, _, body) = call_headers(
        &runtime,
        keyed_url,
        Some(&query),
        &[("authorization", bearer.as_str())],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = call_headers(
        &runtime,
        format!("{}/v1/health", keyed_stack.url()),
        None,
        &[],
    );
    assert_eq!(status, 200, "health stays open in keyed mode");
}
