#!/usr/bin/env bash
# Builds the edge Worker (worker/) for wasm32 with worker-build, offline: wasm-bindgen-cli and
# esbuild are given by path, so worker-build downloads nothing. Output: worker/build/.
# Installs worker-build, wasm-bindgen-cli and wrangler (npm, with esbuild and workerd) into
# ~/.cache/clipedge when missing. Prints the .wasm size raw and gzip at the end.
#
# CLIPEDGE_WASM_SIMD picks the int8 text kernels compiled in: `relaxed` (default: simd128 plus
# the relaxed int8 dot product, which workerd's V8 runs bit-identically to the scalar kernel and
# about twice as fast at 77 tokens; `bash benches/wasm_engine.sh`) or `simd128` (for an engine
# without relaxed SIMD: a module with relaxed instructions does not load at all there).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
TOOLS_DIR="${CLIPEDGE_TOOLS:-$HOME/.cache/clipedge/tools}"
NPM_DIR="${CLIPEDGE_WORKER_NPM:-$HOME/.cache/clipedge/npm-worker}"
source scripts/worker-tools.sh
install_worker_tools

rustup target add wasm32-unknown-unknown >/dev/null
cd worker
case "${CLIPEDGE_WASM_SIMD:-relaxed}" in
  relaxed) target_features="+simd128,+relaxed-simd" ;;
  simd128) target_features="+simd128" ;;
  *) echo "CLIPEDGE_WASM_SIMD must be relaxed or simd128, not ${CLIPEDGE_WASM_SIMD}" >&2; exit 2 ;;
esac
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=$target_features" \
WASM_BINDGEN_BIN="$TOOLS_DIR/bin/wasm-bindgen" \
ESBUILD_BIN="$NPM_DIR/node_modules/@esbuild/linux-x64/bin/esbuild" \
  "$TOOLS_DIR/bin/worker-build" --release --no-opt
wasm=build/index_bg.wasm
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
printf 'worker wasm %s (%s): %d bytes raw, %d bytes gzip -9\n' "$wasm" "$target_features" "$raw" "$gz"
