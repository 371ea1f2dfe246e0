#!/usr/bin/env bash
# The project's test command (README "Tests"): installs what the tests need, idempotently and
# offline-friendly, then runs formatting, lints, the wasm checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Costly build output lives outside the clone so a warm machine re-runs fast; safe to start empty.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-unknown-unknown wasm32-wasip1 >/dev/null
if ! command -v node >/dev/null 2>&1; then
  # Node runs the wasm32-wasip1 kernel tests (its built-in WASI); Debian's package is enough.
  apt-get update -qq && apt-get install -y -qq nodejs >/dev/null
fi
# The aarch64 (Graviton Lambda) kernel tests: a cross linker and qemu's user-mode emulator.
rustup target add aarch64-unknown-linux-gnu >/dev/null
if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi
# `aarch64_linalg clippy|test ARGS…`: cargo for clipedge-linalg on aarch64, linked by the cross gcc
# and run under qemu (no binfmt needed). The same target dir: the triple keeps outputs apart.
aarch64_linalg() {
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
    cargo "$1" --locked --target aarch64-unknown-linux-gnu -p clipedge-linalg "${@:2}"
}

step "s3-compatible server (s3s-fs) for the storage tests"
TOOLS_DIR="${CLIPEDGE_TOOLS:-$HOME/.cache/clipedge/tools}"
if [ ! -x "$TOOLS_DIR/bin/s3s-fs" ]; then
  # 0.14.1 is the newest release that builds with Rust 1.95; about 7 CPU-minutes, once.
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$TOOLS_DIR"
fi
export CLIPEDGE_S3S_FS="$TOOLS_DIR/bin/s3s-fs"

step "lambda emulator (cargo-lambda) for the scanner tests"
if [ ! -x "$TOOLS_DIR/cargo-lambda/bin/cargo-lambda" ]; then
  # PyPI's cargo-lambda wheel ships the binary (and zig); a venv keeps it out of the system Python.
  rm -rf "$TOOLS_DIR/cargo-lambda"
  python3 -m venv "$TOOLS_DIR/cargo-lambda" || {
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$TOOLS_DIR/cargo-lambda"
  }
  "$TOOLS_DIR/cargo-lambda/bin/pip" install --quiet cargo-lambda==1.9.2
fi
export CLIPEDGE_CARGO_LAMBDA="$TOOLS_DIR/cargo-lambda/bin/cargo-lambda"

step "browser test tools (Debian chromium + npm playwright-core) for the demo page test"
# playwright's own browser download does not work offline; it drives the system chromium instead.
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
export CLIPEDGE_PLAYWRIGHT_DIR="$HOME/.cache/clipedge/npm-browser"
if [ ! -f "$CLIPEDGE_PLAYWRIGHT_DIR/node_modules/playwright-core/package.json" ]; then
  mkdir -p "$CLIPEDGE_PLAYWRIGHT_DIR"
  npm install --prefix "$CLIPEDGE_PLAYWRIGHT_DIR" --no-audit --no-fund --silent playwright-core@1.65.1
fi

step "clip-retrieval's client (clip_client.py from the PyPI wheel) for the compatibility tests"
# Only clip_client.py is taken from the wheel and loaded as a file (tests/clip_client/check.py):
# the package itself would pull torch. It needs requests; a venv provides it when the system
# Python lacks it. Cached: once both are there, this step needs no network.
CLIP_CLIENT_DIR="$HOME/.cache/clipedge/clip-retrieval"
CLIP_RETRIEVAL_VERSION=2.45.0
export CLIPEDGE_CLIP_CLIENT="$CLIP_CLIENT_DIR/$CLIP_RETRIEVAL_VERSION/clip_client.py"
if [ ! -f "$CLIPEDGE_CLIP_CLIENT" ]; then
  wheel_dir="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --dest "$wheel_dir" "clip-retrieval==$CLIP_RETRIEVAL_VERSION"
  mkdir -p "$(dirname "$CLIPEDGE_CLIP_CLIENT")"
  python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("clip_retrieval/clip_client.py"))' \
    "$wheel_dir"/clip_retrieval-*.whl > "$CLIPEDGE_CLIP_CLIENT.partial"
  mv "$CLIPEDGE_CLIP_CLIENT.partial" "$CLIPEDGE_CLIP_CLIENT"
  rm -rf "$wheel_dir"
