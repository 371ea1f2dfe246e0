//! Valid inputs for every target, made by the project's own encoders: mutations of a valid
//! structure reach far deeper than random bytes. `examples/write_seeds.rs` writes them as the
//! starting corpora of `fuzz/corpus/<target>/`; the stable pass mutates them directly.

use clipedge_format::{
    encode_codebooks, BuildInfo, CatalogBuilder, CatalogRef, Codebooks, CurrentPointer, FileRef,
    GroupBlob, GroupEntry, ItemRecord, ListBlobBuilder, ListLocation, Manifest, Metric, ModelInfo,
    PqParams, RerankData, RerankKind, RoutingTable, SearchDefaults, ShardRef,
};
use clipedge_protocol::{
    encode_request, encode_response, sign, Encoding, GroupResult, ListResult, ScanRequest,
    ScanResponse, ScanStats, ScanStatus, ScanTargets,
};

use crate::join_fields;

/// Named seeds of the target `target` (none for an unknown name).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "manifest" => manifests(),
        "current" => vec![
            named(
                "valid",
                CurrentPointer::new("1795371411698-1c6521d3").to_json(),
            ),
            named(
                "future",
                br#"{"format_version":2,"generation":"g"}"#.to_vec(),
            ),
            named(
                "traversal",
                br#"{"format_version":1,"generation":"../x"}"#.to_vec(),
            ),
        ],
        "routing" => vec![
            named("three-groups", routing_table(4, &[2, 1, 3]).encode()),
            named("one-group", routing_table(1, &[1]).encode()),
        ],
        "codebooks" => vec![
            named("8bit", codebooks(2, 256, 1)),
            named("4bit", codebooks(4, 16, 2)),
        ],
        "group_blob" => group_blobs(),
        "list_blob" => list_blobs(),
        "catalog" => catalogs(),
        "scan_request" => scan_requests(),
        "scan_response" => scan_responses(),
        "signing" => signings(),
        "v1_search" => v1_bodies(),
        "knn_service" => knn_bodies(),
        _ => Vec::new(),
    }
}

fn named(name: &str, bytes: Vec<u8>) -> (String, Vec<u8>) {
    (name.to_string(), bytes)
}

fn manifest(catalog: bool, bits: u8, rerank: RerankKind) -> Manifest {
    let file = |path: &str| FileRef {
        path: path.to_string(),
        bytes: 1234,
        crc32: 0xdead_beef,
    };
    Manifest {
        format_version: 1,
        generation: "1795371411698-1c6521d3".to_string(),
        created_unix_ms: 1_795_371_411_698,
        model: ModelInfo {
            id: "clip-vit-b32".to_string(),
            fingerprint: "sha256:0123456789abcdef".to_string(),
        },
        dim: 16,
        metric: Metric::InnerProduct,
        count: 10_000,
        nlist: 64,
        ngroups: 8,
        pq: PqParams {
            m: 8,
            bits,
            dsub: 2,
            by_residual: true,
        },
        rerank,
        routing: file("routing.bin"),
        groups: file("groups.bin"),
        codebooks: file("codebooks.bin"),
        shards: vec![
            ShardRef {
                path: "shards/0.bin".to_string(),
                bytes: 1 << 20,
                lists: 32,
            },
            ShardRef {
                path: "shards/1.bin".to_string(),
                bytes: 1 << 20,
                lists: 32,
            },
        ],
        build: BuildInfo {
            seed: 42,
            train_size: 10_000,
            kmeans_iters: 20,
            builder: "clipedge-index-builder 0.1.0".to_string(),
        },
        catalog: catalog.then(|| CatalogRef {
            path: "catalog.bin".to_string(),
            bytes: 200_000,
            crc32: 7,
            items: 10_000,
            block_items: 256,
            records_offset: clipedge_format::catalog_records_offset(10_000),
        }),
        // The gate's measured defaults ride with the catalog seeds.
        search_defaults: catalog.then_some(SearchDefaults {
            nprobe: 24,
            rerank: 50,
            recall_at_10: 0.953,
            queries: 200,
        }),
    }
}

fn manifests() -> Vec<(String, Vec<u8>)> {
    vec![
        named(
            "catalog-8bit-fp16",
            manifest(true, 8, RerankKind::Fp16).to_json(),
        ),
        named("4bit-int8", manifest(false, 4, RerankKind::Int8).to_json()),
        named("8bit-none", manifest(false, 8, RerankKind::None).to_json()),
    ]
}

fn routing_table(dim: usize, list_counts: &[u32]) -> RoutingTable {
    let mut groups = Vec::new();
    let mut first_list = 0;
    for (group, list_count) in list_counts.iter().enumerate() {
        groups.push(GroupEntry {
            first_list,
            list_count: *list_count,
            offset: group as u64 * 1000,
            length: 100 + group as u32,
            crc32: 0x1234_5678 ^ group as u32,
            radius: 0.25 * group as f32,
        });
        first_list += list_count;
    }
    RoutingTable {
        dim,
        nlist: first_list,
        centroids: (0..list_counts.len() * dim)
            .map(|i| i as f32 * 0.5 - 1.0)
            .collect(),
        groups,
    }
}

