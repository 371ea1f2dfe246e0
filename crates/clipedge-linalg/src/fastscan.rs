//! 4-bit PQ fast-scan: codes packed in blocks of 32 vectors and scored with in-register
//! table lookups (`pshufb` on AVX2, `i8x16.swizzle` on wasm `simd128`, `tbl` on aarch64 NEON)
//! over an 8-bit quantized lookup table, accumulated in u16. Integer arithmetic makes every
//! path exact; sums wrap modulo 2^16 everywhere (the scalar path truncates), though no valid
//! PQ (m <= 256) reaches that.
//!
//! Block layout (`16 * m` bytes): for sub-quantizer `j`, 16 bytes; byte `b` holds the code
//! of vector `b` in its low nibble and of vector `b + 16` in its high nibble.

use crate::TopK;

pub const BLOCK_VECTORS: usize = 32;

/// Packs `n * m` one-code-per-byte codes (values < 16) into fast-scan blocks. The last
/// block is padded with code 0; callers ignore rows past `n`.
pub fn pack_block_codes(codes: &[u8], m: usize) -> Vec<u8> {
    let n = codes.len().checked_div(m).unwrap_or(0);
    let blocks = n.div_ceil(BLOCK_VECTORS);
    let mut packed = vec![0u8; blocks * 16 * m];
    for row in 0..n {
        let block = row / BLOCK_VECTORS;
        let slot = row % BLOCK_VECTORS;
        let (byte_in_group, shift) = if slot < 16 { (slot, 0) } else { (slot - 16, 4) };
        for sub in 0..m {
            let code = codes[row * m + sub] & 0x0f;
            packed[block * 16 * m + sub * 16 + byte_in_group] |= code << shift;
        }
    }
    packed
}

/// Inverse of [`pack_block_codes`] for one row.
pub fn unpack_row(packed: &[u8], m: usize, row: usize) -> Vec<u8> {
    let block = &packed[(row / BLOCK_VECTORS) * 16 * m..];
    let slot = row % BLOCK_VECTORS;
    (0..m)
        .map(|sub| {
            let byte = block[sub * 16 + (slot % 16)];
            if slot < 16 {
                byte & 0x0f
            } else {
                byte >> 4
            }
        })
        .collect()
}

/// An inner-product table quantized to u8: `score ≈ offset + scale * Σ table[sub][code]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLut {
    pub m: usize,
    /// `m * 16` entries.
    pub table: Vec<u8>,
    pub offset: f32,
    pub scale: f32,
}

impl QuantizedLut {
    /// Quantizes an `m * 16` float table with one scale for all sub-quantizers, so sums stay comparable.
    pub fn from_float(lut: &[f32]) -> QuantizedLut {
        let m = lut.len() / 16;
        let mut mins = Vec::with_capacity(m);
        let mut widest = 0f32;
        for row in lut.chunks_exact(16) {
            let min = row.iter().copied().fold(f32::INFINITY, f32::min);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            mins.push(min);
            widest = widest.max(max - min);
        }
        let scale = if widest > 0.0 { widest / 255.0 } else { 1.0 };
        // Round half up by adding 0.5 and truncating (`as u8` saturates, NaN gives 0): the
        // quotient is never negative, and `f32::round` is a libm call per entry on x86_64's
        // baseline, 2,048 of them a query at m 128. Every front runs this same code.
        let inverse = 1.0 / scale;
        let mut table = Vec::with_capacity(lut.len());
        for (row, min) in lut.chunks_exact(16).zip(&mins) {
            table.extend(
                row.iter()
                    .map(|value| ((value - min) * inverse + 0.5) as u8),
            );
        }
        QuantizedLut {
            m,
            table,
            offset: mins.iter().sum(),
            scale,
        }
    }

    #[inline(always)]
    pub fn to_score(&self, sum: u16) -> f32 {
        self.offset + self.scale * sum as f32
    }
}

