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
    #[cfg(all(
        target_arch = "aarch64",
        target_feature = "neon",
        target_endian = "little"
    ))]
    {
        // SAFETY: NEON is enabled at compile time; the assert bounds every load.
        return unsafe { dot_fp16_le_neon(query, bytes) };
    }
    #[allow(unreachable_code)]
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

/// Eight fp16 values to f32 with `fcvtl`/`fcvtl2`. Half-to-single conversion is base Armv8.0
/// Advanced SIMD (FEAT_FP16, which is not baseline, only adds half-precision arithmetic), but
/// its intrinsic `vcvt_f32_f16` takes the unstable `float16x4_t`, hence the asm. Exact, like
/// `f16::to_f32`. Little-endian only: the bytes are reinterpreted as u16 lanes.
#[cfg(all(
    target_arch = "aarch64",
    target_feature = "neon",
    target_endian = "little"
))]
#[inline(always)]
fn halves_to_f32(halves: std::arch::aarch64::uint16x8_t) -> [std::arch::aarch64::float32x4_t; 2] {
    use std::arch::aarch64::float32x4_t;
    let low: float32x4_t;
    let high: float32x4_t;
    // SAFETY: register-only instructions available on every aarch64 CPU with NEON.
    unsafe {
        std::arch::asm!(
            "fcvtl {low:v}.4s, {halves:v}.4h",
            "fcvtl2 {high:v}.4s, {halves:v}.8h",
            halves = in(vreg) halves,
            low = out(vreg) low,
            high = out(vreg) high,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    [low, high]
}

#[cfg(all(
    target_arch = "aarch64",
    target_feature = "neon",
    target_endian = "little"
))]
unsafe fn dot_fp16_le_neon(query: &[f32], bytes: &[u8]) -> f32 {
    use std::arch::aarch64::*;
    let dim = query.len();
    let full = dim / 8 * 8;
    // Lanes 0-3 and 4-7 of the scalar path's eight accumulators.
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut index = 0;
    while index < full {
        // Byte loads: the stored vector may start at any offset.
        let halves = vreinterpretq_u16_u8(vld1q_u8(bytes.as_ptr().add(index * 2)));
        let x = halves_to_f32(halves);
        for part in 0..2 {
            let q = vld1q_f32(query.as_ptr().add(index + 4 * part));
            // Separate multiply and add (no FMA) to match the scalar path bit for bit.
            acc[part] = vaddq_f32(acc[part], vmulq_f32(q, x[part]));
        }
        index += 8;
    }
    let mut lanes = [0f32; 8];
    vst1q_f32(lanes.as_mut_ptr(), acc[0]);
    vst1q_f32(lanes.as_mut_ptr().add(4), acc[1]);
    for tail in full..dim {
        let x = f16::from_bits(u16::from_le_bytes([bytes[2 * tail], bytes[2 * tail + 1]])).to_f32();
        lanes[tail % 8] += query[tail] * x;
    }
    reduce_lanes(lanes)
}

/// `<query, scale * values>` for an int8 copy. Portable code that LLVM vectorizes well (on
/// aarch64 eight values per step with `tbl` + `scvtf #24` + `fmul`/`fadd`, seen in the
/// assembly), so it has no hand-written SIMD path.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Finite fp16 bit patterns of every kind (normal, subnormal, signed zero, largest) and
    /// queries up to 1e4, from a fixed xorshift stream.
    fn sample(seed: u64, dim: usize) -> (Vec<f32>, Vec<u8>) {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let query = (0..dim)
            .map(|_| {
                let bits = next();
                let unit = (bits >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                unit * [1.0, 1e-3, 1e4][(bits % 3) as usize]
            })
            .collect();
        let bytes = (0..dim)
            .flat_map(|_| {
                let mut half = (next() >> 48) as u16;
                if half & 0x7c00 == 0x7c00 {
                    // Infinity or NaN: drop an exponent bit to keep the sums finite.
                    half &= !0x4000;
                }
                half.to_le_bytes()
            })
            .collect();
        (query, bytes)
    }

    /// The dispatching path (F16C on x86_64, NEON on aarch64) equals the reference bit for bit
    /// for every tail length, at an odd byte offset, with infinities in one case.
    #[test]
    fn dot_fp16_le_dispatch_is_bit_identical_for_every_length() {
        for dim in 0..=70 {
            for trial in 0..4u64 {
                let (query, bytes) = sample(0x9e37_79b9_7f4a_7c15 ^ (dim as u64) << 8 ^ trial, dim);
                let mut shifted = vec![0u8];
                shifted.extend_from_slice(&bytes);
                if trial == 3 && dim > 0 {
                    shifted[1..3].copy_from_slice(&0xfc00u16.to_le_bytes());
                }
                let bytes = &shifted[1..];
                let fast = dot_fp16_le(&query, bytes);
                let reference = dot_fp16_le_scalar(&query, bytes);
                // A NaN's payload depends on operand order, which Rust leaves to the compiler.
                if reference.is_nan() {
                    assert!(fast.is_nan(), "dim {dim}, trial {trial}: {fast}");
                } else {
                    assert_eq!(
                        fast.to_bits(),
                        reference.to_bits(),
                        "dim {dim}, trial {trial}: {fast} vs {reference}"
                    );
                }
            }
        }
    }

    /// `fcvtl` converts every fp16 bit pattern, NaNs included, exactly like `f16::to_f32`, which
    /// the reference path uses; the NEON dot then only has to keep the summation order.
    #[cfg(all(
        target_arch = "aarch64",
        target_feature = "neon",
        target_endian = "little"
    ))]
    #[test]
    fn fcvtl_converts_every_half_like_the_half_crate() {
        use std::arch::aarch64::*;
        for start in (0..=u16::MAX).step_by(8) {
            let bits: [u16; 8] = std::array::from_fn(|lane| start + lane as u16);
            let mut converted = [0f32; 8];
            // SAFETY: NEON is enabled at compile time; the load and stores stay in local arrays.
            unsafe {
                let [low, high] = halves_to_f32(vld1q_u16(bits.as_ptr()));
                vst1q_f32(converted.as_mut_ptr(), low);
                vst1q_f32(converted.as_mut_ptr().add(4), high);
            }
            for (half, value) in bits.iter().zip(converted) {
                let expected = f16::from_bits(*half).to_f32();
                assert_eq!(value.to_bits(), expected.to_bits(), "{half:#06x}");
            }
        }
    }
}
