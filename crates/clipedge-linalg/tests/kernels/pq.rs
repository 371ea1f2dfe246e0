//! Product quantizer: reconstruction quality, lookup tables, shape validation.

use clipedge_linalg::{dot, LinalgError, ProductQuantizer};

use crate::common::{abs_dot_f64, dot_f64, gaussian_vec, l2_squared_f64, seeded};

/// Gaussian data with a different scale per dimension, so sub-spaces are not interchangeable.
fn anisotropic_data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = seeded(seed);
    let mut data = gaussian_vec(&mut rng, n * dim);
    for row in data.chunks_exact_mut(dim) {
        for (d, x) in row.iter_mut().enumerate() {
            *x *= 0.5 + (d % 5) as f32 * 0.25;
        }
    }
    data
}

/// Mean squared reconstruction error over mean squared norm (the total variance of centred data).
fn relative_distortion(pq: &ProductQuantizer, data: &[f32]) -> f64 {
    let codes = pq.encode(data);
    let mut decoded = vec![0f32; pq.dim];
    let mut error = 0f64;
    let mut energy = 0f64;
    for (vector, code) in data.chunks_exact(pq.dim).zip(codes.chunks_exact(pq.m)) {
        pq.decode_one(code, &mut decoded);
        error += l2_squared_f64(vector, &decoded);
        energy += dot_f64(vector, vector);
    }
    error / energy
}

#[test]
fn reconstruction_error_is_well_below_the_variance() {
    let dim = 32;
    let train = anisotropic_data(4000, dim, 61);
    let held_out = anisotropic_data(1000, dim, 62);
    for (m, bits, limit) in [(8, 8u8, 0.25), (16, 4, 0.3), (32, 4, 0.15)] {
        let pq = ProductQuantizer::train(&train, dim, m, bits, 12, 5).unwrap();
        assert_eq!(pq.centroids.len(), m * pq.ksub * pq.dsub);
        let train_distortion = relative_distortion(&pq, &train);
        let held_out_distortion = relative_distortion(&pq, &held_out);
        assert!(
            train_distortion < limit && held_out_distortion < limit * 1.5,
            "m {m}, bits {bits}: train {train_distortion}, held-out {held_out_distortion}"
        );
    }
}

#[test]
fn codes_fit_the_bit_width_and_pick_the_nearest_sub_centroid() {
    let dim = 24;
    let data = anisotropic_data(600, dim, 63);
    for (m, bits) in [(6, 8u8), (12, 4)] {
        let pq = ProductQuantizer::train(&data, dim, m, bits, 5, 1).unwrap();
        let codes = pq.encode(&data);
        assert_eq!(codes.len(), 600 * m);
        assert!(codes.iter().all(|&c| (c as usize) < pq.ksub));
        for (vector, code) in data.chunks_exact(dim).zip(codes.chunks_exact(m)).take(100) {
            for sub in 0..m {
                let x = &vector[sub * pq.dsub..(sub + 1) * pq.dsub];
                let centroid = |c: usize| {
                    &pq.centroids[(sub * pq.ksub + c) * pq.dsub..(sub * pq.ksub + c + 1) * pq.dsub]
                };
                let chosen = l2_squared_f64(x, centroid(code[sub] as usize));
                let best = (0..pq.ksub)
                    .map(|c| l2_squared_f64(x, centroid(c)))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    chosen <= best + 1e-4 * (1.0 + best),
                    "sub {sub}: {chosen} vs {best}"
                );
            }
        }
        // The parallel batch encoder agrees with encoding one vector at a time.
        let mut one = vec![0u8; m];
        for (vector, code) in data.chunks_exact(dim).zip(codes.chunks_exact(m)) {
            pq.encode_one(vector, &mut one);
            assert_eq!(one, code);
        }
    }
}

