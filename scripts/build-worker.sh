#!/usr/bin/env bash
# Builds the edge Worker (worker/) for wasm32 with worker-build, offline: wasm-bindgen-cli and
# esbuild are given by path, so worker-build downloads nothing. Output: worker/build/.
# Installs worker-build, wasm-bindgen-cli and wrangler (npm, with esbuild and workerd) into
# ~/.cache/clipedge when missing. Prints the .wasm size raw and gzip at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
TOOLS_DIR="${CLIPEDGE_TOOLS:-$HOME/.cache/clipedge/tools}"
NPM_DIR="${CLIPEDGE_WORKER_NPM:-$HOME/.cache/clipedge/npm-worker}"
source scripts/worker-tools.sh
install_worker_tools

rustup target add wasm32-unknown-unknown >/dev/null
cd worker
# simd128: tract's wasm kernels (about 2x faster encodes); workerd runs them.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+simd128" \
WASM_BINDGEN_BIN="$TOOLS_DIR/bin/wasm-bindgen" \
ESBUILD_BIN="$NPM_DIR/node_modules/@esbuild/linux-x64/bin/esbuild" \
  "$TOOLS_DIR/bin/worker-build" --release --no-opt
wasm=build/index_bg.wasm
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
printf 'worker wasm %s: %d bytes raw, %d bytes gzip -9\n' "$wasm" "$raw" "$gz"
