//! Requests both `/v1` fronts (`clipedge serve` and the edge Worker) must refuse the same way:
//! one table, run against each front by the tests, so their answers cannot drift apart.

use crate::lambda_harness::{tool, workspace_binary, workspace_root};

/// A bad `POST /v1/search` body with the status and error code every front answers it with.
pub struct BadSearch {
    pub what: &'static str,
    pub body: String,
    pub status: u16,
    pub code: &'static str,
}

fn bad(what: &'static str, body: impl Into<String>, status: u16, code: &'static str) -> BadSearch {
    BadSearch {
        what,
        body: body.into(),
        status,
        code,
    }
}

/// The table, for any index built from the demo dataset (4,083 items, dimension > 2) and a
/// text model with a tokenizer that drops control characters (MiniLM, tiny-clip).
pub fn bad_searches() -> Vec<BadSearch> {
    let json = |value: serde_json::Value| value.to_string();
    vec![
        bad(
            "empty text",
            json(serde_json::json!({"text": ""})),
            400,
            "empty_text",
        ),
        bad(
            "only whitespace",
            json(serde_json::json!({"text": "  \n "})),
            400,
            "empty_text",
        ),
        // Passes validation; the tokenizer finds no token in it, so the encoder refuses it.
        bad(
            "no known tokens",
            json(serde_json::json!({"text": "\u{1}\u{7f}"})),
            400,
            "empty_text",
        ),
        bad(
            "text too long",
            json(serde_json::json!({"text": "a".repeat(1001)})),
            400,
            "text_too_long",
        ),
        bad(
            "k 0",
            json(serde_json::json!({"text": "dog", "k": 0})),
            400,
            "k_out_of_range",
        ),
        bad(
            "k 10001",
            json(serde_json::json!({"text": "dog", "k": 10_001})),
            400,
            "k_out_of_range",
        ),
        bad(
            "page past the window",
            json(serde_json::json!({"text": "dog", "k": 100, "offset": 9_901})),
            400,
            "offset_out_of_range",
        ),
        bad(
            "rerank too deep for k",
            json(serde_json::json!({"text": "dog", "k": 10_000, "rerank": 10})),
            400,
            "rerank_out_of_range",
        ),
        bad(
            "unknown dedup mode",
            json(serde_json::json!({"text": "dog", "dedup": "fuzzy"})),
            400,
            "invalid_dedup",
        ),
        bad(
            "nprobe 0",
            json(serde_json::json!({"text": "dog", "nprobe": 0})),
            400,
            "nprobe_out_of_range",
        ),
        bad(
            "rerank 51",
            json(serde_json::json!({"text": "dog", "rerank": 51})),
            400,
            "rerank_out_of_range",
        ),
        bad(
            "wrong dimension",
            json(serde_json::json!({"vector": [1.0, 2.0]})),
            400,
            "vector_dimension",
        ),
        bad(
            "unknown id",
            json(serde_json::json!({"id": 99_999_999})),
            404,
            "unknown_id",
        ),
        bad(
            "text and id",
            json(serde_json::json!({"text": "dog", "id": 3})),
            400,
            "invalid_query",
        ),
        bad("nothing to search", "{}", 400, "invalid_query"),
        bad(
            "unknown field",
            json(serde_json::json!({"text": "dog", "colour": "red"})),
            400,
            "invalid_json",
        ),
        bad("not json", "{not json", 400, "invalid_json"),
        bad(
            "body too large",
            format!("{{\"text\": \"{}\"}}", "x".repeat(70_000)),
            413,
            "payload_too_large",
        ),
    ]
}

/// `clipedge serve` on a free port with `model`, killed when dropped.
pub struct EmbeddedServer {
    child: std::process::Child,
    pub url: String,
}

impl EmbeddedServer {
    pub fn start(index: &std::path::Path, model: &str) -> EmbeddedServer {
        EmbeddedServer::start_with(index, model, &[])
    }

    /// [`EmbeddedServer::start`] with more `clipedge serve` flags.
    pub fn start_with(index: &std::path::Path, model: &str, flags: &[&str]) -> EmbeddedServer {
        let mut args = vec![std::ffi::OsString::from("--index"), index.into()];
        args.extend(flags.iter().map(std::ffi::OsString::from));
        EmbeddedServer::start_args(model, &args)
    }

