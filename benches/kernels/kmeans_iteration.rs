//! Coarse-quantizer training cost: one Lloyd assignment step at index-build scale
//! (16k x 512 points to 1024 centroids), and a small end-to-end `KMeans::train`.

use std::hint::black_box;
use std::time::Duration;

use clipedge_benches::{quick_criterion, unit_vectors, CLIP_DIM};
use clipedge_linalg::{gemm, KMeans, KMeansConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn kmeans_iteration(c: &mut Criterion) {
    let points = 16_384;
    let centroids = 1024;
    let data = unit_vectors(points, CLIP_DIM, 30);
    let centroid_data = unit_vectors(centroids, CLIP_DIM, 31);
    let mut group = c.benchmark_group("kmeans_iteration");
    // Each call is ~17 GFLOP; ten samples need a longer window than the default.
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(points as u64));
    group.bench_function("nearest_centroids/16k_x_512_to_1024", |b| {
        b.iter(|| gemm::nearest_centroids(black_box(&data), CLIP_DIM, black_box(&centroid_data)))
    });
    group.finish();

    let small = unit_vectors(4096, 64, 32);
    let config = KMeansConfig {
        k: 64,
        iterations: 10,
        seed: 1,
        max_points_per_centroid: 256,
        init: clipedge_linalg::KMeansInit::PlusPlus,
    };
    let mut group = c.benchmark_group("kmeans_train");
    group.throughput(Throughput::Elements(4096));
    group.bench_function("train/4096_x_64_k64_10it", |b| {
        b.iter(|| KMeans::train(black_box(&small), 64, &config).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick_criterion();
    targets = kmeans_iteration
}
criterion_main!(benches);
