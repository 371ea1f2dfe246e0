//! Real components for the scanner tests (and the storage layer's S3 test), started on
//! 127.0.0.1 and stopped by PID on drop: an S3-compatible server (`s3s-fs`), the Lambda emulator (`cargo lambda watch`) and the
//! prebuilt `clipedge-scanner` function attached to it; plus the in-process scan the scanner's
//! answers are compared with.
//!
//! `scripts/test.sh` installs the tools and builds the scanner. Without them these helpers
//! panic with a message saying so: a missing tool fails the tests, it never skips them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clipedge_format::{generation_path, GroupBlob, Hit, ListView, RerankKind};
use clipedge_index::route::ProbedList;
use clipedge_index::scan::{self, QueryTables};
use clipedge_index::IndexReader;
use clipedge_linalg::dot::dots_with_rows;

pub const S3_ACCESS_KEY: &str = "clipedge-test";
pub const S3_SECRET_KEY: &str = "clipedge-test-secret";
/// The function name the scanner registers under in the emulator (its function-URL path).
pub const FUNCTION_NAME: &str = "clipedge-scanner";

const RUN_TEST_SH: &str = "run scripts/test.sh (it installs the test tools and builds the scanner)";

fn home_cache(relative: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/clipedge")
        .join(relative)
}

/// A tool from its environment variable, else its cached install; panics naming the fix.
pub(crate) fn tool(env_name: &str, cached: &str, what: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_name) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "{what} not found at {} ({env_name}): {RUN_TEST_SH}",
            path.display()
        );
        return path;
    }
    let path = home_cache(cached);
    assert!(
        path.exists(),
        "{what} not found at {} (or set {env_name}): {RUN_TEST_SH}",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("pick a free port")
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on port {port}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (by PID) and reaped when dropped, pass or fail.
pub struct Process {
    child: Child,
    name: &'static str,
}

impl Process {
    /// Stops the process now (the Drop does the same, later).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running (it has not crashed or panicked out).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `s3s-fs` on a free port, with one bucket directory under a temporary root.
pub struct S3Server {
    pub process: Process,
    pub port: u16,
    root: tempfile::TempDir,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let binary = tool("CLIPEDGE_S3S_FS", "tools/bin/s3s-fs", "s3s-fs");
        let root = tempfile::tempdir().expect("create the s3s-fs root");
        std::fs::create_dir_all(root.path().join(bucket)).expect("create the bucket directory");
        let port = free_port();
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        wait_for_port(port, "s3s-fs", &mut child);
        S3Server {
            process: Process {
                child,
                name: "s3s-fs",
            },
            port,
            root,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file behind `s3://bucket/key` (s3s-fs keeps each object as a plain file).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// The `AWS_*` variables that point object_store at this server.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }
}

/// `cargo lambda watch` (the Lambda emulator) with the prebuilt `clipedge-scanner` attached
/// as function [`FUNCTION_NAME`].
///
/// The emulator runs with `--only-lambda-apis` and the function binary is started here
/// against its runtime API: `cargo lambda watch` would otherwise `cargo run` the function on
/// the first call, which compiles inside a test and waits on the build-directory lock.
pub struct LambdaEmulator {
    // Field order is drop order: the function first, then the emulator.
    pub function: Process,
    pub emulator: Process,
    pub port: u16,
    log_dir: tempfile::TempDir,
}

/// The repository root (the workspace holding `lambda/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `clipedge-scanner` binary of this build (same target directory and profile as the
/// running test), or `CLIPEDGE_SCANNER_BIN`.
pub fn scanner_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CLIPEDGE_SCANNER_BIN") {
        return PathBuf::from(path);
    }
    workspace_binary("clipedge-scanner", "clipedge-lambda")
}

/// A binary of this workspace built into the running test's target directory and profile.
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    // The test runs as <target>/<profile>/deps/<test>-<hash>.
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let binary = profile_dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: `cargo build -p {package} --bin {name}` with the same target directory, \
         or {RUN_TEST_SH}",
        binary.display()
    );
    binary
}

