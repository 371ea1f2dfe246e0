//! Exact rerank: fp16 SIMD/scalar bit-identity and accuracy of the fp16 and int8 copies.

use clipedge_linalg::rerank::{
    dot_fp16_le, dot_fp16_le_scalar, dot_fp16_le_x4, dot_int8, dot_int8_x4, encode_fp16,
    encode_int8,
};
use half::f16;
use rand::Rng;

use crate::common::{abs_dot_f64, dot_f64, gaussian_vec, seeded};

fn fp16_le_bytes(vector: &[f32]) -> Vec<u8> {
    encode_fp16(vector)
        .iter()
        .flat_map(|bits| bits.to_le_bytes())
        .collect()
}

fn decode_fp16(vector: &[f32]) -> Vec<f32> {
    vector.iter().map(|x| f16::from_f32(*x).to_f32()).collect()
}

/// A vector mixing ordinary values with magnitudes at the edges of fp16 (subnormals, ~6e4).
fn wide_range_vector(rng: &mut rand_chacha::ChaCha8Rng, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|_| {
            let x = crate::common::gaussian(rng);
            match rng.random_range(0..10) {
                0 => x * 1e-6,
                1 => x * 1e4,
                _ => x,
            }
        })
        .collect()
}

#[test]
fn encode_fp16_stores_half_bit_patterns() {
    let values = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 1e-7];
    let bits = encode_fp16(&values);
    for (value, bits) in values.iter().zip(bits) {
        assert_eq!(bits, f16::from_f32(*value).to_bits());
    }
}

#[test]
fn dot_fp16_le_is_bit_identical_to_scalar() {
    let mut rng = seeded(21);
    for dim in [1, 7, 8, 9, 13, 16, 31, 512, 1027] {
        for trial in 0..10 {
            let query = wide_range_vector(&mut rng, dim);
            let stored = wide_range_vector(&mut rng, dim);
            let bytes = fp16_le_bytes(&stored);
            let fast = dot_fp16_le(&query, &bytes);
            let scalar = dot_fp16_le_scalar(&query, &bytes);
            assert_eq!(
                fast.to_bits(),
                scalar.to_bits(),
                "dim {dim}, trial {trial}: {fast} vs {scalar}"
            );
        }
    }
}

#[test]
fn dot_fp16_le_is_bit_identical_on_unaligned_buffers() {
    // Rerank reads vectors straight out of fetched byte ranges, at any offset.
    let mut rng = seeded(22);
    let dim = 512;
    let query = gaussian_vec(&mut rng, dim);
    let bytes = fp16_le_bytes(&gaussian_vec(&mut rng, dim));
    for offset in 1..4 {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(&bytes);
        let view = &shifted[offset..];
        assert_eq!(
            dot_fp16_le(&query, view).to_bits(),
            dot_fp16_le_scalar(&query, view).to_bits()
        );
        assert_eq!(
            dot_fp16_le(&query, view).to_bits(),
            dot_fp16_le(&query, &bytes).to_bits()
        );
    }
}

#[test]
fn dot_fp16_le_is_close_to_the_f32_dot() {
    let mut rng = seeded(23);
    for dim in [8, 13, 512] {
        for _ in 0..20 {
            let query = gaussian_vec(&mut rng, dim);
            let stored = gaussian_vec(&mut rng, dim);
            let value = dot_fp16_le(&query, &fp16_le_bytes(&stored)) as f64;
            // Against the decoded halves only f32 summation error remains.
            let halves = decode_fp16(&stored);
            let scale = abs_dot_f64(&query, &halves);
            assert!(
                (value - dot_f64(&query, &halves)).abs() <= 1e-5 * scale + 1e-30,
                "dim {dim}: summation error too large"
            );
            // Against the original floats, fp16 rounding (2^-11 relative) dominates.
            let original = dot_f64(&query, &stored);
            assert!(
                (value - original).abs() <= 1e-3 * abs_dot_f64(&query, &stored),
                "dim {dim}: {value} vs {original}"
            );
        }
    }
}

#[test]
fn encode_int8_uses_the_full_symmetric_range() {
    let mut rng = seeded(24);
    let vector = gaussian_vec(&mut rng, 300);
    let (scale, values) = encode_int8(&vector);
    let max_abs = vector.iter().fold(0f32, |acc, x| acc.max(x.abs()));
    assert!((scale - max_abs / 127.0).abs() <= f32::EPSILON * scale);
    assert!(values.iter().all(|&v| v >= -127));
    assert_eq!(values.iter().map(|v| v.unsigned_abs()).max(), Some(127));
    for (x, v) in vector.iter().zip(&values) {
        assert!(
            (x - scale * *v as f32).abs() <= scale * 0.5001,
            "{x} vs {v}"
        );
    }
}

