//! The forward pass: embeddings, blocks, pooling. Everything but the integer GEMM is plain f32
//! Rust shared by all kernels.

use super::kernels::{gemm_u8i8_with, GemmScratch, Kernel};
use super::{Activation, Family, Int8Model, Int8Pooling, Linear, Norm};

/// How the linears run.
#[derive(Clone, Copy)]
pub enum Linears {
    /// Activations quantized per token to 7 bits, integer GEMM on `kernel`.
    Int8(Kernel),
    /// f32 activations times the dequantized weights (the accuracy reference).
    Reference,
}

/// Steps of the unsigned activations: `u ∈ [0, 254]` (254, not 255, so that the relaxed-SIMD
/// kernel can split `u` into two 7-bit halves; see kernels.rs).
const ACT_LEVELS: f32 = 254.0;

/// Every buffer one forward needs, allocated once per call and sized by the token count.
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    hidden: Vec<f32>,
    delta: Vec<f32>,
    probs: Vec<f32>,
    quantized: Vec<u8>,
    act_scales: Vec<f32>,
    act_offsets: Vec<f32>,
    dots: Vec<i32>,
    /// The quantized activations as the wasm kernels read them.
    gemm: GemmScratch,
}

pub fn run(model: &Int8Model, ids: &[u32], linears: Linears) -> Vec<f32> {
    let config = &model.config;
    let tokens = ids.len();
    let width = config.width as usize;
    let mlp = config.mlp as usize;
    let widest = (3 * width).max(mlp).max(config.proj_dim as usize);
    let mut scratch = Scratch {
        x: vec![0.0; tokens * width],
        normed: vec![0.0; tokens * width],
        qkv: vec![0.0; tokens * 3 * width],
        context: vec![0.0; tokens * width],
        hidden: vec![0.0; tokens * mlp],
        delta: vec![0.0; tokens * width],
        probs: vec![0.0; tokens],
        quantized: vec![0; tokens * width.max(mlp)],
        act_scales: vec![0.0; tokens],
        act_offsets: vec![0.0; tokens],
        dots: vec![0; tokens * widest],
        gemm: GemmScratch::default(),
    };
    embed(model, ids, &mut scratch.x);
    if let Some(norm) = &model.embedding_norm {
        layer_norm_rows(&mut scratch.x, width, norm, config.ln_eps);
    }
    let causal = config.family == Family::Clip;
    // CLIP pools the last position and CLS pooling the first: in the last layer only that row
    // needs more than its keys and values, so attention runs for its query alone and it moves
    // to row 0, where out_proj, the MLP and the norms run for one token (every op but
    // attention is per row, so the pooled row's bits do not change).
    let pooled_row = match config.pooling {
        Int8Pooling::LastToken => Some(tokens - 1),
        Int8Pooling::Cls => Some(0),
        Int8Pooling::Mean => None,
    };
    let last_layer = model.layers.len().saturating_sub(1);
    let mut rows = tokens;
    for (index, layer) in model.layers.iter().enumerate() {
        let s = &mut scratch;
        let query = pooled_row.filter(|_| index == last_layer);
        match config.family {
            Family::Clip => {
                // Pre-LN: x += attn(LN1(x)); x += mlp(LN2(x)).
                s.normed.copy_from_slice(&s.x);
                layer_norm_rows(&mut s.normed, width, &layer.norm1, config.ln_eps);
                rows = attention_block(model, layer, linears, causal, tokens, query, s, true);
                let (x, delta) = (&mut s.x[..rows * width], &s.delta[..rows * width]);
                add_into(x, delta);
                let normed = &mut s.normed[..rows * width];
                normed.copy_from_slice(x);
                layer_norm_rows(normed, width, &layer.norm2, config.ln_eps);
                mlp_block(model, layer, linears, rows, s, true);
                add_into(&mut s.x[..rows * width], &s.delta[..rows * width]);
            }
            Family::Bert => {
                // Post-LN: x = LN1(x + attn(x)); x = LN2(x + mlp(x)).
                rows = attention_block(model, layer, linears, causal, tokens, query, s, false);
                let x = &mut s.x[..rows * width];
                add_into(x, &s.delta[..rows * width]);
                layer_norm_rows(x, width, &layer.norm1, config.ln_eps);
                mlp_block(model, layer, linears, rows, s, false);
                let x = &mut s.x[..rows * width];
                add_into(x, &s.delta[..rows * width]);
                layer_norm_rows(x, width, &layer.norm2, config.ln_eps);
            }
        }
    }
    let mut pooled = match config.pooling {
        Int8Pooling::LastToken => scratch.x[(rows - 1) * width..rows * width].to_vec(),
        Int8Pooling::Cls => scratch.x[..width].to_vec(),
        Int8Pooling::Mean => {
            let mut sum = vec![0.0f32; width];
            for row in scratch.x[..rows * width].chunks_exact(width) {
                add_into(&mut sum, row);
            }
            sum.iter_mut().for_each(|value| *value /= tokens as f32);
            sum
        }
    };
    if let Some(norm) = &model.final_norm {
        layer_norm_rows(&mut pooled, width, norm, config.ln_eps);
    }
    let Some(projection) = &model.projection else {
        return pooled;
    };
    let mut projected = vec![0.0f32; projection.rows];
    linear(
        model,
        projection,
        linears,
        &pooled,
        1,
        &mut projected,
        &mut scratch,
    );
    projected
}

