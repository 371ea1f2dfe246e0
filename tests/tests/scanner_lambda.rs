//! The scanner Lambda end to end: the builder writes indexes to a real S3-compatible server
//! (s3s-fs), the scanner runs under the Lambda emulator (`cargo lambda watch`) and is called
//! through its function URL with signed requests. Its candidates must equal, bit for bit, an
//! in-process scan of the same lists; faults must give the documented statuses.
//!
//! Everything shares one test function: the `AWS_*` variables the builder reads are
//! process-wide.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clipedge_datagen::QueryKind;
use clipedge_format::{generation_path, GroupBlob, Hit, RerankKind};
use clipedge_index::{route, IndexReader, OpenOptions, SearchParams};
use clipedge_index_builder::BuildConfig;
use clipedge_protocol::{
    decode_response, sign, Encoding, ScanRequest, ScanResponse, ScanStatus, ScanTargets,
    SignedRequest, MAX_REQUEST_BYTES, PROTOCOL_VERSION, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use clipedge_storage::Storage;
use clipedge_tests::lambda_harness::{scan_lists_in_process, LambdaEmulator, S3Server};
use clipedge_tests::{build, group_blobs, quick_config, Dataset};
use std::sync::Arc;

const SECRET: &[u8] = b"scanner-test-secret";
const BUCKET: &str = "indexes";
const PREFIX: &str = "laion";
const DIM: usize = 32;
const K: u32 = 10;
const RERANK: u32 = 8;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

struct Caller {
    client: reqwest::Client,
    url: String,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn response(&self) -> ScanResponse {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        decode_response(
            &self.body,
            Encoding::from_content_type(Some(&self.content_type)),
        )
        .expect("decode the scan response")
    }

    fn error(&self) -> String {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        match value["error"].as_str() {
            Some(message) => message.to_string(),
            None => format!(
                "status {} without an error message: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

impl Caller {
    async fn post(&self, body: Vec<u8>, headers: &[(&str, String)]) -> Answer {
        // Binary unless the caller says otherwise (the emulator, like a function URL, needs a
        // content type to pass a non-text body through).
        let mut request = self.client.post(&self.url).body(body);
        if !headers.iter().any(|(name, _)| *name == "content-type") {
            request = request.header("content-type", Encoding::Binary.content_type());
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("call the function url");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.bytes().await.expect("read the answer").to_vec();
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn scan(&self, request: &ScanRequest, encoding: Encoding) -> Answer {
        let signed = SignedRequest::new(request, encoding, SECRET, now_ms()).expect("sign");
        let headers = [
            ("content-type", signed.content_type.to_string()),
            (TIMESTAMP_HEADER, signed.headers.timestamp.clone()),
            (SIGNATURE_HEADER, signed.headers.signature.clone()),
        ];
        self.post(signed.body, &headers).await
    }
}

fn request(generation: &str, query: &[f32], targets: ScanTargets) -> ScanRequest {
    ScanRequest {
        request_id: "test".to_string(),
        index: format!("s3://{BUCKET}/{PREFIX}"),
        generation: generation.to_string(),
        query: query.to_vec(),
        targets,
        k: K,
        rerank: RERANK,
        deadline_ms: 60_000,
    }
}

fn assert_same(candidates: &[Hit], hits: &[Hit], context: &str) {
    assert_eq!(candidates.len(), hits.len(), "{context}: candidate count");
    for (rank, (candidate, hit)) in candidates.iter().zip(hits).enumerate() {
        let same = candidate.id == hit.id
            && candidate.score.to_bits() == hit.score.to_bits()
            && candidate.content_hash == hit.content_hash
            && candidate.metadata_ref == hit.metadata_ref
            && candidate.list_id == hit.list_id;
        assert!(
            same,
            "{context}: rank {rank} differs: scanner {candidate:?}, in process {hit:?}"
        );
    }
}

fn statuses(response: &ScanResponse) -> Vec<(u32, ScanStatus)> {
    response
        .lists
        .iter()
        .map(|list| (list.list_id, list.status))
        .collect()
}

/// Several shards (so one can go missing while others stay), two-level routing.
fn build_config(seed: u64) -> BuildConfig {
    BuildConfig {
        seed,
        ngroups: Some(8),
        shard_target_bytes: 48 << 10,
        ..quick_config(48, 8, 4, RerankKind::Fp16)
    }
}

async fn open_generation(storage: &Storage, generation: &str) -> IndexReader {
    let options = OpenOptions {
        generation: Some(generation.to_string()),
        ..OpenOptions::default()
    };
    IndexReader::open(storage.clone(), options)
        .await
        .expect("open the generation in process")
}

/// Lists of `blobs` in distinct shards: `(list, shard)` for the first list of each shard.
fn one_list_per_shard(blobs: &[Arc<GroupBlob>]) -> Vec<(u32, u32)> {
    let mut seen = HashSet::new();
    let mut picked = Vec::new();
    for blob in blobs {
        for (local, location) in blob.lists.iter().enumerate() {
            if location.count > 0 && seen.insert(location.shard) {
                picked.push((blob.first_list + local as u32, location.shard));
            }
        }
    }
    picked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_lambda_over_function_url_and_s3() {
    let mut s3 = S3Server::start(BUCKET);
    for (name, value) in s3.aws_env() {
        std::env::set_var(name, value);
    }
    let storage = Storage::open(&format!("s3://{BUCKET}/{PREFIX}")).expect("open s3 storage");
    let data = Dataset::new(4_000, DIM, 12, 21);
    let first = build(&storage, &data.vectors(), &build_config(3)).await;

    let mut scanner_env = s3.aws_env();
    scanner_env.extend(
        [
            ("CLIPEDGE_SCANNER_SECRET", "scanner-test-secret"),
            ("CLIPEDGE_STORAGE_RETRIES", "1"),
            ("CLIPEDGE_STORAGE_TIMEOUT_MS", "5000"),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    let mut lambda = LambdaEmulator::start(&scanner_env);
    let caller = Caller {
        client: reqwest::Client::new(),
        url: lambda.url(),
    };

    // 1. Groups routed by the caller, lists ranked by the scanner: equal to `IndexReader::search`.
    let reader = open_generation(&storage, &first.generation).await;
    let blobs = group_blobs(&reader).await;
    let queries = data.queries(QueryKind::OutOfDistribution);
    for (query_index, query) in queries.chunks_exact(DIM).take(6).enumerate() {
        let nprobe = [2, 5, 12][query_index % 3];
        let group_ids = route::auto_group_probe(reader.routing(), None, query, nprobe);
        let params = SearchParams::new(K as usize, nprobe, RERANK as usize);
        let expected = reader
            .search(query, &params)
            .await
            .expect("search in process");
        let targets = ScanTargets::Groups {
            group_ids: group_ids.clone(),
            nprobe: nprobe as u32,
        };
        let cold = caller
            .scan(
                &request(&first.generation, query, targets.clone()),
                Encoding::Binary,
            )
            .await
            .response();
        assert!(cold.is_complete(), "{:?}", statuses(&cold));
        assert_eq!(cold.groups.len(), group_ids.len());
        assert_eq!(cold.lists.len(), expected.stats.lists_scanned);
        assert_same(&cold.candidates, &expected.hits, "groups, cold");

        // Warm: every list from the scanner's cache, no GET at all, the same answer.
        let warm = caller
            .scan(
                &request(&first.generation, query, targets),
                Encoding::Binary,
            )
            .await
            .response();
        assert_eq!(warm.stats.gets, 0, "{:?}", warm.stats);
        assert_eq!(warm.stats.list_cache_hits as usize, warm.lists.len());
        assert!(warm.lists.iter().all(|list| list.cached));
        assert_same(&warm.candidates, &expected.hits, "groups, warm");
    }

    // 2. Lists named by id, in a caller's order, and the JSON debugging encoding.
    let query = &queries[..DIM];
    let list_ids: Vec<u32> = vec![40, 3, 17, 29, 8, 46];
    let expected = scan_lists_in_process(
        &reader,
        &blobs,
        query,
        &list_ids,
        K as usize,
        RERANK as usize,
    )
    .await;
    let lists_request = request(
        &first.generation,
        query,
        ScanTargets::Lists {
            list_ids: list_ids.clone(),
        },
    );
    for encoding in [Encoding::Binary, Encoding::Json] {
        let answer = caller.scan(&lists_request, encoding).await;
        assert_eq!(answer.content_type, encoding.content_type());
        let response = answer.response();
        assert!(response.is_complete(), "{:?}", statuses(&response));
        let scanned: Vec<u32> = response.lists.iter().map(|list| list.list_id).collect();
        assert_eq!(scanned, list_ids);
        assert_same(&response.candidates, &expected, "lists");
    }

    // 3. Requests refused before any I/O, each with its status and reason.
    let body = clipedge_protocol::encode_request(&lists_request, Encoding::Binary).unwrap();
    let unsigned = caller.post(body.clone(), &[]).await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.error());
    assert!(unsigned.error().contains(TIMESTAMP_HEADER));

    let signed = sign(SECRET, now_ms(), &body);
    let mut tampered = body.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let bad_signature = caller
        .post(
            tampered,
            &[
                (TIMESTAMP_HEADER, signed.timestamp.clone()),
                (SIGNATURE_HEADER, signed.signature.clone()),
            ],
        )
        .await;
    assert_eq!(bad_signature.status, 403, "{}", bad_signature.error());
    assert!(bad_signature.error().contains("signature does not match"));

    let wrong_secret = sign(b"not the secret", now_ms(), &body);
    let answer = caller
        .post(
            body.clone(),
            &[
                (TIMESTAMP_HEADER, wrong_secret.timestamp),
                (SIGNATURE_HEADER, wrong_secret.signature),
            ],
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.error());

    let stale = sign(SECRET, now_ms() - 3_600_000, &body);
    let answer = caller
        .post(
            body.clone(),
            &[
                (TIMESTAMP_HEADER, stale.timestamp),
                (SIGNATURE_HEADER, stale.signature),
            ],
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.error());
    assert!(
        answer.error().contains("ms from the scanner's clock"),
        "{}",
        answer.error()
    );

    let oversized = vec![7u8; MAX_REQUEST_BYTES + 1];
    let oversized_signature = sign(SECRET, now_ms(), &oversized);
    let answer = caller
        .post(
            oversized,
            &[
                (TIMESTAMP_HEADER, oversized_signature.timestamp),
                (SIGNATURE_HEADER, oversized_signature.signature),
            ],
        )
        .await;
    assert_eq!(answer.status, 413, "{}", answer.error());

    // A well-formed frame header of this protocol version around a body that is not bincode.
    let mut garbage = b"CESQ".to_vec();
    garbage.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    garbage.extend_from_slice(b"\x00\x00not bincode at all");
    let garbage_signature = sign(SECRET, now_ms(), &garbage);
    let answer = caller
        .post(
            garbage,
            &[
                (TIMESTAMP_HEADER, garbage_signature.timestamp),
                (SIGNATURE_HEADER, garbage_signature.signature),
            ],
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.error());
    assert!(
        answer.error().contains("malformed scan request"),
        "{}",
        answer.error()
    );

    let json_garbage = br#"{"request_id": 5}"#.to_vec();
    let json_signature = sign(SECRET, now_ms(), &json_garbage);
    let answer = caller
        .post(
            json_garbage,
            &[
                ("content-type", "application/json".to_string()),
                (TIMESTAMP_HEADER, json_signature.timestamp),
                (SIGNATURE_HEADER, json_signature.signature),
            ],
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.error());

    // Valid frames the index cannot serve: wrong dimension, unknown list, unknown generation.
    let short_query = request(
        &first.generation,
        &query[..DIM - 1],
        lists_request.targets.clone(),
    );
    let answer = caller.scan(&short_query, Encoding::Binary).await;
    assert_eq!(answer.status, 400, "{}", answer.error());
    assert!(answer.error().contains("dimension"), "{}", answer.error());
    let unknown_list = request(
        &first.generation,
        query,
        ScanTargets::Lists {
            list_ids: vec![1, 4_000],
        },
    );
    let answer = caller.scan(&unknown_list, Encoding::Binary).await;
    assert_eq!(answer.status, 400, "{}", answer.error());
    assert!(
        answer.error().contains("list 4000 does not exist"),
        "{}",
        answer.error()
    );
    let unknown_generation = request(
        "1700000000000-00000000",
        query,
        lists_request.targets.clone(),
    );
    let answer = caller.scan(&unknown_generation, Encoding::Binary).await;
    assert_eq!(answer.status, 404, "{}", answer.error());

    // 4. A second generation: list ids coincide with the first's, the cache must not mix them.
    let second = build(&storage, &data.vectors(), &build_config(4)).await;
    let second_reader = open_generation(&storage, &second.generation).await;
    let second_blobs = group_blobs(&second_reader).await;

    // A deadline too short even to open the generation: everything timed out, no candidates.
    let hurried = ScanRequest {
        deadline_ms: 1,
        ..request(&second.generation, query, lists_request.targets.clone())
    };
    let response = caller.scan(&hurried, Encoding::Binary).await.response();
    assert!(response.candidates.is_empty());
    assert!(
        response
            .lists
            .iter()
            .all(|list| list.status == ScanStatus::TimedOut),
        "{:?}",
        statuses(&response)
    );

    let picked = one_list_per_shard(&second_blobs);
    assert!(picked.len() >= 4, "the test wants four shards: {picked:?}");
    let (corrupt_list, _) = picked[0];
    let (missing_list, missing_shard) = picked[1];
    let (good_list, _) = picked[2];
    let (later_list, _) = picked[3];

    // Same lists as in step 2 on the new generation: its own candidates, not the cached ones.
    let expected_second = scan_lists_in_process(
        &second_reader,
        &second_blobs,
        query,
        &[good_list],
        K as usize,
        RERANK as usize,
    )
    .await;
    let good_only = request(
        &second.generation,
        query,
        ScanTargets::Lists {
            list_ids: vec![good_list],
        },
    );
    let response = caller.scan(&good_only, Encoding::Binary).await.response();
    assert!(response.is_complete());
    assert_same(&response.candidates, &expected_second, "second generation");

    // Corrupt one list's bytes in place and delete another list's shard, on the server's disk.
    let manifest = second_reader.manifest();
    let location_of = |list_id: u32| {
        second_blobs
            .iter()
            .find_map(|blob| {
                let local = list_id.checked_sub(blob.first_list)? as usize;
                blob.lists.get(local).copied()
            })
            .expect("a location")
    };
    let corrupt_location = location_of(corrupt_list);
    let corrupt_shard = &manifest.shards[corrupt_location.shard as usize].path;
    let corrupt_path = s3.object_path(
        BUCKET,
        &format!(
            "{PREFIX}/{}",
            generation_path(&second.generation, corrupt_shard)
        ),
    );
    let mut shard_bytes = std::fs::read(&corrupt_path).expect("read the shard file");
    let flip_at = (corrupt_location.offset + corrupt_location.length as u64 / 2) as usize;
    shard_bytes[flip_at] ^= 0x5a;
    std::fs::write(&corrupt_path, shard_bytes).expect("rewrite the shard file");
    let missing_path = s3.object_path(
        BUCKET,
        &format!(
            "{PREFIX}/{}",
            generation_path(
                &second.generation,
                &manifest.shards[missing_shard as usize].path
            )
        ),
    );
    std::fs::remove_file(&missing_path).expect("delete the shard file");

    let faulty = request(
        &second.generation,
        query,
        ScanTargets::Lists {
            list_ids: vec![corrupt_list, missing_list, good_list],
        },
    );
    let response = caller.scan(&faulty, Encoding::Binary).await.response();
    assert_eq!(
        statuses(&response),
        vec![
            (corrupt_list, ScanStatus::Corrupt),
            (missing_list, ScanStatus::Missing),
            (good_list, ScanStatus::Ok),
        ]
    );
    assert!(
        response.lists[0].detail.contains("checksum"),
        "{:?}",
        response.lists[0]
    );
    assert_eq!(response.failed_lists(), vec![corrupt_list, missing_list]);
    assert_same(&response.candidates, &expected_second, "only the good list");

    // 5. The S3 server stops: cached lists still answer, the others are unavailable.
    s3.process.stop();
    let outage = request(
        &second.generation,
        query,
        ScanTargets::Lists {
            list_ids: vec![good_list, later_list],
        },
    );
    let response = caller.scan(&outage, Encoding::Binary).await.response();
    assert_eq!(
        statuses(&response),
        vec![
            (good_list, ScanStatus::Ok),
            (later_list, ScanStatus::Unavailable),
        ]
    );
    assert!(response.lists[0].cached);
    assert_same(&response.candidates, &expected_second, "during the outage");

    let log = lambda.function_log();
    assert!(!log.contains("panicked"), "the scanner panicked:\n{log}");
    assert!(lambda.function.is_running(), "the scanner exited:\n{log}");
    assert!(lambda.emulator.is_running(), "the emulator exited");
    drop(s3);
    std::thread::sleep(Duration::from_millis(10));
}
