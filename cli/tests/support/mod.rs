//! Shared by the server tests: the demo index (built once per test binary with the real MiniLM
//! model), a `clipedge serve` child process on a free loopback port, and a minimal HTTP/1.1
//! client over `TcpStream` (no client library needed for JSON on loopback).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn model_dir() -> PathBuf {
    repo_root().join("models/minilm-l6-v2")
}

/// The demo index in the test target directory, built on first use (cached across runs: the
/// demo command rebuilds only when the dataset or the model changes).
pub fn demo_index() -> PathBuf {
    static INDEX: OnceLock<PathBuf> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-index");
            let output = Command::new(env!("CARGO_BIN_EXE_clipedge"))
                .arg("demo")
                .arg("--build-only")
                .arg("--dir")
                .arg(&dir)
                .arg("--dataset")
                .arg(repo_root().join("demo"))
                .arg("--model")
                .arg(model_dir())
                .output()
                .expect("run clipedge demo --build-only");
            assert!(
                output.status.success(),
                "clipedge demo --build-only failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            dir
        })
        .clone()
}

/// A `clipedge serve` process, killed (by its PID) when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub port: u16,
}

impl Server {
    pub fn start(index: &Path) -> Server {
        Self::start_with(index, &model_dir()).expect("clipedge serve starts")
    }

    /// Starts the server; on failure returns its stderr.
    pub fn start_with(index: &Path, model: &Path) -> Result<Server, String> {
        Self::start_with_args(index, model, &[])
    }

    /// [`Server::start_with`] with more `clipedge serve` arguments.
    pub fn start_with_args(
        index: &Path,
        model: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Server, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_clipedge"))
            .arg("serve")
            .arg("--index")
            .arg(index)
            .arg("--model")
            .arg(model)
            .arg("--bind")
            .arg("127.0.0.1:0")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clipedge serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        if line.trim().is_empty() {
            let status = child.wait().expect("wait for clipedge serve");
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("read stderr");
            return Err(format!("exit {status}: {stderr}"));
        }
        let listening: serde_json::Value = serde_json::from_str(&line).expect("listening json");
        let base = listening["listening"]
            .as_str()
            .expect("listening url")
            .to_string();
        let port = base.rsplit(':').next().unwrap().parse().expect("port");
        Ok(Server { child, base, port })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not json ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn request(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(key, value)| {
        key.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|window| window == b"\r\n") else {
            return body;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 2 + size + 2..];
    }
}

pub fn search(port: u16, body: &serde_json::Value) -> Response {
    request(
        port,
        "POST",
        "/v1/search",
        Some(body.to_string().as_bytes()),
    )
}
