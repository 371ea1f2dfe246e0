//! 4-bit fast-scan: SIMD/scalar agreement, block packing, quantized LUT ranking.

use clipedge_linalg::fastscan::{
    block_sums, block_sums_scalar, pack_block_codes, scan_list, unpack_row, QuantizedLut,
    BLOCK_VECTORS,
};
use clipedge_linalg::TopK;

use crate::common::{gaussian_vec, random_bytes, ranked_keys, seeded};

const WIDTHS: [usize; 5] = [2, 8, 64, 128, 256];

/// Float score of one unpacked code: `Σ lut[sub][code[sub]]`.
fn float_score(lut: &[f32], code: &[u8]) -> f32 {
    code.iter()
        .enumerate()
        .map(|(sub, &c)| lut[sub * 16 + c as usize])
        .sum()
}

#[test]
fn dispatch_uses_avx2_where_the_cpu_has_it() {
    // Otherwise the equality tests below would compare the scalar path with itself.
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bw") {
        assert_eq!(clipedge_linalg::simd_level(), "avx512");
    } else if std::is_x86_feature_detected!("avx2") {
        assert_eq!(clipedge_linalg::simd_level(), "avx2");
    }
    // Baseline on aarch64 (scripts/test.sh runs these tests under qemu-aarch64).
    #[cfg(target_arch = "aarch64")]
    assert_eq!(clipedge_linalg::simd_level(), "neon");
}

#[test]
fn block_sums_dispatch_matches_scalar_on_random_blocks() {
    let mut rng = seeded(11);
    for m in WIDTHS {
        for trial in 0..20 {
            let table = random_bytes(&mut rng, 16 * m, 256);
            // Any byte is a valid pair of nibbles, so random bytes cover every code.
            let block = random_bytes(&mut rng, 16 * m, 256);
            let mut simd = [0u16; 32];
            let mut scalar = [0u16; 32];
            block_sums(&table, m, &block, &mut simd);
            block_sums_scalar(&table, m, &block, &mut scalar);
            assert_eq!(simd, scalar, "m = {m}, trial {trial}");
        }
    }
}

#[test]
fn block_sums_dispatch_matches_scalar_at_u16_extremes() {
    // m = 256 with every entry 255 gives 65280, the largest sum a valid PQ can produce.
    for m in WIDTHS {
        let table = vec![255u8; 16 * m];
        let block: Vec<u8> = (0..16 * m).map(|i| (i * 37 % 256) as u8).collect();
        let mut simd = [0u16; 32];
        let mut scalar = [0u16; 32];
        block_sums(&table, m, &block, &mut simd);
        block_sums_scalar(&table, m, &block, &mut scalar);
        assert_eq!(simd, scalar, "m = {m}");
        assert!(scalar.iter().all(|&sum| sum as usize == 255 * m), "m = {m}");
    }
}

#[test]
fn block_sums_tolerate_longer_buffers_than_needed() {
    // Callers pass a sub-slice of a whole list; bytes past 16 * m must not be read as codes.
    let mut rng = seeded(12);
    let m = 8;
    let table = random_bytes(&mut rng, 16 * m, 256);
    let block = random_bytes(&mut rng, 16 * m, 256);
    let mut long_table = table.clone();
    long_table.extend(random_bytes(&mut rng, 64, 256));
    let mut long_block = block.clone();
    long_block.extend(random_bytes(&mut rng, 64, 256));
    let mut exact = [0u16; 32];
    let mut long = [0u16; 32];
    block_sums(&table, m, &block, &mut exact);
    block_sums(&long_table, m, &long_block, &mut long);
    assert_eq!(exact, long);
}

#[test]
fn pack_block_codes_follows_the_documented_layout() {
    let m = 2;
    let n = 33;
    let mut codes = vec![0u8; n * m];
    // Row 1 -> low nibble of byte 1; row 17 -> high nibble of byte 1; row 32 -> next block.
    codes[m] = 0x3;
    codes[17 * m + 1] = 0xa;
    codes[32 * m] = 0x7;
    let packed = pack_block_codes(&codes, m);
    assert_eq!(packed.len(), 2 * 16 * m);
    assert_eq!(packed[1], 0x03, "sub 0, rows 1 and 17");
    assert_eq!(packed[16 + 1], 0xa0, "sub 1, rows 1 and 17");
    assert_eq!(packed[16 * m], 0x07, "second block, sub 0, row 32");
    let set_bytes = packed.iter().filter(|&&b| b != 0).count();
    assert_eq!(set_bytes, 3);
}