fn codebooks(m: usize, ksub: usize, dsub: usize) -> Vec<u8> {
    encode_codebooks(&Codebooks {
        m,
        ksub,
        dsub,
        centroids: (0..m * ksub * dsub)
            .map(|i| (i % 17) as f32 - 8.0)
            .collect(),
    })
}

fn group_blobs() -> Vec<(String, Vec<u8>)> {
    [(0u32, 3usize, 4usize), (17, 1, 8)]
        .into_iter()
        .map(|(first_list, count, dim)| {
            let group = GroupBlob {
                first_list,
                dim,
                centroids: (0..count * dim).map(|i| i as f32 / 8.0).collect(),
                lists: (0..count)
                    .map(|i| ListLocation {
                        shard: i as u32 % 2,
                        count: 10 + i as u32,
                        offset: 4096 * i as u64,
                        length: 500,
                        crc32: 0xabcd_0000 + i as u32,
                    })
                    .collect(),
            };
            let params: Vec<u8> = [first_list, count as u32, dim as u32]
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect();
            let name = format!("lists-{count}-dim-{dim}");
            named(&name, join_fields(&[&params, &group.encode()]))
        })
        .collect()
}

fn list_blob(count: usize, dim: usize, m: usize, bits: u8, kind: RerankKind) -> Vec<u8> {
    let ids: Vec<u64> = (0..count as u64).map(|i| 1000 + i).collect();
    let hashes: Vec<u64> = (0..count as u64).map(|i| i * 0x9e37_79b9).collect();
    let refs: Vec<u64> = (0..count as u64).map(|i| (i * 64) << 24 | 60).collect();
    let codes: Vec<u8> = (0..clipedge_format::code_bytes(count, m, bits))
        .map(|i| i as u8)
        .collect();
    let rerank = match kind {
        RerankKind::None => RerankData::None,
        RerankKind::Fp16 => RerankData::Fp16((0..count * dim).map(|i| 0x3c00 + i as u16).collect()),
        RerankKind::Int8 => RerankData::Int8 {
            scales: (0..count).map(|i| 0.01 * (i + 1) as f32).collect(),
            values: (0..count * dim).map(|i| (i % 255) as i8).collect(),
        },
    };
    ListBlobBuilder {
        list_id: 5,
        dim,
        m,
        bits,
        ids: &ids,
        content_hashes: &hashes,
        metadata_refs: &refs,
        codes: &codes,
        rerank: &rerank,
        records: None,
    }
    .encode()
}

fn list_blobs() -> Vec<(String, Vec<u8>)> {
    vec![
        named("8bit-fp16", list_blob(3, 8, 4, 8, RerankKind::Fp16)),
        named("4bit-int8", list_blob(33, 4, 2, 4, RerankKind::Int8)),
        named("8bit-none", list_blob(2, 4, 4, 8, RerankKind::None)),
        named("empty", list_blob(0, 4, 2, 8, RerankKind::Fp16)),
    ]
}

fn catalogs() -> Vec<(String, Vec<u8>)> {
    let records = |count: usize| -> Vec<ItemRecord> {
        (0..count)
            .map(|i| ItemRecord {
                caption: format!("c{i}"),
                url: if i % 2 == 0 {
                    format!("media/{i}.webp")
                } else {
                    String::new()
                },
                extra: if i % 5 == 0 {
                    serde_json::Map::from_iter([
                        ("key".to_string(), serde_json::json!(format!("{i:09}"))),
                        ("width".to_string(), serde_json::json!(640)),
                    ])
                } else {
                    serde_json::Map::new()
                },
            })
            .collect()
    };
    [3usize, 258]
        .into_iter()
        .map(|count| {
            let builder = CatalogBuilder::new(&records(count)).expect("records serialize");
            let lists: Vec<u32> = (0..count as u32).map(|i| i % 7).collect();
            let (bytes, _) = builder
                .finish(&lists, "catalog.bin")
                .expect("catalog lays out");
            named(&format!("items-{count}"), bytes)
        })
        .collect()
}

fn scan_request(targets: ScanTargets) -> ScanRequest {
    ScanRequest {
        request_id: "req-1".to_string(),
        index: "s3://bucket/indexes/laion".to_string(),
        generation: "1795371411698-1c6521d3".to_string(),
        query: vec![0.25, -1.5, 3.0e-7, 0.0],
        targets,
        k: 100,
        rerank: 10,
        deadline_ms: 2_000,
    }
}

fn scan_requests() -> Vec<(String, Vec<u8>)> {
    let groups = scan_request(ScanTargets::Groups {
        group_ids: vec![7, 3, 11],
        nprobe: 8,
    });
    let lists = scan_request(ScanTargets::Lists {
        list_ids: vec![1, 2, 300],
    });
    let encode = |request: &ScanRequest, encoding| {
        encode_request(request, encoding).expect("a valid request encodes")
    };
    vec![
        named("groups-binary", encode(&groups, Encoding::Binary)),
        named("lists-binary", encode(&lists, Encoding::Binary)),
        named("groups-json", encode(&groups, Encoding::Json)),
    ]
}

