//! Size-capped k-means: clusters of at most `capacity` points, for the routing groups of a
//! two-level index.
//!
//! Plain k-means over list centroids makes very unequal groups on CLIP-like data (one group
//! held 860 of 2,048 lists, the median 3): every out-of-distribution query opens the giant
//! groups, a scanner call that gets one does most of the query's work, and a scanner function
//! that owns one by rendezvous hashing cannot cache it. Capping the size keeps each group a
//! bounded share of the work while staying close to the k-means partition.
//!
//! Each iteration assigns points greedily: the points with the most to lose (largest gap
//! between their nearest and second-nearest centroid) choose first, each taking its nearest
//! centroid with room left; then every centroid moves to the mean of its points. Deterministic
//! for a given input and seed.

use std::cmp::Ordering;

use crate::dot::l2_squared;
use crate::kmeans::{move_to_means, training_points};
use crate::{KMeans, KMeansConfig, KMeansInit, LinalgError};

/// Nearest centroids remembered per point; a point whose candidates are all full falls back to a
/// scan over every centroid with room.
const CANDIDATES: usize = 16;

/// Rows per SGEMM block of the distance computation.
const ROWS_PER_BLOCK: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct CappedKMeans {
    /// Centroids (the means of their points; a centroid left without points keeps its place).
    pub kmeans: KMeans,
    /// Cluster of each point, every cluster holding at most `capacity` points.
    pub labels: Vec<u32>,
    /// Capped iterations run (stops early once the labels no longer change).
    pub iterations: u32,
}

/// Trains `k` centroids by k-means++ and Lloyd, then runs up to `capped_iterations` capped
/// assignments and mean updates. `capacity * k` must cover the points.
pub fn train_capped(
    data: &[f32],
    dim: usize,
    k: usize,
    capacity: usize,
    lloyd_iterations: u32,
    capped_iterations: u32,
    seed: u64,
) -> Result<CappedKMeans, LinalgError> {
    let n = training_points(data, dim, k)?;
    if capacity.saturating_mul(k) < n {
        return Err(LinalgError::KMeans(format!(
            "capacity {capacity} × k {k} cannot hold {n} points"
        )));
    }
    let mut kmeans = KMeans::train(
        data,
        dim,
        &KMeansConfig {
            k,
            iterations: lloyd_iterations,
            seed,
            max_points_per_centroid: usize::MAX,
            init: KMeansInit::PlusPlus,
        },
    )?;
    let mut labels = assign_capped(data, dim, &kmeans.centroids, capacity)?;
    let mut iterations = 1;
    while iterations < capped_iterations.max(1) {
        move_to_means(data, dim, &labels, &mut kmeans.centroids);
        let next = assign_capped(data, dim, &kmeans.centroids, capacity)?;
        iterations += 1;
        let settled = next == labels;
        labels = next;
        if settled {
            break;
        }
    }
    move_to_means(data, dim, &labels, &mut kmeans.centroids);
    kmeans.inertia = mean_squared_distance(data, dim, &labels, &kmeans.centroids);
    Ok(CappedKMeans {
        kmeans,
        labels,
        iterations,
    })
}

/// Each point's cluster with no cluster over `capacity` points, squared L2, greedy by regret
/// (see the module docs). Ties go to the lower point and centroid index.
pub fn assign_capped(
    data: &[f32],
    dim: usize,
    centroids: &[f32],
    capacity: usize,
) -> Result<Vec<u32>, LinalgError> {
    if dim == 0 || !data.len().is_multiple_of(dim) || !centroids.len().is_multiple_of(dim) {
        return Err(LinalgError::KMeans(format!(
            "data ({}) and centroids ({}) must be rows of dim {dim}",
            data.len(),
            centroids.len()
        )));
    }
    let n = data.len() / dim;
    let k = centroids.len() / dim;
    if capacity.saturating_mul(k) < n {
        return Err(LinalgError::KMeans(format!(
            "capacity {capacity} × k {k} cannot hold {n} points"
        )));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let candidates_per_point = CANDIDATES.min(k);
    let candidates = nearest_candidates(data, dim, centroids, candidates_per_point);
    let regret = |point: usize| -> f32 {
        let row = &candidates[point * candidates_per_point..][..candidates_per_point];
        match row {
            [first, second, ..] => second.0 - first.0,
            _ => 0.0,
        }
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        regret(b)
            .partial_cmp(&regret(a))
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    });

    let mut room = vec![capacity; k];
    let mut labels = vec![0u32; n];
    for point in order {
        let row = &candidates[point * candidates_per_point..][..candidates_per_point];
        let chosen = match row.iter().find(|(_, cluster)| room[*cluster as usize] > 0) {
            Some(&(_, cluster)) => cluster as usize,
            None => nearest_with_room(&data[point * dim..][..dim], centroids, dim, &room),
        };
        room[chosen] -= 1;
        labels[point] = chosen as u32;
    }
    Ok(labels)
}

