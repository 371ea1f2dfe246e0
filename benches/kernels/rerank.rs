//! Exact rerank of 1000 candidates at d = 512: fp16 through the dispatcher (F16C here)
//! against the scalar reference, and the int8 copies.

use std::hint::black_box;

use clipedge_benches::{quick_criterion, unit_vectors, CLIP_DIM};
use clipedge_linalg::rerank::{
    dot_fp16_le, dot_fp16_le_scalar, dot_fp16_le_x4, dot_int8, dot_int8_x4, encode_fp16,
    encode_int8,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::Rng;

const CANDIDATES: usize = 1000;

/// `(query, little-endian fp16 bytes) -> inner product`.
type Fp16Kernel = fn(&[f32], &[u8]) -> f32;

fn rerank(c: &mut Criterion) {
    let query = unit_vectors(1, CLIP_DIM, 50);
    let stored = unit_vectors(CANDIDATES, CLIP_DIM, 51);
    let fp16: Vec<u8> = stored
        .chunks_exact(CLIP_DIM)
        .flat_map(encode_fp16)
        .flat_map(u16::to_le_bytes)
        .collect();
    let int8: Vec<(f32, Vec<u8>)> = stored
        .chunks_exact(CLIP_DIM)
        .map(|vector| {
            let (scale, values) = encode_int8(vector);
            (scale, values.iter().map(|v| *v as u8).collect())
        })
        .collect();

    let mut group = c.benchmark_group("rerank");
    group.throughput(Throughput::Elements(CANDIDATES as u64));
    let fp16_kernels: [(&str, Fp16Kernel); 2] = [
        ("dot_fp16_le/d512_1000_dispatch", dot_fp16_le),
        ("dot_fp16_le/d512_1000_scalar", dot_fp16_le_scalar),
    ];
    for (name, kernel) in fp16_kernels {
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(&fp16)
                    .chunks_exact(2 * CLIP_DIM)
                    .map(|bytes| kernel(black_box(&query), bytes))
                    .sum::<f32>()
            })
        });
    }
    group.bench_function("dot_int8/d512_1000", |b| {
        b.iter(|| {
            black_box(&int8)
                .iter()
                .map(|(scale, values)| dot_int8(black_box(&query), *scale, values))
                .sum::<f32>()
        })
    });
    group.finish();

    // A query's candidates are scattered over its lists: 200 random copies of 64 MiB, one at a
    // time against four in flight.
    let scattered_rows = 65_536;
    let pool: Vec<u8> = unit_vectors(scattered_rows, CLIP_DIM, 52)
        .chunks_exact(CLIP_DIM)
        .flat_map(encode_fp16)
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut rng = clipedge_benches::seeded(53);
    let picks: Vec<usize> = (0..200)
        .map(|_| rng.random_range(0..scattered_rows))
        .collect();
    let row = |index: usize| &pool[index * 2 * CLIP_DIM..(index + 1) * 2 * CLIP_DIM];
    let mut group = c.benchmark_group("rerank_scattered");
    group.throughput(Throughput::Elements(picks.len() as u64));
    group.bench_function("dot_fp16_le/200_of_64MiB_one_by_one", |b| {
        b.iter(|| {
            picks
                .iter()
                .map(|pick| dot_fp16_le(black_box(&query), row(*pick)))
                .sum::<f32>()
        })
    });
    group.bench_function("dot_fp16_le_x4/200_of_64MiB", |b| {
        b.iter(|| {
            picks
                .chunks_exact(4)
                .flat_map(|quad| {
                    dot_fp16_le_x4(black_box(&query), [0, 1, 2, 3].map(|i| row(quad[i])))
                })
                .sum::<f32>()
        })
    });
    group.bench_function("dot_int8_x4/d512_1000", |b| {
        b.iter(|| {
            int8.chunks_exact(4)
                .flat_map(|quad| {
                    let copies = [0, 1, 2, 3].map(|i| (quad[i].0, &quad[i].1[..]));
                    dot_int8_x4(black_box(&query), copies)
                })
                .sum::<f32>()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = rerank
}
criterion_main!(benches);