#[test]
fn pack_then_unpack_round_trips_for_partial_blocks() {
    let mut rng = seeded(13);
    for m in [2, 6, 16, 64] {
        for n in [1, 15, 16, 17, 31, 33, 63, 100, 257] {
            let codes = random_bytes(&mut rng, n * m, 16);
            let packed = pack_block_codes(&codes, m);
            let blocks = n.div_ceil(BLOCK_VECTORS);
            assert_eq!(packed.len(), blocks * 16 * m, "m = {m}, n = {n}");
            for row in 0..n {
                assert_eq!(
                    unpack_row(&packed, m, row),
                    &codes[row * m..(row + 1) * m],
                    "m = {m}, n = {n}, row = {row}"
                );
            }
            for padding_row in n..blocks * BLOCK_VECTORS {
                assert!(
                    unpack_row(&packed, m, padding_row).iter().all(|&c| c == 0),
                    "padding row {padding_row} should hold code 0"
                );
            }
        }
    }
}

#[test]
fn block_sums_of_packed_codes_equal_table_sums_per_row() {
    let mut rng = seeded(14);
    let m = 16;
    let n = 70;
    let codes = random_bytes(&mut rng, n * m, 16);
    let table = random_bytes(&mut rng, 16 * m, 256);
    let packed = pack_block_codes(&codes, m);
    for (block_index, block) in packed.chunks_exact(16 * m).enumerate() {
        let mut sums = [0u16; 32];
        block_sums(&table, m, block, &mut sums);
        for (slot, &sum) in sums.iter().enumerate() {
            let row = block_index * BLOCK_VECTORS + slot;
            let code = unpack_row(&packed, m, row);
            let expected: u32 = code
                .iter()
                .enumerate()
                .map(|(sub, &c)| table[sub * 16 + c as usize] as u32)
                .sum();
            assert_eq!(sum as u32, expected, "row {row}");
        }
    }
}

#[test]
fn quantized_lut_scores_stay_within_half_a_step_per_sub_quantizer() {
    let mut rng = seeded(15);
    let m = 32;
    let lut = gaussian_vec(&mut rng, 16 * m);
    let quantized = QuantizedLut::from_float(&lut);
    assert_eq!(quantized.m, m);
    assert_eq!(quantized.table.len(), 16 * m);
    // Each row's minimum maps to 0 and the widest row's maximum to 255.
    for row in quantized.table.chunks_exact(16) {
        assert_eq!(*row.iter().min().unwrap(), 0);
    }
    assert_eq!(*quantized.table.iter().max().unwrap(), 255);
    let bound = m as f32 * quantized.scale / 2.0 * 1.001 + 1e-4;
    for _ in 0..200 {
        let code = random_bytes(&mut rng, m, 16);
        let sum: u32 = code
            .iter()
            .enumerate()
            .map(|(sub, &c)| quantized.table[sub * 16 + c as usize] as u32)
            .sum();
        let approx = quantized.to_score(sum as u16);
        let exact = float_score(&lut, &code);
        assert!(
            (approx - exact).abs() <= bound,
            "quantized {approx} vs float {exact}, bound {bound}"
        );
    }
}

#[test]
fn quantized_lut_of_a_constant_table_is_exact() {
    let lut = vec![0.25f32; 16 * 4];
    let quantized = QuantizedLut::from_float(&lut);
    assert!(quantized.table.iter().all(|&q| q == 0));
    assert_eq!(quantized.to_score(0), 1.0);
}

#[test]
fn scan_list_top10_recalls_float_lut_ranking() {
    let mut rng = seeded(16);
    let m = 64;
    let n = 2000;
    let k = 10;
    let codes = random_bytes(&mut rng, n * m, 16);
    let packed = pack_block_codes(&codes, m);
    let mut total_hits = 0;
    let queries = 8;
    for _ in 0..queries {
        let lut = gaussian_vec(&mut rng, 16 * m);
        let float_scores: Vec<f32> = codes
            .chunks_exact(m)
            .map(|c| float_score(&lut, c))
            .collect();
        let truth: Vec<u64> = ranked_keys(&float_scores, 0)
            .iter()
            .take(k)
            .map(|(_, key)| *key)
            .collect();
        let quantized = QuantizedLut::from_float(&lut);
        let mut top = TopK::new(k);
        scan_list(&quantized, &packed, n, 0.0, 0, &mut top);
        let found = top.into_sorted();
        assert_eq!(found.len(), k);
        let bound = m as f32 * quantized.scale / 2.0 * 1.001 + 1e-3;
        for item in &found {
            let exact = float_scores[item.key as usize];
            assert!(
                (item.score - exact).abs() <= bound,
                "score drifted: {item:?} vs {exact}"
            );
        }
        total_hits += found
            .iter()
            .filter(|item| truth.contains(&item.key))
            .count();
    }
    let recall = total_hits as f64 / (queries * k) as f64;
    assert!(recall >= 0.8, "recall@10 = {recall}");
}

