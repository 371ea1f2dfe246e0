#!/usr/bin/env bash
# 10M vectors through the local serverless stack (README "Scale and cost"):
# benches/scale_bench.sh [scale_bench.py options]. Builds the CLI, the index builder, the
# developer tool, the scanner and the Worker (cached target directory), then runs
# benches/scale_bench.py; data, index and stack state go under --work (default /tmp/scale10m,
# ~22 GB at 10M: keep it off the repository).
source "$(dirname "$0")/build_stack.sh"
exec python3 benches/scale_bench.py --clipedge "$CARGO_TARGET_DIR/release/clipedge" "$@"
