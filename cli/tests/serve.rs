//! `clipedge serve` over HTTP on 127.0.0.1: the demo index built with the real MiniLM model,
//! real requests, the documented answers to bad input.

mod support;

use serde_json::json;
use support::{demo_index, request, search, Server};

fn error_code(response: &support::Response) -> String {
    response.json()["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {}", String::from_utf8_lossy(&response.body)))
        .to_string()
}

fn ids(response: &support::Response) -> Vec<u64> {
    response.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn serves_the_page_health_and_media() {
    let server = Server::start(&demo_index());
    let page = request(server.port, "GET", "/", None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page.body).contains("/app.js"));
    for asset in ["/app.js", "/style.css", "/favicon.svg"] {
        assert_eq!(
            request(server.port, "GET", asset, None).status,
            200,
            "{asset}"
        );
    }
    let health = request(server.port, "GET", "/v1/health", None).json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["dim"], 384);
    assert!(health["count"].as_u64().unwrap() > 1000);
    assert_eq!(health["id_search"], true);
    assert!(health["label"]
        .as_str()
        .unwrap()
        .contains("caption embeddings"));

    let missing = request(server.port, "GET", "/nothing-here", None);
    assert_eq!(
        (missing.status, error_code(&missing).as_str()),
        (404, "not_found")
    );
    let wrong_method = request(server.port, "GET", "/v1/search", None);
    assert_eq!(
        (wrong_method.status, error_code(&wrong_method).as_str()),
        (405, "method_not_allowed")
    );
    let escape = request(server.port, "GET", "/media/../CURRENT", None);
    assert_eq!(escape.status, 404);
}

#[test]
fn text_search_returns_captions_images_timings_and_stats() {
    let server = Server::start(&demo_index());
    let response = search(server.port, &json!({"text": "a horse", "k": 10}));
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let timing = response
        .header("server-timing")
        .expect("server-timing header");
    for stage in ["encode;dur=", "probe;dur=", "scan;dur=", "merge;dur="] {
        assert!(timing.contains(stage), "{timing}");
    }
    let body = response.json();
    assert_eq!(body["partial"], false);
    assert_eq!(body["failed_lists"], json!([]));
    assert!(body["stats"]["gets"].as_u64().unwrap() >= 1, "{body}");
    assert!(body["stats"]["bytes"].as_u64().unwrap() > 0, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|pair| pair[0] >= pair[1]),
        "{scores:?}"
    );
    for result in results {
        assert!(!result["caption"].as_str().unwrap().is_empty());
        let url = result["url"].as_str().unwrap();
        assert!(url.starts_with("/media/"), "{url}");
    }
    let image = request(
        server.port,
        "GET",
        results[0]["url"].as_str().unwrap(),
        None,
    );
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), Some("image/webp"));
    assert_eq!(&image.body[..4], b"RIFF");
    // Any Unicode is accepted (MiniLM is English-only; a multilingual tower would rank it well).
    let korean = search(server.port, &json!({"text": "해변을 달리는 개", "k": 5}));
    assert_eq!(korean.status, 200);
    assert_eq!(ids(&korean).len(), 5);
}

