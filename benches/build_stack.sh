#!/usr/bin/env bash
# Builds what the local-stack benchmarks run (sourced by affinity_bench.sh and scale_bench.sh):
# the whole workspace in release — as scripts/test.sh resolves it (a -p subset would compile
# tract again) — and the Worker. Leaves CARGO_TARGET_DIR exported and the cwd at the repo root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
cargo build --release --locked --workspace >&2
bash scripts/build-worker.sh >&2
