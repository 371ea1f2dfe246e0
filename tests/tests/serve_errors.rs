//! `clipedge serve` refuses bad searches with the documented status and error code: the same
//! table (`clipedge_tests::api_cases`) that `edge_worker.rs` runs against both fronts, here
//! without the Worker, so every test run checks the embedded front.

use clipedge_format::CurrentPointer;
use clipedge_tests::api_cases::{
    bad_searches, build_demo_index, build_flagged_index, check_clip_retrieval_front,
    check_flagged_index, check_paging, check_several_indexes, list_at_shard_offset,
    run_clip_client, EmbeddedServer,
};

#[test]
fn serve_refuses_bad_searches_as_documented() {
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    build_demo_index(&index, "models/tiny-clip");
    let server = EmbeddedServer::start(&index, "models/tiny-clip");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    for case in bad_searches() {
        let (status, body) = runtime.block_on(async {
            let response = client
                .post(format!("{}/v1/search", server.url))
                .header("content-type", "application/json")
                .body(case.body.clone())
                .send()
                .await
                .expect("http call");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        });
        let body: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{}: not JSON: {body}", case.what));
        assert_eq!(status, case.status, "{}: {body}", case.what);
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.what);
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{}: {body}",
            case.what
        );
    }
}

/// clip-retrieval's endpoints on `clipedge serve`: the shapes `ClipClient` expects, the same
/// search as `/v1`, and 4xx (never a 500) for what `clip_back` answers with a traceback.
#[test]
fn serve_answers_clip_retrieval_clients() {
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("demo-index");
    build_demo_index(&index, "models/tiny-clip");
    let server = EmbeddedServer::start(&index, "models/tiny-clip");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = runtime.block_on(check_clip_retrieval_front(&server.url));
    assert_eq!(name, "demo-index", "named after the index directory");
    runtime.block_on(check_paging(&server.url));
    run_clip_client(&server.url, &name);
}

/// Flags that read the index: near-duplicate removal on the stored vectors and the safety
/// filter on the catalog's `NSFW` column, by `/v1` and by clip-retrieval's keys, on an index
/// with a near-duplicate pair and the column.
#[test]
fn serve_removes_near_duplicates_and_filters_on_the_nsfw_column() {
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("flagged");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let item_0 = runtime.block_on(build_flagged_index(&index));
    let server = EmbeddedServer::start(&index, "models/tiny-clip");
    runtime.block_on(check_flagged_index(&server.url, "flagged", &item_0));
}

/// `clipedge serve --index NAME=DIR` twice: two engines under two names, selected by
/// `indice_name` (and `/v1/search`'s `index`), the first the default; an unknown name is 404
/// `unknown_index` naming both; clip-retrieval's own client reaches the second.
#[test]
fn serve_answers_for_several_named_indexes() {
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("demo-index");
    build_demo_index(&index, "models/tiny-clip");
    let server = EmbeddedServer::start_args(
        "models/tiny-clip",
        &[
            "--index".into(),
            format!("first={}", index.display()).into(),
            "--index".into(),
            format!("second={}", index.display()).into(),
        ],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(check_several_indexes(
        &server.url,
        &["first", "second"],
        true,
    ));
    run_clip_client(&server.url, "second");
}

/// `clipedge serve --api-key`: the query routes need `Authorization: Bearer KEY` (401 without,
/// 403 with another key, the `/v1` error body either way); health and the page stay open.
#[test]
fn serve_with_an_api_key_refuses_other_callers() {
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    build_demo_index(&index, "models/tiny-clip");
    let server = EmbeddedServer::start_with(
        &index,
        "models/tiny-clip",
        &[
            "--api-key",
            "serve-test-key",
            "--max-concurrent-queries",
            "2",
        ],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    // Every call comes from a page on another origin: with a key set and no --cors-origins,
    // no origin is granted.
    let call = |method: &str, path: &str, key: Option<&str>| {
        let mut request = match method {
            "POST" => client
                .post(format!("{}{path}", server.url))
                .header("content-type", "application/json")
                .body(r#"{"text": "a penguin", "k": 3}"#),
            _ => client.get(format!("{}{path}", server.url)),
        };
        request = request.header("origin", "https://app.example.com");
        if let Some(key) = key {
            request = request.header("authorization", key);
        }
        runtime.block_on(async {
            let response = request.send().await.expect("http call");
            let status = response.status().as_u16();
            assert!(
                response
                    .headers()
                    .get("access-control-allow-origin")
                    .is_none(),
                "{path}: a keyed server grants no origin by default"
            );
            (status, response.text().await.unwrap())
        })
    };
    for (method, path) in [("POST", "/v1/search"), ("GET", "/v1/items/1")] {
        let (status, body) = call(method, path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains(r#""code":"missing_api_key""#), "{body}");
        let (status, body) = call(method, path, Some("Bearer another-key"));
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains(r#""code":"invalid_api_key""#), "{body}");
        let (status, body) = call(method, path, Some("Bearer serve-test-key"));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = call("POST", "/knn-service", None);
    assert_eq!(status, 401);
    for open in ["/v1/health", "/", "/indices-list"] {
        let (status, body) = call("GET", open, None);
        assert_eq!(status, 200, "{open} stays open: {body}");
    }
}

/// A list that fails verification: `clipedge serve` answers with the other lists, flagged
/// `partial` and naming the list, as the edge Worker does (one root, `clipedge_search`).
#[test]
fn serve_answers_partial_naming_a_corrupt_list() {
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    build_demo_index(&index, "models/tiny-clip");
    let generation = CurrentPointer::from_json(&std::fs::read(index.join("CURRENT")).unwrap())
        .unwrap()
        .generation;
    let shard = index
        .join("generations")
        .join(&generation)
        .join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    let flipped_offset = bytes.len() as u64 / 2;
    let broken_list = list_at_shard_offset(&index, &generation, flipped_offset);
    bytes[flipped_offset as usize] ^= 0x5a;
    std::fs::write(&shard, &bytes).unwrap();

    let server = EmbeddedServer::start(&index, "models/tiny-clip");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/search", server.url))
            .body(r#"{"text": "a penguin", "k": 10, "nprobe": 4096}"#)
            .send()
            .await
            .expect("http call");
        let status = response.status().as_u16();
        let text = response.text().await.expect("an answer body");
        let body: serde_json::Value = serde_json::from_str(&text).expect("a JSON answer");
        (status, body)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["partial"], true, "{body}");
    assert_eq!(
        body["failed_lists"],
        serde_json::json!([broken_list]),
        "{body}"
    );
    assert_eq!(
        body["results"].as_array().unwrap().len(),
        10,
        "the other lists still answer: {body}"
    );
}
