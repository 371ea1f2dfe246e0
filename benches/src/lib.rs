//! Shared fixtures for the clipedge kernel benchmarks in `kernels/`: seeded data
//! generators (so every run measures the same inputs) and one short criterion
//! configuration that keeps `cargo bench -p clipedge-benches` to a few minutes.

use std::time::Duration;

use clipedge_linalg::ProductQuantizer;
use criterion::Criterion;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// CLIP ViT-B/32 embedding width, the dimension every index of this project uses.
pub const CLIP_DIM: usize = 512;

/// Few samples and short windows: the kernels are stable enough that this resolves a few percent.
pub fn quick_criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

pub fn seeded(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` floats uniform in [-1, 1).
pub fn uniform_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = seeded(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `n` rows of `dim` floats, each row scaled to unit length like a CLIP embedding.
pub fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut data = uniform_vec(n * dim, seed);
    for row in data.chunks_exact_mut(dim) {
        clipedge_linalg::dot::normalize(row);
    }
    data
}

/// `n * m` PQ codes, each below `ksub`, one per byte.
pub fn random_codes(n: usize, m: usize, ksub: usize, seed: u64) -> Vec<u8> {
    let mut rng = seeded(seed);
    (0..n * m)
        .map(|_| rng.random_range(0..ksub) as u8)
        .collect()
}

/// A quantizer with random codebooks: the scan and LUT kernels cost the same as with
/// trained ones, and skipping training keeps bench start-up short.
pub fn random_quantizer(dim: usize, m: usize, bits: u8, seed: u64) -> ProductQuantizer {
    let ksub = 1usize << bits;
    let centroids = uniform_vec(dim * ksub, seed);
    ProductQuantizer::from_centroids(dim, m, bits, centroids).expect("valid PQ shape")
}
