//! Per-query lookup-table construction: the fixed cost paid once per probed query.

use std::hint::black_box;

use clipedge_benches::{quick_criterion, random_quantizer, unit_vectors, CLIP_DIM};
use clipedge_linalg::fastscan::QuantizedLut;
use criterion::{criterion_group, criterion_main, Criterion};

fn lut_build(c: &mut Criterion) {
    let query = unit_vectors(1, CLIP_DIM, 1);
    let pq8 = random_quantizer(CLIP_DIM, 64, 8, 2);
    let pq4 = random_quantizer(CLIP_DIM, 128, 4, 3);
    let mut group = c.benchmark_group("lut_build");
    group.bench_function("inner_product_table/d512_m64_8bit", |b| {
        b.iter(|| pq8.inner_product_table(black_box(&query)))
    });
    group.bench_function("inner_product_table/d512_m128_4bit", |b| {
        b.iter(|| pq4.inner_product_table(black_box(&query)))
    });
    let float_lut = pq4.inner_product_table(&query);
    group.bench_function("quantized_lut_from_float/m128", |b| {
        b.iter(|| QuantizedLut::from_float(black_box(&float_lut)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = lut_build
}
criterion_main!(benches);
