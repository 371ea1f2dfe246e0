//! The search page in a real browser: Debian's chromium driven by playwright-core (node), against
//! `clipedge serve` on the demo index. Fails (never skips) when node, chromium or playwright-core
//! is missing: `scripts/test.sh` installs them. Screenshots go to `test-artifacts/` (gitignored).

mod support;

use std::process::Command;

use support::{demo_index, repo_root, Server};

#[test]
fn search_page_works_in_chromium() {
    let server = Server::start(&demo_index());
    let artifacts = repo_root().join("test-artifacts/browser");
    let output = Command::new("node")
        .arg(repo_root().join("tests/browser/search.mjs"))
        .arg("--url")
        .arg(&server.base)
        .arg("--out")
        .arg(&artifacts)
        .output()
        .expect("run node (scripts/test.sh installs nodejs, chromium and playwright-core)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "browser test failed (server pid {}):\n{stdout}\n{stderr}",
        server.pid()
    );
    assert!(artifacts.join("search.png").is_file());
}
