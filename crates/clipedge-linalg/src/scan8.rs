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

/// Codes scored together by the AVX2 kernel: their gathers are independent, so one code's
/// gather latency (about 20 cycles) overlaps the others' (faiss' PQ code distance does four too).
#[cfg(target_arch = "x86_64")]
const GATHER_CODES: usize = 4;

/// Eight sub-quantizers per `vpgatherdd`: lane `j` of a chunk reads table `8c + j` at its code,
/// exactly the scalar kernel's lane `j`, so the sums are bit for bit [`score_code`]'s.
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
    let score_group = |group: [&[u8]; GATHER_CODES]| -> [f32; GATHER_CODES] {
        let mut acc = [_mm256_setzero_ps(); GATHER_CODES];
        for chunk in 0..chunks {
            let tables8 = table_base.add(chunk * 8 * 256);
            for (code_acc, code) in acc.iter_mut().zip(group) {
                let bytes = _mm_loadl_epi64(code.as_ptr().add(chunk * 8) as *const __m128i);
                let index = _mm256_add_epi32(_mm256_cvtepu8_epi32(bytes), lane_tables);
                *code_acc = _mm256_add_ps(*code_acc, _mm256_i32gather_ps::<4>(tables8, index));
            }
        }
        if chunks * 8 == m {
            return acc.map(|code_acc| reduce_lanes_avx(code_acc));
        }
        let mut scores = [0f32; GATHER_CODES];
        for ((score, code_acc), code) in scores.iter_mut().zip(acc).zip(group) {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), code_acc);
            for (lane, sub) in (chunks * 8..m).enumerate() {
                lanes[lane] += tables[sub][code[sub] as usize];
            }
            *score = reduce_lanes(lanes);
        }
        scores
    };
    let mut threshold = top.threshold();
    let mut offer = |row: usize, partial: f32| {
        let score = bias + partial;
        if score >= threshold {
            top.push(score, key_base + row as u64);
            threshold = top.threshold();
        }
    };
    let mut groups = codes.chunks_exact(GATHER_CODES * m);
    let mut row = 0usize;
    for group in &mut groups {
        let group_codes: [&[u8]; GATHER_CODES] =
            std::array::from_fn(|index| &group[index * m..(index + 1) * m]);
        for (offset, partial) in score_group(group_codes).into_iter().enumerate() {
            offer(row + offset, partial);
        }
        row += GATHER_CODES;
    }
    // The last few codes: the group repeats the first of them in the unused places.
    let rest: Vec<&[u8]> = groups.remainder().chunks_exact(m).collect();
    if let Some(first) = rest.first() {
        let group_codes: [&[u8]; GATHER_CODES] =
            std::array::from_fn(|index| rest.get(index).copied().unwrap_or(first));
        for (offset, partial) in score_group(group_codes)
            .into_iter()
            .take(rest.len())
            .enumerate()
        {
            offer(row + offset, partial);
        }
    }
}

/// [`reduce_lanes`] in registers, same order: `(l + h)` pairs lanes `i` and `i + 4`, then
/// `(0 + 2)` and `(1 + 3)`, then their sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn reduce_lanes_avx(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let halves = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
}

/// Scores of every code, for tests and for callers that need them all.
pub fn score_all(lut: &[f32], codes: &[u8]) -> Vec<f32> {
    let tables = as_tables(lut);
    codes
        .chunks_exact(tables.len())
        .map(|code| score_code(tables, code))
        .collect()
}
