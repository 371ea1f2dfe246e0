//! 8-bit PQ scan against decode-then-dot and against a full sort.

use clipedge_linalg::scan8::{as_tables, scan_list, score_all, score_code};
use clipedge_linalg::{ProductQuantizer, TopK};

use crate::common::{abs_dot_f64, dot_f64, gaussian_vec, random_bytes, ranked_keys, seeded};

/// A quantizer with random codebooks: scan8 only needs a table, not a trained one.
fn random_quantizer(dim: usize, m: usize, seed: u64) -> ProductQuantizer {
    let mut rng = seeded(seed);
    let centroids = gaussian_vec(&mut rng, dim * 256);
    ProductQuantizer::from_centroids(dim, m, 8, centroids).unwrap()
}

#[test]
fn score_all_equals_decode_then_dot() {
    let mut rng = seeded(31);
    // m = 12 and 5 exercise the tail lanes, 64 the full eight-lane loop.
    for (dim, m) in [(96, 12), (64, 64), (40, 5)] {
        let pq = random_quantizer(dim, m, 100 + m as u64);
        let n = 300;
        let codes = random_bytes(&mut rng, n * m, 256);
        for _ in 0..5 {
            let query = gaussian_vec(&mut rng, dim);
            let lut = pq.inner_product_table(&query);
            assert_eq!(lut.len(), m * 256);
            let scores = score_all(&lut, &codes);
            assert_eq!(scores.len(), n);
            let mut decoded = vec![0f32; dim];
            for (code, &score) in codes.chunks_exact(m).zip(&scores) {
                pq.decode_one(code, &mut decoded);
                let exact = dot_f64(&query, &decoded);
                let tolerance = 1e-4 * abs_dot_f64(&query, &decoded).max(1e-6);
                assert!(
                    (score as f64 - exact).abs() <= tolerance,
                    "dim {dim}, m {m}: {score} vs {exact}"
                );
            }
        }
    }
}

#[test]
fn score_code_reads_one_table_row_per_sub_quantizer() {
    let m = 11;
    let mut lut = vec![0f32; m * 256];
    for sub in 0..m {
        lut[sub * 256 + (sub * 20 + 3)] = (1u32 << sub) as f32;
    }
    let tables = as_tables(&lut);
    let hits: Vec<u8> = (0..m).map(|sub| (sub * 20 + 3) as u8).collect();
    assert_eq!(score_code(tables, &hits), ((1u32 << m) - 1) as f32);
    let mut one_miss = hits.clone();
    one_miss[4] = 0;
    assert_eq!(score_code(tables, &one_miss), ((1u32 << m) - 1 - 16) as f32);
}

#[test]
#[should_panic(expected = "m * 256")]
fn as_tables_rejects_a_ragged_table() {
    as_tables(&[0.0; 300]);
}

#[test]
fn scan_list_returns_the_top_of_sorted_score_all() {
    let mut rng = seeded(32);
    let (dim, m) = (128, 16);
    let pq = random_quantizer(dim, m, 7);
    let n = 1000;
    let codes = random_bytes(&mut rng, n * m, 256);
    let lut = pq.inner_product_table(&gaussian_vec(&mut rng, dim));
    let bias = 0.5f32;
    let key_base = 10_000;
    // Same f32 expression as the kernel, so scores compare exactly.
    let biased: Vec<f32> = score_all(&lut, &codes).iter().map(|s| bias + s).collect();
    let ranked = ranked_keys(&biased, key_base);
    for k in [1, 10, 100, n, n + 10] {
        let mut top = TopK::new(k);
        scan_list(&lut, &codes, bias, key_base, &mut top);
        let found: Vec<(f32, u64)> = top
            .into_sorted()
            .iter()
            .map(|item| (item.score, item.key))
            .collect();
        assert_eq!(found, ranked[..k.min(n)], "k = {k}");
    }
}

#[test]
fn scan_list_breaks_ties_by_lower_key() {
    // Many identical codes: every score ties, so the lowest keys must win.
    let m = 8;
    let lut: Vec<f32> = (0..m * 256).map(|i| (i % 7) as f32).collect();
    let codes = vec![42u8; 500 * m];
    let mut top = TopK::new(20);
    scan_list(&lut, &codes, 0.0, 0, &mut top);
    let keys: Vec<u64> = top.into_sorted().iter().map(|item| item.key).collect();
    assert_eq!(keys, (0..20).collect::<Vec<_>>());
}

#[test]
fn scan_list_accumulates_across_lists() {
    let mut rng = seeded(33);
    let (dim, m) = (64, 8);
    let pq = random_quantizer(dim, m, 8);
    let lut = pq.inner_product_table(&gaussian_vec(&mut rng, dim));
    let first = random_bytes(&mut rng, 200 * m, 256);
    let second = random_bytes(&mut rng, 77 * m, 256);
    let mut top = TopK::new(30);
    scan_list(&lut, &first, 1.0, 0, &mut top);
    scan_list(&lut, &second, -1.0, 200, &mut top);
    let mut all: Vec<f32> = score_all(&lut, &first).iter().map(|s| 1.0 + s).collect();
    all.extend(score_all(&lut, &second).iter().map(|s| -1.0 + s));
    let expected = &ranked_keys(&all, 0)[..30];
    let found: Vec<(f32, u64)> = top
        .into_sorted()
        .iter()
        .map(|item| (item.score, item.key))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn scan_list_into_zero_capacity_topk_is_a_no_op() {
    let m = 8;
    let lut = vec![1.0f32; m * 256];
    let codes = vec![0u8; 10 * m];
    let mut top = TopK::new(0);
    scan_list(&lut, &codes, 0.0, 0, &mut top);
    assert!(top.is_empty());
}

/// The dispatching scan (AVX2 gathers on x86_64) keeps every score bit for bit: odd code counts
/// (the unpaired last code), tails of the eight-lane chunks, one list and many.
#[test]
fn scan_list_scores_equal_score_code_bit_for_bit() {
    let mut rng = seeded(33);
    for m in [1usize, 5, 8, 12, 64, 67] {
        let dim = 2 * m;
        let pq = random_quantizer(dim, m, 200 + m as u64);
        for n in [1usize, 2, 7, 64, 301] {
            let codes = random_bytes(&mut rng, n * m, 256);
            let lut = pq.inner_product_table(&gaussian_vec(&mut rng, dim));
            let tables = as_tables(&lut);
            let bias = -0.25f32;
            let mut top = TopK::new(n);
            scan_list(&lut, &codes, bias, 0, &mut top);
            let mut found: Vec<(u64, u32)> = top
                .into_sorted()
                .iter()
                .map(|scored| (scored.key, scored.score.to_bits()))
                .collect();
            found.sort_unstable();
            let expected: Vec<(u64, u32)> = codes
                .chunks_exact(m)
                .enumerate()
                .map(|(row, code)| (row as u64, (bias + score_code(tables, code)).to_bits()))
                .collect();
            assert_eq!(found, expected, "m {m}, n {n}");
        }
    }
}