/// Quantized sums of the 32 vectors of one block. Dispatches to the fastest exact path.
#[inline]
pub fn block_sums(table: &[u8], m: usize, block: &[u8], out: &mut [u16; 32]) {
    assert!(table.len() >= 16 * m && block.len() >= 16 * m && m.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: AVX2 presence checked at run time; the assert above bounds every load.
            unsafe { block_sums_avx2(table, m, block, out) };
            return;
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        // SAFETY: the assert above bounds every 16-byte load.
        unsafe { block_sums_simd128(table, m, block, out) };
        return;
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        // SAFETY: NEON is enabled at compile time; the assert above bounds every 16-byte load.
        unsafe { block_sums_neon(table, m, block, out) };
        return;
    }
    #[allow(unreachable_code)]
    block_sums_scalar(table, m, block, out)
}

/// Sums of two blocks at once: on AVX2 and NEON each table register is loaded once for both
/// blocks, which halves table loads and doubles independent work per iteration. Same sums as two
/// [`block_sums`] calls; returns each block's largest sum (over all 32 slots, padding included).
#[inline]
pub fn block_pair_sums(
    table: &[u8],
    m: usize,
    first: &[u8],
    second: &[u8],
    out: &mut [[u16; 32]; 2],
) -> [u16; 2] {
    assert!(
        table.len() >= 16 * m
            && first.len() >= 16 * m
            && second.len() >= 16 * m
            && m.is_multiple_of(2)
    );
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512bw() {
            // SAFETY: AVX-512F/BW presence checked at run time; the assert above bounds every load.
            return unsafe { block_pair_sums_avx512(table, m, first, second, out) };
        }
        if has_avx2() {
            // SAFETY: AVX2 presence checked at run time; the assert above bounds every load.
            return unsafe { block_pair_sums_avx2(table, m, first, second, out) };
        }
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        // SAFETY: NEON is enabled at compile time; the assert above bounds every 16-byte load.
        return unsafe { block_pair_sums_neon(table, m, first, second, out) };
    }
    #[allow(unreachable_code)]
    let [first_out, second_out] = out;
    block_sums(table, m, first, first_out);
    block_sums(table, m, second, second_out);
    [max_of(first_out), max_of(second_out)]
}

fn max_of(sums: &[u16; 32]) -> u16 {
    sums.iter().copied().fold(0, u16::max)
}

/// The reference path every SIMD path must match exactly.
pub fn block_sums_scalar(table: &[u8], m: usize, block: &[u8], out: &mut [u16; 32]) {
    for (slot, sum_out) in out.iter_mut().enumerate() {
        let mut sum = 0u32;
        for sub in 0..m {
            let byte = block[sub * 16 + (slot % 16)];
            let code = if slot < 16 { byte & 0x0f } else { byte >> 4 };
            sum += table[sub * 16 + code as usize] as u32;
        }
        *sum_out = sum as u16;
    }
}

#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_sums_avx2(table: &[u8], m: usize, block: &[u8], out: &mut [u16; 32]) {
    use std::arch::x86_64::*;
    let nibble = _mm256_set1_epi8(0x0f);
    let low_byte = _mm256_set1_epi16(0x00ff);
    let mut low_even = _mm256_setzero_si256();
    let mut low_odd = _mm256_setzero_si256();
    let mut high_even = _mm256_setzero_si256();
    let mut high_odd = _mm256_setzero_si256();
    // Two sub-quantizers per 256-bit register: pshufb looks up within each 128-bit lane.
    for pair in 0..m / 2 {
        let codes = _mm256_loadu_si256(block.as_ptr().add(pair * 32) as *const __m256i);
        let lut = _mm256_loadu_si256(table.as_ptr().add(pair * 32) as *const __m256i);
        let low_codes = _mm256_and_si256(codes, nibble);
        let high_codes = _mm256_and_si256(_mm256_srli_epi16(codes, 4), nibble);
        let low_values = _mm256_shuffle_epi8(lut, low_codes);
        let high_values = _mm256_shuffle_epi8(lut, high_codes);
        low_even = _mm256_add_epi16(low_even, _mm256_and_si256(low_values, low_byte));
        low_odd = _mm256_add_epi16(low_odd, _mm256_srli_epi16(low_values, 8));
        high_even = _mm256_add_epi16(high_even, _mm256_and_si256(high_values, low_byte));
        high_odd = _mm256_add_epi16(high_odd, _mm256_srli_epi16(high_values, 8));
    }
    store_block_sums([low_even, low_odd, high_even, high_odd], out);
}

