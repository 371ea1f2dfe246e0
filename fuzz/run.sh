#!/usr/bin/env bash
# Fuzzes each target for SECONDS (default 120), then minimizes its corpus back into
# fuzz/corpus/<target>/ (what is committed). Needs nightly and cargo-fuzz (docs/fuzzing.md):
#   fuzz/run.sh 300                  # every target, 5 minutes each
#   fuzz/run.sh 60 routing list_blob # some targets
# Crashes land in fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/ once fixed.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-120}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/nightly"
# No sanitizer: the decoders are safe Rust, so what is looked for is panics, overflows (checked
# in this build), hangs and the allocation cap; ASan would only slow the search.
cargo +nightly fuzz build -s none --target-dir "$target_dir"
bin_dir="$target_dir/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
mkdir -p logs
for target in "${targets[@]}"; do
  mkdir -p "corpus-raw/$target" "artifacts/$target"
  status=0
  # One in-process fuzzer (no -jobs), niced: this runs on a shared 2-core machine.
  nice -n 10 "$bin_dir/$target" "corpus-raw/$target" "corpus/$target" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
    >"logs/$target.log" 2>&1 || status=$?
  # Minimize: keep only inputs that add coverage, merged into the committed corpus.
  mkdir -p "corpus-min/$target"
  "$bin_dir/$target" -merge=1 "corpus-min/$target" "corpus/$target" "corpus-raw/$target" \
    >"logs/$target.merge.log" 2>&1
  rm -rf "corpus/$target" && mv "corpus-min/$target" "corpus/$target"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$target.log" | tail -1)"
  printf '%-14s exit %-3s runs %-10s corpus %4s files %6s bytes\n' "$target" "$status" "${runs:-?}" \
    "$(ls "corpus/$target" | wc -l)" "$(cat "corpus/$target"/* | wc -c)"
done
rmdir corpus-min 2>/dev/null || true
