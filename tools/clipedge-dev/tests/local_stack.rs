//! `clipedge-dev local-stack` as a developer uses it: up, down, then up again in the same state
//! directory (the S3 server's files from the first run are still there, and the second `up` must
//! publish over them), each `up` proven by the Worker's `/v1/health` through the whole chain.
//!
//! Needs what the edge end-to-end tests need: the built Worker (`scripts/build-worker.sh`), the
//! tools `scripts/test.sh` installs, and `clipedge` and `clipedge-scanner` built beside this
//! binary (`cargo test --workspace` builds them).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn clipedge_dev() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clipedge-dev"))
}

fn clipedge() -> PathBuf {
    let binary = clipedge_dev().with_file_name("clipedge");
    assert!(
        binary.exists(),
        "{} is missing: cargo build -p clipedge (same target directory and profile)",
        binary.display()
    );
    binary
}

fn worker_build() -> PathBuf {
    let build = std::env::var("CLIPEDGE_WORKER_BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("worker/build"));
    assert!(
        build.join("index.js").exists(),
        "{} has no built Worker: run scripts/build-worker.sh (scripts/test.sh does)",
        build.display()
    );
    build
}

fn up(index: &Path, state: &Path) -> Value {
    let output = Command::new(clipedge_dev())
        .current_dir(workspace_root())
        .args([
            "local-stack",
            "up",
            "--port",
            "0",
            "--model",
            "models/tiny-clip",
        ])
        .arg("--index")
        .arg(index)
        .arg("--state")
        .arg(state)
        .arg("--worker-build")
        .arg(worker_build())
        .output()
        .expect("run clipedge-dev local-stack up");
    assert!(
        output.status.success(),
        "local-stack up failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().expect("up prints its stack");
    serde_json::from_str(line).expect("the stack line is JSON")
}

fn down(state: &Path) -> bool {
    Command::new(clipedge_dev())
        .args(["local-stack", "down", "--state"])
        .arg(state)
        .status()
        .expect("run clipedge-dev local-stack down")
        .success()
}

/// Stops the stack whatever the test's outcome.
struct DownOnDrop<'a>(&'a Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.join("stack.json").exists() {
            down(self.0);
        }
    }
}

fn health(worker_url: &str) -> Value {
    let address = worker_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect to the Worker");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /v1/health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|_| panic!("health is not JSON: {response}"))
}

fn is_running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn up_down_up_brings_the_stack_back() {
    let work = tempfile::tempdir().unwrap();
    let index = work.path().join("index");
    let built = Command::new(clipedge())
        .current_dir(workspace_root())
        .args([
            "demo",
            "--build-only",
            "--model",
            "models/tiny-clip",
            "--dir",
        ])
        .arg(&index)
        .output()
        .expect("run clipedge demo --build-only");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let state = work.path().join("stack");
    let _stop = DownOnDrop(&state);

    let first = up(&index, &state);
    let generation = health(first["worker_url"].as_str().unwrap())["generation"].clone();
    assert_eq!(first["generation"], generation);
    assert!(down(&state), "down after the first up");
    for process in first["processes"].as_array().unwrap() {
        let pid = process["pid"].as_u64().unwrap();
        assert!(
            !is_running(pid),
            "{} (pid {pid}) still runs",
            process["name"]
        );
    }
    assert!(!state.join("stack.json").exists());

    // The S3 server's files (index, model package) are still in the state directory.
    let second = up(&index, &state);
    let again = health(second["worker_url"].as_str().unwrap());
    assert_eq!(again["generation"], generation, "{again}");
    assert!(down(&state), "down after the second up");
}
