//! `Storage` against a real S3-compatible server (s3s-fs) on 127.0.0.1: SigV4, range reads,
//! create-only puts and `If-Match` pointer swaps, and retries when the server goes away.
//!
//! `scripts/test.sh` installs s3s-fs and points `CLIPEDGE_S3S_FS` at it; without the binary this
//! test fails and says how to get it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clipedge_storage::{Bytes, Storage, StorageConfig, StorageError};

const ACCESS_KEY: &str = "clipedge-test";
const SECRET_KEY: &str = "clipedge-test-secret";

/// The server process; killed by PID when the test ends, pass or fail.
struct S3Server {
    child: Child,
    port: u16,
    _root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CLIPEDGE_S3S_FS") {
        return PathBuf::from(path);
    }
    let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/clipedge/tools/bin/s3s-fs");
    if cached.exists() {
        return cached;
    }
    panic!(
        "s3s-fs not found: run scripts/test.sh (it installs it), or \
         `cargo install s3s-fs --version 0.14.1 --features binary --locked` and set CLIPEDGE_S3S_FS"
    );
}

fn start_server(bucket: &str) -> S3Server {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(bucket)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(s3s_fs_binary())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "s3s-fs did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    S3Server {
        child,
        port,
        _root: root,
    }
}

fn point_aws_env_at(port: u16) {
    // Process-wide, so this file keeps everything in one test function.
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_REGION", "us-east-1");
}

#[tokio::test]
async fn s3_round_trip_conditional_writes_and_outage() {
    let mut server = start_server("bucket");
    point_aws_env_at(server.port);
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

    // Server gone: the read fails after the configured retries, with the attempts counted.
    let retries_before = storage.stats().snapshot().retries;
    let _ = server.child.kill();
    let _ = server.child.wait();
    let outage = storage.get_range("gen/shard.bin", 0..10).await;
    match outage {
        Err(StorageError::Backend { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected a backend error after retries, got {other:?}"),
    }
    assert_eq!(storage.stats().snapshot().retries - retries_before, 2);
}
