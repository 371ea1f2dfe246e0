//! Nearest-centroid assignment against brute force in f64.

use clipedge_linalg::gemm::{inner_products, nearest_centroids};

use crate::common::{dot_f64, gaussian_vec, l2_squared_f64, seeded};

/// Index and squared distance of the nearest centroid, and the gap to the runner-up.
fn brute_force(row: &[f32], centroids: &[f32], dim: usize) -> (usize, f64, f64) {
    let mut distances: Vec<(f64, usize)> = centroids
        .chunks_exact(dim)
        .enumerate()
        .map(|(index, c)| (l2_squared_f64(row, c), index))
        .collect();
    distances.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let gap = distances
        .get(1)
        .map_or(f64::INFINITY, |second| second.0 - distances[0].0);
    (distances[0].1, distances[0].0, gap)
}

#[test]
fn nearest_centroids_equals_brute_force_on_random_data() {
    let mut rng = seeded(71);
    // n spans several 256-row blocks plus a partial one; an odd dim avoids aligned shapes.
    for (n, dim, k) in [(777, 37, 53), (256, 8, 1), (1000, 64, 200), (3, 5, 7)] {
        let data = gaussian_vec(&mut rng, n * dim);
        let centroids = gaussian_vec(&mut rng, k * dim);
        let (labels, distances) = nearest_centroids(&data, dim, &centroids);
        assert_eq!(labels.len(), n);
        assert_eq!(distances.len(), n);
        for (row, (vector, (&label, &distance))) in data
            .chunks_exact(dim)
            .zip(labels.iter().zip(&distances))
            .enumerate()
        {
            let (best, best_distance, gap) = brute_force(vector, &centroids, dim);
            // The norm expansion loses ~1e-6 relative to |x|^2 + |c|^2; only near-ties may flip.
            let magnitude = dot_f64(vector, vector) + 2.0 * dim as f64;
            let tolerance = 1e-5 * magnitude;
            if gap > 2.0 * tolerance {
                assert_eq!(label as usize, best, "n {n}, dim {dim}, k {k}, row {row}");
            }
            let chosen = l2_squared_f64(vector, &centroids[label as usize * dim..][..dim]);
            assert!(chosen <= best_distance + 2.0 * tolerance, "row {row}");
            assert!(
                (distance as f64 - best_distance).abs() <= 2.0 * tolerance,
                "row {row}: {distance} vs {best_distance}"
            );
        }
    }
}

#[test]
fn nearest_centroids_is_exact_for_points_near_centroids() {
    let mut rng = seeded(72);
    let (dim, k, n) = (32, 100, 2000);
    let centroids: Vec<f32> = gaussian_vec(&mut rng, k * dim)
        .iter()
        .map(|x| x * 5.0)
        .collect();
    let noise = gaussian_vec(&mut rng, n * dim);
    let owners: Vec<usize> = (0..n).map(|i| (i * 7919) % k).collect();
    let data: Vec<f32> = owners
        .iter()
        .enumerate()
        .flat_map(|(row, &owner)| (0..dim).map(move |d| (row, owner, d)))
        .map(|(row, owner, d)| centroids[owner * dim + d] + 0.01 * noise[row * dim + d])
        .collect();
    let (labels, distances) = nearest_centroids(&data, dim, &centroids);
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    assert_eq!(labels, owners);
    assert!(distances.iter().all(|&d| (0.0..0.1).contains(&d)));
}

#[test]
fn nearest_centroids_breaks_ties_by_lower_index() {
    let mut rng = seeded(74);
    // Below and above the small-dimension cut-over, so both assignment paths are covered.
    for dim in [4, 24] {
        let centroid = gaussian_vec(&mut rng, dim);
        let far = vec![100.0f32; dim];
        let centroids: Vec<f32> =
            [far, centroid.clone(), centroid.clone(), centroid.clone()].concat();
        let data: Vec<f32> = [centroid, vec![0.0; dim]].concat();
        let (labels, _) = nearest_centroids(&data, dim, &centroids);
        assert_eq!(labels, vec![1, 1], "dim {dim}");
    }
}

#[test]
fn nearest_centroids_of_no_rows_is_empty() {
    let (labels, distances) = nearest_centroids(&[], 3, &[1.0, 2.0, 3.0]);
    assert!(labels.is_empty() && distances.is_empty());
}

#[test]
fn inner_products_equal_naive_products() {
    let mut rng = seeded(73);
    let (rows, dim, k) = (19, 23, 11);
    let data = gaussian_vec(&mut rng, rows * dim);
    let centroids = gaussian_vec(&mut rng, k * dim);
    let mut out = vec![f32::NAN; rows * k];
    inner_products(&data, rows, dim, &centroids, k, &mut out);
    for row in 0..rows {
        for c in 0..k {
            let exact = dot_f64(&data[row * dim..][..dim], &centroids[c * dim..][..dim]);
            assert!(
                (out[row * k + c] as f64 - exact).abs() < 1e-4,
                "({row}, {c})"
            );
        }
    }
}
