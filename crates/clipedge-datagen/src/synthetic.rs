//! Seeded synthetic vectors shaped like CLIP embeddings.
//!
//! Each vector is `normalize(gap * modality_mean + center[k] + spread * A z + noise * eps)`:
//! - `center[k]` is a random unit direction, one per semantic cluster, and clusters are
//!   drawn with lognormal weights so their sizes are uneven, as in real collections;
//! - `A` (`dim x rank`) has random directions as columns with scales decaying like
//!   `1 / sqrt(1 + j)`, so the within-cluster spread is low-rank and anisotropic;
//! - `modality_mean` is a direction shared by every vector of one modality. CLIP images
//!   and texts live in two narrow cones around different means (the "modality gap"), so
//!   text queries searched against image vectors are out of distribution;
//! - `eps ~ N(0, 1 / dim)` per coordinate is isotropic noise of unit expected norm.
//!
//! Rows are generated in fixed chunks, each with its own ChaCha8 stream derived from the
//! seed and the chunk index, so the output is the same for any thread count, and
//! `base(m)` starts with `base(n)` for `n < m`. The arithmetic is plain loops in a fixed
//! order rather than a runtime-dispatched GEMM, so it does not depend on the CPU's SIMD
//! features either.

use clipedge_linalg::dot::normalize;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Rows per independently seeded chunk. Part of the output definition: changing it
/// changes every generated data set.
const ROWS_PER_CHUNK: usize = 1024;

// Domains keep the random streams of the world, the base rows and each query kind apart.
const DOMAIN_WORLD: u64 = 0x776f_726c_6400_0001;
const DOMAIN_BASE: u64 = 0x6261_7365_0000_0002;
const DOMAIN_QUERIES_IN_DISTRIBUTION: u64 = 0x7175_6572_7969_0003;
const DOMAIN_QUERIES_OUT_OF_DISTRIBUTION: u64 = 0x7175_6572_796f_0004;

/// Standard deviation of the log of cluster weights: the largest of 1024 clusters ends up
/// tens of times bigger than the smallest.
const CLUSTER_WEIGHT_LOG_SIGMA: f64 = 1.0;
/// Text queries describe a scene more coarsely than an image shows it: relative to image
/// vectors they carry less of the within-cluster spread and more isotropic noise.
const TEXT_SPREAD_FACTOR: f32 = 0.5;
const TEXT_NOISE_FACTOR: f32 = 2.0;

#[derive(Debug, Clone, PartialEq)]
pub struct ClipLikeConfig {
    pub dim: usize,
    /// Number of semantic clusters.
    pub clusters: usize,
    /// Rank of the within-cluster spread.
    pub rank: usize,
    pub seed: u64,
    /// Scale of the low-rank within-cluster spread (its expected norm, the center's is 1).
    pub cluster_spread: f32,
    /// Scale of the isotropic noise (its expected norm).
    pub noise: f32,
    /// Weight of the modality mean direction shared by all vectors of one modality.
    pub modality_gap: f32,
}

impl ClipLikeConfig {
    /// Defaults tuned to look like CLIP ViT embeddings: at `dim` 512 and a million rows,
    /// random image-like pairs have cosine about 0.36, in-distribution queries find a
    /// nearest neighbor at about 0.87, and text-like queries only at about 0.47.
    pub fn new(dim: usize, seed: u64) -> Self {
        ClipLikeConfig {
            dim,
            // Small dims cannot hold 1024 well-separated directions.
            clusters: (dim * 8).clamp(16, 1024),
            rank: dim.min(64),
            seed,
            cluster_spread: 0.8,
            noise: 0.35,
            modality_gap: 1.0,
        }
    }
}

/// Which distribution [`ClipLikeGenerator::queries`] draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// Fresh draws from the base distribution (image-to-image search).
    InDistribution,
    /// Text-like queries: same clusters, other modality mean, coarser spread, more noise.
    OutOfDistribution,
}

/// The "world" of one seed: cluster centers and weights, the anisotropic basis and the two
/// modality means. Cheap to build next to generating the vectors themselves.
#[derive(Debug, Clone)]
pub struct ClipLikeGenerator {
    config: ClipLikeConfig,
    /// `clusters x dim`, unit rows.
    centers: Vec<f32>,
    /// Cumulative cluster probabilities; the last entry is 1.
    cluster_cumulative: Vec<f64>,
    /// `rank x dim`: row `j` is column `j` of `A`, scaled so `E |A z|^2 = 1`.
    basis: Vec<f32>,
    image_mean: Vec<f32>,
    text_mean: Vec<f32>,
}

/// How the rows of one kind are drawn.
struct RowStyle<'a> {
    modality_mean: &'a [f32],
    spread: f32,
    noise: f32,
}