/// `x[t] = dequantized token row + position row`.
fn embed(model: &Int8Model, ids: &[u32], x: &mut [f32]) {
    let width = model.width();
    for (position, (&id, row)) in ids.iter().zip(x.chunks_exact_mut(width)).enumerate() {
        let scale = model.token_scales[id as usize];
        let position_row = &model.position[position * width..(position + 1) * width];
        for ((slot, &q), &p) in row.iter_mut().zip(model.token_row(id)).zip(position_row) {
            *slot = q as i8 as f32 * scale + p;
        }
    }
}

/// `delta = out(attention(qkv(input)))`, input `normed` (pre-LN) or `x` (post-LN). With
/// `query`, attention runs for that position only and `x`'s row `query` moves to row 0 (the
/// residual `x + delta` then covers that one row). Returns the rows `delta` now holds.
#[allow(clippy::too_many_arguments)]
fn attention_block(
    model: &Int8Model,
    layer: &super::Layer,
    linears: Linears,
    causal: bool,
    tokens: usize,
    query: Option<usize>,
    s: &mut Scratch,
    from_normed: bool,
) -> usize {
    let config = &model.config;
    let width = config.width as usize;
    let input = if from_normed {
        std::mem::take(&mut s.normed)
    } else {
        std::mem::take(&mut s.x)
    };
    let mut qkv = std::mem::take(&mut s.qkv);
    linear(model, &layer.qkv, linears, &input, tokens, &mut qkv, s);
    if from_normed {
        s.normed = input;
    } else {
        s.x = input;
    }
    let queries = match query {
        Some(row) => row..row + 1,
        None => 0..tokens,
    };
    let rows = queries.len();
    attention(
        &qkv,
        tokens,
        queries,
        width,
        config.heads as usize,
        causal,
        &mut s.context,
        &mut s.probs,
    );
    let context = std::mem::take(&mut s.context);
    let mut delta = std::mem::take(&mut s.delta);
    linear(model, &layer.out, linears, &context, rows, &mut delta, s);
    s.context = context;
    s.delta = delta;
    s.qkv = qkv;
    if let Some(row) = query {
        s.x.copy_within(row * width..(row + 1) * width, 0);
    }
    rows
}

/// `delta = fc2(act(fc1(input)))`.
fn mlp_block(
    model: &Int8Model,
    layer: &super::Layer,
    linears: Linears,
    tokens: usize,
    s: &mut Scratch,
    from_normed: bool,
) {
    let input = if from_normed {
        std::mem::take(&mut s.normed)
    } else {
        std::mem::take(&mut s.x)
    };
    let mut hidden = std::mem::take(&mut s.hidden);
    linear(model, &layer.fc1, linears, &input, tokens, &mut hidden, s);
    match model.config.activation {
        Activation::QuickGelu => hidden.iter_mut().for_each(|v| *v = quick_gelu(*v)),
        Activation::GeluErf => hidden.iter_mut().for_each(|v| *v = gelu_erf(*v)),
    }
    let mut delta = std::mem::take(&mut s.delta);
    linear(model, &layer.fc2, linears, &hidden, tokens, &mut delta, s);
    s.hidden = hidden;
    s.delta = delta;
    if from_normed {
        s.normed = input;
    } else {
        s.x = input;
    }
}

