//! Seeded Lloyd k-means with k-means++ initialisation and empty-cluster splitting.
//!
//! Deterministic for a given seed and input: sampling uses ChaCha8, partial sums are
//! formed over fixed chunks and added in chunk order, so the thread count never
//! changes the result.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{dot, gemm, par, LinalgError};

/// Rows per parallel task of the k-means++ distance updates.
const SUM_CHUNK_ROWS: usize = 4096;
/// k-means++ seeds from at most this many sampled points per centroid.
const PLUS_PLUS_POINTS_PER_CENTROID: usize = 16;

/// How the first centroids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KMeansInit {
    /// k-means++ (D² sampling): better starts, but `k` sequential passes over the data,
    /// which costs more than Lloyd itself when points are short (PQ sub-spaces).
    PlusPlus,
    /// `k` distinct random training points, as faiss does.
    Random,
}

#[derive(Debug, Clone)]
pub struct KMeansConfig {
    pub k: usize,
    pub iterations: u32,
    pub seed: u64,
    /// Training uses at most `k * max_points_per_centroid` points (a seeded sample), as faiss does.
    pub max_points_per_centroid: usize,
    pub init: KMeansInit,
}

impl KMeansConfig {
    pub fn new(k: usize) -> Self {
        KMeansConfig {
            k,
            iterations: 20,
            seed: 1234,
            max_points_per_centroid: 256,
            init: KMeansInit::PlusPlus,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    pub dim: usize,
    pub k: usize,
    /// `k * dim` floats, row-major.
    pub centroids: Vec<f32>,
    /// Mean squared distance of training points to their centroid after the last iteration.
    pub inertia: f64,
}

/// An assignment step: `(points, centroids) -> (nearest centroid, squared L2 distance)` per point.
pub type AssignFn<'a> = dyn FnMut(&[f32], &[f32]) -> Result<(Vec<u32>, Vec<f32>), LinalgError> + 'a;

impl KMeans {
    pub fn train(data: &[f32], dim: usize, config: &KMeansConfig) -> Result<KMeans, LinalgError> {
        KMeans::train_with(data, dim, config, &mut |points, centroids| {
            Ok(gemm::nearest_centroids(points, dim, centroids))
        })
    }

    /// [`KMeans::train`] with the assignment step supplied by the caller (a GPU, say):
    /// `assign(points, centroids)` returns each point's nearest centroid (squared L2, ties to the
    /// lower index) and that distance. Everything else — sampling, seeding, updates, empty-cluster
    /// splits — is the same code, so two devices that assign alike train alike.
    pub fn train_with(
        data: &[f32],
        dim: usize,
        config: &KMeansConfig,
        assign: &mut AssignFn<'_>,
    ) -> Result<KMeans, LinalgError> {
        let n = training_points(data, dim, config.k)?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let sample_cap = config
            .k
            .saturating_mul(config.max_points_per_centroid.max(1));
        let sample_storage;
        let train: &[f32] = if n > sample_cap {
            sample_storage = sample_rows(data, dim, sample_cap, &mut rng);
            &sample_storage
        } else {
            data
        };
        let mut centroids = match config.init {
            KMeansInit::PlusPlus => {
                // D² sampling makes k sequential passes; over more than a few dozen points
                // per centroid it costs more than it improves the start.
                let seeding_rows = config.k.saturating_mul(PLUS_PLUS_POINTS_PER_CENTROID);
                if train.len() / dim > seeding_rows {
                    let seeding = sample_rows(train, dim, seeding_rows, &mut rng);
                    kmeans_plus_plus(&seeding, dim, config.k, &mut rng)
                } else {
                    kmeans_plus_plus(train, dim, config.k, &mut rng)
                }
            }
            KMeansInit::Random => sample_rows(train, dim, config.k, &mut rng),
        };
        let mut inertia = 0.0;
        for _ in 0..config.iterations {
            let (labels, distances) = assign(train, &centroids)?;
            inertia = distances.iter().map(|d| *d as f64).sum::<f64>() / distances.len() as f64;
            let counts = move_to_means(train, dim, &labels, &mut centroids);
            split_empty_clusters(&mut centroids, dim, counts, &mut rng);
        }
        Ok(KMeans {
            dim,
            k: config.k,
            centroids,
            inertia,
        })
    }

    pub fn centroid(&self, index: usize) -> &[f32] {
        &self.centroids[index * self.dim..(index + 1) * self.dim]
    }

    /// Nearest centroid of every row of `data`.
    pub fn assign(&self, data: &[f32]) -> Vec<u32> {
        gemm::nearest_centroids(data, self.dim, &self.centroids).0
    }
}

/// The number of `dim`-wide points in `data`, checked to form whole rows and to number at
/// least `k`.
pub(crate) fn training_points(data: &[f32], dim: usize, k: usize) -> Result<usize, LinalgError> {
    if dim == 0 || !data.len().is_multiple_of(dim) {
        return Err(LinalgError::KMeans(format!(
            "data length {} is not a multiple of dim {dim}",
            data.len()
        )));
    }
    let n = data.len() / dim;
    if k == 0 || k > n {
        return Err(LinalgError::KMeans(format!(
            "k = {k} needs 1..={n} training points"
        )));
    }
    Ok(n)
}

/// The RNG every seeded sampling step of the pipeline uses.
pub fn seeded_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A seeded sample of `count` distinct rows (partial Fisher-Yates).
pub fn sample_rows(data: &[f32], dim: usize, count: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = data.len() / dim;
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in 0..count.min(n) {
        let j = rng.random_range(i..n);
        order.swap(i, j);
    }
    let mut picked: Vec<u32> = order[..count.min(n)].to_vec();
    // Keep the input's order among picked rows: cache-friendly and independent of swap history.
    picked.sort_unstable();
    let mut out = Vec::with_capacity(picked.len() * dim);
    for row in picked {
        out.extend_from_slice(&data[row as usize * dim..(row as usize + 1) * dim]);
    }
    out
}

/// k-means++: each next centroid is drawn with probability proportional to the squared
/// distance to the nearest centroid chosen so far.
fn kmeans_plus_plus(data: &[f32], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = data.len() / dim;
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centroids.extend_from_slice(&data[first * dim..(first + 1) * dim]);
    let mut nearest = vec![f32::INFINITY; n];
    for _ in 1..k {
        let newest = centroids[centroids.len() - dim..].to_vec();
        let chunk_count = n.div_ceil(SUM_CHUNK_ROWS);
        let updated_chunks = par::map_range(chunk_count, |chunk_index| {
            let start = chunk_index * SUM_CHUNK_ROWS;
            let end = (start + SUM_CHUNK_ROWS).min(n);
            (start..end)
                .map(|row| {
                    dot::l2_squared(&data[row * dim..(row + 1) * dim], &newest).min(nearest[row])
                })
                .collect::<Vec<f32>>()
        });
        let mut total = 0f64;
        for (chunk_index, distances) in updated_chunks.into_iter().enumerate() {
            let start = chunk_index * SUM_CHUNK_ROWS;
            for (offset, distance) in distances.into_iter().enumerate() {
                nearest[start + offset] = distance;
                total += distance as f64;
            }
        }
        let chosen = if total <= 0.0 {
            // All points coincide with chosen centroids: any point is as good as another.
            rng.random_range(0..n)
        } else {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (row, distance) in nearest.iter().enumerate() {
                target -= *distance as f64;
                if target <= 0.0 {
                    chosen = row;
                    break;
                }
            }
            chosen
        };
        centroids.extend_from_slice(&data[chosen * dim..(chosen + 1) * dim]);
    }
    centroids
}

/// Lloyd's update: every centroid with points moves to their mean (a centroid without points
/// stays where it is). Returns each cluster's point count.
pub(crate) fn move_to_means(
    data: &[f32],
    dim: usize,
    labels: &[u32],
    centroids: &mut [f32],
) -> Vec<u64> {
    let k = centroids.len() / dim;
    let (sums, counts) = cluster_sums(data, dim, k, labels);
    for cluster in 0..k {
        if counts[cluster] == 0 {
            continue;
        }
        let inv = 1.0 / counts[cluster] as f64;
        for (c, s) in centroids[cluster * dim..(cluster + 1) * dim]
            .iter_mut()
            .zip(&sums[cluster * dim..(cluster + 1) * dim])
        {
            *c = (*s * inv) as f32;
        }
    }
    counts
}

/// Per-cluster sums (f64) and counts. Rows are bucketed by cluster first (a counting sort that
/// keeps input order), then each cluster sums its own rows, clusters in parallel. The earlier
/// scheme — a `k × dim` partial per 4,096-row chunk, reduced one after another — zeroed and
/// added 64 MB per chunk at k = 16,384: about 7 s of each Lloyd iteration over 1M points.
pub(crate) fn cluster_sums(
    data: &[f32],
    dim: usize,
    k: usize,
    labels: &[u32],
) -> (Vec<f64>, Vec<u64>) {
    let mut counts = vec![0u64; k];
    for &label in labels {
        counts[label as usize] += 1;
    }
    let mut starts = Vec::with_capacity(k + 1);
    starts.push(0usize);
    for count in &counts {
        starts.push(starts[starts.len() - 1] + *count as usize);
    }
    let mut next = starts.clone();
    let mut members = vec![0u32; labels.len()];
    for (row, &label) in labels.iter().enumerate() {
        members[next[label as usize]] = row as u32;
        next[label as usize] += 1;
    }
    let per_cluster = par::map_range(k, |cluster| {
        let mut sum = vec![0f64; dim];
        for &row in &members[starts[cluster]..starts[cluster + 1]] {
            let row = row as usize;
            for (s, x) in sum.iter_mut().zip(&data[row * dim..(row + 1) * dim]) {
                *s += *x as f64;
            }
        }
        sum
    });
    (per_cluster.concat(), counts)
}

/// Gives each empty cluster half of a large cluster: the donor's centroid is copied and
/// both copies are nudged apart, so the next assignment splits the donor's points.
fn split_empty_clusters(
    centroids: &mut [f32],
    dim: usize,
    mut counts: Vec<u64>,
    rng: &mut ChaCha8Rng,
) {
    const NUDGE: f32 = 1.0 / 1024.0;
    let total: u64 = counts.iter().sum();
    for empty in 0..counts.len() {
        if counts[empty] != 0 {
            continue;
        }
        // Pick a donor with probability proportional to (size - 1), like faiss.
        let mut donor = 0;
        loop {
            let target = rng.random::<f64>() * (total as f64 - counts.len() as f64).max(1.0);
            let mut acc = 0f64;
            for (cluster, count) in counts.iter().enumerate() {
                acc += count.saturating_sub(1) as f64;
                if acc >= target && *count > 1 {
                    donor = cluster;
                    break;
                }
            }
            if counts[donor] > 1 {
                break;
            }
            if counts.iter().all(|c| *c <= 1) {
                return;
            }
        }
        let donor_centroid: Vec<f32> = centroids[donor * dim..(donor + 1) * dim].to_vec();
        for d in 0..dim {
            let sign = if d % 2 == 0 { 1.0 } else { -1.0 };
            centroids[empty * dim + d] = donor_centroid[d] * (1.0 + sign * NUDGE);
            centroids[donor * dim + d] = donor_centroid[d] * (1.0 - sign * NUDGE);
        }
        counts[empty] = counts[donor] / 2;
        counts[donor] -= counts[empty];
    }
}
