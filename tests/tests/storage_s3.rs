//! `Storage` against a real S3-compatible server (s3s-fs) on 127.0.0.1: SigV4, range reads,
//! create-only puts, multipart uploads, `If-Match` pointer swaps, idempotent deletes, retries when the server
//! goes away, and the object-source conformance suite.
//!
//! `scripts/test.sh` installs s3s-fs and points `CLIPEDGE_S3S_FS` at it; without the binary this
//! test fails and says how to get it.

use std::time::Duration;

use clipedge_storage::{Bytes, ObjectSource, Storage, StorageConfig, StorageError};
use clipedge_tests::lambda_harness::S3Server;

#[tokio::test]
async fn s3_round_trip_conditional_writes_and_outage() {
    let mut server = S3Server::start("bucket");
    // Process-wide, so this file keeps everything in one test function.
    for (name, value) in server.aws_env() {
        std::env::set_var(name, value);
    }
    let config = StorageConfig {
        coalesce_gap_bytes: 100,
        retries: 2,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        ..StorageConfig::default()
    };
    let storage = Storage::open_with("s3://bucket/indexes/test", config).unwrap();

    let payload: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    storage
        .put_new("gen/shard.bin", Bytes::from(payload.clone()))
        .await
        .unwrap();
    let second = storage
        .put_new("gen/shard.bin", Bytes::from_static(b"overwrite"))
        .await;
    assert!(
        matches!(second, Err(StorageError::AlreadyExists { .. })),
        "{second:?}"
    );

    let read = storage
        .get_ranges("gen/shard.bin", &[40_000..40_100, 0..10, 20..30])
        .await
        .unwrap();
    assert_eq!(
        read.requests, 2,
        "0..10 and 20..30 coalesce; 40_000.. does not"
    );
    assert_eq!(&read.parts[0][..], &payload[40_000..40_100]);
    assert_eq!(&read.parts[1][..], &payload[0..10]);
    assert_eq!(&read.parts[2][..], &payload[20..30]);
    assert_eq!(
        storage.get("gen/shard.bin").await.unwrap().len(),
        payload.len()
    );

    // The object-source suite every reader's backend passes (clipedge_io::conformance).
    let suite = Storage::open("s3://bucket/conformance").unwrap();
    for (key, bytes) in clipedge_io::conformance::objects() {
        suite.put_new(&key, bytes).await.unwrap();
    }
    clipedge_io::conformance::check(&suite).await.unwrap();

    // A multipart upload (the catalog's path past 64 MiB): S3's 5 MiB minimum part, a tail.
    let part = 5 << 20;
    let big: Vec<u8> = (0..2 * part + 777).map(|i| (i % 253) as u8).collect();
    let written = storage
        .put_new_parts(
            "multipart/catalog.bin",
            big.chunks(part)
                .map(|chunk| Ok(Bytes::copy_from_slice(chunk))),
        )
        .await
        .unwrap();
    assert_eq!(written, big.len() as u64);
    assert_eq!(storage.get("multipart/catalog.bin").await.unwrap(), big);
    assert_eq!(
        storage
            .get_range("multipart/catalog.bin", part as u64 - 3..part as u64 + 3)
            .await
            .unwrap(),
        big[part - 3..part + 3]
    );
    let over = storage
        .put_new_parts(
            "multipart/catalog.bin",
            big.chunks(part)
                .map(|chunk| Ok(Bytes::copy_from_slice(chunk))),
        )
        .await;
    assert!(
        matches!(over, Err(StorageError::AlreadyExists { .. })),
        "{over:?}"
    );

    let missing = storage.get("gen/none").await;
    assert!(
        matches!(missing, Err(StorageError::NotFound { .. })),
        "{missing:?}"
    );

    storage
        .swap_pointer("CURRENT", None, Bytes::from_static(b"{\"g\":1}"))
        .await
        .unwrap();
    let first = storage.get_versioned("CURRENT").await.unwrap();
    assert!(
        first.e_tag.is_some(),
        "S3 returns an ETag for conditional writes"
    );
    storage
        .swap_pointer("CURRENT", Some(&first), Bytes::from_static(b"{\"g\":2}"))
        .await
        .unwrap();
    let stale = storage
        .swap_pointer("CURRENT", Some(&first), Bytes::from_static(b"{\"g\":3}"))
        .await;
    assert!(
        matches!(stale, Err(StorageError::Precondition { .. })),
        "{stale:?}"
    );
    let racing_create = storage
        .swap_pointer("CURRENT", None, Bytes::from_static(b"{\"g\":4}"))
        .await;
    assert!(
        matches!(racing_create, Err(StorageError::AlreadyExists { .. })),
        "{racing_create:?}"
    );
    assert_eq!(&storage.get("CURRENT").await.unwrap()[..], b"{\"g\":2}");

    assert_eq!(
        storage.list("gen").await.unwrap(),
        vec!["gen/shard.bin".to_string()],
        "names are relative to the storage root"
    );

    // Deletes are idempotent: S3 answers a missing key with success, and so does Storage.
    storage
        .put_new("gen/manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let listed = storage.list_objects("gen").await.unwrap();
    let sizes: Vec<(&str, u64)> = listed
        .iter()
        .map(|object| (object.name.as_str(), object.bytes))
        .collect();
    assert_eq!(
        sizes,
        vec![
            ("gen/manifest.json", 2),
            ("gen/shard.bin", payload.len() as u64)
        ]
    );
    storage.delete("gen/manifest.json").await.unwrap();
    storage.delete("gen/manifest.json").await.unwrap();
    storage.delete("gen/never-written.bin").await.unwrap();
    let deleted = storage.get("gen/manifest.json").await;
    assert!(
        matches!(deleted, Err(StorageError::NotFound { .. })),
        "{deleted:?}"
    );
    assert_eq!(
        storage.list("gen").await.unwrap(),
        vec!["gen/shard.bin".to_string()]
    );

    // Server gone: the read fails after the configured retries, with the attempts counted.
    let retries_before = storage.stats().snapshot().retries;
    server.process.stop();
    let outage = storage.get_range("gen/shard.bin", 0..10).await;
    match outage {
        Err(StorageError::Backend { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected a backend error after retries, got {other:?}"),
    }
    assert_eq!(storage.stats().snapshot().retries - retries_before, 2);
}
