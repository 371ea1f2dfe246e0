//! The integer GEMM: `out[t][r] = Σ_k u[t][k] · w[r][k]` with weights int8 (stored as bytes)
//! and activations unsigned 8-bit with `u ∈ [0, 254]`, accumulated exactly in i32.
//!
//! One numeric scheme for every kernel, so all of them compute the same exact integers and the
//! forward pass gives bit-identical embeddings whichever kernel ran:
//! - scalar: the definition;
//! - AVX2: both operands widened to i16, `vpmaddwd` (exact; `vpmaddubsw` would saturate at
//!   8-bit activations: `2 · 254 · 127 > 32767`);
//! - simd128: the same widening, `i32x4.dot_i16x8_s`;
//! - relaxed SIMD: `i32x4.relaxed_dot_i8x16_i7x16_add_s` is deterministic only when its second
//!   operand has the top bit clear, so `u` is split into `h = u >> 1` and `u − h`, both in
//!   [0, 127] (this is why `u` stops at 254), and the two dots are added. Where the engine
//!   lowers the dot to an exact u8 × i8 product (V8 on x86_64 with AVX-VNNI emits `vpdpbusd`),
//!   one dot on `u` itself gives the same integer: each GEMM call probes the lowering in the
//!   code that runs the loop and takes the one-dot path only when the probe is exact.
//!
//! Why 8-bit activations: 7-bit ones (one relaxed dot, `vpmaddubsw` without saturation) cost
//! all-MiniLM-L6-v2 its accuracy (worst cosine 0.9916 vs fp32 where 8-bit gives 0.997); 7-bit
//! weights were worse still (0.987).
//!
//! Shape: weights `[rows][cols]` are the outer loop (each row read once per call and reused
//! across tokens from L1), tokens inner, in register blocks (AVX2 4 rows × 2 tokens, simd128
//! 2 rows × 4 tokens over 8 columns a step, 13 live vectors so that V8 does not spill), each
//! weight vector widened once per block step; simd128 widens the activations to i16 once per
//! call (two plain loads per 16 columns instead of a load and two extends), relaxed SIMD splits
//! them into their two 7-bit halves once per call. The x86_64 kernels prefetch the next row
//! block's weights on a block's first pass, and every kernel reduces four rows of a token
//! together. (Walking tokens in L1-sized chunks, rows inside, was tried on 2026-11-27: no gain
//! natively or in workerd.)

/// Test hook (see [`Kernel::force_relaxed_two_dots`]).
static RELAXED_TWO_DOTS_ONLY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Which GEMM implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust: the reference every other kernel must equal bit for bit.
    Scalar,
    /// x86_64 AVX2 (i16 widening + `vpmaddwd`), chosen at run time.
    Avx2,
    /// x86_64 AVX-VNNI (`vpdpbusd` on 256-bit registers: 32 u8 × i8 products summed into i32
    /// per instruction, no widening), chosen at run time.
    AvxVnni,
    /// x86_64 AVX-512 VNNI (`vpdpbusd` on 512-bit registers), chosen at run time.
    Avx512Vnni,
    /// wasm32 `simd128` (widen to i16, `i32x4.dot_i16x8_s`), chosen at compile time.
    Simd128,
    /// wasm32 relaxed SIMD (`i32x4.relaxed_dot_i8x16_i7x16_add_s` on two 7-bit halves), chosen
    /// at compile time. The dot is deterministic here because both halves lie in [0, 127].
    /// Checked in workerd by `benches/wasm_engine.sh` (bit-identical to the scalar kernel at
    /// every length; scripts/test.sh runs the check). Node 20's V8 11.3 does not validate it
    /// without `--experimental-wasm-relaxed-simd`, and with that flag its x64 code for the
    /// dot-add could return twice the dot and drop the accumulator: never trust it there.
    RelaxedSimd,
}

/// How the engine under a wasm module lowers `i32x4.relaxed_dot_i8x16_i7x16_add_s` when the
/// second operand has its top bit set (probed on each call of [`Kernel::relaxed_dot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelaxedDot {
    /// An exact u8 × i8 product (V8 on x86_64 with AVX-VNNI: `vpdpbusd`): one dot per 16
    /// products, the fastest wasm kernel.
    ExactU8,
    /// u8 × i8 with pair sums saturated to i16 (V8 on x86_64 without AVX-VNNI: `pmaddubsw`,
    /// `pmaddwd`, add). Three instructions a dot and two dots a step: slower than simd128's
    /// i16 dot (B/32 in workerd on a 2-core AMD EPYC with AVX2 only, 2026-11-27: 47 against
    /// 30 ms p50 at 10 tokens, 336 against 210 ms at 77), so [`Kernel::best`] takes simd128.
    SaturatingPairs,
    /// A signed i8 × i8 product (arm64 `sdot`, AVX-VNNI-INT8 `vpdpbssd`): two dots a step,
    /// one instruction each.
    Signed,
    /// Anything else (the kernel stays exact: both halves lie in [0, 127]).
    Other,
}

