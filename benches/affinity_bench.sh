#!/usr/bin/env bash
# Scanner cache affinity and scanner calls per query through the local stack (README "Scale and
# cost"): benches/affinity_bench.sh [affinity_bench.py options]. Builds the CLI, the developer
# tool, the scanner and the Worker (cached target directory), then runs benches/affinity_bench.py;
# its data and indexes go under --work (default /tmp/aff, ~0.5 GB).
source "$(dirname "$0")/build_stack.sh"
exec python3 benches/affinity_bench.py --clipedge "$CARGO_TARGET_DIR/release/clipedge" "$@"
