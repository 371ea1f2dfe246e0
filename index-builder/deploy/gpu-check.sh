#!/usr/bin/env bash
# The GPU checks of the nightly job in one go, on a GPU box (docs/nightly.md, "GPU check"):
#   1. device-check: GPU against CPU (labels, codes, k-means and balanced k-means inertia),
#      assign/encode throughput at 65,536 lists, balanced k-means at 65,536 lists timed;
#   2. a whole `run` on seeded 10M × 512 float16 embeddings (synth), nightly settings.
# Usage: gpu-check.sh BINARY OUT_DIR [N_RUN]. Each step has its own time limit
# (CHECK_TIMEOUT_S, RUN_TIMEOUT_S); BALANCED_K=0 skips the timed 65,536-list balanced k-means
# (about a minute); PQ_M sets the run's sub-quantizers (64). Results land in OUT_DIR as JSON
# plus stderr logs.
set -uo pipefail
bin=$1
out=$2
n_run=${3:-10000000}
mkdir -p "$out"

# cuBLAS and NVRTC from the pip wheels; the driver provides libcuda.
if cuda_lib=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$cuda_lib:${LD_LIBRARY_PATH:-}"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
nproc | tee -a "$out/gpu.txt"

timeout "${CHECK_TIMEOUT_S:-240}" "$bin" device-check --n 4194304 --compare 20000 --nlist 65536 \
  --train-k 1024 --balanced-compare-k 1024 --balanced-k "${BALANCED_K:-65536}" \
  > "$out/device-check.json" 2> >(tee "$out/device-check.err" >&2)
echo "device-check exit $?"
cat "$out/device-check.json"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
"$bin" synth --out "$work/emb" --n "$n_run" --text 100 > "$out/synth.json" 2> "$out/synth.err"
echo "synth exit $? in $(( $(date +%s) - started ))s"
timeout "${RUN_TIMEOUT_S:-300}" "$bin" run --source "$work/emb" --out "$work/index" --device cuda \
  --nlist 65536 --pq-m "${PQ_M:-64}" --pq-bits 4 --rerank-vectors int8 --gate-sample 100 \
  --spill-dir "$work/spill" \
  > "$out/run.json" 2> >(tee "$out/run.err" >&2)
echo "run exit $?"
cat "$out/run.json"
du -sh "$work/emb" "$work/index" 2>/dev/null