/// `output[t][r] = W[r] · input[t] + b[r]` for `t < tokens`.
fn linear(
    model: &Int8Model,
    linear: &Linear,
    linears: Linears,
    input: &[f32],
    tokens: usize,
    output: &mut [f32],
    s: &mut Scratch,
) {
    let (rows, cols) = (linear.rows, linear.cols);
    let weights = model.weights(linear);
    let output = &mut output[..tokens * rows];
    match linears {
        Linears::Int8(kernel) => {
            let quantized = &mut s.quantized[..tokens * cols];
            quantize_activations(
                &input[..tokens * cols],
                cols,
                quantized,
                &mut s.act_scales,
                &mut s.act_offsets,
            );
            let dots = &mut s.dots[..tokens * rows];
            gemm_u8i8_with(
                kernel,
                weights,
                rows,
                cols,
                quantized,
                tokens,
                dots,
                &mut s.gemm,
            );
            for (t, (out_row, dot_row)) in output
                .chunks_exact_mut(rows)
                .zip(dots.chunks_exact(rows))
                .enumerate()
            {
                // Σ w·x ≈ Σ w·(offset + scale·u) = scale·Σ w·u + offset·rowsum(w), then the
                // bias in the same pass (the same operations in the same order as a second
                // pass over the row: the same bits).
                let (act_scale, act_offset) = (s.act_scales[t], s.act_offsets[t]);
                let dequantize = out_row
                    .iter_mut()
                    .zip(dot_row)
                    .zip(&linear.row_sums)
                    .zip(&linear.scales);
                match &linear.bias {
                    Some(bias) => {
                        for ((((slot, &dot), &row_sum), &scale), &b) in dequantize.zip(bias) {
                            let sum = dot as f32 * act_scale + row_sum as f32 * act_offset;
                            *slot = sum * scale + b;
                        }
                    }
                    None => {
                        for (((slot, &dot), &row_sum), &scale) in dequantize {
                            let sum = dot as f32 * act_scale + row_sum as f32 * act_offset;
                            *slot = sum * scale;
                        }
                    }
                }
            }
            return;
        }
        Linears::Reference => {
            for (t, out_row) in output.chunks_exact_mut(rows).enumerate() {
                let x = &input[t * cols..(t + 1) * cols];
                for (r, slot) in out_row.iter_mut().enumerate() {
                    let w = &weights[r * cols..(r + 1) * cols];
                    let dot: f64 = w
                        .iter()
                        .zip(x)
                        .map(|(&q, &value)| q as i8 as f64 * value as f64)
                        .sum();
                    *slot = (dot * linear.scales[r] as f64) as f32;
                }
            }
        }
    }
    // (The int8 path adds its bias while dequantizing.)
    if let Some(bias) = &linear.bias {
        for out_row in output.chunks_exact_mut(rows) {
            add_into(out_row, bias);
        }
    }
}

/// Per-token asymmetric 8-bit quantization: `x ≈ offset + scale · u` with `u ∈ [0, 254]`
/// spanning `[min x, max x]` (see the module docs). Asymmetric because half the inputs are
/// lopsided: fc2 reads GELU outputs (≥ −0.17), where a symmetric range would waste half the
/// levels.
fn quantize_activations(
    input: &[f32],
    cols: usize,
    quantized: &mut [u8],
    scales: &mut [f32],
    offsets: &mut [f32],
) {
    for (((row, out), scale), offset) in input
        .chunks_exact(cols)
        .zip(quantized.chunks_exact_mut(cols))
        .zip(scales.iter_mut())
        .zip(offsets.iter_mut())
    {
        let (min, max) = min_max(row);
        *offset = min;
        if max.partial_cmp(&min) != Some(std::cmp::Ordering::Greater) || !(max - min).is_finite() {
            *scale = 0.0;
            out.fill(0);
            continue;
        }
        *scale = (max - min) / ACT_LEVELS;
        let inverse = ACT_LEVELS / (max - min);
        // (x − min)·inverse + 0.5 lies in [0.5, 254.5]: truncation is floor there, so this
        // rounds to nearest without a floor call (a libm call on baseline x86_64).
        // Clamped in f32 by compare-selects (NaN lands on 0, as the saturating cast gave),
        // then an unchecked conversion: the loop vectorizes without the cast's range fix-ups.
        for (slot, &value) in out.iter_mut().zip(row) {
            let level = (value - min) * inverse + 0.5;
            let level = if level < ACT_LEVELS {
                level
            } else {
                ACT_LEVELS
            };
            let level = if level > 0.0 { level } else { 0.0 };
            // SAFETY: `level` is in [0, 254] (a NaN became 0 above).
            *slot = unsafe { level.to_int_unchecked::<i32>() } as u8;
        }
    }
}

