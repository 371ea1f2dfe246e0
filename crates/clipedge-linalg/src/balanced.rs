//! Hierarchical balanced k-means: the coarse quantizer for large `k` (65,536 lists and up).
//!
//! Flat Lloyd costs `n · k · d` per iteration, and faiss' rule of thumb wants `n ≈ 64–256 · k`
//! training points, so the work grows with `k²`: 16.7M points × 65,536 lists × 20 iterations is
//! ~2.2·10¹⁶ multiply-adds. The hierarchical scheme (as in cuVS) does nearly the same job for a
//! few full passes:
//! 1. `√k` mesoclusters on a sample;
//! 2. every point filed under its mesocluster; each mesocluster gets fine clusters in proportion
//!    to its points (largest remainder, at least one, never more than its points), trained on
//!    its own points only — `n · √k · d` work per iteration in all;
//! 3. a few full Lloyd passes with all `k` centroids, where clusters left under a fraction of the
//!    mean size are re-seeded by splitting the largest ones, so no list is left nearly empty
//!    (a tiny list wastes a probe; a huge one a scan).
//!
//! Every assignment goes through the caller's `assign`, so a GPU trains exactly what the CPU
//! would given the same assignments, as with [`KMeans::train_with`].

use std::collections::BinaryHeap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::kmeans::{cluster_sums, training_points, AssignFn};
use crate::{KMeans, KMeansConfig, KMeansInit, LinalgError};

#[derive(Debug, Clone)]
pub struct BalancedConfig {
    pub k: usize,
    /// Lloyd iterations of the mesocluster k-means and of each fine k-means.
    pub iterations: u32,
    /// Lloyd passes over every point with all `k` centroids at the end; each but the last
    /// re-seeds small clusters.
    pub full_passes: u32,
    pub seed: u64,
    /// Clusters under this fraction of the mean size are re-seeded (cuVS uses 0.2).
    pub min_size_fraction: f64,
}

impl BalancedConfig {
    pub fn new(k: usize) -> Self {
        BalancedConfig {
            k,
            iterations: 20,
            full_passes: 8,
            seed: 1234,
            min_size_fraction: 0.2,
        }
    }
}

/// What [`train_balanced_with`] did, for logs and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancedStats {
    pub mesoclusters: usize,
    /// Clusters re-seeded over all full passes.
    pub reseeded: usize,
    /// Cluster sizes in the last full pass's assignment.
    pub smallest: u64,
    pub largest: u64,
}

/// [`train_balanced_with`] with the CPU's assignment.
pub fn train_balanced(
    data: &[f32],
    dim: usize,
    config: &BalancedConfig,
) -> Result<(KMeans, BalancedStats), LinalgError> {
    train_balanced_with(data, dim, config, &mut |points, centroids| {
        Ok(crate::gemm::nearest_centroids(points, dim, centroids))
    })
}

pub fn train_balanced_with(
    data: &[f32],
    dim: usize,
    config: &BalancedConfig,
    assign: &mut AssignFn<'_>,
) -> Result<(KMeans, BalancedStats), LinalgError> {
    let n = training_points(data, dim, config.k)?;
    let mesoclusters = ((config.k as f64).sqrt().round() as usize).clamp(1, config.k);
    let meso = KMeans::train_with(
        data,
        dim,
        &KMeansConfig {
            k: mesoclusters,
            iterations: config.iterations,
            seed: config.seed,
            // A sample of 256 points per mesocluster places √k centres well enough.
            max_points_per_centroid: 256,
            init: KMeansInit::PlusPlus,
        },
        assign,
    )?;
    let (meso_labels, _) = assign(data, &meso.centroids)?;
    let members = bucket_rows(&meso_labels, mesoclusters);
    let sizes: Vec<usize> = members.iter().map(Vec::len).collect();
    let fine_counts = allocate_fine_clusters(&sizes, config.k);

    let mut centroids = Vec::with_capacity(config.k * dim);
    for (meso_index, (rows, fine)) in members.iter().zip(&fine_counts).enumerate() {
        if *fine == 0 {
            continue;
        }
        let mut points = Vec::with_capacity(rows.len() * dim);
        for &row in rows {
            points.extend_from_slice(&data[row as usize * dim..(row as usize + 1) * dim]);
        }
        if *fine == rows.len() {
            centroids.extend_from_slice(&points);
            continue;
        }
        let fine_kmeans = KMeans::train_with(
            &points,
            dim,
            &KMeansConfig {
                k: *fine,
                iterations: config.iterations,
                seed: config.seed.wrapping_add(1 + meso_index as u64),
                max_points_per_centroid: usize::MAX,
                // k-means++ is k sequential passes on the CPU: too slow for 256 fine clusters
                // in each of 256 mesoclusters, and the full passes repair poor starts.
                init: KMeansInit::Random,
            },
            assign,
        )?;
        centroids.extend_from_slice(&fine_kmeans.centroids);
    }
    debug_assert_eq!(centroids.len(), config.k * dim);

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed_ba1a);
    let mut inertia = 0.0;
    let mut reseeded = 0;
    let mut smallest = 0;
    let mut largest = 0;
    let mean_size = n as f64 / config.k as f64;
    let min_size = (config.min_size_fraction * mean_size).ceil() as u64;
    for pass in 0..config.full_passes {
        let (labels, distances) = assign(data, &centroids)?;
        inertia = distances.iter().map(|d| *d as f64).sum::<f64>() / n as f64;
        let (sums, counts) = cluster_sums(data, dim, config.k, &labels);
        smallest = counts.iter().copied().min().unwrap_or(0);
        largest = counts.iter().copied().max().unwrap_or(0);
        for (cluster, count) in counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let inverse = 1.0 / *count as f64;
            for (c, s) in centroids[cluster * dim..(cluster + 1) * dim]
                .iter_mut()
                .zip(&sums[cluster * dim..(cluster + 1) * dim])
            {
                *c = (*s * inverse) as f32;
            }
        }
        let last = pass + 1 == config.full_passes;
        if !last {
            reseeded += reseed_small_clusters(&mut centroids, dim, &counts, min_size, &mut rng);
        }
    }
    let stats = BalancedStats {
        mesoclusters,
        reseeded,
        smallest,
        largest,
    };
    Ok((
        KMeans {
            dim,
            k: config.k,
            centroids,
            inertia,
        },
        stats,
    ))
}