#[test]
fn bad_inputs_get_the_documented_4xx() {
    let server = Server::start(&demo_index());
    let long_text = "word ".repeat(250);
    let cases = [
        (json!({"text": ""}), 400, "empty_text"),
        (json!({"text": "   "}), 400, "empty_text"),
        (json!({"text": long_text}), 400, "text_too_long"),
        (json!({"text": "cat", "k": 0}), 400, "k_out_of_range"),
        (json!({"text": "cat", "k": 10_001}), 400, "k_out_of_range"),
        (
            json!({"text": "cat", "nprobe": 0}),
            400,
            "nprobe_out_of_range",
        ),
        (
            json!({"text": "cat", "rerank": 1000}),
            400,
            "rerank_out_of_range",
        ),
        (json!({"vector": [0.5, 0.5]}), 400, "vector_dimension"),
        (json!({"id": 987_654_321u64}), 404, "unknown_id"),
        (json!({"text": "cat", "id": 1}), 400, "invalid_query"),
        (json!({}), 400, "invalid_query"),
        (json!({"text": "cat", "colour": "red"}), 400, "invalid_json"),
        (json!({"text": 42}), 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let response = search(server.port, &body);
        assert_eq!(response.status, status, "{body}");
        assert_eq!(error_code(&response), code, "{body}");
        assert!(!response.json()["error"]["message"]
            .as_str()
            .unwrap()
            .is_empty());
    }
    let garbage = request(server.port, "POST", "/v1/search", Some(b"{not json"));
    assert_eq!(
        (garbage.status, error_code(&garbage).as_str()),
        (400, "invalid_json")
    );
    let huge = format!(r#"{{"text":"{}"}}"#, "a".repeat(100_000));
    let huge = request(server.port, "POST", "/v1/search", Some(huge.as_bytes()));
    assert_eq!(
        (huge.status, error_code(&huge).as_str()),
        (413, "payload_too_large")
    );
    let bad_item = request(server.port, "GET", "/v1/items/abc", None);
    assert_eq!(
        (bad_item.status, error_code(&bad_item).as_str()),
        (404, "unknown_id")
    );
    // The server is still answering after all of that.
    assert_eq!(search(server.port, &json!({"text": "cat"})).status, 200);
}

/// Two items with the same image bytes (the dataset holds such pairs: one picture filed under
/// two categories).
fn duplicate_pair() -> (u64, u64) {
    let items = std::fs::read_to_string(support::repo_root().join("demo/items.jsonl")).unwrap();
    let mut first_by_image = std::collections::HashMap::new();
    for line in items.lines() {
        let item: serde_json::Value = serde_json::from_str(line).unwrap();
        let image = item["image"].as_str().unwrap().to_string();
        let id = item["id"].as_u64().unwrap();
        if let Some(first) = first_by_image.insert(image, id) {
            return (first, id);
        }
    }
    panic!("the demo dataset has no duplicate images");
}

#[test]
fn more_like_this_and_dedup_by_content() {
    let server = Server::start(&demo_index());
    let (first, second) = duplicate_pair();
    let item = request(server.port, "GET", &format!("/v1/items/{first}"), None);
    assert_eq!(item.status, 200);
    assert!(item.json()["url"].as_str().unwrap().starts_with("/media/"));

    let without = search(server.port, &json!({"id": first, "k": 10, "dedup": false}));
    assert_eq!(
        without.status,
        200,
        "{}",
        String::from_utf8_lossy(&without.body)
    );
    let without_ids = ids(&without);
    assert!(without_ids.contains(&first), "{without_ids:?}");
    assert!(without_ids.contains(&second), "{without_ids:?}");
    let top = &without.json()["results"][0];
    assert!(top["score"].as_f64().unwrap() > 0.99, "{top}");

    let with = search(server.port, &json!({"id": first, "k": 10}));
    let with_ids = ids(&with);
    assert_eq!(with_ids.len(), 10);
    let kept = with_ids
        .iter()
        .filter(|id| **id == first || **id == second)
        .count();
    assert_eq!(
        kept, 1,
        "dedup keeps one of {first} and {second}: {with_ids:?}"
    );
    let urls: Vec<String> = with.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["url"].as_str().unwrap().to_string())
        .collect();
    let distinct: std::collections::HashSet<_> = urls.iter().collect();
    assert_eq!(
        distinct.len(),
        urls.len(),
        "dedup left a repeated image: {urls:?}"
    );

    // A raw vector of the right dimension is searched as is.
    let mut vector = vec![0f32; 384];
    vector[0] = 1.0;
    let by_vector = search(server.port, &json!({"vector": vector, "k": 3}));
    assert_eq!(by_vector.status, 200);
    assert_eq!(ids(&by_vector).len(), 3);
}

#[test]
fn refuses_an_index_built_with_another_model() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let index = work.path().join("index");
    let clipedge = env!("CARGO_BIN_EXE_clipedge");
    let status = std::process::Command::new(clipedge)
        .args([
            "datagen",
            "--n",
            "600",
            "--dim",
            "384",
            "--queries",
            "2",
            "--k",
            "1",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status = std::process::Command::new(clipedge)
        .args([
            "build",
            "--nlist",
            "4",
            "--pq-m",
            "8",
            "--model-id",
            "other-model",
        ])
        .args(["--model-fingerprint", "sha256:0000"])
        .arg("--vectors")
        .arg(data.join("base.fvecs"))
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let error = match Server::start_with(&index, &support::model_dir()) {
        Ok(server) => panic!("served a foreign index on port {}", server.port),
        Err(error) => error,
    };
    assert!(error.contains("fingerprint"), "{error}");
    assert!(error.contains("other-model"), "{error}");
}

/// A stand-in for an M-CLIP package: the demo model's files under another name, trained (its
/// card says) into the index model's space, and not normalising its output — so its answers
/// rank alike but score differently, which shows which tower encoded a query.
fn multilingual_copy(into: &std::path::Path) -> std::path::PathBuf {
    let source = support::model_dir();
    let package = into.join("multilingual");
    std::fs::create_dir_all(&package).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, package.join(path.file_name().unwrap())).unwrap();
    }
    let card = std::fs::read_to_string(source.join("model.toml")).unwrap();
    let fingerprint = card
        .lines()
        .find_map(|line| line.strip_prefix("fingerprint = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("the card's fingerprint")
        .to_string();
    let card = card
        .replace("name = \"minilm-l6-v2\"", "name = \"test-multilingual\"")
        .replace("normalize = true", "normalize = false");
    std::fs::write(
        package.join("model.toml"),
        format!("{card}aligned_to = \"{fingerprint}\"\n"),
    )
    .unwrap();
    package
}

#[test]
fn a_multilingual_tower_answers_use_mclip_and_multilingual_queries() {
    let work = tempfile::tempdir().unwrap();
    let package = multilingual_copy(work.path());
    let server = Server::start_with_args(
        &demo_index(),
        &support::model_dir(),
        &["--multilingual-model".as_ref(), package.as_os_str()],
    )
    .expect("clipedge serve starts with a multilingual tower");
    let scores = |response: &support::Response| -> Vec<f64> {
        response.json()["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|result| result["score"].as_f64().unwrap())
            .collect()
    };
    let plain = search(server.port, &json!({"text": "a dog on the beach", "k": 5}));
    let multilingual = search(
        server.port,
        &json!({"text": "a dog on the beach", "k": 5, "multilingual": true}),
    );
    assert_eq!((plain.status, multilingual.status), (200, 200));
    assert_eq!(ids(&plain), ids(&multilingual));
    let (plain_scores, multilingual_scores) = (scores(&plain), scores(&multilingual));
    assert!(
        (plain_scores[0] - multilingual_scores[0]).abs() > 1e-3,
        "the multilingual tower did not encode it: {plain_scores:?} vs {multilingual_scores:?}"
    );

    let knn = |use_mclip: bool| {
        let body = json!({
            "text": "a dog on the beach", "image": null, "image_url": null,
            "embedding_input": null, "modality": "image", "num_images": 5,
            "indice_name": "demo-index", "num_result_ids": 5, "use_mclip": use_mclip,
            "deduplicate": false, "use_safety_model": false,
            "use_violence_detector": false, "aesthetic_score": "", "aesthetic_weight": "",
        });
        request(
            server.port,
            "POST",
            "/knn-service",
            Some(body.to_string().as_bytes()),
        )
    };
    let with_mclip = knn(true);
    assert_eq!(
        with_mclip.status,
        200,
        "{}",
        String::from_utf8_lossy(&with_mclip.body)
    );
    let first = |response: &support::Response| response.json()[0]["similarity"].as_f64().unwrap();
    assert!((first(&with_mclip) - multilingual_scores[0]).abs() < 1e-4);
    assert!((first(&knn(false)) - plain_scores[0]).abs() < 1e-4);
}
