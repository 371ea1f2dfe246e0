#!/usr/bin/env bash
# Serves the demo (README "The demo"): builds the CLI into the same cached target directory as
# quickstart.sh and test.sh, so nothing is compiled twice, then runs `clipedge demo` (which builds
# the demo index once into data/demo-index). Extra arguments go to `clipedge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
cargo build --release --locked -p clipedge
exec "$CARGO_TARGET_DIR/release/clipedge" demo "$@"