/// Row indices of each cluster, in input order.
fn bucket_rows(labels: &[u32], k: usize) -> Vec<Vec<u32>> {
    let mut buckets = vec![Vec::new(); k];
    for (row, label) in labels.iter().enumerate() {
        buckets[*label as usize].push(row as u32);
    }
    buckets
}

/// Fine clusters per mesocluster: proportional to its points by largest remainder, at least one
/// for a non-empty mesocluster, never more than its points; they sum to `k` (`k ≤ Σ sizes`).
pub fn allocate_fine_clusters(sizes: &[usize], k: usize) -> Vec<usize> {
    let n: usize = sizes.iter().sum();
    if n == 0 {
        return vec![0; sizes.len()];
    }
    let ideal: Vec<f64> = sizes
        .iter()
        .map(|size| k as f64 * *size as f64 / n as f64)
        .collect();
    let mut fine: Vec<usize> = sizes
        .iter()
        .zip(&ideal)
        .map(|(size, share)| {
            if *size == 0 {
                0
            } else {
                (share.floor() as usize).clamp(1, *size)
            }
        })
        .collect();
    let mut total: usize = fine.iter().sum();
    // At most one step per mesocluster either way: floors lose < 1 each, the minimum of one
    // adds < 1 each.
    while total < k {
        let Some(grow) = (0..sizes.len())
            .filter(|index| fine[*index] < sizes[*index])
            .max_by(|a, b| {
                (ideal[*a] - fine[*a] as f64)
                    .total_cmp(&(ideal[*b] - fine[*b] as f64))
                    .then(b.cmp(a))
            })
        else {
            break;
        };
        fine[grow] += 1;
        total += 1;
    }
    while total > k {
        let Some(shrink) = (0..sizes.len())
            .filter(|index| fine[*index] > 1)
            .max_by(|a, b| {
                (fine[*a] as f64 - ideal[*a])
                    .total_cmp(&(fine[*b] as f64 - ideal[*b]))
                    .then(b.cmp(a))
            })
        else {
            break;
        };
        fine[shrink] -= 1;
        total -= 1;
    }
    fine
}