impl Kernel {
    /// How this engine lowers the relaxed dot, `None` where the build has no relaxed SIMD.
    pub fn relaxed_dot() -> Option<RelaxedDot> {
        #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
        return Some(wasm::relaxed_dot_lowering());
        #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
        None
    }

    /// The relaxed-SIMD kernel's path on this engine and CPU: `Some(true)` when it runs one
    /// dot per 16 products (the engine's dot is an exact u8 × i8 product), `Some(false)` when
    /// two on 7-bit halves, `None` where the build has no relaxed SIMD.
    pub fn relaxed_one_dot() -> Option<bool> {
        #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
        return Some(wasm::one_dot_path());
        #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
        None
    }

    /// Makes the relaxed-SIMD kernel take its two-dot path even where one dot is exact, so a
    /// check can compare both paths on one engine (`benches/wasm_engine.sh`). For checks only.
    #[doc(hidden)]
    pub fn force_relaxed_two_dots(on: bool) {
        RELAXED_TWO_DOTS_ONLY.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// [`Kernel::name`], and for relaxed SIMD the path this engine takes (`, one dot` or
    /// `, two dots`): what `/v1/health` reports.
    pub fn describe(self) -> String {
        match (self, Kernel::relaxed_one_dot()) {
            (Kernel::RelaxedSimd, Some(true)) => format!("{}, one dot", self.name()),
            (Kernel::RelaxedSimd, Some(false)) => format!("{}, two dots", self.name()),
            (Kernel::Simd128, _) if Kernel::relaxed_dot() == Some(RelaxedDot::SaturatingPairs) => {
                format!(
                    "{} (the relaxed dot saturates on this CPU: slower than simd128)",
                    self.name()
                )
            }
            _ => self.name().to_string(),
        }
    }

    /// Every kernel this build and CPU can run, the reference first.
    pub fn available() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            kernels.push(Kernel::Avx2);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni") {
            kernels.push(Kernel::AvxVnni);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni")
        {
            kernels.push(Kernel::Avx512Vnni);
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        kernels.push(Kernel::Simd128);
        #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
        kernels.push(Kernel::RelaxedSimd);
        kernels
    }

    /// The fastest available kernel. On x86_64: AVX-512 VNNI, then AVX-VNNI, then AVX2 (B/32 at
    /// 10 tokens, `examples/int8_bench.rs` on a loaded 2-core Xeon: best runs 10.3, 15.6 and
    /// 29.4 ms; the embeddings are bit-identical; `benches/kernels/int8_gemm.rs` per shape).
    /// On wasm32: relaxed SIMD when the module was built with it (in workerd on a CPU with
    /// AVX-VNNI it ran the B/32 tower at 77 tokens about twice as fast as simd128), except
    /// where the engine's relaxed dot saturates ([`RelaxedDot::SaturatingPairs`]: x86_64
    /// without AVX-VNNI, where it is slower than simd128); else simd128.
    pub fn best() -> Kernel {
        let mut available = Kernel::available();
        if Kernel::relaxed_dot() == Some(RelaxedDot::SaturatingPairs) {
            available.retain(|kernel| *kernel != Kernel::RelaxedSimd);
        }
        [
            Kernel::Avx512Vnni,
            Kernel::AvxVnni,
            Kernel::Avx2,
            Kernel::RelaxedSimd,
            Kernel::Simd128,
        ]
        .into_iter()
        .find(|kernel| available.contains(kernel))
        .unwrap_or(Kernel::Scalar)
    }

    pub fn is_available(self) -> bool {
        Kernel::available().contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Simd128 => "simd128",
            Kernel::RelaxedSimd => "relaxed-simd",
        }
    }
}

/// `out[t * rows + r] = Σ_k acts[t * cols + k] · (weights[r * cols + k] as i8)` for `t < tokens`.
///
/// Panics if a slice is too short or the kernel is not available (callers check
/// [`Kernel::is_available`]).
pub fn gemm_u8i8(
    kernel: Kernel,
    weights: &[u8],
    rows: usize,
    cols: usize,
    acts: &[u8],
    tokens: usize,
    out: &mut [i32],
) {
    gemm_u8i8_with(
        kernel,
        weights,
        rows,
        cols,
        acts,
        tokens,
        out,
        &mut GemmScratch::default(),
    );
}

/// The activations in the form a wasm kernel reads, made once per GEMM call (not once per
/// weight row block) in buffers the caller keeps across calls.
#[derive(Default)]
pub(crate) struct GemmScratch {
    /// simd128: the activations widened to i16 (`tokens × cols`).
    wide: Vec<i16>,
    /// relaxed SIMD: per token, `h = u >> 1` (`cols` bytes) then `u − h` (`cols` bytes).
    halves: Vec<u8>,
}

