//! Routing one query over every centroid, timed per path: the dispatching `dots_with_rows`
//! against its portable loop. Built for wasm32-wasip1 with `+simd128` it measures what the
//! Worker pays per query (run under Node's WASI: `benches/README.md`); natively, the AVX2 path.
//!
//! `routing_speed [ROWS] [RUNS]` (default 4096 rows of 512, 200 runs) prints one JSON line.

use std::time::Instant;

use clipedge_linalg::dot::{dots_with_rows, dots_with_rows_portable};

const DIM: usize = 512;

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    // A fixed pseudo-random matrix: the kernels' speed does not depend on the values.
    let mut state = 0x9e37_79b9u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) - 0.5
    };
    let matrix: Vec<f32> = (0..rows * DIM).map(|_| next()).collect();
    let query: Vec<f32> = (0..DIM).map(|_| next()).collect();
    let mut scores = Vec::with_capacity(rows);
    let mut time = |kernel: fn(&[f32], &[f32], usize, &mut Vec<f32>)| {
        let mut best = f64::INFINITY;
        let mut checksum = 0f32;
        for _ in 0..runs {
            scores.clear();
            let started = Instant::now();
            kernel(&query, &matrix, DIM, &mut scores);
            best = best.min(started.elapsed().as_secs_f64() * 1e3);
            checksum += scores[rows / 2];
        }
        (best, checksum)
    };
    let (dispatch_ms, dispatch_sum) = time(dots_with_rows);
    let (portable_ms, portable_sum) = time(dots_with_rows_portable);
    assert_eq!(
        dispatch_sum.to_bits(),
        portable_sum.to_bits(),
        "paths disagree"
    );
    println!(
        "{{\"rows\":{rows},\"dim\":{DIM},\"simd\":\"{}\",\"dispatch_best_ms\":{dispatch_ms:.4},\"portable_best_ms\":{portable_ms:.4},\"speedup\":{:.2}}}",
        clipedge_linalg::simd_level(),
        portable_ms / dispatch_ms
    );
}
