#!/usr/bin/env bash
# The edge text tower measured inside workerd, in one command (README "The edge Worker"):
# builds the CLI, the developer tool, the scanner and the Worker (cached target directory), makes the
# B/32-architecture int8 package if missing (`clipedge model synth`: seeded weights written by
# our own code, the real CLIP tokenizer; no torch, no network), then runs benches/edge_bench.py,
# which starts the local stack, measures, stops it, prints a table and, as its last stdout line,
# one JSON object. Run it where scripts/test.sh has run (it installed the Worker toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
MODEL_DIR="${CLIPEDGE_BENCH_MODEL:-$HOME/.cache/clipedge/models/clip-b32-random-int8}"

cargo build --release --locked -p clipedge -p clipedge-lambda -p clipedge-dev >&2
bash scripts/build-worker.sh >&2
clipedge="$CARGO_TARGET_DIR/release/clipedge"
if [ ! -f "$MODEL_DIR/model.toml" ]; then
  "$clipedge" model synth --arch clip-b32 --tokenizer-from models/tiny-clip --out "$MODEL_DIR" >&2
fi
exec python3 benches/edge_bench.py --clipedge "$clipedge" --model "$MODEL_DIR" "$@"