/// [`gemm_u8i8`] with caller-kept buffers for the activations as the wasm kernels read them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_u8i8_with(
    kernel: Kernel,
    weights: &[u8],
    rows: usize,
    cols: usize,
    acts: &[u8],
    tokens: usize,
    out: &mut [i32],
    scratch: &mut GemmScratch,
) {
    assert!(weights.len() >= rows * cols, "weights too short");
    assert!(acts.len() >= tokens * cols, "activations too short");
    assert!(out.len() >= tokens * rows, "output too short");
    #[allow(unused_variables)]
    let GemmScratch { wide, halves } = scratch;
    #[allow(unused_mut, unused_variables)]
    let mut widen = || {
        wide.resize(tokens * cols, 0);
        for (slot, &a) in wide.iter_mut().zip(&acts[..tokens * cols]) {
            *slot = a as i16;
        }
    };
    match kernel {
        Kernel::Scalar => gemm_scalar(weights, rows, cols, acts, tokens, out),
        Kernel::Avx2 => {
            #[cfg(target_arch = "x86_64")]
            {
                assert!(std::is_x86_feature_detected!("avx2"), "avx2 not available");
                // No pre-widening here (`wide` stays empty): `vpmovzxbw` from memory is one
                // instruction, like a load of widened activations; a pre-widened AVX2 variant
                // ran about 6% more instructions under callgrind.
                let gemm = Gemm {
                    weights,
                    rows,
                    cols,
                    acts,
                    wide: &[],
                    halves: &[],
                    tokens,
                };
                // SAFETY: AVX2 is present (checked above); the slice lengths are checked above.
                unsafe { avx2::gemm(&gemm, out) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            panic!("the avx2 kernel exists only on x86_64");
        }
        Kernel::AvxVnni | Kernel::Avx512Vnni => {
            #[cfg(target_arch = "x86_64")]
            {
                assert!(kernel.is_available(), "{} not available", kernel.name());
                let gemm = Gemm {
                    weights,
                    rows,
                    cols,
                    acts,
                    wide: &[],
                    halves: &[],
                    tokens,
                };
                // SAFETY: the CPU has the features (checked above); lengths are checked above.
                unsafe {
                    if kernel == Kernel::AvxVnni {
                        vnni::gemm_256(&gemm, out)
                    } else {
                        vnni::gemm_512(&gemm, out)
                    }
                };
            }
            #[cfg(not(target_arch = "x86_64"))]
            panic!("the vnni kernels exist only on x86_64");
        }
        Kernel::Simd128 => {
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            {
                widen();
                let gemm = Gemm {
                    weights,
                    rows,
                    cols,
                    acts,
                    wide,
                    halves: &[],
                    tokens,
                };
                // SAFETY: simd128 is enabled at compile time; slice lengths are checked above.
                unsafe { wasm::gemm(&gemm, out) };
            }
            #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
            panic!("the simd128 kernel needs wasm32 with +simd128");
        }
        Kernel::RelaxedSimd => {
            #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
            {
                let gemm = Gemm {
                    weights,
                    rows,
                    cols,
                    acts,
                    wide: &[],
                    halves: &[],
                    tokens,
                };
                // SAFETY: relaxed-simd is enabled at compile time; slice lengths are checked above.
                unsafe { wasm::gemm_relaxed(&gemm, halves, out) };
            }
            #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
            panic!("the relaxed-simd kernel needs wasm32 with +relaxed-simd");
        }
    }
}

/// One GEMM call's operands; `wide` and `halves` are `acts` as [`GemmScratch`] holds them
/// (empty for the kernels that do not read them).
#[allow(dead_code)]
struct Gemm<'a> {
    weights: &'a [u8],
    rows: usize,
    cols: usize,
    acts: &'a [u8],
    wide: &'a [i16],
    halves: &'a [u8],
    tokens: usize,
}

// Unused where no four-row kernel is compiled in (wasm32 with plain simd128).
#[allow(dead_code)]
impl Gemm<'_> {
    /// The last step of a four-row-reduced block: adds the scalar tail (columns `main..`) of
    /// rows `row..row + 4` against `token` to their SIMD sums and stores the four outputs.
    #[inline(always)]
    fn finish_four(
        &self,
        mut sums: [i32; 4],
        row: usize,
        token: usize,
        main: usize,
        out: &mut [i32],
    ) {
        let cols = self.cols;
        if main < cols {
            let act_tail = &self.acts[token * cols + main..(token + 1) * cols];
            for (i, sum) in sums.iter_mut().enumerate() {
                let weight_tail = &self.weights[(row + i) * cols + main..(row + i + 1) * cols];
                *sum += dot_scalar(weight_tail, act_tail);
            }
        }
        let start = token * self.rows + row;
        out[start..start + 4].copy_from_slice(&sums);
    }

    /// [`Gemm::finish_four`] for one output: `sum` (the SIMD part of `row` against `token`)
    /// plus the scalar tail, stored.
    #[inline(always)]
    fn finish_one(&self, sum: i32, row: usize, token: usize, main: usize, out: &mut [i32]) {
        let cols = self.cols;
        let weight_tail = &self.weights[row * cols + main..(row + 1) * cols];
        let act_tail = &self.acts[token * cols + main..(token + 1) * cols];
        out[token * self.rows + row] = sum + dot_scalar(weight_tail, act_tail);
    }
}