/// Folds the two sub-quantizer lanes of the four accumulators (even/odd slots of the low and
/// high nibble halves), stores the 32 sums in slot order and returns their maximum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_block_sums(
    accumulators: [std::arch::x86_64::__m256i; 4],
    out: &mut [u16; 32],
) -> u16 {
    use std::arch::x86_64::*;
    let fold =
        |v: __m256i| _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let [low_even, low_odd, high_even, high_odd] = accumulators.map(fold);
    let ptr = out.as_mut_ptr() as *mut __m128i;
    _mm_storeu_si128(ptr, _mm_unpacklo_epi16(low_even, low_odd));
    _mm_storeu_si128(ptr.add(1), _mm_unpackhi_epi16(low_even, low_odd));
    _mm_storeu_si128(ptr.add(2), _mm_unpacklo_epi16(high_even, high_odd));
    _mm_storeu_si128(ptr.add(3), _mm_unpackhi_epi16(high_even, high_odd));
    horizontal_max_u16(_mm_max_epu16(
        _mm_max_epu16(low_even, low_odd),
        _mm_max_epu16(high_even, high_odd),
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_pair_sums_avx2(
    table: &[u8],
    m: usize,
    first: &[u8],
    second: &[u8],
    out: &mut [[u16; 32]; 2],
) -> [u16; 2] {
    use std::arch::x86_64::*;
    let mut accumulators = [_mm256_setzero_si256(); 8];
    for pair in 0..m / 2 {
        // The next two blocks follow these in memory: fetch one cache line of them per step, so
        // the next call finds its codes in cache (prefetches never fault; wrapping_add keeps the
        // address computation defined past the end of the list).
        _mm_prefetch::<_MM_HINT_T0>(first.as_ptr().wrapping_add(32 * m + pair * 64) as *const i8);
        pair_step_avx2(table, pair, [first, second], &mut accumulators);
    }
    store_pair_sums(&accumulators, out)
}

/// Both blocks' sums stored in slot order, and each block's largest.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_pair_sums(
    accumulators: &[std::arch::x86_64::__m256i; 8],
    out: &mut [[u16; 32]; 2],
) -> [u16; 2] {
    let mut maxima = [0u16; 2];
    for (block_index, block_out) in out.iter_mut().enumerate() {
        let acc = &accumulators[block_index * 4..block_index * 4 + 4];
        maxima[block_index] = store_block_sums([acc[0], acc[1], acc[2], acc[3]], block_out);
    }
    maxima
}

/// One sub-quantizer pair (32 table bytes) of two blocks into their four accumulators each
/// (low/high nibble × even/odd slot), the step both pair kernels take.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pair_step_avx2(
    table: &[u8],
    pair: usize,
    blocks: [&[u8]; 2],
    accumulators: &mut [std::arch::x86_64::__m256i; 8],
) {
    use std::arch::x86_64::*;
    let nibble = _mm256_set1_epi8(0x0f);
    let low_byte = _mm256_set1_epi16(0x00ff);
    let lut = _mm256_loadu_si256(table.as_ptr().add(pair * 32) as *const __m256i);
    for (block_index, block) in blocks.into_iter().enumerate() {
        let codes = _mm256_loadu_si256(block.as_ptr().add(pair * 32) as *const __m256i);
        let low_values = _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, nibble));
        let high_values =
            _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(codes, 4), nibble));
        let acc = &mut accumulators[block_index * 4..block_index * 4 + 4];
        acc[0] = _mm256_add_epi16(acc[0], _mm256_and_si256(low_values, low_byte));
        acc[1] = _mm256_add_epi16(acc[1], _mm256_srli_epi16(low_values, 8));
        acc[2] = _mm256_add_epi16(acc[2], _mm256_and_si256(high_values, low_byte));
        acc[3] = _mm256_add_epi16(acc[3], _mm256_srli_epi16(high_values, 8));
    }
}

