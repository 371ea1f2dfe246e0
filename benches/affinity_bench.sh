#!/usr/bin/env bash
# Scanner cache affinity and scanner calls per query through the local stack (README "Scale and
# cost"): benches/affinity_bench.sh [affinity_bench.py options]. Builds the CLI, the developer
# tool, the scanner and the Worker (cached target directory), then runs benches/affinity_bench.py;
# its data and indexes go under --work (default /tmp/aff, ~0.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
# The whole workspace, as scripts/test.sh resolves it (a -p subset would compile tract again).
cargo build --release --locked --workspace >&2
bash scripts/build-worker.sh >&2
exec python3 benches/affinity_bench.py --clipedge "$CARGO_TARGET_DIR/release/clipedge" "$@"