impl LambdaEmulator {
    /// Starts the emulator and the scanner with `env` (besides the runtime's own variables).
    pub fn start(env: &[(String, String)]) -> LambdaEmulator {
        let cargo_lambda = tool(
            "CLIPEDGE_CARGO_LAMBDA",
            "tools/cargo-lambda/bin/cargo-lambda",
            "cargo-lambda",
        );
        let scanner = scanner_binary();
        let log_dir = tempfile::tempdir().expect("create a log directory");
        let port = free_port();
        let emulator_log = std::fs::File::create(log_dir.path().join("emulator.log"))
            .expect("create the emulator log");
        let mut emulator_child = Command::new(cargo_lambda)
            .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            .current_dir(workspace_root().join("lambda"))
            .stdout(Stdio::null())
            .stderr(emulator_log)
            .spawn()
            .expect("start cargo lambda watch");
        wait_for_port(port, "cargo lambda watch", &mut emulator_child);
        let emulator = Process {
            child: emulator_child,
            name: "cargo lambda watch",
        };
        let function_log = std::fs::File::create(log_dir.path().join("function.log"))
            .expect("create the function log");
        let function_child = Command::new(scanner)
            .envs(
                env.iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt/{FUNCTION_NAME}"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION_NAME)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("CLIPEDGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(function_log)
            .spawn()
            .expect("start clipedge-scanner");
        LambdaEmulator {
            function: Process {
                child: function_child,
                name: "clipedge-scanner",
            },
            emulator,
            port,
            log_dir,
        }
    }

    /// The function URL of the scanner.
    pub fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/lambda-url/{FUNCTION_NAME}/scan",
            self.port
        )
    }

    /// What the scanner has logged so far.
    pub fn function_log(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("function.log")).unwrap_or_default()
    }
}

/// The top `k` hits over exactly `list_ids` (in that order), computed in this process with
/// the same routing and scan functions the scanner uses: the reference its answers must equal.
pub async fn scan_lists_in_process(
    reader: &IndexReader,
    blobs: &[Arc<GroupBlob>],
    query: &[f32],
    list_ids: &[u32],
    k: usize,
    rerank: usize,
) -> Vec<Hit> {
    let manifest = reader.manifest();
    let mut probes = Vec::with_capacity(list_ids.len());
    for list_id in list_ids {
        let blob = blobs
            .iter()
            .find(|blob| {
                blob.first_list <= *list_id && *list_id < blob.first_list + blob.lists.len() as u32
            })
            .expect("a group holds the list");
        let mut biases = Vec::new();
        dots_with_rows(query, &blob.centroids, blob.dim, &mut biases);
        let local = (*list_id - blob.first_list) as usize;
        probes.push(ProbedList {
            list_id: *list_id,
            location: blob.lists[local],
            bias: biases[local],
        });
    }
    let mut list_bytes = Vec::with_capacity(probes.len());
    for probe in &probes {
        let shard = &manifest.shards[probe.location.shard as usize];
        let start = probe.location.offset;
        let bytes = reader
            .storage()
            .get_range(
                &generation_path(&manifest.generation, &shard.path),
                start..start + probe.location.length as u64,
            )
            .await
            .expect("read a list in process");
        list_bytes.push(bytes);
    }
    let mut lists = Vec::with_capacity(probes.len());
    for (probe, bytes) in probes.iter().zip(&list_bytes) {
        let view = ListView::parse(bytes, &reader.expectation(probe)).expect("a valid list");
        lists.push((view, probe.bias));
    }
    let count = manifest.count as usize;
    let k = k.min(count);
    let rerank_on = rerank > 0 && manifest.rerank != RerankKind::None;
    let candidate_count = if rerank_on {
        (k * rerank).min(count)
    } else {
        k
    };
    let tables = QueryTables::new(reader.pq(), query);
    let candidates = scan::scan_lists(&tables, &lists, candidate_count, false);
    scan::finish(query, &lists, &candidates, k, rerank_on)
        .into_iter()
        .map(|(hit, _, _)| hit)
        .collect()
}
