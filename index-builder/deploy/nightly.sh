#!/usr/bin/env bash
# One nightly rebuild: find the CUDA libraries, run the job (it mirrors an s3:// source).
# Exit codes are the job's: 0 published, 3 refused by the recall gate, 2 error.
set -euo pipefail
: "${CLIPEDGE_INDEX:?}" "${CLIPEDGE_EMBEDDINGS_REMOTE:?}" "${CLIPEDGE_WORK:?}" "${CLIPEDGE_BIN:?}"

# cuBLAS and NVRTC from the pip wheels (python3 -m pip install nvidia-cublas nvidia-cuda-nvrtc);
# the driver provides libcuda. Never put a CUDA stubs/ folder on the path.
if cuda_lib=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$cuda_lib:${LD_LIBRARY_PATH:-}"
fi

mkdir -p "$CLIPEDGE_WORK/spill"
# An s3:// source is mirrored by the job itself into the spill folder (ranged GETs; the next
# night fetches only what changed). Source and index share the AWS_* credentials and endpoint;
# for a source elsewhere, sync it to local disk first and pass the folder instead.
exec "$CLIPEDGE_BIN" run \
  --source "$CLIPEDGE_EMBEDDINGS_REMOTE" \
  --out "$CLIPEDGE_INDEX" \
  --device auto \
  --config "${CLIPEDGE_CONFIG:-/opt/clipedge/nightly.toml}" \
  --spill-dir "$CLIPEDGE_WORK/spill"
