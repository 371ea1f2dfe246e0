//! 8-bit PQ scan of one inverted list (m = 64, 10k codes), reported as codes per second.

use std::hint::black_box;

use clipedge_benches::{quick_criterion, random_codes, random_quantizer, unit_vectors, CLIP_DIM};
use clipedge_linalg::{scan8, TopK};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const M: usize = 64;
const CODES: usize = 10_000;

fn scan8_list(c: &mut Criterion) {
    let pq = random_quantizer(CLIP_DIM, M, 8, 10);
    let lut = pq.inner_product_table(&unit_vectors(1, CLIP_DIM, 11));
    let codes = random_codes(CODES, M, 256, 12);
    let mut group = c.benchmark_group("scan8");
    group.throughput(Throughput::Elements(CODES as u64));
    for k in [10, 100] {
        group.bench_function(format!("scan_list/m64_10k_top{k}"), |b| {
            b.iter(|| {
                let mut top = TopK::new(k);
                scan8::scan_list(black_box(&lut), black_box(&codes), 0.0, 0, &mut top);
                top
            })
        });
    }
    group.bench_function("scan_list_scalar/m64_10k_top100", |b| {
        b.iter(|| {
            let mut top = TopK::new(100);
            scan8::scan_list_scalar(black_box(&lut), black_box(&codes), 0.0, 0, &mut top);
            top
        })
    });
    group.bench_function("score_all/m64_10k", |b| {
        b.iter(|| scan8::score_all(black_box(&lut), black_box(&codes)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = scan8_list
}
criterion_main!(benches);