#[test]
fn encode_int8_of_zero_vector_is_zero() {
    let (scale, values) = encode_int8(&[0.0; 9]);
    assert_eq!(scale, 0.0);
    assert_eq!(values, vec![0i8; 9]);
    assert_eq!(dot_int8(&[1.0; 9], scale, &[0u8; 9]), 0.0);
}

#[test]
fn dot_int8_is_close_to_the_exact_dot() {
    let mut rng = seeded(25);
    for dim in [8, 13, 512] {
        for _ in 0..20 {
            let query = gaussian_vec(&mut rng, dim);
            let stored = gaussian_vec(&mut rng, dim);
            let (scale, values) = encode_int8(&stored);
            let bytes: Vec<u8> = values.iter().map(|v| *v as u8).collect();
            let value = dot_int8(&query, scale, &bytes) as f64;
            // Exact kernel arithmetic on the stored int8 values (signed!).
            let dequantized: Vec<f32> = values.iter().map(|v| scale * *v as f32).collect();
            assert!(
                (value - dot_f64(&query, &dequantized)).abs()
                    <= 1e-5 * abs_dot_f64(&query, &dequantized) + 1e-12,
                "dim {dim}: kernel arithmetic"
            );
            // Quantization error: at most half a step per coordinate.
            let query_l1: f64 = query.iter().map(|q| q.abs() as f64).sum();
            let exact = dot_f64(&query, &stored);
            assert!(
                (value - exact).abs() <= query_l1 * scale as f64 * 0.5 * 1.001 + 1e-6,
                "dim {dim}: {value} vs {exact}"
            );
        }
    }
}

#[test]
fn dot_int8_ranks_a_near_duplicate_first() {
    // Rerank only needs order: the stored copy of the query must beat unrelated vectors.
    let mut rng = seeded(26);
    let dim = 512;
    let query = gaussian_vec(&mut rng, dim);
    let mut best = (f32::NEG_INFINITY, usize::MAX);
    for index in 0..50 {
        let stored = if index == 17 {
            query.clone()
        } else {
            gaussian_vec(&mut rng, dim)
        };
        let (scale, values) = encode_int8(&stored);
        let bytes: Vec<u8> = values.iter().map(|v| *v as u8).collect();
        let score = dot_int8(&query, scale, &bytes);
        if score > best.0 {
            best = (score, index);
        }
    }
    assert_eq!(best.1, 17);
}

#[test]
fn four_copies_at_once_equal_four_single_calls_bit_for_bit() {
    let mut rng = seeded(26);
    for dim in [1, 7, 8, 9, 13, 16, 31, 512, 1027] {
        for trial in 0..5 {
            let query = wide_range_vector(&mut rng, dim);
            let stored: Vec<Vec<f32>> = (0..4).map(|_| wide_range_vector(&mut rng, dim)).collect();
            let fp16: Vec<Vec<u8>> = stored.iter().map(|v| fp16_le_bytes(v)).collect();
            let fp16_rows = [&fp16[0][..], &fp16[1][..], &fp16[2][..], &fp16[3][..]];
            let together = dot_fp16_le_x4(&query, fp16_rows);
            for (row, bytes) in fp16_rows.iter().enumerate() {
                assert_eq!(
                    together[row].to_bits(),
                    dot_fp16_le_scalar(&query, bytes).to_bits(),
                    "fp16 dim {dim}, trial {trial}, row {row}"
                );
            }
            let int8: Vec<(f32, Vec<u8>)> = stored
                .iter()
                .map(|vector| {
                    let (scale, values) = encode_int8(vector);
                    (scale, values.iter().map(|v| *v as u8).collect())
                })
                .collect();
            let copies = [0, 1, 2, 3].map(|row| (int8[row].0, &int8[row].1[..]));
            let together = dot_int8_x4(&query, copies);
            for (row, (scale, values)) in copies.iter().enumerate() {
                assert_eq!(
                    together[row].to_bits(),
                    dot_int8(&query, *scale, values).to_bits(),
                    "int8 dim {dim}, trial {trial}, row {row}"
                );
            }
        }
    }
}