impl ClipLikeGenerator {
    /// # Panics
    ///
    /// If `dim` or `clusters` is zero.
    pub fn new(config: ClipLikeConfig) -> Self {
        assert!(config.dim > 0, "clip-like generator needs a positive dim");
        assert!(
            config.clusters > 0,
            "clip-like generator needs at least one cluster"
        );
        let dim = config.dim;
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(config.seed, DOMAIN_WORLD, 0));

        let image_mean = random_unit_vector(&mut rng, dim);
        let mut text_mean = random_unit_vector(&mut rng, dim);
        // Orthogonalize so the two modalities are apart even in tiny dims, where random
        // directions are far from orthogonal.
        if dim > 1 {
            let overlap: f32 = text_mean
                .iter()
                .zip(&image_mean)
                .map(|(text, image)| text * image)
                .sum();
            for (text, image) in text_mean.iter_mut().zip(&image_mean) {
                *text -= overlap * image;
            }
            normalize(&mut text_mean);
        }

        let mut centers = Vec::with_capacity(config.clusters * dim);
        for _ in 0..config.clusters {
            centers.extend(random_unit_vector(&mut rng, dim));
        }

        let weights: Vec<f64> = (0..config.clusters)
            .map(|_| (CLUSTER_WEIGHT_LOG_SIGMA * rng.sample::<f64, _>(StandardNormal)).exp())
            .collect();
        let total_weight: f64 = weights.iter().sum();
        let mut running = 0.0;
        let mut cluster_cumulative: Vec<f64> = weights
            .iter()
            .map(|weight| {
                running += weight / total_weight;
                running
            })
            .collect();
        if let Some(last) = cluster_cumulative.last_mut() {
            *last = 1.0;
        }

        // Column j of A is a random direction of norm 1 / sqrt(1 + j), all divided by the
        // square root of the harmonic sum so the spread term has unit expected norm.
        let harmonic: f64 = (0..config.rank).map(|j| 1.0 / (1.0 + j as f64)).sum();
        let mut basis = Vec::with_capacity(config.rank * dim);
        for j in 0..config.rank {
            let scale = (1.0 / ((1.0 + j as f64) * harmonic)).sqrt() as f32;
            basis.extend(
                random_unit_vector(&mut rng, dim)
                    .into_iter()
                    .map(|value| value * scale),
            );
        }

        ClipLikeGenerator {
            config,
            centers,
            cluster_cumulative,
            basis,
            image_mean,
            text_mean,
        }
    }

    pub fn dim(&self) -> usize {
        self.config.dim
    }

    pub fn config(&self) -> &ClipLikeConfig {
        &self.config
    }

    /// `n` unit-norm image-like vectors, row-major `n x dim`.
    pub fn base(&self, n: usize) -> Vec<f32> {
        let style = RowStyle {
            modality_mean: &self.image_mean,
            spread: self.config.cluster_spread,
            noise: self.config.noise,
        };
        self.generate(n, DOMAIN_BASE, &style)
    }

    /// `n` unit-norm query vectors, row-major `n x dim`, from random streams distinct from
    /// [`ClipLikeGenerator::base`]'s.
    pub fn queries(&self, n: usize, kind: QueryKind) -> Vec<f32> {
        match kind {
            QueryKind::InDistribution => {
                let style = RowStyle {
                    modality_mean: &self.image_mean,
                    spread: self.config.cluster_spread,
                    noise: self.config.noise,
                };
                self.generate(n, DOMAIN_QUERIES_IN_DISTRIBUTION, &style)
            }
            QueryKind::OutOfDistribution => {
                let style = RowStyle {
                    modality_mean: &self.text_mean,
                    spread: self.config.cluster_spread * TEXT_SPREAD_FACTOR,
                    noise: self.config.noise * TEXT_NOISE_FACTOR,
                };
                self.generate(n, DOMAIN_QUERIES_OUT_OF_DISTRIBUTION, &style)
            }
        }
    }

    /// Rows `start..start + n` of [`Self::base`]'s sequence (`start` a multiple of
    /// [`Self::ROWS_PER_CHUNK`]): a large set written file by file without holding it whole.
    ///
    /// # Panics
    ///
    /// If `start` is not a multiple of `ROWS_PER_CHUNK`.
    pub fn base_from(&self, start: usize, n: usize) -> Vec<f32> {
        assert!(
            start.is_multiple_of(ROWS_PER_CHUNK),
            "base_from starts at a multiple of {ROWS_PER_CHUNK} rows"
        );
        let style = RowStyle {
            modality_mean: &self.image_mean,
            spread: self.config.cluster_spread,
            noise: self.config.noise,
        };
        self.generate_from(start / ROWS_PER_CHUNK, n, DOMAIN_BASE, &style)
    }

    /// Rows are drawn in seeded chunks of this many.
    pub const ROWS_PER_CHUNK: usize = ROWS_PER_CHUNK;

    fn generate(&self, n: usize, domain: u64, style: &RowStyle) -> Vec<f32> {
        self.generate_from(0, n, domain, style)
    }

    fn generate_from(
        &self,
        first_chunk: usize,
        n: usize,
        domain: u64,
        style: &RowStyle,
    ) -> Vec<f32> {
        let dim = self.config.dim;
        let mut output = vec![0f32; n * dim];
        output
            .par_chunks_mut(ROWS_PER_CHUNK * dim)
            .enumerate()
            .for_each(|(chunk_index, chunk)| {
                let chunk_index = first_chunk + chunk_index;
                let chunk_seed = derive_seed(self.config.seed, domain, chunk_index as u64);
                let mut rng = ChaCha8Rng::seed_from_u64(chunk_seed);
                let mut latent = vec![0f32; self.config.rank];
                for row in chunk.chunks_exact_mut(dim) {
                    self.fill_row(&mut rng, style, &mut latent, row);
                }
            });
        output
    }

    /// Draws one row. The draw order (cluster, latent, noise) is part of the output
    /// definition.
    fn fill_row(
        &self,
        rng: &mut ChaCha8Rng,
        style: &RowStyle,
        latent: &mut [f32],
        row: &mut [f32],
    ) {
        let dim = self.config.dim;
        let cluster = self.sample_cluster(rng);
        let center = &self.centers[cluster * dim..(cluster + 1) * dim];
        let gap = self.config.modality_gap;
        for ((value, &mean), &center_value) in row.iter_mut().zip(style.modality_mean).zip(center) {
            *value = gap * mean + center_value;
        }
        for coefficient in latent.iter_mut() {
            *coefficient = rng.sample::<f32, _>(StandardNormal);
        }
        for (&coefficient, column) in latent.iter().zip(self.basis.chunks_exact(dim)) {
            let weight = style.spread * coefficient;
            for (value, &basis_value) in row.iter_mut().zip(column) {
                *value += weight * basis_value;
            }
        }
        let noise_scale = style.noise / (dim as f32).sqrt();
        for value in row.iter_mut() {
            *value += noise_scale * rng.sample::<f32, _>(StandardNormal);
        }
        normalize(row);
    }

    fn sample_cluster(&self, rng: &mut ChaCha8Rng) -> usize {
        let target = rng.random::<f64>();
        self.cluster_cumulative
            .partition_point(|&cumulative| cumulative <= target)
            .min(self.cluster_cumulative.len() - 1)
    }
}