fn scan_response() -> ScanResponse {
    ScanResponse {
        request_id: "req-1".to_string(),
        generation: "g".to_string(),
        groups: vec![GroupResult {
            group_id: 2,
            status: ScanStatus::Ok,
            detail: String::new(),
        }],
        lists: vec![
            ListResult {
                list_id: 4,
                status: ScanStatus::Corrupt,
                cached: false,
                detail: "checksum mismatch in list 4".to_string(),
            },
            ListResult {
                list_id: 5,
                status: ScanStatus::Ok,
                cached: true,
                detail: String::new(),
            },
        ],
        candidates: (0..3)
            .map(|i| clipedge_format::Hit {
                id: 1000 + i,
                score: 0.5 - i as f32 * 0.125,
                content_hash: 0xdead_beef_cafe_f00d ^ i,
                metadata_ref: 17 << 24 | 40,
                list_id: 5,
            })
            .collect(),
        records: (0..3)
            .map(|i| format!(r#"{{"caption":"image {i}","url":"https://img.example/{i}.jpg"}}"#))
            .collect(),
        stats: ScanStats {
            gets: 3,
            bytes_read: 1 << 40,
            list_cache_hits: 1,
            lists_scanned: 2,
            codes_scanned: 300,
            generation_cached: true,
            fetch_ms: 1.5,
            scan_ms: 0.25,
            rerank_ms: 0.125,
            total_ms: 2.0,
        },
    }
}

fn scan_responses() -> Vec<(String, Vec<u8>)> {
    let response = scan_response();
    let encode = |encoding| encode_response(&response, encoding).expect("a response encodes");
    vec![
        named("binary", encode(Encoding::Binary)),
        named("json", encode(Encoding::Json)),
    ]
}

fn signings() -> Vec<(String, Vec<u8>)> {
    let secret = b"shared secret";
    let now: u64 = 1_795_371_411_698;
    let body = encode_request(
        &scan_request(ScanTargets::Lists { list_ids: vec![1] }),
        Encoding::Binary,
    )
    .expect("a valid request encodes");
    let headers = sign(secret, now, &body);
    let clock: Vec<u8> = [now + 1000, 300_000]
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    let seed = |timestamp: &str, signature: &str, body: &[u8]| {
        join_fields(&[
            secret,
            timestamp.as_bytes(),
            signature.as_bytes(),
            &clock,
            body,
        ])
    };
    vec![
        named("valid", seed(&headers.timestamp, &headers.signature, &body)),
        named(
            "tampered-body",
            seed(&headers.timestamp, &headers.signature, b"x"),
        ),
        named("malformed", seed("yesterday", "v1=zz", &body)),
    ]
}

/// The `/v1` inputs: the index dimension as the first field, then the body.
fn v1_bodies() -> Vec<(String, Vec<u8>)> {
    let dim = 4u16.to_le_bytes();
    [
        ("text", r#"{"text":"a dog on a beach"}"#),
        (
            "vector",
            r#"{"vector":[0,1,0.5,-1],"k":100,"nprobe":4096,"rerank":0,"dedup":false}"#,
        ),
        ("id", r#"{"id":7,"k":5,"dedup":false,"rerank":0}"#),
        ("unicode", r#"{"text":"해변을 달리는 개 🐕","k":3}"#),
        ("unknown-field", r#"{"text":"x","kk":3}"#),
    ]
    .into_iter()
    .map(|(name, body)| named(name, join_fields(&[&dim, body.as_bytes()])))
    .collect()
}

/// The `/knn-service` and `/metadata` inputs: the index shape (dimension u16, count u64, lists
/// u32) as the first field, then the body.
fn knn_bodies() -> Vec<(String, Vec<u8>)> {
    let mut shape = 4u16.to_le_bytes().to_vec();
    shape.extend_from_slice(&10_000u64.to_le_bytes());
    shape.extend_from_slice(&64u32.to_le_bytes());
    [
        (
            "clip-client-text",
            r#"{"text": "a dog", "image": null, "image_url": null, "embedding_input": null, "deduplicate": true, "use_safety_model": false, "use_violence_detector": false, "indice_name": "laion", "use_mclip": false, "aesthetic_score": "", "aesthetic_weight": "", "modality": "image", "num_images": 40, "num_result_ids": 3000}"#,
        ),
        (
            "embedding",
            r#"{"indice_name":"laion","num_images":3,"embedding_input":[1,0,0,0]}"#,
        ),
        (
            "aesthetic",
            r#"{"indice_name":"laion","num_images":1,"text":"x","aesthetic_score":"5","aesthetic_weight":"0.5","use_mclip":true}"#,
        ),
        ("metadata", r#"{"ids":[3,1],"indice_name":"laion"}"#),
    ]
    .into_iter()
    .map(|(name, body)| named(name, join_fields(&[&shape, body.as_bytes()])))
    .collect()
}
