//! Requests both `/v1` fronts (`clipedge serve` and the edge Worker) must refuse the same way:
//! one table, run against each front by the tests, so their answers cannot drift apart.

use crate::lambda_harness::{workspace_binary, workspace_root};

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
            "k 101",
            json(serde_json::json!({"text": "dog", "k": 101})),
            400,
            "k_out_of_range",
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
        use std::io::BufRead;
        let mut child = std::process::Command::new(clipedge())
            .current_dir(workspace_root())
            .args([
                "serve",
                "--model",
                model,
                "--bind",
                "127.0.0.1:0",
                "--index",
            ])
            .arg(index)
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
