//! Top-k selection over a stream of 100k random scores, as when merging many lists.

use std::hint::black_box;

use clipedge_benches::quick_criterion;
use clipedge_benches::uniform_vec;
use clipedge_linalg::TopK;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SCORES: usize = 100_000;

fn topk(c: &mut Criterion) {
    let scores = uniform_vec(SCORES, 40);
    let mut group = c.benchmark_group("topk");
    group.throughput(Throughput::Elements(SCORES as u64));
    for k in [10, 1000] {
        group.bench_function(format!("push_100k/k{k}"), |b| {
            b.iter(|| {
                let mut top = TopK::new(k);
                for (key, &score) in black_box(&scores).iter().enumerate() {
                    top.push(score, key as u64);
                }
                top.into_sorted()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = topk
}
criterion_main!(benches);
