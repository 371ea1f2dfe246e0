#!/usr/bin/env bash
# Load test of `clipedge serve` on the demo index from a second process on loopback (wrk).
#   benches/serve_load.sh [DURATION_S=20] [CONNECTIONS=8]      (CLIPEDGE_BIN=path: that binary, no build)
# Prints wrk's report and one JSON line: {"qps","p50_ms","p99_ms","requests","errors",...}.
# Needs `apt-get install wrk`. Text queries rotate over a fixed list; every request runs the whole
# query path (encode, probe, scan, rerank, merge, dedup, catalog reads): there is no result cache.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20}"
CONNECTIONS="${2:-8}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipedge/target}"
# CLIPEDGE_BIN=path compares another build (e.g. a commit before a change) on the same machine.
if [ -n "${CLIPEDGE_BIN:-}" ]; then
  CLIPEDGE="$CLIPEDGE_BIN"
else
  cargo build --release --locked -p clipedge >&2
  CLIPEDGE="$CARGO_TARGET_DIR/release/clipedge"
fi
"$CLIPEDGE" demo --build-only >&2

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
"$CLIPEDGE" serve --index data/demo-index --bind 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 1 100); do
  [ -s "$work/serve.out" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
  sleep 0.1
done
url="$(sed -n 's/.*"listening":"\([^"]*\)".*/\1/p' "$work/serve.out" | head -1)"
[ -n "$url" ] || { echo "error: server did not report its address" >&2; cat "$work/serve.err" >&2; exit 1; }

cat >"$work/search.lua" <<'LUA'
local queries = { "a horse", "a red apple", "an electric guitar", "a butterfly", "riding a bike",
  "a penguin", "a house with a garden", "a world map", "a smiling face", "a cup of coffee" }
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"text":"%s","k":20}', queries[(n % #queries) + 1])
  return wrk.format("POST", "/v1/search", { ["Content-Type"] = "application/json" }, body)
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout + summary.errors.status
  io.write(string.format(
    '{"requests":%d,"errors":%d,"non_2xx":%d,"duration_s":%.1f,"qps":%.1f,"p50_ms":%.2f,"p90_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,"connections":%d}\n',
    summary.requests, errors, summary.errors.status, summary.duration / 1e6,
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3, CONNECTIONS))
end
LUA
sed -i "s/CONNECTIONS))/$CONNECTIONS))/" "$work/search.lua"
curl -fsS -X POST -H 'content-type: application/json' -d '{"text":"warm up","k":20}' "$url/v1/search" >/dev/null
THREADS=$(( CONNECTIONS < 2 ? CONNECTIONS : 2 ))
wrk --threads "$THREADS" --connections "$CONNECTIONS" --duration "${DURATION}s" --timeout 10s --latency \
  --script "$work/search.lua" "$url/v1/search" | tee "$work/wrk.out"
summary="$(tail -1 "$work/wrk.out")"
errors="$(echo "$summary" | sed -n 's/.*"errors":\([0-9]*\).*/\1/p')"
if [ "$errors" != "0" ]; then
  echo "error: $errors failed requests" >&2
  exit 1
fi