    /// `clipedge serve` with these flags after its model and address (`--index` among them).
    pub fn start_args(model: &str, args: &[std::ffi::OsString]) -> EmbeddedServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(clipedge())
            .current_dir(workspace_root())
            .args(["serve", "--model", model, "--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start clipedge serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read where serve listens");
        let listening: serde_json::Value =
            serde_json::from_str(&line).expect("serve prints where it listens");
        EmbeddedServer {
            url: listening["listening"]
                .as_str()
                .expect("a listening URL")
                .to_string(),
            child,
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `clipedge` binary of this workspace, built into the test's target directory.
pub fn clipedge() -> std::path::PathBuf {
    workspace_binary("clipedge", "clipedge")
}

/// The demo dataset embedded with `model` into an index at `dir` (`clipedge demo --build-only`:
/// cached by dataset and model, so a second call with the same directory is quick).
pub fn build_demo_index(dir: &std::path::Path, model: &str) {
    let built = std::process::Command::new(clipedge())
        .current_dir(workspace_root())
        .args(["demo", "--build-only", "--model", model, "--dir"])
        .arg(dir)
        .output()
        .expect("run clipedge demo --build-only");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// The keys `ClipClient` (clip-retrieval's client) always sends, `null` for unused inputs, with
/// its defaults: a text search of `indice_name`.
pub fn clip_client_body(indice_name: &str, text: &str, num_images: usize) -> serde_json::Value {
    serde_json::json!({
        "text": text,
        "image": null,
        "image_url": null,
        "embedding_input": null,
        "deduplicate": true,
        "use_safety_model": true,
        "use_violence_detector": true,
        "indice_name": indice_name,
        "use_mclip": false,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": num_images,
        "num_result_ids": num_images,
    })
}

/// Bad `POST /knn-service` bodies for an index served as `indice_name`, with the answer every
/// front gives (where `clip_back` answers a 500 traceback).
pub fn bad_knn_requests(indice_name: &str) -> Vec<BadSearch> {
    let with = |changes: serde_json::Value| {
        let mut body = clip_client_body(indice_name, "a dog", 10);
        for (key, value) in changes.as_object().expect("an object of changes") {
            body[key] = value.clone();
        }
        body.to_string()
    };
    vec![
        bad(
            "no indice_name",
            with(serde_json::json!({"indice_name": null})),
            400,
            "invalid_query",
        ),
        bad(
            "unknown indice_name",
            with(serde_json::json!({"indice_name": "laion5B"})),
            404,
            "unknown_index",
        ),
        bad(
            "no num_images",
            with(serde_json::json!({"num_images": null, "num_result_ids": null})),
            400,
            "invalid_query",
        ),
        bad(
            "num_images 0",
            with(serde_json::json!({"num_images": 0})),
            400,
            "k_out_of_range",
        ),
        bad(
            "num_result_ids past the limit",
            with(serde_json::json!({"num_result_ids": 10_001})),
            400,
            "k_out_of_range",
        ),
        bad(
            "search by image",
            with(serde_json::json!({"text": null, "image": "aGVsbG8="})),
            422,
            "image_search_unsupported",
        ),
        bad(
            "search by image URL",
            with(serde_json::json!({"text": null, "image_url": "https://example.com/a.jpg"})),
            422,
            "image_search_unsupported",
        ),
        bad(
            "nothing to search",
            with(serde_json::json!({"text": null})),
            400,
            "invalid_query",
        ),
        bad(
            "embedding of the wrong dimension",
            with(serde_json::json!({"text": null, "embedding_input": [0.5, 0.5]})),
            400,
            "vector_dimension",
        ),
        bad(
            "use_mclip without a multilingual tower",
            with(serde_json::json!({"use_mclip": true})),
            422,
            "multilingual_unsupported",
        ),
        bad(
            "aesthetic_score out of range",
            with(serde_json::json!({"aesthetic_score": 12})),
            400,
            "invalid_query",
        ),
        bad(
            "num_images not a number",
            with(serde_json::json!({"num_images": "ten"})),
            400,
            "invalid_json",
        ),
        bad("not json", "{not json", 400, "invalid_json"),
    ]
}

async fn post_without_content_type(
    client: &reqwest::Client,
    url: String,
    body: String,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let response = client
        .post(&url)
        .body(body)
        .send()
        .await
        .expect("http call");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url}: not JSON: {text}"));
    (status, headers, json)
}

/// `GET /indices-list` of a front, as JSON.
async fn indices_list(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let text = client
        .get(format!("{base}/indices-list"))
        .send()
        .await
        .expect("indices-list")
        .text()
        .await
        .expect("indices-list body");
    serde_json::from_str(&text).expect("indices-list is JSON")
}

/// Checks a front's clip-retrieval endpoints (`/indices-list`, `/knn-service`, `/metadata`)
/// over any index built from the demo dataset; returns the name of the (default) index it
/// checked.
pub async fn check_clip_retrieval_front(base: &str) -> String {
    let client = reqwest::Client::new();
    let listed = indices_list(&client, base).await;
    // The default index is listed first (`check_several_indexes` checks the others).
    let names = listed.as_array().expect("a list of names");
    assert!(!names.is_empty(), "{listed}");
    let name = names[0].as_str().expect("a name").to_string();

    // What ClipClient sends (no content type), with more ids than images. Without
    // deduplicate: tiny-clip's random-weight embeddings are mostly within cosine 0.94 of each
    // other, so near-duplicate removal would leave a handful (`check_flagged_index` checks it).
    let mut body = clip_client_body(&name, "a dog running on the beach", 5);
    body["num_result_ids"] = serde_json::json!(12);
    body["deduplicate"] = serde_json::json!(false);
    let (status, headers, answer) =
        post_without_content_type(&client, format!("{base}/knn-service"), body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer.as_array().expect("a list of results");
    assert_eq!(results.len(), 12, "{answer}");
    for (position, result) in results.iter().enumerate() {
        assert!(result["id"].is_u64(), "{result}");
        assert!(result["similarity"].is_f64(), "{result}");
        let with_record = position < 5;
        assert_eq!(
            result.get("url").is_some(),
            with_record,
            "{position}: {result}"
        );
        assert_eq!(
            result.get("caption").is_some(),
            with_record,
            "{position}: {result}"
        );
    }
    let similarities: Vec<f64> = results
        .iter()
        .map(|result| result["similarity"].as_f64().unwrap())
        .collect();
    assert!(
        similarities.windows(2).all(|pair| pair[0] >= pair[1]),
        "{similarities:?}"
    );
    let not_applied = headers
        .get("x-clipedge-not-applied")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        not_applied.contains("use_safety_model") && not_applied.contains("aesthetic_score"),
        "{not_applied:?}"
    );

    // The same search through /v1 (ClipClient's safety flag is the safety filter) finds the
    // same items with the same scores.
    let (status, _, v1) = post_without_content_type(
        &client,
        format!("{base}/v1/search"),
        serde_json::json!({"text": "a dog running on the beach", "k": 12, "dedup": "off",
            "safety": true})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v1}");
    let v1_ids: Vec<u64> = v1["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_u64().unwrap())
        .collect();
    let knn_ids: Vec<u64> = results
        .iter()
        .map(|result| result["id"].as_u64().unwrap())
        .collect();
    assert_eq!(knn_ids, v1_ids);
    assert_eq!(results[0]["caption"], v1["results"][0]["caption"]);

    // /metadata answers the records of ids, in the order asked.
    let asked = [knn_ids[1], knn_ids[0]];
    let (status, _, metadata) = post_without_content_type(
        &client,
        format!("{base}/metadata"),
        serde_json::json!({"ids": asked, "indice_name": name}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata[0]["id"], asked[0]);
    assert_eq!(metadata[1]["metadata"]["caption"], results[0]["caption"]);
    assert_eq!(metadata[1]["metadata"]["url"], results[0]["url"]);
    let (status, _, unknown) = post_without_content_type(
        &client,
        format!("{base}/metadata"),
        serde_json::json!({"ids": [99_999_999], "indice_name": name}).to_string(),
    )
    .await;
    assert_eq!(
        (status, &unknown["error"]["code"]),
        (404, &serde_json::json!("unknown_id"))
    );

    // An embedding query, and a large answer: ids past num_images without records.
    let mut body = clip_client_body(&name, "", 3);
    body["text"] = serde_json::Value::Null;
    body["embedding_input"] = serde_json::json!(v1_embedding_probe(&client, base).await);
    body["num_result_ids"] = serde_json::json!(10_000);
    body["deduplicate"] = serde_json::json!(false);
    let (status, _, large) =
        post_without_content_type(&client, format!("{base}/knn-service"), body.to_string()).await;
    assert_eq!(status, 200, "{large}");
    let large = large.as_array().unwrap();
    assert!(large.len() > 12 && large.len() <= 10_000, "{}", large.len());
    assert!(large[2].get("caption").is_some() && large[3].get("caption").is_none());

    for case in bad_knn_requests(&name) {
        let (status, _, body) =
            post_without_content_type(&client, format!("{base}/knn-service"), case.body).await;
        assert_eq!(status, case.status, "{}: {body}", case.what);
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.what);
    }
    let wrong_method = client
        .get(format!("{base}/knn-service"))
        .send()
        .await
        .expect("http call");
    assert_eq!(wrong_method.status().as_u16(), 405);
    name
}

/// Checks a front serving several indexes built from the demo dataset under `names` (the first
/// the default): `/indices-list` lists them in order, `indice_name` and `/v1/search`'s `index`
/// select each (same data: same answers), another index's media are served under
/// `/indexes/NAME/media/…` when `media` is set, and an unknown name is 404 `unknown_index`
/// naming them all.
pub async fn check_several_indexes(base: &str, names: &[&str], media: bool) {
    let client = reqwest::Client::new();
    let listed = indices_list(&client, base).await;
    assert_eq!(listed, serde_json::json!(names));

    let mut answers = Vec::new();
    for (position, name) in names.iter().enumerate() {
        // No near-duplicate removal: tiny-clip's embeddings crowd within cosine 0.94.
        let mut body = clip_client_body(name, "a dog running on the beach", 5);
        body["deduplicate"] = serde_json::json!(false);
        let (status, _, knn) =
            post_without_content_type(&client, format!("{base}/knn-service"), body.to_string())
                .await;
        assert_eq!(status, 200, "{name}: {knn}");
        let results = knn.as_array().expect("a list of results").clone();
        assert_eq!(results.len(), 5, "{name}: {knn}");
        let url = results[0]["url"].as_str().expect("a url").to_string();
        if position == 0 {
            assert!(url.starts_with("/media/"), "{name}: {url}");
        } else {
            assert!(
                url.starts_with(&format!("/indexes/{name}/media/")),
                "{name}: {url}"
            );
        }
        if media {
            let image = client
                .get(format!("{base}{url}"))
                .send()
                .await
                .expect("media");
            assert_eq!(image.status().as_u16(), 200, "{name}: {url}");
        }

        let (status, _, v1) = post_without_content_type(
            &client,
            format!("{base}/v1/search"),
            serde_json::json!({"text": "a dog running on the beach", "k": 5, "index": name})
                .to_string(),
        )
        .await;
        assert_eq!(status, 200, "{name}: {v1}");
        assert_eq!(v1["results"][0]["url"], results[0]["url"], "{name}");

        let (status, _, metadata) = post_without_content_type(
            &client,
            format!("{base}/metadata"),
            serde_json::json!({"ids": [results[0]["id"]], "indice_name": name}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{name}: {metadata}");
        assert_eq!(metadata[0]["metadata"]["url"], results[0]["url"], "{name}");
        answers.push(
            results
                .iter()
                .map(|result| result["id"].as_u64().unwrap())
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "the same data under every name: {answers:?}"
    );

    let quoted: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
    for (route, body) in [
        (
            "knn-service",
            clip_client_body("laion5B", "a dog", 5).to_string(),
        ),
        (
            "metadata",
            serde_json::json!({"ids": [1], "indice_name": "laion5B"}).to_string(),
        ),
        (
            "v1/search",
            serde_json::json!({"text": "a dog", "index": "laion5B"}).to_string(),
        ),
    ] {
        let (status, _, error) =
            post_without_content_type(&client, format!("{base}/{route}"), body).await;
        assert_eq!(status, 404, "{route}: {error}");
        assert_eq!(error["error"]["code"], "unknown_index", "{route}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(&quoted.join(", ")), "{route}: {message}");
    }
    let missing = client
        .get(format!("{base}/indexes/laion5B/media/x.webp"))
        .send()
        .await
        .expect("media of an unknown index");
    assert_eq!(missing.status().as_u16(), 404);
}

/// Checks `/v1` paging on a front over any index built from the demo dataset: pages of one
/// query cut one ranking (consecutive pages equal one page twice their size, a page asked again
/// is the same), the answer names its generation and the next offset, a generation other than
/// the served one is 409 `generation_changed`, an unpaged k of 10,000 answers; without an
/// `NSFW` catalog column the safety filter is answered as not applied.
pub async fn check_paging(base: &str) {
    let client = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        post_without_content_type(&client, format!("{base}/v1/search"), body.to_string())
    };
    let ids = |answer: &serde_json::Value| -> Vec<u64> {
        answer["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|item| item["id"].as_u64().unwrap())
            .collect()
    };
    let query = "a dog running on the beach";
    let (status, _, whole) = post(serde_json::json!({"text": query, "k": 60, "offset": 0})).await;
    assert_eq!(status, 200, "{whole}");
    let generation = whole["generation"]
        .as_str()
        .expect("a generation")
        .to_string();
    assert_eq!(whole["next_offset"], 60, "{}", whole["next_offset"]);
    let mut paged = Vec::new();
    for offset in [0, 20, 40] {
        let (status, _, page) = post(serde_json::json!({"text": query, "k": 20,
            "offset": offset, "generation": generation}))
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["offset"], offset);
        assert_eq!(page["next_offset"], offset + 20);
        assert_eq!(page["generation"], generation.as_str());
        paged.extend(ids(&page));
    }
    assert_eq!(paged, ids(&whole), "pages tile the ranking");
    let (_, _, again) = post(serde_json::json!({"text": query, "k": 20, "offset": 20})).await;
    assert_eq!(
        ids(&again),
        paged[20..40].to_vec(),
        "a page asked again is the same"
    );
    let (status, _, moved) = post(serde_json::json!({"text": query, "k": 20, "offset": 20,
        "generation": "0000000000000000-00000000"}))
    .await;
    assert_eq!(status, 409, "{moved}");
    assert_eq!(moved["error"]["code"], "generation_changed", "{moved}");

    // 10,000 in one answer (the demo index has 4,083 items: all of them, deduplicated).
    let (status, _, large) = post(serde_json::json!({"text": query, "k": 10_000})).await;
    assert_eq!(status, 200, "{large}");
    let large_ids = ids(&large);
    assert!(large_ids.len() > 1_000, "{}", large_ids.len());
    let unique: std::collections::HashSet<u64> = large_ids.iter().copied().collect();
    assert_eq!(unique.len(), large_ids.len());

    // The demo catalog has no NSFW column: nothing is dropped, and the answer says so.
    let (status, headers, unfiltered) =
        post(serde_json::json!({"text": query, "k": 30, "safety": true})).await;
    assert_eq!(status, 200, "{unfiltered}");
    assert_eq!(ids(&unfiltered).len(), 30);
    assert_eq!(unfiltered["not_applied"], serde_json::json!(["safety"]));
    assert_eq!(
        headers
            .get("x-clipedge-not-applied")
            .and_then(|value| value.to_str().ok()),
        Some("safety")
    );
    let (status, _, near) =
        post(serde_json::json!({"text": query, "k": 30, "dedup": "near"})).await;
    assert_eq!(status, 200, "{near}");
    // tiny-clip's embeddings crowd together: near-duplicate removal keeps few, the best first.
    let near_ids = ids(&near);
    assert!(!near_ids.is_empty() && near_ids.len() <= 30, "{near_ids:?}");
    assert_eq!(near_ids[0], ids(&unfiltered)[0]);
}

/// The tiny-clip package's fingerprint (`models/tiny-clip/model.toml`), for indexes built here
/// without the model that `clipedge serve --model models/tiny-clip` must accept.
fn tiny_clip_fingerprint() -> String {
    let card = std::fs::read_to_string(workspace_root().join("models/tiny-clip/model.toml"))
        .expect("read models/tiny-clip/model.toml");
    card.lines()
        .find_map(|line| {
            let value = line.strip_prefix("fingerprint = \"")?;
            Some(value.split('"').next()?.to_string())
        })
        .expect("a fingerprint line")
}

/// Items in [`build_flagged_index`].
pub const FLAGGED_ITEMS: usize = 800;

/// An index for tiny-clip (dimension 16) whose catalog carries LAION's `NSFW` column
/// (`UNLIKELY` on one id in 8, the multiples of 8: the filter drops more than its first
/// over-fetch allows for, so the root must search deeper; `NSFW` or `UNSURE` on the others)
/// and whose item 1 is a
/// near-duplicate of item 0 (cosine ≈ 0.995, another content hash). Returns item 0's vector.
pub async fn build_flagged_index(dir: &std::path::Path) -> Vec<f32> {
    const DIM: usize = 16;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let normalize = |row: &mut [f32]| {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    };
    let mut data: Vec<f32> = (0..FLAGGED_ITEMS * DIM).map(|_| next()).collect();
    for row in data.chunks_exact_mut(DIM) {
        normalize(row);
    }
    let near: Vec<f32> = (0..DIM)
        .map(|i| data[i] + 0.1 * data[5 * DIM + i])
        .collect();
    data[DIM..2 * DIM].copy_from_slice(&near);
    normalize(&mut data[DIM..2 * DIM]);
    let records: Vec<clipedge_format::ItemRecord> = (0..FLAGGED_ITEMS)
        .map(|id| {
            let nsfw = match id % 8 {
                0 => "UNLIKELY",
                1 => "NSFW",
                _ => "UNSURE",
            };
            let mut extra = serde_json::Map::new();
            extra.insert("NSFW".to_string(), serde_json::json!(nsfw));
            // LAION-Aesthetics' column: every third item looks good.
            let aesthetic = if id % 3 == 0 { 9.0 } else { 1.0 };
            extra.insert("aesthetic".to_string(), serde_json::json!(aesthetic));
            clipedge_format::ItemRecord {
                caption: format!("item {id}"),
                url: String::new(),
                extra,
            }
        })
        .collect();
    let vectors = clipedge_index_builder::VectorSet {
        records: Some(&records),
        ..clipedge_index_builder::VectorSet::new(&data, DIM)
    };
    let config = clipedge_index_builder::BuildConfig {
        model: clipedge_format::ModelInfo {
            id: "tiny-clip".to_string(),
            fingerprint: tiny_clip_fingerprint(),
        },
        ..crate::quick_config(8, 4, 8, clipedge_format::RerankKind::Fp16)
    };
    std::fs::create_dir_all(dir).expect("create the index directory");
    let storage = clipedge_storage::Storage::open(dir.to_str().expect("a utf-8 path"))
        .expect("open the index directory");
    crate::build(&storage, &vectors, &config).await;
    data[..DIM].to_vec()
}

/// Checks dedup and the safety filter on a front serving [`build_flagged_index`] as `name`,
/// by `/v1` and by `/knn-service`: near-duplicate removal drops item 1 (exact dedup keeps it),
/// the safety filter keeps `UNLIKELY` items only and still fills k, and needs the records of
/// at most 1,000 results.
pub async fn check_flagged_index(base: &str, name: &str, item_0: &[f32]) {
    let client = reqwest::Client::new();
    let v1 = |body: serde_json::Value| {
        post_without_content_type(&client, format!("{base}/v1/search"), body.to_string())
    };
    let v1_ids = |answer: &serde_json::Value| -> Vec<u64> {
        answer["results"]
            .as_array()
            .unwrap_or_else(|| panic!("results in {answer}"))
            .iter()
            .map(|item| item["id"].as_u64().unwrap())
            .collect()
    };
    let (status, _, exact) = v1(
        serde_json::json!({"vector": item_0, "k": 10, "dedup": "exact", "index": name,
            "nprobe": 8}),
    )
    .await;
    assert_eq!(status, 200, "{exact}");
    assert_eq!(
        v1_ids(&exact)[..2],
        [0, 1],
        "item 1 is item 0's near-duplicate"
    );
    let (status, headers, near) = v1(
        serde_json::json!({"vector": item_0, "k": 10, "dedup": "near", "index": name,
            "nprobe": 8}),
    )
    .await;
    assert_eq!(status, 200, "{near}");
    let near_ids = v1_ids(&near);
    assert_eq!(near_ids[0], 0);
    assert!(!near_ids.contains(&1), "{near_ids:?}");
    assert_eq!(near_ids.len(), 10);
    assert!(headers.get("x-clipedge-not-applied").is_none());

    let (status, headers, safe) = v1(
        serde_json::json!({"vector": item_0, "k": 40, "safety": true, "index": name,
            "nprobe": 8}),
    )
    .await;
    assert_eq!(status, 200, "{safe}");
    assert!(
        headers.get("x-clipedge-not-applied").is_none(),
        "{headers:?}"
    );
    let results = safe["results"].as_array().unwrap();
    assert_eq!(results.len(), 40, "over-fetched to fill k");
    for item in results {
        assert_eq!(item["fields"]["NSFW"], "UNLIKELY", "{item}");
        assert_eq!(item["id"].as_u64().unwrap() % 8, 0, "{item}");
    }
    // Pages of a filtered ranking tile it too.
    let (_, _, first) = v1(serde_json::json!({"vector": item_0, "k": 20, "offset": 0,
        "safety": true, "index": name}))
    .await;
    let (_, _, second) = v1(serde_json::json!({"vector": item_0, "k": 20, "offset": 20,
        "safety": true, "index": name}))
    .await;
    let (_, _, both) = v1(serde_json::json!({"vector": item_0, "k": 40, "offset": 0,
        "safety": true, "index": name}))
    .await;
    assert_eq!([v1_ids(&first), v1_ids(&second)].concat(), v1_ids(&both));
    let (status, _, too_many) = v1(serde_json::json!({"vector": item_0, "k": 1_001,
        "safety": true, "index": name}))
    .await;
    assert_eq!(status, 400, "{too_many}");
    assert_eq!(too_many["error"]["code"], "k_out_of_range", "{too_many}");

    // clip-retrieval's flags on the same index.
    let knn = |deduplicate: bool, safety: bool, num_result_ids: usize| {
        let mut body = clip_client_body(name, "", 10);
        body["text"] = serde_json::Value::Null;
        body["embedding_input"] = serde_json::json!(item_0);
        body["deduplicate"] = serde_json::json!(deduplicate);
        body["use_safety_model"] = serde_json::json!(safety);
        body["num_result_ids"] = serde_json::json!(num_result_ids);
        body["aesthetic_weight"] = serde_json::json!("");
        post_without_content_type(&client, format!("{base}/knn-service"), body.to_string())
    };
    let knn_ids = |answer: &serde_json::Value| -> Vec<u64> {
        answer
            .as_array()
            .unwrap_or_else(|| panic!("a list: {answer}"))
            .iter()
            .map(|result| result["id"].as_u64().unwrap())
            .collect()
    };
    let (status, _, plain) = knn(false, false, 10).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(knn_ids(&plain)[..2], [0, 1]);
    let (status, headers, flagged) = knn(true, true, 10).await;
    assert_eq!(status, 200, "{flagged}");
    let flagged_ids = knn_ids(&flagged);
    assert_eq!(flagged_ids.len(), 10);
    assert!(flagged_ids.iter().all(|id| id % 8 == 0), "{flagged_ids:?}");
    assert_eq!(flagged[0]["NSFW"], "UNLIKELY", "{flagged}");
    let not_applied = headers
        .get("x-clipedge-not-applied")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        !not_applied.contains("use_safety_model") && not_applied.contains("use_violence_detector"),
        "{not_applied:?}"
    );
    let (status, _, deduplicated) = knn(true, false, 10).await;
    assert_eq!(status, 200, "{deduplicated}");
    let deduplicated = knn_ids(&deduplicated);
    assert!(
        deduplicated[0] == 0 && !deduplicated.contains(&1),
        "{deduplicated:?}"
    );
    // The filter reads every result's record: more than 1,000 results with it is refused,
    // naming the limit; without it they are answered.
    let (status, _, refused) = knn(false, true, 2_000).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000"),
        "{refused}"
    );
    let (status, _, all) = knn(false, false, 2_000).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(knn_ids(&all).len(), FLAGGED_ITEMS);

    // An aesthetic preference re-ranks by the catalog's `aesthetic` column: each result's
    // similarity is its exact similarity less weight × |aesthetic − wanted| / 9, the answer is
    // sorted by it, and it holds more well-rated items than the plain top 10. (Which candidates
    // the re-rank sees is approximate: the fronts' fan-outs differ.)
    let mut body = clip_client_body(name, "", 10);
    body["text"] = serde_json::Value::Null;
    body["embedding_input"] = serde_json::json!(item_0);
    body["deduplicate"] = serde_json::json!(false);
    body["use_safety_model"] = serde_json::json!(false);
    body["aesthetic_score"] = serde_json::json!(9);
    body["aesthetic_weight"] = serde_json::json!(0.5);
    let (status, headers, preferred) =
        post_without_content_type(&client, format!("{base}/knn-service"), body.to_string()).await;
    assert_eq!(status, 200, "{preferred}");
    let not_applied = headers
        .get("x-clipedge-not-applied")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(!not_applied.contains("aesthetic"), "{not_applied:?}");
    let plain_similarity: std::collections::HashMap<u64, f64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|result| {
            (
                result["id"].as_u64().unwrap(),
                result["similarity"].as_f64().unwrap(),
            )
        })
        .collect();
    let adjusted = |id: u64| {
        let aesthetic = if id.is_multiple_of(3) { 9.0 } else { 1.0 };
        plain_similarity[&id] - 0.5 * (9.0_f64 - aesthetic) / 9.0
    };
    let preferred = preferred.as_array().unwrap();
    assert_eq!(preferred.len(), 10);
    let preferred_ids: Vec<u64> = preferred
        .iter()
        .map(|result| result["id"].as_u64().unwrap())
        .collect();
    let similarities: Vec<f64> = preferred
        .iter()
        .map(|result| result["similarity"].as_f64().unwrap())
        .collect();
    assert!(
        similarities.windows(2).all(|pair| pair[0] >= pair[1]),
        "{similarities:?}"
    );
    for (id, similarity) in preferred_ids.iter().zip(&similarities) {
        assert!(
            (similarity - adjusted(*id)).abs() < 1e-4,
            "{id}: {similarity} vs {}",
            adjusted(*id)
        );
    }
    let well_rated = |ids: &[u64]| ids.iter().filter(|id| id.is_multiple_of(3)).count();
    assert!(
        well_rated(&preferred_ids) > well_rated(&knn_ids(&all)[..10]),
        "{preferred_ids:?}"
    );
    assert_ne!(
        preferred_ids[..3],
        knn_ids(&all)[..3],
        "the preference moved nothing"
    );
}

/// A unit vector of the index's dimension (from `/v1/health`), to search by embedding.
async fn v1_embedding_probe(client: &reqwest::Client, base: &str) -> Vec<f32> {
    let health_text = client
        .get(format!("{base}/v1/health"))
        .send()
        .await
        .expect("health")
        .text()
        .await
        .expect("health body");
    let health: serde_json::Value = serde_json::from_str(&health_text).expect("health is JSON");
    let dim = health["dim"].as_u64().expect("a dimension") as usize;
    let value = 1.0 / (dim as f32).sqrt();
    vec![value; dim]
}

/// Runs clip-retrieval's own `ClipClient` (its `clip_client.py`, loaded as a file by
/// `tests/clip_client/check.py`) against `{base}/knn-service`. scripts/test.sh caches the file
/// and a Python with `requests` (`CLIPEDGE_CLIP_CLIENT`, `CLIPEDGE_CLIP_PYTHON`).
pub fn run_clip_client(base: &str, indice_name: &str) {
    let client = tool(
        "CLIPEDGE_CLIP_CLIENT",
        "clip-retrieval/2.45.0/clip_client.py",
        "clip-retrieval's clip_client.py",
    );
    let python = std::env::var("CLIPEDGE_CLIP_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = std::process::Command::new(&python)
        .current_dir(workspace_root())
        .arg("tests/clip_client/check.py")
        .arg(&client)
        .arg(format!("{base}/knn-service"))
        .arg(indice_name)
        .output()
        .unwrap_or_else(|error| panic!("run {python}: {error}"));
    assert!(
        output.status.success(),
        "ClipClient against {base}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen = String::from_utf8_lossy(&output.stdout);
    assert!(seen.contains("\"by_text\": "), "{seen}");
}

/// The list whose bytes hold `offset` of shard 0, from the local copy of the index.
pub fn list_at_shard_offset(index: &std::path::Path, generation: &str, offset: u64) -> u32 {
    let dir = index.join("generations").join(generation);
    let manifest =
        clipedge_format::Manifest::from_json(&std::fs::read(dir.join("manifest.json")).unwrap())
            .unwrap();
    let routing = clipedge_format::RoutingTable::decode(
        &std::fs::read(dir.join(&manifest.routing.path)).unwrap(),
    )
    .unwrap();
    let groups = std::fs::read(dir.join(&manifest.groups.path)).unwrap();
    for entry in &routing.groups {
        let bytes = &groups[entry.offset as usize..(entry.offset + entry.length as u64) as usize];
        let blob = clipedge_format::GroupBlob::decode(
            bytes,
            entry.first_list,
            entry.list_count as usize,
            routing.dim,
            entry.crc32,
        )
        .unwrap();
        for (local, location) in blob.lists.iter().enumerate() {
            if location.shard == 0
                && (location.offset..location.offset + location.length as u64).contains(&offset)
            {
                return entry.first_list + local as u32;
            }
        }
    }
    panic!("no list holds shard offset {offset}");
}