fn dot_scalar(weights: &[u8], acts: &[u8]) -> i32 {
    weights
        .iter()
        .zip(acts)
        .map(|(&w, &a)| w as i8 as i32 * a as i32)
        .sum()
}

fn gemm_scalar(
    weights: &[u8],
    rows: usize,
    cols: usize,
    acts: &[u8],
    tokens: usize,
    out: &mut [i32],
) {
    for row in 0..rows {
        let weight_row = &weights[row * cols..(row + 1) * cols];
        for token in 0..tokens {
            out[token * rows + row] =
                dot_scalar(weight_row, &acts[token * cols..(token + 1) * cols]);
        }
    }
}

/// The register-block walk of the simd128 kernel: rows in blocks of `$rows`, tokens in
/// blocks of `$tokens` (at most 6) with the remainders in smaller blocks, each block a call to
/// `$block::<R, T>(gemm, row, token, out)`.
#[allow(unused_macros)]
macro_rules! walk_blocks {
    ($block:ident, $rows:literal, $tokens:literal, $gemm:expr, $out:expr) => {{
        let (gemm, out) = ($gemm, $out);
        let mut row = 0;
        while row + $rows <= gemm.rows {
            walk_blocks!(@tokens $block, $rows, $tokens, gemm, row, out);
            row += $rows;
        }
        while row < gemm.rows {
            walk_blocks!(@tokens $block, 1, $tokens, gemm, row, out);
            row += 1;
        }
    }};
    (@tokens $block:ident, $r:literal, $tokens:literal, $gemm:ident, $row:ident, $out:ident) => {{
        let mut token = 0;
        while token + $tokens <= $gemm.tokens {
            $block::<$r, $tokens>($gemm, $row, token, $out);
            token += $tokens;
        }
        match $gemm.tokens - token {
            0 => {}
            1 => $block::<$r, 1>($gemm, $row, token, $out),
            2 => $block::<$r, 2>($gemm, $row, token, $out),
            3 => $block::<$r, 3>($gemm, $row, token, $out),
            4 => $block::<$r, 4>($gemm, $row, token, $out),
            5 => $block::<$r, 5>($gemm, $row, token, $out),
            _ => unreachable!("token blocks are at most 6 wide"),
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Gemm;

    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn hsum(v: __m256i) -> i32 {
        let sum128 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let sum64 = _mm_add_epi32(sum128, _mm_unpackhi_epi64(sum128, sum128));
        let sum32 = _mm_add_epi32(sum64, _mm_shuffle_epi32(sum64, 0b01));
        _mm_cvtsi128_si32(sum32)
    }

    /// `[Σ v0, Σ v1, Σ v2, Σ v3]` of four ymm vectors of i32 lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn reduce4_256(v: [__m256i; 4]) -> __m128i {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], then [Σa, Σb, Σc, Σd] of the lane.
        let ab = _mm256_add_epi32(
            _mm256_unpacklo_epi32(v[0], v[1]),
            _mm256_unpackhi_epi32(v[0], v[1]),
        );
        let cd = _mm256_add_epi32(
            _mm256_unpacklo_epi32(v[2], v[3]),
            _mm256_unpackhi_epi32(v[2], v[3]),
        );
        let abcd = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
        _mm_add_epi32(
            _mm256_castsi256_si128(abcd),
            _mm256_extracti128_si256(abcd, 1),
        )
    }

    /// One `R × T` register block: rows `row..row+R`, tokens `token..token+T`, with the
    /// next row block's prefetch and the four-row reduction of the VNNI blocks (see there).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn block<const R: usize, const T: usize>(
        g: &Gemm,
        row: usize,
        token: usize,
        out: &mut [i32],
    ) {
        let (weights, cols, acts) = (g.weights, g.cols, g.acts);
        let main = cols & !15;
        let weight_ptr: [*const u8; R] =
            std::array::from_fn(|i| weights.as_ptr().add((row + i) * cols));
        let act_ptr: [*const u8; T] =
            std::array::from_fn(|j| acts.as_ptr().add((token + j) * cols));
        let mut acc = [[_mm256_setzero_si256(); T]; R];
        let prefetch = token == 0;
        let mut k = 0;
        while k < main {
            // One line (64 columns) of each next row every four steps.
            if prefetch && k % 64 == 0 {
                for ptr in &weight_ptr {
                    _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(R * cols + k) as *const i8);
                }
            }
            // 16 weights sign-extended and 16 activations zero-extended to i16; `vpmaddwd`
            // sums adjacent products into i32 exactly.
            // (A loop, not `array::from_fn`: a closure does not inherit `target_feature`, and
            // the intrinsics inside it would become calls.)
            let mut a = [_mm256_setzero_si256(); T];
            for j in 0..T {
                a[j] = _mm256_cvtepu8_epi16(_mm_loadu_si128(act_ptr[j].add(k) as *const __m128i));
            }
            for i in 0..R {
                let w =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(weight_ptr[i].add(k) as *const __m128i));
                for j in 0..T {
                    acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(a[j], w));
                }
            }
            k += 16;
        }
        if R == 4 {
            // `j` picks a column of `acc` and names the token.
            #[allow(clippy::needless_range_loop)]
            for j in 0..T {
                let mut sums = [0i32; 4];
                let four = [acc[0][j], acc[1][j], acc[2][j], acc[3][j]];
                _mm_storeu_si128(sums.as_mut_ptr() as *mut __m128i, reduce4_256(four));
                g.finish_four(sums, row, token + j, main, out);
            }
            return;
        }
        for (i, row_acc) in acc.iter().enumerate() {
            for (j, sum) in row_acc.iter().enumerate() {
                g.finish_one(hsum(*sum), row + i, token + j, main, out);
            }
        }
    }

    /// 4 rows × 2 tokens.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gemm(g: &Gemm, out: &mut [i32]) {
        walk_blocks!(block, 4, 2, g, out);
    }
}