fn random_unit_vector(rng: &mut ChaCha8Rng, dim: usize) -> Vec<f32> {
    loop {
        let mut vector: Vec<f32> = (0..dim)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        normalize(&mut vector);
        // A zero draw is astronomically unlikely, but would not be a direction.
        if vector.iter().any(|&value| value != 0.0) {
            return vector;
        }
    }
}

fn splitmix64(state: u64) -> u64 {
    let mut mixed = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^ (mixed >> 31)
}

/// Seed of one independent stream, mixed so nearby seeds and indexes give unrelated streams.
fn derive_seed(seed: u64, domain: u64, index: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ domain) ^ index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truth::ground_truth;

    fn bytes_of(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Mean over queries of the best inner product with any base row.
    fn mean_max_inner_product(base: &[f32], queries: &[f32], dim: usize) -> f64 {
        let nearest = ground_truth(base, queries, dim, 1);
        let total: f64 = queries
            .chunks_exact(dim)
            .zip(&nearest)
            .map(|(query, &row)| {
                let row = row as usize;
                dot(query, &base[row * dim..(row + 1) * dim]) as f64
            })
            .sum();
        total / nearest.len() as f64
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different() {
        let first = ClipLikeGenerator::new(ClipLikeConfig::new(48, 7));
        let second = ClipLikeGenerator::new(ClipLikeConfig::new(48, 7));
        let other = ClipLikeGenerator::new(ClipLikeConfig::new(48, 8));
        let n = 2 * ROWS_PER_CHUNK + 37;
        let base = first.base(n);
        assert_eq!(base.len(), n * 48);
        assert_eq!(bytes_of(&base), bytes_of(&second.base(n)));
        assert_ne!(bytes_of(&base), bytes_of(&other.base(n)));
        for kind in [QueryKind::InDistribution, QueryKind::OutOfDistribution] {
            let queries = first.queries(50, kind);
            assert_eq!(bytes_of(&queries), bytes_of(&second.queries(50, kind)));
            assert_ne!(bytes_of(&queries), bytes_of(&other.queries(50, kind)));
        }
    }

    #[test]
    fn base_is_independent_of_thread_count_and_prefix_stable() {
        let generator = ClipLikeGenerator::new(ClipLikeConfig::new(32, 3));
        let n = 3 * ROWS_PER_CHUNK + 5;
        let run_with_threads = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| generator.base(n))
        };
        let single_threaded = run_with_threads(1);
        let two_threads = run_with_threads(2);
        assert_eq!(bytes_of(&single_threaded), bytes_of(&two_threads));
        let shorter = generator.base(ROWS_PER_CHUNK + 10);
        assert_eq!(
            bytes_of(&shorter),
            bytes_of(&single_threaded[..shorter.len()])
        );
    }

    #[test]
    fn rows_are_unit_norm() {
        let generator = ClipLikeGenerator::new(ClipLikeConfig::new(64, 11));
        let base = generator.base(500);
        let text = generator.queries(100, QueryKind::OutOfDistribution);
        for row in base.chunks_exact(64).chain(text.chunks_exact(64)) {
            let norm = dot(row, row).sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
    }

    #[test]
    fn queries_are_not_base_rows() {
        let generator = ClipLikeGenerator::new(ClipLikeConfig::new(16, 5));
        let base = generator.base(100);
        let queries = generator.queries(100, QueryKind::InDistribution);
        for (base_row, query) in base.chunks_exact(16).zip(queries.chunks_exact(16)) {
            assert_ne!(base_row, query);
        }
    }

    #[test]
    fn cluster_sizes_are_uneven() {
        let config = ClipLikeConfig::new(64, 21);
        let clusters = config.clusters;
        let generator = ClipLikeGenerator::new(config);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = vec![0usize; clusters];
        let draws = 200 * clusters;
        for _ in 0..draws {
            counts[generator.sample_cluster(&mut rng)] += 1;
        }
        counts.sort_unstable();
        let smallest_tenth: usize = counts[..clusters / 10].iter().sum();
        let largest_tenth: usize = counts[clusters - clusters / 10..].iter().sum();
        // Equal weights would give a ratio near 1.
        assert!(
            largest_tenth > 5 * smallest_tenth,
            "largest tenth {largest_tenth}, smallest tenth {smallest_tenth}"
        );
    }

    #[test]
    fn spread_is_anisotropic() {
        let dim = 64;
        let mut config = ClipLikeConfig::new(dim, 9);
        config.clusters = 1;
        config.noise = 0.0;
        config.modality_gap = 0.0;
        let generator = ClipLikeGenerator::new(config);
        let rows = generator.base(4000);
        let center = &generator.centers[..dim];
        let first_column = &generator.basis[..dim];
        let last_column = &generator.basis[(generator.config.rank - 1) * dim..];
        // Variance of the (unnormalized-direction) projections on the first and last basis
        // columns, relative to their norms: the first direction carries far more spread.
        let variance_along = |column: &[f32]| {
            let norm = dot(column, column).sqrt();
            let projections: Vec<f64> = rows
                .chunks_exact(dim)
                .map(|row| {
                    let offset: Vec<f32> = row.iter().zip(center).map(|(x, c)| x - c).collect();
                    (dot(&offset, column) / norm) as f64
                })
                .collect();
            let mean = projections.iter().sum::<f64>() / projections.len() as f64;
            projections
                .iter()
                .map(|value| (value - mean).powi(2))
                .sum::<f64>()
                / projections.len() as f64
        };
        let first_variance = variance_along(first_column);
        let last_variance = variance_along(last_column);
        assert!(
            first_variance > 8.0 * last_variance,
            "first {first_variance}, last {last_variance}"
        );
    }

    #[test]
    fn text_like_queries_are_out_of_distribution() {
        let dim = 256;
        let generator = ClipLikeGenerator::new(ClipLikeConfig::new(dim, 42));
        let base = generator.base(20_000);
        let in_distribution = generator.queries(200, QueryKind::InDistribution);
        let out_of_distribution = generator.queries(200, QueryKind::OutOfDistribution);
        let in_distribution_score = mean_max_inner_product(&base, &in_distribution, dim);
        let out_of_distribution_score = mean_max_inner_product(&base, &out_of_distribution, dim);
        assert!(
            in_distribution_score > 0.8,
            "in-distribution {in_distribution_score}"
        );
        assert!(
            (0.25..0.6).contains(&out_of_distribution_score),
            "out-of-distribution {out_of_distribution_score}"
        );
        assert!(
            in_distribution_score - out_of_distribution_score > 0.25,
            "in-distribution {in_distribution_score}, out-of-distribution {out_of_distribution_score}"
        );
    }

    #[test]
    fn base_from_continues_the_base_sequence() {
        let generator = ClipLikeGenerator::new(ClipLikeConfig::new(8, 3));
        let rows = ClipLikeGenerator::ROWS_PER_CHUNK;
        let whole = generator.base(3 * rows);
        let mut pieces = generator.base_from(0, rows);
        pieces.extend(generator.base_from(rows, 2 * rows));
        assert_eq!(whole, pieces);
    }
}