/// `(min, max)` of `row` ignoring NaNs (±∞ for an empty or all-NaN row), in eight lanes of
/// compare-selects, which vectorize (`f32::min` must ignore NaN and does not, on wasm32 or
/// baseline x86_64). Min and max do not depend on the order they are taken in.
fn min_max(row: &[f32]) -> (f32, f32) {
    let mut low = [f32::INFINITY; 8];
    let mut high = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for i in 0..8 {
            low[i] = if chunk[i] < low[i] { chunk[i] } else { low[i] };
            high[i] = if chunk[i] > high[i] {
                chunk[i]
            } else {
                high[i]
            };
        }
    }
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in low.iter().chain(chunks.remainder()) {
        min = if v < min { v } else { min };
    }
    for &v in high.iter().chain(chunks.remainder()) {
        max = if v > max { v } else { max };
    }
    (min, max)
}

fn add_into(target: &mut [f32], values: &[f32]) {
    for (slot, &value) in target.iter_mut().zip(values) {
        *slot += value;
    }
}

/// LayerNorm over each `width`-wide row, in place.
fn layer_norm_rows(rows: &mut [f32], width: usize, norm: &Norm, eps: f32) {
    for row in rows.chunks_exact_mut(width) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inverse = 1.0 / (variance + eps).sqrt();
        for ((value, &gamma), &beta) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
            *value = (*value - mean) * inverse * gamma + beta;
        }
    }
}

/// Dot product with eight independent partial sums (vectorizes without reassociation).
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks_a = a.chunks_exact(8);
    let mut chunks_b = b.chunks_exact(8);
    for (ca, cb) in (&mut chunks_a).zip(&mut chunks_b) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// Multi-head attention over `qkv` rows `[q | k | v]` for the query positions `queries`,
/// written to `context` rows `0..queries.len()` (`[rows][width]`).
#[allow(clippy::too_many_arguments)]
fn attention(
    qkv: &[f32],
    tokens: usize,
    queries: std::ops::Range<usize>,
    width: usize,
    heads: usize,
    causal: bool,
    context: &mut [f32],
    probs: &mut [f32],
) {
    let head_dim = width / heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let stride = 3 * width;
    for head in 0..heads {
        let base = head * head_dim;
        for (row, i) in queries.clone().enumerate() {
            let query = &qkv[i * stride + base..i * stride + base + head_dim];
            let visible = if causal { i + 1 } else { tokens };
            let mut max = f32::NEG_INFINITY;
            for (j, prob) in probs[..visible].iter_mut().enumerate() {
                let key = &qkv[j * stride + width + base..j * stride + width + base + head_dim];
                *prob = dot_f32(query, key) * scale;
                max = max.max(*prob);
            }
            for prob in &mut probs[..visible] {
                *prob = exp_fast(*prob - max);
            }
            let sum: f32 = probs[..visible].iter().sum();
            let out = &mut context[row * width + base..row * width + base + head_dim];
            let inverse = 1.0 / sum;
            // 16 outputs at a time held in registers over all values (not a load and a store
            // of each output per value); each output still sums its terms from 0 in `j`
            // order, so the bits are those of the plain loop.
            let mut chunks = out.chunks_exact_mut(16);
            let mut start = 2 * width + base;
            for out in &mut chunks {
                let mut acc = [0.0f32; 16];
                for (j, &prob) in probs[..visible].iter().enumerate() {
                    let at = j * stride + start;
                    let value: &[f32; 16] = qkv[at..at + 16].try_into().expect("16 values");
                    let weight = prob * inverse;
                    for i in 0..16 {
                        acc[i] += weight * value[i];
                    }
                }
                out.copy_from_slice(&acc);
                start += 16;
            }
            let rest = chunks.into_remainder();
            rest.fill(0.0);
            for (j, &prob) in probs[..visible].iter().enumerate() {
                let at = j * stride + start;
                let weight = prob * inverse;
                let values = &qkv[at..at + rest.len()];
                for (slot, &v) in rest.iter_mut().zip(values) {
                    *slot += weight * v;
                }
            }
        }
    }
}

fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp_fast(-1.702 * x))
}

/// `e^x` for softmax and QuickGELU without a libm call, branch-free so that the loops over
/// them vectorize (`expf` is a scalar call on every target, a software one on wasm32): `x`
/// clamped to [−87, 88] (finite results, no denormals), `e^x = 2^n · e^r` with
/// `n = round(x / ln 2)`, `r` from a two-constant (Cody–Waite) reduction, `e^r` by its degree-6
/// Taylor polynomial on `|r| ≤ ln 2 / 2` (relative error about 2e-7, next to f32's 6e-8).
#[inline]
fn exp_fast(x: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2^23 trick (no `round` call; exact for |n| < 2^22).
    let shifter = 12_582_912.0f32;
    let n = (x * std::f32::consts::LOG2_E + shifter) - shifter;
    let r = (x - n * LN2_HIGH) - n * LN2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((exponent(n) + 127) as u32) << 23)
}

/// `n as i32` for the integer-valued `n` of [`exp_fast`]. On x86_64 the saturating cast is a
/// scalar fix-up per lane that keeps the loops from vectorizing whole: `n` is already in
/// [−126, 127] for every non-NaN `x`, and the selects send a NaN there too (its `p` is NaN,
/// so the result stays NaN), which makes the unchecked conversion sound. wasm32 has the
/// saturating conversion as one instruction (`i32x4.trunc_sat_f32x4_s`): the selects would
/// only add work there (measured in workerd).
#[inline]
fn exponent(n: f32) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        let n = if n > -127.0 { n } else { -126.0 };
        let n = if n < 128.0 { n } else { 127.0 };
        // SAFETY: `n` is an integer-valued f32 in [−126, 127].
        unsafe { n.to_int_unchecked::<i32>() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        n as i32
    }
}

/// `0.5 x (1 + erf(x / √2))` with Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7).
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

fn erf(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    sign * (1.0 - poly * (-x * x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, expected) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.0, -0.842_700_8),
        ] {
            assert!((erf(x) - expected).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn exp_fast_is_within_a_few_ulps_of_exp() {
        let mut x = -90.0f32;
        while x < 90.0 {
            let (fast, exact) = (exp_fast(x), (x.clamp(-87.0, 88.0) as f64).exp());
            assert!(fast.is_finite() && fast > 0.0, "exp_fast({x}) = {fast}");
            assert!(
                ((fast as f64 - exact) / exact).abs() < 5e-7,
                "exp_fast({x}) = {fast}, exp = {exact}"
            );
            x += 0.0137;
        }
        assert!(exp_fast(f32::NAN).is_nan() && quick_gelu(f32::NAN).is_nan());
        assert!(quick_gelu(-1000.0).abs() < 1e-30);
        assert_eq!(quick_gelu(1000.0), 1000.0);
    }

    #[test]
    fn quantization_round_trips_within_half_a_step() {
        let row: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let mut quantized = vec![0u8; 37];
        let (mut scales, mut offsets) = ([0.0f32], [0.0f32]);
        quantize_activations(&row, 37, &mut quantized, &mut scales, &mut offsets);
        assert_eq!(quantized.iter().max(), Some(&254));
        assert_eq!(quantized.iter().min(), Some(&0));
        for (&q, &value) in quantized.iter().zip(&row) {
            let back = offsets[0] + q as f32 * scales[0];
            assert!((back - value).abs() <= scales[0] * 0.5 + 1e-6);
        }
    }
}