/// `vpdpbusd` multiplies unsigned bytes (our activations, [0, 254]) by signed bytes (the
/// weights) and adds each group of 4 products to an i32 lane without saturation: exactly the
/// dot the scalar reference computes, with no widening step.
#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::avx2::{hsum as hsum_256, reduce4_256};
    use super::Gemm;

    /// One `R × T` register block of `vpdpbusd` over `$step` columns a step: the 256- and
    /// 512-bit kernels differ only in the register type and its intrinsics.
    ///
    /// Two things beyond the dot loop (the profile at 10 tokens: the `vpdpbusd` right after
    /// each weight load took most samples, waiting for weights from L3: 37.7 MB of them, read
    /// once per encode):
    /// - on a row block's first token block, the next row block's weights are prefetched at
    ///   the same column, a row block ahead of their use;
    /// - four rows of one token are reduced together (`$reduce4`: unpack/add to one 128-bit
    ///   vector of four sums, stored at once) instead of four horizontal sums. Integer adds in
    ///   any order give the same i32, so the bits do not change.
    macro_rules! vnni_block {
        ($name:ident, $features:literal, $vector:ty, $zero:ident, $load:ident, $dot:ident,
         $hsum:ident, $reduce4:ident, $step:literal) => {
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn $name<const R: usize, const T: usize>(
                g: &Gemm,
                row: usize,
                token: usize,
                out: &mut [i32],
            ) {
                let (weights, cols, acts) = (g.weights, g.cols, g.acts);
                let main = cols & !($step - 1);
                let weight_ptr: [*const u8; R] =
                    std::array::from_fn(|i| weights.as_ptr().add((row + i) * cols));
                let act_ptr: [*const u8; T] =
                    std::array::from_fn(|j| acts.as_ptr().add((token + j) * cols));
                let mut acc = [[$zero(); T]; R];
                // Only the first pass over a row block prefetches (later token blocks find
                // the next rows' lines already on their way); a hint past the end is harmless.
                let prefetch = token == 0;
                let mut k = 0;
                while k < main {
                    if prefetch {
                        for ptr in &weight_ptr {
                            _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(R * cols + k) as *const i8);
                        }
                    }
                    let mut a = [$zero(); T];
                    for j in 0..T {
                        a[j] = $load(act_ptr[j].add(k) as *const $vector);
                    }
                    for i in 0..R {
                        let w = $load(weight_ptr[i].add(k) as *const $vector);
                        for j in 0..T {
                            acc[i][j] = $dot(acc[i][j], a[j], w);
                        }
                    }
                    k += $step;
                }
                if R == 4 {
                    // `j` picks a column of `acc` and names the token.
                    #[allow(clippy::needless_range_loop)]
                    for j in 0..T {
                        let mut sums = [0i32; 4];
                        let four = [acc[0][j], acc[1][j], acc[2][j], acc[3][j]];
                        _mm_storeu_si128(sums.as_mut_ptr() as *mut __m128i, $reduce4(four));
                        g.finish_four(sums, row, token + j, main, out);
                    }
                    return;
                }
                for (i, row_acc) in acc.iter().enumerate() {
                    for (j, sum) in row_acc.iter().enumerate() {
                        g.finish_one($hsum(*sum), row + i, token + j, main, out);
                    }
                }
            }
        };
    }

    /// `[Σ v0, Σ v1, Σ v2, Σ v3]` of four zmm vectors of i32 lanes.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn reduce4_512(v: [__m512i; 4]) -> __m128i {
        let ab = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[0], v[1]),
            _mm512_unpackhi_epi32(v[0], v[1]),
        );
        let cd = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[2], v[3]),
            _mm512_unpackhi_epi32(v[2], v[3]),
        );
        let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
        let half = _mm256_add_epi32(
            _mm512_castsi512_si256(abcd),
            _mm512_extracti64x4_epi64(abcd, 1),
        );
        _mm_add_epi32(
            _mm256_castsi256_si128(half),
            _mm256_extracti128_si256(half, 1),
        )
    }

    vnni_block!(
        block_256,
        "avx2,avxvnni",
        __m256i,
        _mm256_setzero_si256,
        _mm256_loadu_si256,
        _mm256_dpbusd_avx_epi32,
        hsum_256,
        reduce4_256,
        32
    );
    vnni_block!(
        block_512,
        "avx512f,avx512bw,avx512vnni",
        __m512i,
        _mm512_setzero_si512,
        _mm512_loadu_si512,
        _mm512_dpbusd_epi32,
        _mm512_reduce_add_epi32,
        reduce4_512,
        64
    );

    /// 4 rows × 2 tokens: 8 accumulators + 2 activations + 1 weight of the 16 ymm registers.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn gemm_256(g: &Gemm, out: &mut [i32]) {
        walk_blocks!(block_256, 4, 2, g, out);
    }

    /// 4 rows × 4 tokens: 16 accumulators + 4 activations + 1 weight of the 32 zmm registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn gemm_512(g: &Gemm, out: &mut [i32]) {
        walk_blocks!(block_512, 4, 4, g, out);
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use core::arch::wasm32::*;

    use super::Gemm;
    #[cfg(target_feature = "relaxed-simd")]
    use super::RELAXED_TWO_DOTS_ONLY;

    #[inline]
    fn hsum(v: v128) -> i32 {
        i32x4_extract_lane::<0>(v)
            + i32x4_extract_lane::<1>(v)
            + i32x4_extract_lane::<2>(v)
            + i32x4_extract_lane::<3>(v)
    }

    /// One `R × T` register block over 8 columns a step: R weight loads sign-extended to i16
    /// (`v128.load8x8_s`, once for all T tokens), T loads of the pre-widened activations, `R·T`
    /// `i32x4.dot_i16x8_s`. `R·T + R + 1` live vectors: V8 keeps 15 of x64's 16 xmm registers
    /// for values, so blocks stay at or below 13.
    #[inline(always)]
    unsafe fn block<const R: usize, const T: usize>(
        g: &Gemm,
        row: usize,
        token: usize,
        out: &mut [i32],
    ) {
        let cols = g.cols;
        let main = cols & !7;
        debug_assert!((row + R) * cols <= g.weights.len());
        debug_assert!((token + T) * cols <= g.wide.len());
        let weight_ptr: [*const i8; R] =
            std::array::from_fn(|i| g.weights.as_ptr().add((row + i) * cols) as *const i8);
        let act_ptr: [*const i16; T] =
            std::array::from_fn(|j| g.wide.as_ptr().add((token + j) * cols));
        let mut acc = [[i32x4_splat(0); T]; R];
        let mut k = 0;
        while k < main {
            let w: [v128; R] =
                std::array::from_fn(|i| i16x8_load_extend_i8x8(weight_ptr[i].add(k)));
            for j in 0..T {
                let a = v128_load(act_ptr[j].add(k) as *const v128);
                for i in 0..R {
                    acc[i][j] = i32x4_add(acc[i][j], i32x4_dot_i16x8(w[i], a));
                }
            }
            k += 8;
        }
        for (i, row_acc) in acc.iter().enumerate() {
            for (j, sum) in row_acc.iter().enumerate() {
                g.finish_one(hsum(*sum), row + i, token + j, main, out);
            }
        }
    }

    /// 2 rows × 4 tokens (see [`block`] on registers).
    pub unsafe fn gemm(g: &Gemm, out: &mut [i32]) {
        walk_blocks!(block, 2, 4, g, out);
    }

    /// `[Σ v0, Σ v1, Σ v2, Σ v3]`: two rounds of 32-bit and 64-bit interleaves (which V8 emits
    /// as single unpack instructions) instead of four horizontal sums of extracted lanes.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    fn reduce4(v: [v128; 4]) -> v128 {
        let ab = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]),
            i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]),
        );
        let cd = i32x4_add(
            i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]),
            i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]),
        );
        i32x4_add(i64x2_shuffle::<0, 2>(ab, cd), i64x2_shuffle::<1, 3>(ab, cd))
    }

    /// A relaxed block's last step: the lanes of `acc` summed (four rows of a token at once
    /// when `R` is 4), the scalar tail (columns `main..`) added, the outputs stored.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn finish_block<const R: usize, const T: usize>(
        g: &Gemm,
        acc: &[[v128; T]; R],
        row: usize,
        token: usize,
        main: usize,
        out: &mut [i32],
    ) {
        if R == 4 {
            // `j` picks a column of `acc` and names the token.
            #[allow(clippy::needless_range_loop)]
            for j in 0..T {
                let mut sums = [0i32; 4];
                let four = [acc[0][j], acc[1][j], acc[2][j], acc[3][j]];
                v128_store(sums.as_mut_ptr() as *mut v128, reduce4(four));
                g.finish_four(sums, row, token + j, main, out);
            }
            return;
        }
        for (i, row_acc) in acc.iter().enumerate() {
            for (j, sum) in row_acc.iter().enumerate() {
                g.finish_one(hsum(*sum), row + i, token + j, main, out);
            }
        }
    }

    /// One `R × T` block over 16 columns a step: `acc + Σ w·u` as the relaxed dot twice, on the
    /// pre-split halves `h = u >> 1` and `u − h` (both in [0, 127], where the relaxed dot is
    /// exact everywhere). `R·T + 2T + 1` live vectors (13 at 4 × 2).
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn relaxed_block<const R: usize, const T: usize>(
        g: &Gemm,
        row: usize,
        token: usize,
        out: &mut [i32],
    ) {
        let (weights, cols) = (g.weights, g.cols);
        let main = cols & !15;
        debug_assert!((token + T) * 2 * cols <= g.halves.len());
        let weight_ptr: [*const u8; R] =
            std::array::from_fn(|i| weights.as_ptr().add((row + i) * cols));
        let high_ptr: [*const u8; T] =
            std::array::from_fn(|j| g.halves.as_ptr().add((token + j) * 2 * cols));
        let mut acc = [[i32x4_splat(0); T]; R];
        let mut k = 0;
        while k < main {
            let high: [v128; T] =
                std::array::from_fn(|j| v128_load(high_ptr[j].add(k) as *const v128));
            let low: [v128; T] =
                std::array::from_fn(|j| v128_load(high_ptr[j].add(cols + k) as *const v128));
            for i in 0..R {
                let w = v128_load(weight_ptr[i].add(k) as *const v128);
                for j in 0..T {
                    acc[i][j] = i32x4_relaxed_dot_i8x16_i7x16_add(
                        w,
                        low[j],
                        i32x4_relaxed_dot_i8x16_i7x16_add(w, high[j], acc[i][j]),
                    );
                }
            }
            k += 16;
        }
        finish_block(g, &acc, row, token, main, out);
    }

    /// One `R × T` block over 16 columns a step with one relaxed dot on `u` itself: only where
    /// [`dot_is_exact_u8`] holds (the engine's dot is an exact u8 × i8 product), which makes it
    /// the same integer as [`relaxed_block`]. `R·T + T + 1` live vectors.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn relaxed_u8_block<const R: usize, const T: usize>(
        g: &Gemm,
        row: usize,
        token: usize,
        out: &mut [i32],
    ) {
        let (weights, cols, acts) = (g.weights, g.cols, g.acts);
        let main = cols & !15;
        let weight_ptr: [*const u8; R] =
            std::array::from_fn(|i| weights.as_ptr().add((row + i) * cols));
        let act_ptr: [*const u8; T] =
            std::array::from_fn(|j| acts.as_ptr().add((token + j) * cols));
        let mut acc = [[i32x4_splat(0); T]; R];
        let mut k = 0;
        while k < main {
            let u: [v128; T] = std::array::from_fn(|j| v128_load(act_ptr[j].add(k) as *const v128));
            for i in 0..R {
                let w = v128_load(weight_ptr[i].add(k) as *const v128);
                for j in 0..T {
                    acc[i][j] = i32x4_relaxed_dot_i8x16_i7x16_add(w, u[j], acc[i][j]);
                }
            }
            k += 16;
        }
        finish_block(g, &acc, row, token, main, out);
    }

    /// Whether this engine's relaxed dot multiplies a second operand with its top bit set as an
    /// unsigned byte, exactly (no 16-bit saturation): true where V8 emits `vpdpbusd` (x86_64
    /// with AVX-VNNI), false where it emits `pmaddubsw` (saturates pair sums) or a signed dot
    /// (AVX-VNNI-INT8 `vpdpbssd`, arm64 `sdot`). Operands are opaque to the compilers so the
    /// answer comes from the instruction the engine chose, in the function that then uses it.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn dot_is_exact_u8() -> bool {
        // Lane 0: 127 · 255 four times (pmaddubsw saturates each pair at 32,767); lane 1:
        // −128 · 255 (−32,768 a pair there); lanes 2–3: mixed signs and sizes.
        const W: [i8; 16] = [
            127, 127, 127, 127, -128, -128, -128, -128, 1, -1, 90, -3, 0, 64, -64, 5,
        ];
        const U: [u8; 16] = [
            255, 255, 255, 255, 255, 255, 255, 255, 200, 128, 254, 129, 7, 255, 131, 1,
        ];
        let w = core::hint::black_box(W);
        let u = core::hint::black_box(U);
        let dot = i32x4_relaxed_dot_i8x16_i7x16_add(
            v128_load(w.as_ptr() as *const v128),
            v128_load(u.as_ptr() as *const v128),
            i32x4_splat(0),
        );
        let mut expected = [0i32; 4];
        for (k, (&weight, &unsigned)) in W.iter().zip(&U).enumerate() {
            expected[k / 4] += weight as i32 * unsigned as i32;
        }
        let expected = v128_load(expected.as_ptr() as *const v128);
        i32x4_all_true(i32x4_eq(dot, expected))
    }

    /// How the engine lowers the relaxed dot: lane 0 of `127 · 255` four times is 129,540 as
    /// an exact u8 product, 65,534 with pair sums saturated at 32,767 (`pmaddubsw`), −508 as
    /// a signed one (255 read as −1).
    #[cfg(target_feature = "relaxed-simd")]
    pub fn relaxed_dot_lowering() -> super::RelaxedDot {
        use super::RelaxedDot;
        let w = core::hint::black_box([127i8; 16]);
        let u = core::hint::black_box([255u8; 16]);
        // SAFETY: relaxed-simd is enabled at compile time; both loads read 16 bytes.
        let lane = unsafe {
            i32x4_extract_lane::<0>(i32x4_relaxed_dot_i8x16_i7x16_add(
                v128_load(w.as_ptr() as *const v128),
                v128_load(u.as_ptr() as *const v128),
                i32x4_splat(0),
            ))
        };
        match lane {
            129_540 => RelaxedDot::ExactU8,
            65_534 => RelaxedDot::SaturatingPairs,
            -508 => RelaxedDot::Signed,
            _ => RelaxedDot::Other,
        }
    }

    /// Whether [`gemm_relaxed`] takes the one-dot path on this engine and CPU (for reports).
    #[cfg(target_feature = "relaxed-simd")]
    pub fn one_dot_path() -> bool {
        // SAFETY: relaxed-simd is enabled at compile time.
        unsafe { dot_is_exact_u8() }
    }

    /// 4 rows × 2 tokens. One relaxed dot per 16 products where the engine's dot is exact on
    /// u8 (probed here, in the function that runs the loop, so the probe sees the same
    /// lowering), otherwise two, on `u` split into 7-bit halves in `halves` (once per call:
    /// V8 has no byte shift, and the block loop would otherwise redo it per row block).
    #[cfg(target_feature = "relaxed-simd")]
    pub unsafe fn gemm_relaxed(g: &Gemm, halves: &mut Vec<u8>, out: &mut [i32]) {
        let two_dots_only = RELAXED_TWO_DOTS_ONLY.load(std::sync::atomic::Ordering::Relaxed);
        if !two_dots_only && dot_is_exact_u8() {
            walk_blocks!(relaxed_u8_block, 4, 2, g, out);
            return;
        }
        let (tokens, cols) = (g.tokens, g.cols);
        halves.resize(2 * tokens * cols, 0);
        for (pair, row) in halves
            .chunks_exact_mut(2 * cols)
            .zip(g.acts[..tokens * cols].chunks_exact(cols))
        {
            let (high, low) = pair.split_at_mut(cols);
            for ((h, l), &u) in high.iter_mut().zip(low.iter_mut()).zip(row) {
                *h = u >> 1;
                *l = u - (u >> 1);
            }
        }
        let split = Gemm {
            halves: halves.as_slice(),
            ..*g
        };
        walk_blocks!(relaxed_block, 4, 2, &split, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::synthetic::Rng;

    #[test]
    fn every_kernel_equals_the_scalar_reference() {
        let mut rng = Rng(7);
        let shapes = [
            (1, 1),
            (3, 5),
            (4, 16),
            (5, 31),
            (7, 32),
            (8, 33),
            (9, 47),
            (13, 64),
            (16, 100),
            (6, 384),
            (12, 512),
        ];
        for &(rows, cols) in &shapes {
            for tokens in [1, 2, 3, 4, 5, 7, 10, 31, 77] {
                // Extreme values included: weights ±127 and -128, activations 0 and 254.
                let weights: Vec<u8> = (0..rows * cols)
                    .map(|i| match i % 11 {
                        0 => 127u8,
                        1 => (-127i8) as u8,
                        2 => (-128i8) as u8,
                        _ => ((rng.next_u64() % 255) as i32 - 127) as i8 as u8,
                    })
                    .collect();
                let acts: Vec<u8> = (0..tokens * cols)
                    .map(|i| match i % 13 {
                        0 => 254,
                        1 => 0,
                        _ => (rng.next_u64() % 255) as u8,
                    })
                    .collect();
                let mut expected = vec![0i32; tokens * rows];
                gemm_u8i8(
                    Kernel::Scalar,
                    &weights,
                    rows,
                    cols,
                    &acts,
                    tokens,
                    &mut expected,
                );
                // The scalar reference itself, against the definition.
                assert_eq!(
                    expected[rows * (tokens - 1)],
                    (0..cols)
                        .map(|k| weights[k] as i8 as i32 * acts[(tokens - 1) * cols + k] as i32)
                        .sum::<i32>()
                );
                for kernel in Kernel::available() {
                    let mut got = vec![i32::MIN; tokens * rows];
                    gemm_u8i8(kernel, &weights, rows, cols, &acts, tokens, &mut got);
                    assert_eq!(
                        got,
                        expected,
                        "{} differs at rows {rows} cols {cols} tokens {tokens}",
                        kernel.name()
                    );
                }
            }
        }
    }
}