#[cfg(target_arch = "x86_64")]
pub fn has_avx512bw() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

/// [`block_pair_sums_avx2`] with four sub-quantizers per 512-bit register (`vpshufb` looks up
/// within each 128-bit lane): half the instructions per block. The u16 sums wrap the same way
/// in any order, so the result is bit for bit the other paths'.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn block_pair_sums_avx512(
    table: &[u8],
    m: usize,
    first: &[u8],
    second: &[u8],
    out: &mut [[u16; 32]; 2],
) -> [u16; 2] {
    use std::arch::x86_64::*;
    let nibble = _mm512_set1_epi8(0x0f);
    let low_byte = _mm512_set1_epi16(0x00ff);
    let mut wide = [_mm512_setzero_si512(); 8];
    for quad in 0..m / 4 {
        // Next blocks' codes, one cache line of them per step (as in the AVX2 kernel).
        _mm_prefetch::<_MM_HINT_T0>(first.as_ptr().wrapping_add(32 * m + quad * 128) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(
            first.as_ptr().wrapping_add(32 * m + quad * 128 + 64) as *const i8
        );
        let lut = _mm512_loadu_si512(table.as_ptr().add(quad * 64) as *const __m512i);
        for (block_index, block) in [first, second].into_iter().enumerate() {
            let codes = _mm512_loadu_si512(block.as_ptr().add(quad * 64) as *const __m512i);
            let low_values = _mm512_shuffle_epi8(lut, _mm512_and_si512(codes, nibble));
            let high_values =
                _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(codes, 4), nibble));
            let acc = &mut wide[block_index * 4..block_index * 4 + 4];
            acc[0] = _mm512_add_epi16(acc[0], _mm512_and_si512(low_values, low_byte));
            acc[1] = _mm512_add_epi16(acc[1], _mm512_srli_epi16(low_values, 8));
            acc[2] = _mm512_add_epi16(acc[2], _mm512_and_si512(high_values, low_byte));
            acc[3] = _mm512_add_epi16(acc[3], _mm512_srli_epi16(high_values, 8));
        }
    }
    // Fold to the AVX2 kernel's layout: each 256-bit half holds the same two sub-quantizer lanes.
    let fold =
        |v: __m512i| _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    let mut accumulators = wide.map(fold);
    if m % 4 == 2 {
        pair_step_avx2(table, m / 2 - 1, [first, second], &mut accumulators);
    }
    store_pair_sums(&accumulators, out)
}

/// Largest of eight u16 lanes: `minpos` finds the smallest, so search the complement.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_max_u16(values: std::arch::x86_64::__m128i) -> u16 {
    use std::arch::x86_64::*;
    let complement = _mm_xor_si128(values, _mm_set1_epi16(-1));
    !(_mm_cvtsi128_si32(_mm_minpos_epu16(complement)) as u16)
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
unsafe fn block_sums_simd128(table: &[u8], m: usize, block: &[u8], out: &mut [u16; 32]) {
    use core::arch::wasm32::*;
    let nibble = u8x16_splat(0x0f);
    let low_byte = u16x8_splat(0x00ff);
    let mut low_even = u16x8_splat(0);
    let mut low_odd = u16x8_splat(0);
    let mut high_even = u16x8_splat(0);
    let mut high_odd = u16x8_splat(0);
    for sub in 0..m {
        let codes = v128_load(block.as_ptr().add(sub * 16) as *const v128);
        let lut = v128_load(table.as_ptr().add(sub * 16) as *const v128);
        let low_values = i8x16_swizzle(lut, v128_and(codes, nibble));
        let high_values = i8x16_swizzle(lut, u8x16_shr(codes, 4));
        low_even = i16x8_add(low_even, v128_and(low_values, low_byte));
        low_odd = i16x8_add(low_odd, u16x8_shr(low_values, 8));
        high_even = i16x8_add(high_even, v128_and(high_values, low_byte));
        high_odd = i16x8_add(high_odd, u16x8_shr(high_values, 8));
    }
    let ptr = out.as_mut_ptr() as *mut v128;
    v128_store(
        ptr,
        i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(low_even, low_odd),
    );
    v128_store(
        ptr.add(1),
        i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(low_even, low_odd),
    );
    v128_store(
        ptr.add(2),
        i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(high_even, high_odd),
    );
    v128_store(
        ptr.add(3),
        i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(high_even, high_odd),
    );
}

