//! 8-bit PQ scan: one f32 table lookup per sub-quantizer and code.
//!
//! The kernel stays scalar with eight independent accumulators: an AVX2 gather replaces eight
//! loads with one microcoded instruction that is not faster on the AMD cores we run on (not
//! benchmarked here; a gather variant is worth measuring on Intel). Reading codes eight at a time
//! as one u64 instead of byte loads measured the same (~40 M codes/s, m 64). aarch64 NEON has no
//! gather at all, and its `tbl` lookups reach 64 bytes where a sub-quantizer's table is 1 KiB,
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
    let mut threshold = top.threshold();
    for (row, code) in codes.chunks_exact(m).enumerate() {
        let score = bias + score_code(tables, code);
        if score >= threshold {
            top.push(score, key_base + row as u64);
            threshold = top.threshold();
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
