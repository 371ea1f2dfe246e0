"""Prints benches/wasm_engine.sh's results as a table, then all of them as one JSON line.
With --check: one line per build and kernel, exit 1 unless every module loaded and every kernel
equals the scalar reference bit for bit."""
import json
import sys

check = sys.argv[1] == "--check"
rows = [json.loads(line) for line in open(sys.argv[-1]) if line.strip()]
if check:
    failed = False
    for row in rows:
        if "error" in row:
            print(f"workerd {row['build']}: does not load or run: {row['error'][:300]}")
            failed = True
            continue
        for kernel, entry in row["kernels"].items():
            if kernel == "scalar":
                continue  # the reference itself
            ulps = entry["max_ulps_vs_scalar"]
            exact = all(value == 0 for value in ulps.values())
            failed |= not exact
            print(f"workerd {row['build']} build, {kernel} kernel: "
                  f"{'bit-identical to scalar' if exact else 'DIFFERS from scalar'} (max ulps by tokens {ulps})")
    sys.exit(1 if failed else 0)
print(f"{'host':<14} {'build':<8} {'flags':<13} {'kernel':<13} {'exact':<6} "
      f"{'4 tok':>12} {'10 tok':>12} {'32 tok':>12} {'77 tok':>12} {'gemm us':>8}")
for row in rows:
    head = f"{row['host'][:14]:<14} {row['build']:<8} {row['flags']:<13}"
    if "error" in row:
        print(f"{head} error: {row['error'][:120]}")
        continue
    for kernel, entry in row["kernels"].items():
        exact = all(ulps == 0 for ulps in entry["max_ulps_vs_scalar"].values())
        cells = " ".join(
            f"{entry['encode_ms'][t]['p50']:>5.1f}/{entry['encode_ms'][t]['p90']:<6.1f}"
            for t in ("4", "10", "32", "77"))
        print(f"{head} {kernel:<13} {'yes' if exact else 'NO':<6} {cells} {entry['gemm_2048x512x10_us']:>8}")
print("encode p50/p90 in ms after warm-up; exact = bit-identical to the scalar kernel at every length")
print(json.dumps(rows))
