//! `clipedge serve` refuses bad searches with the documented status and error code: the same
//! table (`clipedge_tests::api_cases`) that `edge_worker.rs` runs against both fronts, here
//! without the Worker, so every test run checks the embedded front.

use clipedge_tests::api_cases::{
    bad_searches, build_demo_index, check_clip_retrieval_front, run_clip_client, EmbeddedServer,
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
    run_clip_client(&server.url, &name);
}
