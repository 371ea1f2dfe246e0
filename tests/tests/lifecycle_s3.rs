//! Generation lifecycle against a real S3-compatible server (s3s-fs): `rollback` moves
//! `CURRENT` with an `If-Match` write, `gc` deletes with S3 DELETEs (which succeed for missing
//! keys), and the index still serves afterwards.
//!
//! Like `storage_s3.rs`, it needs `CLIPEDGE_S3S_FS` (set by `scripts/test.sh`) and keeps
//! everything in one test function, because the `AWS_*` variables are process-wide.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clipedge_format::RerankKind;
use clipedge_index::SearchParams;
use clipedge_index_builder::{
    current_generation, gc, list_generations, rollback, GcOptions, KeepReason, LifecycleError,
};
use clipedge_storage::Storage;
use clipedge_tests::lambda_harness::S3Server;
use clipedge_tests::{build, open, quick_config, Dataset};

#[tokio::test]
async fn rollback_and_gc_on_s3() {
    let server = S3Server::start("bucket");
    for (name, value) in server.aws_env() {
        std::env::set_var(name, value);
    }
    let storage = Storage::open("s3://bucket/indexes/nightly").unwrap();
    let data = Dataset::new(1_500, 32, 2, 21);
    let config = quick_config(16, 8, 8, RerankKind::Fp16);
    let first = build(&storage, &data.vectors(), &config).await.generation;
    let second = build(&storage, &data.vectors(), &config).await.generation;
    assert_eq!(
        current_generation(&storage).await.unwrap().as_deref(),
        Some(second.as_str())
    );
    let listed = list_generations(&storage).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|info| info.complete && info.bytes > 0));

    let rolled_back = rollback(&storage, None).await.unwrap();
    assert_eq!(
        (rolled_back.from.as_str(), rolled_back.to.as_str()),
        (second.as_str(), first.as_str())
    );
    let nothing_older = rollback(&storage, None).await;
    assert!(
        matches!(
            nothing_older,
            Err(LifecycleError::NothingToRollBackTo { .. })
        ),
        "{nothing_older:?}"
    );

    let now_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let options = GcOptions {
        keep: 0,
        grace: Duration::from_secs(60),
        dry_run: false,
        now_unix_ms: now_unix_ms + 120_000,
    };
    let report = gc(&storage, &options).await.unwrap();
    assert_eq!(report.deleted, [second.as_str()]);
    assert_eq!(report.kept_reasons[&first], KeepReason::Current);
    assert!(report.bytes_deleted > 0);
    assert!(storage
        .list(&format!("generations/{second}"))
        .await
        .unwrap()
        .is_empty());
    let again = gc(&storage, &options).await.unwrap();
    assert!(again.deleted.is_empty(), "{again:?}");

    let reader = open(&storage).await;
    assert_eq!(reader.manifest().generation, first);
    let result = reader
        .search(&data.in_distribution[..32], &SearchParams::new(5, 4, 4))
        .await
        .unwrap();
    assert_eq!(result.hits.len(), 5);

    let gone = rollback(&storage, Some(&second)).await;
    assert!(
        matches!(gone, Err(LifecycleError::UnknownGeneration { .. })),
        "{gone:?}"
    );
}
