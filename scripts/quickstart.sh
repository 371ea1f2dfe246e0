#!/usr/bin/env bash
# The synthetic walk-through (README "Build and search synthetic data"): build the CLI, generate a
# seeded CLIP-like data set, build an index into a local directory (no cloud account) and search it
# with text-like queries; then build the demo index that `clipedge demo` (scripts/demo.sh) serves.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
DATA="${DATA:-data/quickstart}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
cargo build --release --locked -p clipedge
CLIPEDGE="$CARGO_TARGET_DIR/release/clipedge"
if [ ! -f "$DATA/gt.ivecs" ]; then
  "$CLIPEDGE" datagen --out "$DATA" --n "$N" --dim 512 --queries 500 --k 100 --seed 42
fi
rm -rf "$DATA/index"
"$CLIPEDGE" build --vectors "$DATA/base.fvecs" --out "$DATA/index" --nlist 256 --pq-m 64 --pq-bits 8 --rerank-vectors fp16
for nprobe in 16 64; do
  "$CLIPEDGE" search --index "$DATA/index" --queries "$DATA/queries.fvecs" --truth "$DATA/gt.ivecs" \
    --k 10 --nprobe "$nprobe" --rerank 10 --warmup 1
done
# The demo: caption embeddings of the bundled public-domain images, built once into
# data/demo-index (rebuilt only when the dataset or the model changes). Serve it with
# `scripts/demo.sh` (or `$CLIPEDGE demo`) and open http://127.0.0.1:8080/.
"$CLIPEDGE" demo --build-only
