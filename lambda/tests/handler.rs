//! `Scanner::handle` in process, without the Lambda runtime, on an index in a local directory.

use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};
use clipedge_format::RerankKind;
use clipedge_index::{route, IndexReader, OpenOptions, SearchParams};
use clipedge_index_builder::{build_index, BuildConfig, NoProgress, VectorSet};
use clipedge_lambda::{Scanner, ScannerConfig};
use clipedge_protocol::{
    decode_response, Encoding, ScanRequest, ScanStatus, ScanTargets, SignedRequest,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use clipedge_storage::Storage;
use http::{HeaderMap, HeaderValue};

const DIM: usize = 16;
const SECRET: &[u8] = b"handler-secret";
const NOW_MS: u64 = 1_795_371_411_698;

fn headers(signed: &SignedRequest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static(signed.content_type),
    );
    headers.insert(
        TIMESTAMP_HEADER,
        HeaderValue::from_str(&signed.headers.timestamp).unwrap(),
    );
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&signed.headers.signature).unwrap(),
    );
    headers
}

#[tokio::test]
async fn handler_matches_the_reader_and_refuses_before_io() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    let storage = Storage::open(&root).unwrap();
    let generator = ClipLikeGenerator::new(ClipLikeConfig::new(DIM, 3));
    let base = generator.base(1_500);
    let config = BuildConfig {
        rerank: RerankKind::Int8,
        kmeans_iterations: 5,
        pq_iterations: 4,
        ngroups: Some(4),
        ..BuildConfig::new(16, 4, 8)
    };
    let report = build_index(&storage, &VectorSet::new(&base, DIM), &config, &NoProgress)
        .await
        .unwrap();
    let reader = IndexReader::open(storage.clone(), OpenOptions::default())
        .await
        .unwrap();
    let scanner = Scanner::new(ScannerConfig::with_secret(SECRET));

    let queries = generator.queries(3, QueryKind::OutOfDistribution);
    for query in queries.chunks_exact(DIM) {
        let nprobe = 5;
        let expected = reader
            .search(query, &SearchParams::new(7, nprobe, 4))
            .await
            .unwrap();
        let request = ScanRequest {
            request_id: "r".to_string(),
            index: root.clone(),
            generation: report.generation.clone(),
            query: query.to_vec(),
            targets: ScanTargets::Groups {
                group_ids: route::auto_group_probe(reader.routing(), None, query, nprobe),
                nprobe: nprobe as u32,
            },
            k: 7,
            rerank: 4,
            deadline_ms: 60_000,
        };
        let signed = SignedRequest::new(&request, Encoding::Binary, SECRET, NOW_MS).unwrap();
        let reply = scanner
            .handle_at(&headers(&signed), &signed.body, NOW_MS + 10)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.error_message());
        let response = decode_response(&reply.body, Encoding::Binary).unwrap();
        assert!(response
            .lists
            .iter()
            .all(|list| list.status == ScanStatus::Ok));
        let ids: Vec<(u64, u32)> = response
            .candidates
            .iter()
            .map(|candidate| (candidate.id, candidate.score.to_bits()))
            .collect();
        let expected_ids: Vec<(u64, u32)> = expected
            .hits
            .iter()
            .map(|hit| (hit.id, hit.score.to_bits()))
            .collect();
        assert_eq!(ids, expected_ids);

        // Unsigned: refused without touching storage, even for an index that does not exist.
        let elsewhere = ScanRequest {
            index: "/nonexistent/index".to_string(),
            ..request
        };
        let signed = SignedRequest::new(&elsewhere, Encoding::Binary, SECRET, NOW_MS).unwrap();
        let reply = scanner
            .handle_at(&HeaderMap::new(), &signed.body, NOW_MS)
            .await;
        assert_eq!(reply.status, 401);
        let stale = scanner
            .handle_at(&headers(&signed), &signed.body, NOW_MS + 3_600_000)
            .await;
        assert_eq!(stale.status, 403, "{:?}", stale.error_message());
    }
    assert!(scanner.cached_list_bytes() > 0);

    // A secret rotation: the scanner takes the new secret and still accepts the old one, so
    // callers switch whenever they redeploy; a secret retired before that is refused.
    let rotating = Scanner::new(
        ScannerConfig::from_lookup(|name| match name {
            "CLIPEDGE_SCANNER_SECRET" => Some("rotated-secret".to_string()),
            "CLIPEDGE_SCANNER_SECRET_PREVIOUS" => Some(String::from_utf8(SECRET.to_vec()).unwrap()),
            _ => None,
        })
        .unwrap(),
    );
    let query = &queries[..DIM];
    let request = ScanRequest {
        request_id: "rotation".to_string(),
        index: root.clone(),
        generation: report.generation.clone(),
        query: query.to_vec(),
        targets: ScanTargets::Groups {
            group_ids: route::auto_group_probe(reader.routing(), None, query, 3),
            nprobe: 3,
        },
        k: 5,
        rerank: 4,
        deadline_ms: 60_000,
    };
    for (signer, expected) in [
        (SECRET, 200),
        (b"rotated-secret".as_slice(), 200),
        (b"retired-secret".as_slice(), 403),
    ] {
        let signed = SignedRequest::new(&request, Encoding::Binary, signer, NOW_MS).unwrap();
        let reply = rotating
            .handle_at(&headers(&signed), &signed.body, NOW_MS)
            .await;
        assert_eq!(
            reply.status,
            expected,
            "signed with {:?}: {:?}",
            String::from_utf8_lossy(signer),
            reply.error_message()
        );
    }
}
