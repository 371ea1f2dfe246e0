//! Exact rerank: inner products of the float query with the stored fp16 or int8 copies.

use half::f16;

use crate::dot::reduce_lanes;

/// fp16 bit patterns of a vector.
pub fn encode_fp16(vector: &[f32]) -> Vec<u16> {
    vector.iter().map(|x| f16::from_f32(*x).to_bits()).collect()
}

/// Symmetric int8 with one scale: `x ≈ scale * value`.
pub fn encode_int8(vector: &[f32]) -> (f32, Vec<i8>) {
    let max_abs = vector.iter().fold(0f32, |acc, x| acc.max(x.abs()));
    if max_abs == 0.0 {
        return (0.0, vec![0; vector.len()]);
    }
    let scale = max_abs / 127.0;
    let values = vector
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, values)
}

/// `<query, x>` where `x` is stored as little-endian fp16 (`2 * query.len()` bytes).
#[inline]
pub fn dot_fp16_le(query: &[f32], bytes: &[u8]) -> f32 {
    assert_eq!(bytes.len(), 2 * query.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_f16c() {
            // SAFETY: AVX and F16C checked at run time; the assert bounds every load.
            return unsafe { dot_fp16_le_f16c(query, bytes) };
        }
    }
    dot_fp16_le_scalar(query, bytes)
}

/// Reference path. f16 -> f32 is exact, and lanes add in the same order as the SIMD path.
pub fn dot_fp16_le_scalar(query: &[f32], bytes: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (index, (q, pair)) in query.iter().zip(bytes.chunks_exact(2)).enumerate() {
        let x = f16::from_bits(u16::from_le_bytes([pair[0], pair[1]])).to_f32();
        acc[index % 8] += q * x;
    }
    reduce_lanes(acc)
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn dot_fp16_le_f16c(query: &[f32], bytes: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let dim = query.len();
    let full = dim / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let mut index = 0;
    while index < full {
        let halves = _mm_loadu_si128(bytes.as_ptr().add(index * 2) as *const __m128i);
        let x = _mm256_cvtph_ps(halves);
        let q = _mm256_loadu_ps(query.as_ptr().add(index));
        // Separate multiply and add (no FMA) to match the scalar path bit for bit.
        acc = _mm256_add_ps(acc, _mm256_mul_ps(q, x));
        index += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    for tail in full..dim {
        let x = f16::from_bits(u16::from_le_bytes([bytes[2 * tail], bytes[2 * tail + 1]])).to_f32();
        lanes[tail % 8] += query[tail] * x;
    }
    reduce_lanes(lanes)
}

/// `<query, scale * values>` for an int8 copy.
#[inline]
pub fn dot_int8(query: &[f32], scale: f32, values: &[u8]) -> f32 {
    assert_eq!(values.len(), query.len());
    let mut acc = [0f32; 8];
    let query_chunks = query.chunks_exact(8);
    let value_chunks = values.chunks_exact(8);
    let tail = query_chunks
        .remainder()
        .iter()
        .zip(value_chunks.remainder());
    for (q8, v8) in query_chunks.zip(value_chunks) {
        for lane in 0..8 {
            acc[lane] += q8[lane] * (v8[lane] as i8) as f32;
        }
    }
    for (lane, (q, v)) in tail.enumerate() {
        acc[lane] += q * (*v as i8) as f32;
    }
    scale * reduce_lanes(acc)
}

/// [`dot_fp16_le`] of four copies at once, each value bit for bit the single call's. A rerank
/// is a hundred or more copies scattered over the lists: one copy's 64 dependent adds wait on
/// each other's latency and on its cache misses, four in flight overlap both.
#[inline]
pub fn dot_fp16_le_x4(query: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    for bytes in rows {
        assert_eq!(bytes.len(), 2 * query.len());
    }
    #[cfg(target_arch = "x86_64")]
    {
        if has_f16c() {
            // SAFETY: AVX and F16C checked at run time; the asserts bound every load.
            return unsafe { dot_fp16_le_x4_f16c(query, rows) };
        }
    }
    rows.map(|bytes| dot_fp16_le(query, bytes))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn dot_fp16_le_x4_f16c(query: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let dim = query.len();
    let full = dim / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut index = 0;
    while index < full {
        let q = _mm256_loadu_ps(query.as_ptr().add(index));
        for (row_acc, bytes) in acc.iter_mut().zip(rows) {
            let halves = _mm_loadu_si128(bytes.as_ptr().add(index * 2) as *const __m128i);
            // Separate multiply and add (no FMA), as in the single-copy kernel.
            *row_acc = _mm256_add_ps(*row_acc, _mm256_mul_ps(q, _mm256_cvtph_ps(halves)));
        }
        index += 8;
    }
    let mut scores = [0f32; 4];
    for ((score, row_acc), bytes) in scores.iter_mut().zip(acc).zip(rows) {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), row_acc);
        for tail in full..dim {
            let x =
                f16::from_bits(u16::from_le_bytes([bytes[2 * tail], bytes[2 * tail + 1]])).to_f32();
            lanes[tail % 8] += query[tail] * x;
        }
        *score = reduce_lanes(lanes);
    }
    scores
}

/// [`dot_int8`] of four copies at once (see [`dot_fp16_le_x4`]), each value bit for bit the
/// single call's.
#[inline]
pub fn dot_int8_x4(query: &[f32], copies: [(f32, &[u8]); 4]) -> [f32; 4] {
    for (_, values) in copies {
        assert_eq!(values.len(), query.len());
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 checked at run time; the asserts bound every load.
            return unsafe { dot_int8_x4_avx2(query, copies) };
        }
    }
    copies.map(|(scale, values)| dot_int8(query, scale, values))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_int8_x4_avx2(query: &[f32], copies: [(f32, &[u8]); 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let dim = query.len();
    let full = dim / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut index = 0;
    while index < full {
        let q = _mm256_loadu_ps(query.as_ptr().add(index));
        for (row_acc, (_, values)) in acc.iter_mut().zip(copies) {
            // i8 -> i32 -> f32 is exact, like the scalar `as i8 as f32`.
            let bytes = _mm_loadl_epi64(values.as_ptr().add(index) as *const __m128i);
            let x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            *row_acc = _mm256_add_ps(*row_acc, _mm256_mul_ps(q, x));
        }
        index += 8;
    }
    let mut scores = [0f32; 4];
    for ((score, row_acc), (scale, values)) in scores.iter_mut().zip(acc).zip(copies) {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), row_acc);
        for tail in full..dim {
            lanes[tail - full] += query[tail] * (values[tail] as i8) as f32;
        }
        *score = scale * reduce_lanes(lanes);
    }
    scores
}
