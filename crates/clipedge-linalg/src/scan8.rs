//! 8-bit PQ scan: one f32 table lookup per sub-quantizer and code.
//!
//! The portable kernel keeps eight independent accumulators, lane `j` summing sub-quantizers
//! `j, j + 8, …`; the AVX2 kernel gathers those eight lookups with one `vpgatherdd` (same lanes,
//! same order, same bits). aarch64 NEON has no gather at all, and its `tbl` lookups reach 64 bytes where a sub-quantizer's table is 1 KiB,
//! so there is no NEON path either.

use crate::dot::reduce_lanes;
use crate::TopK;

/// Approximate inner product of one code: `Σ lut[sub][code[sub]]`, in eight-lane order.
#[inline(always)]
pub fn score_code(tables: &[[f32; 256]], code: &[u8]) -> f32 {
    debug_assert_eq!(tables.len(), code.len());
    let mut acc = [0f32; 8];
    let table_chunks = tables.chunks_exact(8);
    let code_chunks = code.chunks_exact(8);
    let tail = table_chunks.remainder().iter().zip(code_chunks.remainder());
    for (tables8, codes8) in table_chunks.zip(code_chunks) {
        for lane in 0..8 {
            acc[lane] += tables8[lane][codes8[lane] as usize];
        }
    }
    for (lane, (table, code)) in tail.enumerate() {
        acc[lane] += table[*code as usize];
    }
    reduce_lanes(acc)
}

/// Views a flat `m * 256` lookup table as `m` rows.
pub fn as_tables(lut: &[f32]) -> &[[f32; 256]] {
    let (tables, rest) = lut.as_chunks::<256>();
    assert!(rest.is_empty(), "an 8-bit lookup table has m * 256 entries");
    tables
}

/// Scores every code of a list (`count * m` bytes) as `bias + score_code` and offers
/// each to `top` under key `key_base + row`.
pub fn scan_list(lut: &[f32], codes: &[u8], bias: f32, key_base: u64, top: &mut TopK) {
    let tables = as_tables(lut);
    let m = tables.len();
    if m == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::fastscan::has_avx2() {
            // SAFETY: AVX2 checked at run time; every gather index is below 8 * 256 from its
            // chunk's table, inside `tables`.
            unsafe { scan_list_avx2(tables, codes, bias, key_base, top) };
            return;
        }
    }
    scan_list_scalar(lut, codes, bias, key_base, top)
}

/// Reference path of [`scan_list`] (the portable kernel), for tests and benchmarks.
pub fn scan_list_scalar(lut: &[f32], codes: &[u8], bias: f32, key_base: u64, top: &mut TopK) {
    let tables = as_tables(lut);
    let m = tables.len();
    if m == 0 {
        return;
    }
    let mut threshold = top.threshold();
    for (row, code) in codes.chunks_exact(m).enumerate() {
        let score = bias + score_code(tables, code);
        if score >= threshold {
            top.push(score, key_base + row as u64);
            threshold = top.threshold();
        }
    }
}

/// Eight sub-quantizers per `vpgatherdd`: lane `j` of a chunk reads table `8c + j` at its code,
/// exactly the scalar kernel's lane `j`, so the sums are bit for bit [`score_code`]'s. Two codes
/// are scored together so one's gathers overlap the other's adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_list_avx2(
    tables: &[[f32; 256]],
    codes: &[u8],
    bias: f32,
    key_base: u64,
    top: &mut TopK,
) {
    use std::arch::x86_64::*;
    let m = tables.len();
    let chunks = m / 8;
    let table_base = tables.as_ptr() as *const f32;
    let lane_tables = _mm256_setr_epi32(0, 256, 512, 768, 1024, 1280, 1536, 1792);
    let score_pair = |first: &[u8], second: &[u8]| -> [f32; 2] {
        let mut first_acc = _mm256_setzero_ps();
        let mut second_acc = _mm256_setzero_ps();
        for chunk in 0..chunks {
            let tables8 = table_base.add(chunk * 8 * 256);
            let first_codes = _mm_loadl_epi64(first.as_ptr().add(chunk * 8) as *const __m128i);
            let second_codes = _mm_loadl_epi64(second.as_ptr().add(chunk * 8) as *const __m128i);
            let first_index = _mm256_add_epi32(_mm256_cvtepu8_epi32(first_codes), lane_tables);
            let second_index = _mm256_add_epi32(_mm256_cvtepu8_epi32(second_codes), lane_tables);
            first_acc = _mm256_add_ps(first_acc, _mm256_i32gather_ps::<4>(tables8, first_index));
            second_acc = _mm256_add_ps(second_acc, _mm256_i32gather_ps::<4>(tables8, second_index));
        }
        let finish = |acc: __m256, code: &[u8]| {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            for (lane, sub) in (chunks * 8..m).enumerate() {
                lanes[lane] += tables[sub][code[sub] as usize];
            }
            reduce_lanes(lanes)
        };
        [finish(first_acc, first), finish(second_acc, second)]
    };
    let mut threshold = top.threshold();
    let mut pairs = codes.chunks_exact(2 * m);
    let mut row = 0usize;
    for pair in &mut pairs {
        let (first, second) = pair.split_at(m);
        for (offset, partial) in score_pair(first, second).into_iter().enumerate() {
            let score = bias + partial;
            if score >= threshold {
                top.push(score, key_base + (row + offset) as u64);
                threshold = top.threshold();
            }
        }
        row += 2;
    }
    let last = pairs.remainder();
    if last.len() == m {
        let score = bias + score_pair(last, last)[0];
        if score >= threshold {
            top.push(score, key_base + row as u64);
        }
    }
}

/// Scores of every code, for tests and for callers that need them all.
pub fn score_all(lut: &[f32], codes: &[u8]) -> Vec<f32> {
    let tables = as_tables(lut);
    codes
        .chunks_exact(tables.len())
        .map(|code| score_code(tables, code))
        .collect()
}