fi
if python3 -c 'import requests' 2>/dev/null; then
  export CLIPEDGE_CLIP_PYTHON=python3
else
  if [ ! -x "$CLIP_CLIENT_DIR/venv/bin/python" ] || ! "$CLIP_CLIENT_DIR/venv/bin/python" -c 'import requests' 2>/dev/null; then
    rm -rf "$CLIP_CLIENT_DIR/venv"
    python3 -m venv "$CLIP_CLIENT_DIR/venv"
    "$CLIP_CLIENT_DIR/venv/bin/pip" install --quiet requests
  fi
  export CLIPEDGE_CLIP_PYTHON="$CLIP_CLIENT_DIR/venv/bin/python"
fi

step "edge Worker toolchain (worker-build, wasm-bindgen-cli, Node 22 + wrangler with workerd)"
NPM_DIR="${CLIPEDGE_WORKER_NPM:-$HOME/.cache/clipedge/npm-worker}"
source scripts/worker-tools.sh
install_worker_tools

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The NEON kernels only compile for aarch64.
aarch64_linalg clippy --all-targets -- -D warnings

step "wasm32: the edge Worker (worker-build; the end-to-end test runs it in workerd)"
# This also builds everything the Worker uses for wasm32: format, linalg, index (routing),
# protocol, api and the text tower.
bash scripts/build-worker.sh

step "wasm32 in workerd: the simd128 and relaxed-SIMD builds load, every kernel equals the scalar one"
# The Worker ships the relaxed-SIMD build; a V8 that miscompiled the relaxed dot (Node 20's did)
# would fail here before any answer could be wrong.
bash benches/wasm_engine.sh --check

test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT

step "wasm32 + simd128: kernel tests under node WASI"
# The text encoder runs in wasm in the edge end-to-end test (workerd, tract's simd128 kernels),
# checked against the native encoder; its own parity suite can run here too with
# `wasi_test -p clipedge-text` (another tract build, ~9 min on 2 cores, left out of CI for time).
# Node's V8 (20 and 22) aborts now and then in incremental GC marking while a large wasm memory
# grows (about half the runs of the encoder tests: SIGSEGV or "Fatal error" after or between
# passing tests); non-incremental, single-threaded GC made 22 of 22 runs pass.
wasi_test() {
  RUSTFLAGS="-C target-feature=+simd128" \
  CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings --no-incremental-marking --single-threaded-gc $PWD/scripts/wasi-run.mjs" \
    cargo test --locked --target wasm32-wasip1 --target-dir "$CARGO_TARGET_DIR/wasm-simd" "$@" 2>&1 \
    | tee -a "$test_log"
}
wasi_test -p clipedge-linalg --no-default-features --lib
# The format's decoders on a 32-bit usize, as the Worker runs them (lengths that overflow there).
wasi_test -p clipedge-format

step "aarch64 (NEON): kernel tests under qemu-aarch64"
# The scanner Lambda can run on Graviton; the NEON kernels must equal the scalar ones there too.
# Emulated, so no timings. Balanced k-means training (no NEON code of ours; ~90 s under qemu)
# is left out; the gemm tests still run matrixmultiply's aarch64 kernels. With the clippy step
# above: 2.5-3.5 min from an empty target dir on 2 cores (clippy 1.5-2, test build 0.6-0.8,
# tests 0.5-0.6), 40 s warm; the apt install ~20 s once.
aarch64_linalg test --lib --test kernels -- --skip balanced_training 2>&1 | tee -a "$test_log"

step "the load soak's answer classifier (benches/soak_test.py; the soak itself: benches/soak.sh)"
python3 benches/soak_test.py

step "tests"
# cargo test builds the `clipedge` and `clipedge-scanner` binaries (their packages have
# integration tests) before any test runs; the scanner and edge tests start them as processes
# (no `cargo run` inside a test). A separate `cargo build -p …` would resolve other features
# and compile tract a second time.
cargo test --workspace --locked 2>&1 | tee -a "$test_log"
# One closing line for the whole run (cargo prints one per test binary, the last often a doc-test
# binary with nothing in it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