/// Each point's `count` nearest centroids as `(squared distance, centroid)`, nearest first.
fn nearest_candidates(
    data: &[f32],
    dim: usize,
    centroids: &[f32],
    count: usize,
) -> Vec<(f32, u32)> {
    let n = data.len() / dim;
    let k = centroids.len() / dim;
    let centroid_norms: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|row| crate::dot::dot(row, row))
        .collect();
    let mut candidates = Vec::with_capacity(n * count);
    let mut products = vec![0f32; ROWS_PER_BLOCK.min(n) * k];
    let mut scored: Vec<(f32, u32)> = Vec::with_capacity(k);
    for block in data.chunks(ROWS_PER_BLOCK * dim) {
        let rows = block.len() / dim;
        let products = &mut products[..rows * k];
        crate::gemm::inner_products(block, rows, dim, centroids, k, products);
        for (row, point) in products.chunks_exact(k).zip(block.chunks_exact(dim)) {
            let point_norm = crate::dot::dot(point, point);
            scored.clear();
            scored.extend(row.iter().zip(&centroid_norms).enumerate().map(
                |(cluster, (product, norm))| {
                    ((point_norm + norm - 2.0 * product).max(0.0), cluster as u32)
                },
            ));
            let by_distance = |a: &(f32, u32), b: &(f32, u32)| {
                a.0.partial_cmp(&b.0)
                    .unwrap_or(Ordering::Equal)
                    .then(a.1.cmp(&b.1))
            };
            if count < scored.len() {
                scored.select_nth_unstable_by(count - 1, by_distance);
                scored.truncate(count);
            }
            scored.sort_by(by_distance);
            candidates.extend_from_slice(&scored);
        }
    }
    candidates
}

fn nearest_with_room(point: &[f32], centroids: &[f32], dim: usize, room: &[usize]) -> usize {
    centroids
        .chunks_exact(dim)
        .enumerate()
        .filter(|(cluster, _)| room[*cluster] > 0)
        .map(|(cluster, centroid)| (l2_squared(point, centroid), cluster))
        .min_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.cmp(&b.1))
        })
        .map(|(_, cluster)| cluster)
        .expect("capacity × k covers every point, so some cluster has room")
}

fn mean_squared_distance(data: &[f32], dim: usize, labels: &[u32], centroids: &[f32]) -> f64 {
    let total: f64 = data
        .chunks_exact(dim)
        .zip(labels)
        .map(|(point, &label)| {
            f64::from(l2_squared(point, &centroids[label as usize * dim..][..dim]))
        })
        .sum();
    total / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Points around a few centres of very unequal weight: plain k-means gives unequal clusters.
    fn skewed_points(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..dim).map(|_| rng.random_range(-4.0..4.0)).collect())
            .collect();
        let mut data = Vec::with_capacity(n * dim);
        for point in 0..n {
            // 70% of the points around the first centre.
            let centre = if point % 10 < 7 { 0 } else { 1 + point % 3 };
            data.extend(
                centres[centre]
                    .iter()
                    .map(|c| c + rng.random_range(-1.0..1.0)),
            );
        }
        data
    }

    fn sizes(labels: &[u32], k: usize) -> Vec<usize> {
        let mut sizes = vec![0; k];
        for &label in labels {
            sizes[label as usize] += 1;
        }
        sizes
    }

    #[test]
    fn no_cluster_exceeds_the_capacity_where_plain_kmeans_is_skewed() {
        let (n, dim, k) = (2_000, 16, 20);
        let data = skewed_points(n, dim, 7);
        let plain = KMeans::train(&data, dim, &KMeansConfig::new(k)).unwrap();
        let plain_largest = *sizes(&plain.assign(&data), k).iter().max().unwrap();
        let capacity = 125; // 1.25 × the mean
        assert!(
            plain_largest > capacity,
            "the data must be skewed: {plain_largest}"
        );

        let capped = train_capped(&data, dim, k, capacity, 10, 10, 3).unwrap();
        let capped_sizes = sizes(&capped.labels, k);
        assert!(
            capped_sizes.iter().all(|&size| size <= capacity),
            "{capped_sizes:?}"
        );
        assert_eq!(capped_sizes.iter().sum::<usize>(), n);
        // Still a clustering: much tighter than the centroid of all points.
        let everything = train_capped(&data, dim, 1, n, 1, 1, 3).unwrap();
        assert!(capped.kmeans.inertia < 0.5 * everything.kmeans.inertia);
        // Same seed, same answer.
        assert_eq!(
            train_capped(&data, dim, k, capacity, 10, 10, 3).unwrap(),
            capped
        );
    }

    #[test]
    fn a_capacity_that_does_not_bind_keeps_each_point_at_its_nearest_centroid() {
        let (n, dim, k) = (500, 8, 10);
        let data = skewed_points(n, dim, 11);
        let centroids: Vec<f32> = data[..k * dim].to_vec();
        let labels = assign_capped(&data, dim, &centroids, n).unwrap();
        let (nearest, _) = crate::gemm::nearest_centroids(&data, dim, &centroids);
        assert_eq!(labels, nearest);
    }

    #[test]
    fn exact_capacity_fills_every_cluster_even_past_the_candidate_lists() {
        // 40 clusters (more than the 16 candidates a point keeps), capacity exactly n / k.
        let (n, dim, k) = (800, 8, 40);
        let data = skewed_points(n, dim, 5);
        let centroids: Vec<f32> = data[..k * dim].to_vec();
        let labels = assign_capped(&data, dim, &centroids, n / k).unwrap();
        assert!(sizes(&labels, k).iter().all(|&size| size == n / k));
    }

    #[test]
    fn too_small_a_capacity_is_an_error() {
        let data = skewed_points(100, 4, 1);
        let error = assign_capped(&data, 4, &data[..4 * 4], 24).unwrap_err();
        assert!(
            error.to_string().contains("cannot hold 100 points"),
            "{error}"
        );
        assert!(train_capped(&data, 4, 4, 24, 5, 5, 1).is_err());
    }
}
