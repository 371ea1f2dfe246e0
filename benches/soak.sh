#!/usr/bin/env bash
# Load and fault soak of the local serverless stack (README "Load and fault soak"):
#   benches/soak.sh [--warm S] [--fault S] [--quiet S] [--connections N] [--keep-logs DIR]
# Builds the CLI, the developer tool, the scanner and the Worker (cached target directory), then
# runs benches/soak.py: `wrk` against `clipedge-dev local-stack` while the scanner, the Lambda
# emulator and the S3 server are killed and restarted, then frozen and thawed, every answer
# checked against `clipedge serve` on the same index. Prints a table per phase and per process
# and, last, one JSON line; exits 1 on a wrong answer, an error outside the fault phase, an
# answer past the Worker's deadline or memory growth. About 4.5 minutes with the defaults.
# Needs `apt-get install wrk` and the Worker toolchain scripts/test.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
command -v wrk >/dev/null || { echo "error: wrk is missing (apt-get install wrk)" >&2; exit 2; }
# The whole workspace, as scripts/test.sh resolves it: a -p subset would pick other features and
# compile tract again.
cargo build --release --locked --workspace >&2
bash scripts/build-worker.sh >&2
exec python3 benches/soak.py --clipedge "$CARGO_TARGET_DIR/release/clipedge" "$@"