/// Adds one sub-quantizer's table values to the four accumulators of a block (slots 0-7, 8-15,
/// 16-23, 24-31). `tbl` looks up all 16 bytes at once and the widening adds put the u16 sums in
/// slot order, so unlike AVX2 no even/odd split and re-interleave is needed.
///
/// # Safety
/// `codes` must point to 16 readable bytes.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[inline(always)]
unsafe fn accumulate_neon(
    lut: std::arch::aarch64::uint8x16_t,
    codes: *const u8,
    acc: &mut [std::arch::aarch64::uint16x8_t; 4],
) {
    use std::arch::aarch64::*;
    let codes = vld1q_u8(codes);
    let low_values = vqtbl1q_u8(lut, vandq_u8(codes, vdupq_n_u8(0x0f)));
    let high_values = vqtbl1q_u8(lut, vshrq_n_u8::<4>(codes));
    acc[0] = vaddw_u8(acc[0], vget_low_u8(low_values));
    acc[1] = vaddw_high_u8(acc[1], low_values);
    acc[2] = vaddw_u8(acc[2], vget_low_u8(high_values));
    acc[3] = vaddw_high_u8(acc[3], high_values);
}

/// Stores a block's four accumulators in slot order and returns their maximum.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[inline(always)]
unsafe fn store_block_sums_neon(
    acc: [std::arch::aarch64::uint16x8_t; 4],
    out: &mut [u16; 32],
) -> u16 {
    use std::arch::aarch64::*;
    for (index, &sums) in acc.iter().enumerate() {
        vst1q_u16(out.as_mut_ptr().add(8 * index), sums);
    }
    vmaxvq_u16(vmaxq_u16(
        vmaxq_u16(acc[0], acc[1]),
        vmaxq_u16(acc[2], acc[3]),
    ))
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
unsafe fn block_sums_neon(table: &[u8], m: usize, block: &[u8], out: &mut [u16; 32]) {
    use std::arch::aarch64::*;
    let mut acc = [vdupq_n_u16(0); 4];
    for sub in 0..m {
        let lut = vld1q_u8(table.as_ptr().add(sub * 16));
        accumulate_neon(lut, block.as_ptr().add(sub * 16), &mut acc);
    }
    store_block_sums_neon(acc, out);
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
unsafe fn block_pair_sums_neon(
    table: &[u8],
    m: usize,
    first: &[u8],
    second: &[u8],
    out: &mut [[u16; 32]; 2],
) -> [u16; 2] {
    use std::arch::aarch64::*;
    // Eight independent accumulator chains, and one table load for both blocks. No prefetch as
    // on AVX2: aarch64's is an unstable intrinsic, and the codes are one sequential stream.
    let mut first_acc = [vdupq_n_u16(0); 4];
    let mut second_acc = [vdupq_n_u16(0); 4];
    for sub in 0..m {
        let lut = vld1q_u8(table.as_ptr().add(sub * 16));
        accumulate_neon(lut, first.as_ptr().add(sub * 16), &mut first_acc);
        accumulate_neon(lut, second.as_ptr().add(sub * 16), &mut second_acc);
    }
    let [first_out, second_out] = out;
    [
        store_block_sums_neon(first_acc, first_out),
        store_block_sums_neon(second_acc, second_out),
    ]
}

/// Scores the first `count` vectors of a packed list as `bias + lut.to_score(sum)` and offers
/// each to `top` under key `key_base + row`.
pub fn scan_list(
    lut: &QuantizedLut,
    packed: &[u8],
    count: usize,
    bias: f32,
    key_base: u64,
    top: &mut TopK,
) {
    let m = lut.m;
    let block_bytes = 16 * m;
    if m == 0 || count == 0 {
        return;
    }
    let blocks = count
        .div_ceil(BLOCK_VECTORS)
        .min(packed.len() / block_bytes);
    let mut sums = [[0u16; 32]; 2];
    let mut block_index = 0;
    while block_index < blocks {
        let first = &packed[block_index * block_bytes..(block_index + 1) * block_bytes];
        let (blocks_now, maxima) = if block_index + 1 < blocks {
            let second = &packed[(block_index + 1) * block_bytes..(block_index + 2) * block_bytes];
            (2, block_pair_sums(&lut.table, m, first, second, &mut sums))
        } else {
            block_sums(&lut.table, m, first, &mut sums[0]);
            (1, [max_of(&sums[0]), 0])
        };
        for offset in 0..blocks_now {
            // Most blocks hold nothing above the threshold: the block's best sum (an upper
            // bound, padding slots included) rejects them with one comparison.
            let block_best = bias + lut.offset + lut.scale * maxima[offset] as f32;
            if block_best < top.threshold() {
                continue;
            }
            let first_row = (block_index + offset) * BLOCK_VECTORS;
            offer_block(lut, &sums[offset], first_row, count, bias, key_base, top);
        }
        block_index += blocks_now;
    }
}

#[inline(always)]
fn offer_block(
    lut: &QuantizedLut,
    sums: &[u16; 32],
    first_row: usize,
    count: usize,
    bias: f32,
    key_base: u64,
    top: &mut TopK,
) {
    let rows_in_block = (count - first_row).min(BLOCK_VECTORS);
    let base = bias + lut.offset;
    for (slot, &sum) in sums[..rows_in_block].iter().enumerate() {
        let score = base + lut.scale * sum as f32;
        if score >= top.threshold() {
            top.push(score, key_base + (first_row + slot) as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Also runs under wasm32-wasip1 with `+simd128` (see `scripts/test.sh`), where the
    /// dispatching path is the `i8x16.swizzle` kernel.
    #[test]
    fn dispatching_block_sums_equal_the_scalar_reference() {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        assert_eq!(crate::simd_level(), "simd128");
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        assert_eq!(crate::simd_level(), "neon");
        let mut next_byte = xorshift(0x2545_f491_4f6c_dd1d);
        for m in [2usize, 8, 64, 128, 256] {
            let table: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
            let block: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
            let mut fast = [0u16; 32];
            let mut reference = [0u16; 32];
            block_sums(&table, m, &block, &mut fast);
            block_sums_scalar(&table, m, &block, &mut reference);
            let mut pair = [[0u16; 32]; 2];
            block_pair_sums(&table, m, &block, &table, &mut pair);
            let mut second_reference = [0u16; 32];
            block_sums_scalar(&table, m, &table, &mut second_reference);
            assert_eq!(pair, [reference, second_reference], "pair kernel, m = {m}");
            assert_eq!(
                fast,
                reference,
                "m = {m}, simd level {}",
                crate::simd_level()
            );
        }
    }

    /// Each x86_64 pair kernel on its own (the dispatcher picks only the widest one here), at
    /// every remainder of m by four and past the u16 wrap-around.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_x86_pair_kernel_equals_the_scalar_reference() {
        let mut next_byte = xorshift(0x9e37_79b9_7f4a_7c15);
        for m in [2usize, 4, 6, 8, 10, 64, 66, 128, 130, 258, 600] {
            let table: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
            let first: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
            let second: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
            let mut reference = [[0u16; 32]; 2];
            block_sums_scalar(&table, m, &first, &mut reference[0]);
            block_sums_scalar(&table, m, &second, &mut reference[1]);
            let maxima = [max_of(&reference[0]), max_of(&reference[1])];
            if has_avx2() {
                let mut out = [[0u16; 32]; 2];
                // SAFETY: AVX2 checked; every slice holds 16 * m bytes.
                let found = unsafe { block_pair_sums_avx2(&table, m, &first, &second, &mut out) };
                assert_eq!((out, found), (reference, maxima), "avx2, m = {m}");
            }
            if has_avx512bw() {
                let mut out = [[0u16; 32]; 2];
                // SAFETY: AVX-512F/BW checked; every slice holds 16 * m bytes.
                let found = unsafe { block_pair_sums_avx512(&table, m, &first, &second, &mut out) };
                assert_eq!((out, found), (reference, maxima), "avx512, m = {m}");
            }
        }
    }

    fn xorshift(seed: u64) -> impl FnMut() -> u8 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        }
    }

    /// Tables of the given kind: random, all 0, all 255, or 0/255 mixed.
    fn table_of(kind: usize, m: usize, next_byte: &mut impl FnMut() -> u8) -> Vec<u8> {
        (0..16 * m)
            .map(|i| match kind {
                0 => next_byte(),
                1 => 0,
                2 => 255,
                _ => [0, 255][(i * 7 + i / 16) % 2],
            })
            .collect()
    }

    /// Every SIMD path (AVX2, NEON, simd128) against the reference on sub-quantizer counts that
    /// are not multiples of 4 or of the register width, extreme tables, and m past 257 where
    /// 255 * m no longer fits a u16 (every path wraps like the scalar truncation). The pair
    /// kernel's maxima are checked too: they drive the block prune in `scan_list`.
    #[test]
    fn dispatching_kernels_equal_the_scalar_reference_on_awkward_shapes() {
        let mut next_byte = xorshift(0x9e37_79b9_7f4a_7c15);
        for m in [2usize, 4, 6, 10, 14, 18, 30, 34, 66, 130, 256, 258, 600] {
            for kind in 0..4 {
                for trial in 0..3 {
                    let table = table_of(kind, m, &mut next_byte);
                    // Longer than needed, as callers pass whole lists: bytes past 16 * m are ignored.
                    let first: Vec<u8> = (0..16 * m + 16).map(|_| next_byte()).collect();
                    let second: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
                    let mut expected = [[0u16; 32]; 2];
                    block_sums_scalar(&table, m, &first, &mut expected[0]);
                    block_sums_scalar(&table, m, &second, &mut expected[1]);
                    let context = format!("m {m}, table kind {kind}, trial {trial}");
                    let mut single = [0u16; 32];
                    block_sums(&table, m, &first, &mut single);
                    assert_eq!(single, expected[0], "{context}");
                    let mut pair = [[0u16; 32]; 2];
                    let maxima = block_pair_sums(&table, m, &first, &second, &mut pair);
                    assert_eq!(pair, expected, "pair, {context}");
                    assert_eq!(
                        maxima,
                        [max_of(&expected[0]), max_of(&expected[1])],
                        "{context}"
                    );
                }
            }
        }
    }

    /// The NEON kernels called directly, odd sub-quantizer counts included (the dispatcher
    /// only takes even ones), so a broken kernel fails even if dispatch changed.
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    #[test]
    fn neon_kernels_equal_the_scalar_reference() {
        let mut next_byte = xorshift(0xd1b5_4a32_d192_ed03);
        for m in (0..=40).chain([63, 255, 256, 257, 259, 1001]) {
            for kind in 0..4 {
                let table = table_of(kind, m, &mut next_byte);
                let first: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
                let second: Vec<u8> = (0..16 * m).map(|_| next_byte()).collect();
                let mut expected = [[0u16; 32]; 2];
                block_sums_scalar(&table, m, &first, &mut expected[0]);
                block_sums_scalar(&table, m, &second, &mut expected[1]);
                let mut single = [0u16; 32];
                let mut pair = [[0u16; 32]; 2];
                // SAFETY: NEON is enabled at compile time and every buffer holds 16 * m bytes.
                let maxima = unsafe {
                    block_sums_neon(&table, m, &first, &mut single);
                    block_pair_sums_neon(&table, m, &first, &second, &mut pair)
                };
                assert_eq!(single, expected[0], "m {m}, table kind {kind}");
                assert_eq!(pair, expected, "pair, m {m}, table kind {kind}");
                assert_eq!(maxima, [max_of(&expected[0]), max_of(&expected[1])]);
            }
        }
    }
}
