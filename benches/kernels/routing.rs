//! Routing a query: its inner product with every top-level centroid, then the best rows. The
//! f32 table of 1,024 × 512 is 2 MiB, read whole per query; the fp16 screen reads half of it
//! and rescores the few rows near the cut in f32 (same rows chosen).

use std::hint::black_box;

use clipedge_benches::{quick_criterion, unit_vectors, CLIP_DIM};
use clipedge_linalg::dot::{dot, dots_with_rows, top_rows_by_dot};
use clipedge_linalg::screen::Fp16Screen;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const PROBED: usize = 32;

fn routing(c: &mut Criterion) {
    let query = unit_vectors(1, CLIP_DIM, 60);
    let mut group = c.benchmark_group("routing");
    for rows in [1024usize, 16_384] {
        // Centroids are means of unit vectors: shorter than one, spread like the data.
        let centroids: Vec<f32> = unit_vectors(rows, CLIP_DIM, 61)
            .iter()
            .map(|value| value * 0.6)
            .collect();
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(format!("dot_per_row/{rows}x512"), |b| {
            b.iter(|| {
                black_box(&centroids)
                    .chunks_exact(CLIP_DIM)
                    .map(|row| dot(black_box(&query), row))
                    .fold(f32::MIN, f32::max)
            })
        });
        let mut scores = Vec::with_capacity(rows);
        group.bench_function(format!("dots_with_rows/{rows}x512"), |b| {
            b.iter(|| {
                scores.clear();
                dots_with_rows(
                    black_box(&query),
                    black_box(&centroids),
                    CLIP_DIM,
                    &mut scores,
                );
                scores.len()
            })
        });
        group.bench_function(format!("top_rows_by_dot/{rows}x512_top{PROBED}"), |b| {
            b.iter(|| top_rows_by_dot(black_box(&query), black_box(&centroids), CLIP_DIM, PROBED))
        });
        if let Some(screen) = Fp16Screen::new(&centroids, CLIP_DIM) {
            group.bench_function(format!("fp16_screen/{rows}x512_top{PROBED}"), |b| {
                b.iter(|| {
                    screen.top_rows(black_box(&query), black_box(&centroids), PROBED, |_| 0.0)
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = routing
}
criterion_main!(benches);
