// The measurements, shared by the workerd and Node hosts: given an instantiated engine-check
// module, check each compiled-in kernel against the scalar reference, then time encodes by
// token count and one GEMM shape per kernel. Timings are per call, in order, so tier-up shows.
const KERNELS = { 1: "scalar", 2: "simd128", 4: "relaxed-simd", 8: "relaxed-2dots" };

function timed(run) {
  const start = performance.now();
  const status = run();
  return [performance.now() - start, status];
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

export function runAll(exports, { runs = 30, tokenCounts = [4, 10, 32, 77], check = false } = {}) {
  const [setupMs, setupStatus] = timed(() => exports.setup(7));
  if (setupStatus !== 0) throw new Error(`setup failed: ${setupStatus}`);
  const compiled = exports.kernels();
  const kernels = Object.keys(KERNELS).map(Number).filter((code) => compiled & code);
  const result = { setup_ms: setupMs, relaxed_one_dot: exports.relaxed_one_dot(), best_kernel: exports.best_kernel(), kernels: {} };
  for (const code of kernels) {
    const name = KERNELS[code];
    const entry = { max_ulps_vs_scalar: {}, encode_ms: {}, first_runs_ms: {} };
    for (const tokens of tokenCounts) entry.max_ulps_vs_scalar[tokens] = exports.max_ulps(code, tokens);
    result.kernels[name] = entry;
    if (check) continue;
    // The scalar reference is slow; it only needs a few runs to place it.
    const kernelRuns = code === 1 ? Math.min(runs, 5) : runs;
    for (const tokens of tokenCounts) {
      const times = [];
      for (let run = 0; run < kernelRuns; run++) {
        const [ms, status] = timed(() => exports.encode(code, tokens));
        if (status !== 0) throw new Error(`encode ${name} ${tokens} failed: ${status}`);
        times.push(ms);
      }
      entry.first_runs_ms[tokens] = times.slice(0, 3).map((ms) => +ms.toFixed(1));
      // Steady state: the first third is warm-up (tier-up happens there if it happens at all).
      const steady = times.slice(Math.floor(times.length / 3)).sort((a, b) => a - b);
      entry.encode_ms[tokens] = {
        p50: +percentile(steady, 0.5).toFixed(2),
        p90: +percentile(steady, 0.9).toFixed(2),
      };
    }
    // The MLP's first GEMM at 10 tokens (2048 × 512), 20 times.
    const [gemmMs] = timed(() => exports.gemm(code, 2048, 512, 10, 20));
    entry.gemm_2048x512x10_us = +((gemmMs / 20) * 1000).toFixed(0);
  }
  result.memory_mib = +(exports.memory_bytes() / 1048576).toFixed(1);
  return result;
}
