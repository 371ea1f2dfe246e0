#!/usr/bin/env bash
# The README's first command: on a fresh machine with Rust, builds what it needs and serves the
# demo page. It builds the CLI into the same cached target directory as quickstart.sh and test.sh
# (nothing is compiled twice), then runs `clipedge demo`, which builds the demo index once into
# data/demo-index (rebuilt only when the dataset or the model changes), prints the URL to open and
# serves until ctrl-c. Extra arguments go to `clipedge demo` (e.g. --bind 127.0.0.1:0).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
cargo build --release --locked -p clipedge
exec "$CARGO_TARGET_DIR/release/clipedge" demo "$@"