/// Moves every cluster with fewer than `min_size` points next to the currently largest
/// cluster (which is halved for the next pick): both centroids are nudged apart so the next
/// assignment splits the large cluster's points between them. Returns how many moved.
fn reseed_small_clusters(
    centroids: &mut [f32],
    dim: usize,
    counts: &[u64],
    min_size: u64,
    rng: &mut ChaCha8Rng,
) -> usize {
    use rand::Rng;
    let mut donors: BinaryHeap<(u64, std::cmp::Reverse<usize>)> = counts
        .iter()
        .enumerate()
        .filter(|(_, count)| **count >= 2 * min_size.max(1))
        .map(|(cluster, count)| (*count, std::cmp::Reverse(cluster)))
        .collect();
    let mut moved = 0;
    for (small, count) in counts.iter().enumerate() {
        if *count >= min_size {
            continue;
        }
        let Some((donor_count, std::cmp::Reverse(donor))) = donors.pop() else {
            break;
        };
        if donor_count < 2 * min_size.max(1) {
            break;
        }
        // A random sign pattern (not alternating) so repeated splits of one donor differ.
        let nudge = 1.0 / 1024.0;
        for d in 0..dim {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            let value = centroids[donor * dim + d];
            centroids[small * dim + d] = value * (1.0 + sign * nudge);
            centroids[donor * dim + d] = value * (1.0 - sign * nudge);
        }
        let half = donor_count / 2;
        donors.push((donor_count - half, std::cmp::Reverse(donor)));
        moved += 1;
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points around `clusters` random centres whose populations differ by up to 20×.
    fn skewed_blobs(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<f32> = (0..clusters * dim)
            .map(|_| rng.random::<f32>() * 4.0 - 2.0)
            .collect();
        let weights: Vec<f64> = (0..clusters)
            .map(|c| 1.0 + 19.0 * (c % 7) as f64 / 6.0)
            .collect();
        let total: f64 = weights.iter().sum();
        let mut data = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = clusters - 1;
            for (cluster, weight) in weights.iter().enumerate() {
                target -= weight;
                if target <= 0.0 {
                    chosen = cluster;
                    break;
                }
            }
            for d in 0..dim {
                data.push(centres[chosen * dim + d] + (rng.random::<f32>() - 0.5) * 0.6);
            }
        }
        data
    }

    #[test]
    fn allocation_is_proportional_and_sums_to_k() {
        assert_eq!(allocate_fine_clusters(&[50, 30, 20], 10), vec![5, 3, 2]);
        assert_eq!(allocate_fine_clusters(&[1, 0, 99], 10), vec![1, 0, 9]);
        assert_eq!(allocate_fine_clusters(&[2, 2, 96], 100), vec![2, 2, 96]);
        let sizes = [7, 13, 1, 400, 55, 3];
        for k in 1..=sizes.iter().sum::<usize>() {
            let fine = allocate_fine_clusters(&sizes, k);
            assert_eq!(fine.iter().sum::<usize>(), k.max(6), "k {k}: {fine:?}");
            assert!(fine.iter().zip(&sizes).all(|(f, s)| f <= s && *f >= 1));
        }
    }

    #[test]
    fn balanced_training_is_close_to_flat_and_leaves_no_tiny_cluster() {
        let dim = 16;
        let k = 256;
        let data = skewed_blobs(40_000, dim, 40, 3);
        let config = BalancedConfig {
            seed: 9,
            ..BalancedConfig::new(k)
        };
        let (balanced, stats) = train_balanced(&data, dim, &config).unwrap();
        let flat = KMeans::train(
            &data,
            dim,
            &KMeansConfig {
                k,
                iterations: 20,
                seed: 9,
                max_points_per_centroid: usize::MAX,
                init: KMeansInit::Random,
            },
        )
        .unwrap();
        assert_eq!(balanced.centroids.len(), k * dim);
        assert_eq!(stats.mesoclusters, 16);
        assert!(
            balanced.inertia <= flat.inertia * 1.05,
            "balanced {} vs flat {}",
            balanced.inertia,
            flat.inertia
        );
        let labels = balanced.assign(&data);
        let mut sizes = vec![0u64; k];
        for label in labels {
            sizes[label as usize] += 1;
        }
        let mean = data.len() as f64 / dim as f64 / k as f64;
        let tiny = sizes
            .iter()
            .filter(|size| (**size as f64) < 0.2 * mean)
            .count();
        // The last pass moves centroids once more, so a handful may dip under the bar.
        assert!(
            tiny <= k / 100,
            "{tiny} clusters under 0.2 x mean: {sizes:?}"
        );
        // Same seed, same result.
        let (again, _) = train_balanced(&data, dim, &config).unwrap();
        assert_eq!(again, balanced);
    }

    #[test]
    fn reseeding_moves_small_clusters_onto_large_ones() {
        let dim = 2;
        let mut centroids = vec![0.0, 0.0, 10.0, 10.0, 5.0, 5.0];
        let counts = [1, 100, 40];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let moved = reseed_small_clusters(&mut centroids, dim, &counts, 10, &mut rng);
        assert_eq!(moved, 1);
        assert!((centroids[0] - 10.0).abs() < 0.1 && (centroids[1] - 10.0).abs() < 0.1);
        assert_ne!(centroids[0..2], centroids[2..4]);
        assert_eq!(centroids[4..6], [5.0, 5.0]);
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(train_balanced(&[1.0; 7], 2, &BalancedConfig::new(2)).is_err());
        assert!(train_balanced(&[1.0; 8], 2, &BalancedConfig::new(5)).is_err());
    }
}