#[test]
fn inner_product_table_sums_to_the_dot_with_the_decoded_vector() {
    let dim = 64;
    let data = anisotropic_data(1200, dim, 64);
    let mut rng = seeded(65);
    for (m, bits) in [(16, 8u8), (32, 4)] {
        let pq = ProductQuantizer::train(&data, dim, m, bits, 4, 2).unwrap();
        let codes = pq.encode(&data[..200 * dim]);
        let mut decoded = vec![0f32; dim];
        for _ in 0..5 {
            let query = gaussian_vec(&mut rng, dim);
            let lut = pq.inner_product_table(&query);
            assert_eq!(lut.len(), m * pq.ksub);
            for code in codes.chunks_exact(m) {
                let table_sum: f64 = code
                    .iter()
                    .enumerate()
                    .map(|(sub, &c)| lut[sub * pq.ksub + c as usize] as f64)
                    .sum();
                pq.decode_one(code, &mut decoded);
                let exact = dot_f64(&query, &decoded);
                assert!(
                    (table_sum - exact).abs() <= 1e-5 * abs_dot_f64(&query, &decoded) + 1e-6,
                    "m {m}: {table_sum} vs {exact}"
                );
                assert!((dot::dot(&query, &decoded) as f64 - exact).abs() <= 1e-3);
            }
        }
    }
}

#[test]
fn training_is_deterministic_across_thread_counts() {
    let dim = 16;
    let data = anisotropic_data(800, dim, 66);
    let train = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| ProductQuantizer::train(&data, dim, 4, 4, 6, 9).unwrap())
    };
    assert_eq!(train(1), train(2));
}

#[test]
fn shape_validation_rejects_bad_shapes() {
    let is_pq_error = |result: Result<(), LinalgError>| matches!(result, Err(LinalgError::Pq(_)));
    assert!(
        is_pq_error(ProductQuantizer::validate_shape(512, 7, 8)),
        "m must divide dim"
    );
    assert!(
        is_pq_error(ProductQuantizer::validate_shape(512, 0, 8)),
        "m = 0"
    );
    assert!(
        is_pq_error(ProductQuantizer::validate_shape(512, 64, 5)),
        "bits 5"
    );
    assert!(
        is_pq_error(ProductQuantizer::validate_shape(512, 64, 0)),
        "bits 0"
    );
    assert!(
        is_pq_error(ProductQuantizer::validate_shape(15, 5, 4)),
        "odd m, 4 bits"
    );
    assert!(
        is_pq_error(ProductQuantizer::validate_shape(1024, 512, 4)),
        "m > 256, 4 bits"
    );
    assert!(
        ProductQuantizer::validate_shape(15, 5, 8).is_ok(),
        "odd m is fine at 8 bits"
    );
    assert!(ProductQuantizer::validate_shape(512, 64, 8).is_ok());
    assert!(ProductQuantizer::validate_shape(512, 128, 4).is_ok());
    assert!(ProductQuantizer::validate_shape(512, 256, 4).is_ok());
}

#[test]
fn constructors_propagate_shape_errors() {
    let data = anisotropic_data(300, 12, 67);
    assert!(matches!(
        ProductQuantizer::train(&data, 12, 5, 8, 2, 0),
        Err(LinalgError::Pq(_))
    ));
    assert!(matches!(
        ProductQuantizer::train(&data, 12, 3, 4, 2, 0),
        Err(LinalgError::Pq(_))
    ));
    assert!(matches!(
        ProductQuantizer::train(&data, 12, 4, 5, 2, 0),
        Err(LinalgError::Pq(_))
    ));
    // 8 bits need at least 256 training vectors.
    assert!(matches!(
        ProductQuantizer::train(&data[..100 * 12], 12, 4, 8, 2, 0),
        Err(LinalgError::Pq(_))
    ));
    assert!(matches!(
        ProductQuantizer::from_centroids(12, 4, 4, vec![0.0; 4 * 16 * 3 - 1]),
        Err(LinalgError::Pq(_))
    ));
    assert!(ProductQuantizer::from_centroids(12, 4, 4, vec![0.0; 4 * 16 * 3]).is_ok());
}
