//! Seeded data generators and f64 reference arithmetic shared by the kernel tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn seeded(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// One standard-normal sample (Box-Muller; `1 - u` keeps the log argument in (0, 1]).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

pub fn gaussian_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| gaussian(rng)).collect()
}

pub fn random_bytes(rng: &mut ChaCha8Rng, len: usize, below: u16) -> Vec<u8> {
    (0..len).map(|_| rng.random_range(0..below) as u8).collect()
}

/// Exact-ish inner product, the yardstick for the f32 kernels.
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// `Σ |a_i b_i|`: the scale that rounding errors of a dot product are proportional to.
pub fn abs_dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum()
}

pub fn l2_squared_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum()
}

/// Keys of `scores` (offset by `key_base`) ordered best first: score descending, key ascending.
pub fn ranked_keys(scores: &[f32], key_base: u64) -> Vec<(f32, u64)> {
    let mut ranked: Vec<(f32, u64)> = scores
        .iter()
        .enumerate()
        .filter(|(_, score)| !score.is_nan())
        .map(|(row, score)| (*score, key_base + row as u64))
        .collect();
    ranked.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    ranked
}