#[test]
fn scan_list_matches_brute_force_quantized_scores() {
    // Same scores as block_sums + to_score over every row: the block-level prune must not drop a winner.
    let mut rng = seeded(17);
    let m = 8;
    let n = 300;
    let codes = random_bytes(&mut rng, n * m, 16);
    let packed = pack_block_codes(&codes, m);
    let lut = QuantizedLut::from_float(&gaussian_vec(&mut rng, 16 * m));
    let bias = -0.75f32;
    let key_base = 5_000u64;
    let expected_scores: Vec<f32> = codes
        .chunks_exact(m)
        .map(|code| {
            let sum: u32 = code
                .iter()
                .enumerate()
                .map(|(sub, &c)| lut.table[sub * 16 + c as usize] as u32)
                .sum();
            bias + lut.offset + lut.scale * sum as f32
        })
        .collect();
    for k in [1, 7, 32, 100, n + 50] {
        let mut top = TopK::new(k);
        scan_list(&lut, &packed, n, bias, key_base, &mut top);
        let found: Vec<(f32, u64)> = top
            .into_sorted()
            .iter()
            .map(|item| (item.score, item.key))
            .collect();
        let expected: Vec<(f32, u64)> = ranked_keys(&expected_scores, key_base)
            .into_iter()
            .take(k)
            .collect();
        assert_eq!(found, expected, "k = {k}");
    }
}

#[test]
fn scan_list_never_returns_padding_rows() {
    let m = 4;
    // Code 0 (the padding code) is by far the best entry; real rows use code 1.
    let mut float_lut = vec![0f32; 16 * m];
    for sub in 0..m {
        float_lut[sub * 16] = 10.0;
    }
    let lut = QuantizedLut::from_float(&float_lut);
    for n in [1, 31, 33, 45, 64] {
        let codes = vec![1u8; n * m];
        let packed = pack_block_codes(&codes, m);
        let mut top = TopK::new(200);
        scan_list(&lut, &packed, n, 0.0, 100, &mut top);
        let mut keys: Vec<u64> = top.into_sorted().iter().map(|item| item.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, (100..100 + n as u64).collect::<Vec<_>>(), "n = {n}");
    }
}

#[test]
fn scan_list_ignores_rows_past_count_even_when_they_hold_real_codes() {
    let mut rng = seeded(18);
    let m = 4;
    let stored = 96;
    let mut float_lut = vec![0f32; 16 * m];
    for sub in 0..m {
        float_lut[sub * 16 + 15] = 10.0;
    }
    let lut = QuantizedLut::from_float(&float_lut);
    // Rows past `count` carry the best code; a scan must stop at `count` regardless.
    let mut codes = random_bytes(&mut rng, stored * m, 15);
    for count in [0, 1, 31, 32, 40, 70] {
        codes[count * m..].fill(15);
        let packed = pack_block_codes(&codes, m);
        let mut top = TopK::new(stored);
        scan_list(&lut, &packed, count, 0.0, 0, &mut top);
        let found = top.into_sorted();
        assert_eq!(found.len(), count, "count = {count}");
        assert!(found.iter().all(|item| (item.key as usize) < count));
    }
}

#[test]
fn scan_list_lets_lower_keys_displace_equal_scores_from_earlier_lists() {
    // Lists are not scanned in key order; a tie at the threshold must still go to the lower key.
    let m = 4;
    let lut = QuantizedLut::from_float(&(0..16 * m).map(|i| (i % 5) as f32).collect::<Vec<_>>());
    let packed = pack_block_codes(&vec![3u8; 40 * m], m);
    let mut top = TopK::new(10);
    scan_list(&lut, &packed, 40, 0.0, 1_000, &mut top);
    scan_list(&lut, &packed, 40, 0.0, 0, &mut top);
    let keys: Vec<u64> = top.into_sorted().iter().map(|item| item.key).collect();
    assert_eq!(keys, (0..10).collect::<Vec<_>>());
}

#[test]
fn scan_list_into_zero_capacity_topk_is_a_no_op() {
    let m = 2;
    let codes = vec![3u8; 40 * m];
    let packed = pack_block_codes(&codes, m);
    let lut = QuantizedLut::from_float(&(0..16 * m).map(|i| i as f32).collect::<Vec<_>>());
    let mut top = TopK::new(0);
    scan_list(&lut, &packed, 40, 0.0, 0, &mut top);
    assert!(top.is_empty());
}

#[test]
fn scan_list_accumulates_across_lists_like_one_merged_list() {
    // IVF probing pushes several lists into one TopK; the result must equal scanning their union.
    let mut rng = seeded(19);
    let m = 16;
    let lut = QuantizedLut::from_float(&gaussian_vec(&mut rng, 16 * m));
    let sizes = [50usize, 1, 130];
    let lists: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| random_bytes(&mut rng, n * m, 16))
        .collect();
    let mut split = TopK::new(25);
    let mut key_base = 0u64;
    for (list, &n) in lists.iter().zip(&sizes) {
        scan_list(
            &lut,
            &pack_block_codes(list, m),
            n,
            0.0,
            key_base,
            &mut split,
        );
        key_base += n as u64;
    }
    let merged: Vec<u8> = lists.concat();
    let mut whole = TopK::new(25);
    let total: usize = sizes.iter().sum();
    scan_list(
        &lut,
        &pack_block_codes(&merged, m),
        total,
        0.0,
        0,
        &mut whole,
    );
    assert_eq!(split.into_sorted(), whole.into_sorted());
}
