//! Float dot products with a fixed eight-lane summation order.
//!
//! Written so LLVM vectorizes the lane loop into one 256-bit (or two 128-bit)
//! registers without changing the order of additions; the result is the same on
//! every target.

/// Reduces eight lane sums in the one order every kernel of this crate uses.
#[inline(always)]
pub fn reduce_lanes(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Inner product of two equal-length vectors.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    dot_inline(a, b)
}

/// Squared Euclidean distance.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail = chunks_a.remainder().iter().zip(chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for lane in 0..8 {
            let diff = ca[lane] - cb[lane];
            acc[lane] += diff * diff;
        }
    }
    for (lane, (x, y)) in tail.enumerate() {
        let diff = x - y;
        acc[lane] += diff * diff;
    }
    reduce_lanes(acc)
}

/// Scales `v` to unit length in place; a zero vector stays zero.
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

/// `<query, row>` for every row of `matrix` (row-major, `dim` wide), appended to `out`.
/// On x86_64 with AVX2 the same eight-lane code runs in 256-bit registers (no FMA, so the
/// values equal [`dot`]'s); routing a query over thousands of centroids is this loop. On aarch64
/// NEON is baseline, so the portable code already runs in pairs of 128-bit registers (checked in
/// the assembly: `fmul`/`fadd` on `.4s`, never `fmla`); hand-written intrinsics would add nothing.
pub fn dots_with_rows(query: &[f32], matrix: &[f32], dim: usize, out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 presence checked at run time.
            unsafe { dots_with_rows_avx2(query, matrix, dim, out) };
            return;
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        dots_with_rows_simd128(query, matrix, dim, out);
        return;
    }
    #[allow(unreachable_code)]
    dots_with_rows_portable(query, matrix, dim, out)
}

/// The Worker's routing (every group centroid, per query, billed as CPU time): four rows per
/// pass, each row's eight lanes in two `f32x4` registers, multiply then add, so the values are
/// bit for bit [`dot`]'s. LLVM compiles the portable four-row loop for wasm into a splat of one
/// query value and three shuffles per multiply (the x86_64 mistake again).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn dots_with_rows_simd128(query: &[f32], matrix: &[f32], dim: usize, out: &mut Vec<f32>) {
    use core::arch::wasm32::*;
    const ROWS: usize = 4;
    if dim == 0 {
        return;
    }
    assert_eq!(query.len(), dim);
    let full = dim / 8 * 8;
    let quads = matrix.chunks_exact(ROWS * dim);
    let rest = quads.remainder();
    out.reserve(matrix.len() / dim);
    let load = |values: &[f32], at: usize| {
        // SAFETY: callers pass `at + 4 <= values.len()`; v128_load has no alignment needs.
        unsafe { v128_load(values.as_ptr().add(at) as *const v128) }
    };
    for quad in quads {
        let mut low = [f32x4_splat(0.0); ROWS];
        let mut high = [f32x4_splat(0.0); ROWS];
        let mut index = 0;
        while index < full {
            let query_low = load(query, index);
            let query_high = load(query, index + 4);
            for row in 0..ROWS {
                let at = row * dim + index;
                low[row] = f32x4_add(low[row], f32x4_mul(query_low, load(quad, at)));
                high[row] = f32x4_add(high[row], f32x4_mul(query_high, load(quad, at + 4)));
            }
            index += 8;
        }
        for row in 0..ROWS {
            let mut lanes = [0f32; 8];
            for lane in 0..4 {
                lanes[lane] = f32x4_extract_lane_dyn(low[row], lane);
                lanes[lane + 4] = f32x4_extract_lane_dyn(high[row], lane);
            }
            for (lane, column) in (full..dim).enumerate() {
                lanes[lane] += query[column] * quad[row * dim + column];
            }
            out.push(reduce_lanes(lanes));
        }
    }
    dots_with_rows_portable(query, rest, dim, out)
}

/// `f32x4_extract_lane` wants a constant lane; four constant arms keep it a plain extract.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn f32x4_extract_lane_dyn(vector: core::arch::wasm32::v128, lane: usize) -> f32 {
    use core::arch::wasm32::f32x4_extract_lane;
    match lane {
        0 => f32x4_extract_lane::<0>(vector),
        1 => f32x4_extract_lane::<1>(vector),
        2 => f32x4_extract_lane::<2>(vector),
        _ => f32x4_extract_lane::<3>(vector),
    }
}

/// Eight rows per pass in explicit 256-bit registers: LLVM's auto-vectorization of the portable
/// four-row loop transposed it through shuffles (half the routing time of a small query went
/// there). Each row keeps `dot`'s eight lanes and separate multiply and add, so the values are
/// bit for bit the portable ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_with_rows_avx2(query: &[f32], matrix: &[f32], dim: usize, out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    const ROWS: usize = 8;
    if dim == 0 {
        return;
    }
    assert_eq!(query.len(), dim);
    let full = dim / 8 * 8;
    let octets = matrix.chunks_exact(ROWS * dim);
    let rest = octets.remainder();
    out.reserve(matrix.len() / dim);
    for octet in octets {
        let base = octet.as_ptr();
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut index = 0;
        while index < full {
            let q = _mm256_loadu_ps(query.as_ptr().add(index));
            for (row, row_acc) in acc.iter_mut().enumerate() {
                // SAFETY: row < 8 and index + 8 <= dim, inside this octet of 8 * dim floats.
                let x = _mm256_loadu_ps(base.add(row * dim + index));
                *row_acc = _mm256_add_ps(*row_acc, _mm256_mul_ps(q, x));
            }
            index += 8;
        }
        for (row, row_acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), *row_acc);
            for (lane, column) in (full..dim).enumerate() {
                lanes[lane] += query[column] * octet[row * dim + column];
            }
            out.push(reduce_lanes(lanes));
        }
    }
    dots_with_rows_portable(query, rest, dim, out)
}

/// The portable path of [`dots_with_rows`] (what aarch64 runs), public for the benchmarks.
#[inline(always)]
pub fn dots_with_rows_portable(query: &[f32], matrix: &[f32], dim: usize, out: &mut Vec<f32>) {
    // Four rows per pass: one query load feeds four independent accumulator chains, where one
    // row at a time waits on the latency of its own adds. Each row still sums in `dot`'s order.
    let quads = matrix.chunks_exact(4 * dim);
    let rest = quads.remainder();
    for quad in quads {
        let (first, tail) = quad.split_at(dim);
        let (second, tail) = tail.split_at(dim);
        let (third, fourth) = tail.split_at(dim);
        out.extend_from_slice(&dot4(query, [first, second, third, fourth]));
    }
    out.extend(rest.chunks_exact(dim).map(|row| dot_inline(query, row)));
}

#[inline(always)]
fn dot4(query: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let full = query.len() / 8 * 8;
    let query_chunks = query[..full].chunks_exact(8);
    let row_chunks = rows.map(|row| row[..full].chunks_exact(8));
    let [mut c0, mut c1, mut c2, mut c3] = row_chunks;
    for q8 in query_chunks {
        let (r0, r1, r2, r3) = (
            c0.next().unwrap(),
            c1.next().unwrap(),
            c2.next().unwrap(),
            c3.next().unwrap(),
        );
        for lane in 0..8 {
            acc[0][lane] += q8[lane] * r0[lane];
            acc[1][lane] += q8[lane] * r1[lane];
            acc[2][lane] += q8[lane] * r2[lane];
            acc[3][lane] += q8[lane] * r3[lane];
        }
    }
    for (offset, index) in (full..query.len()).enumerate() {
        for (row_acc, row) in acc.iter_mut().zip(rows) {
            row_acc[offset] += query[index] * row[index];
        }
    }
    acc.map(reduce_lanes)
}

#[inline(always)]
fn dot_inline(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail = chunks_a.remainder().iter().zip(chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for lane in 0..8 {
            acc[lane] += ca[lane] * cb[lane];
        }
    }
    for (lane, (x, y)) in tail.enumerate() {
        acc[lane] += x * y;
    }
    reduce_lanes(acc)
}

/// Indices of the `count` rows of `matrix` (row-major, `dim` wide) with the highest inner product with `query`,
/// best first; ties go to the lower index.
pub fn top_rows_by_dot(query: &[f32], matrix: &[f32], dim: usize, count: usize) -> Vec<(u32, f32)> {
    let mut scores = Vec::with_capacity(matrix.len() / dim.max(1));
    dots_with_rows(query, matrix, dim, &mut scores);
    let mut top = crate::TopK::new(count);
    for (row, score) in scores.into_iter().enumerate() {
        top.push(score, row as u64);
    }
    top.into_sorted()
        .into_iter()
        .map(|scored| (scored.key as u32, scored.score))
        .collect()
}

/// The `count` rows with the highest `<query, row> + offset(row)`, best first, ties to the
/// lower row (the routing bound `<q, c> + |q| × radius`; [`crate::screen::Fp16Screen`] must
/// return exactly this).
pub fn top_rows_by_dot_plus(
    query: &[f32],
    matrix: &[f32],
    dim: usize,
    count: usize,
    offset: impl Fn(usize) -> f32,
) -> Vec<(u32, f32)> {
    let mut scores = Vec::with_capacity(matrix.len() / dim.max(1));
    dots_with_rows(query, matrix, dim, &mut scores);
    let mut top = crate::TopK::new(count);
    for (row, score) in scores.into_iter().enumerate() {
        top.push(score + offset(row), row as u64);
    }
    top.into_sorted()
        .into_iter()
        .map(|scored| (scored.key as u32, scored.score))
        .collect()
}

/// Index and value of the smallest entry; ties go to the first. Eight lanes each track their
/// own minimum and where it was (vectorizes into compares and blends); a plain running argmin is
/// a serial dependency chain and dominated small-dimension k-means.
#[inline]
pub fn argmin(values: &[f32]) -> (usize, f32) {
    let mut lane_min = [f32::INFINITY; 8];
    let mut lane_index = [usize::MAX; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for (chunk_index, chunk) in chunks.enumerate() {
        for lane in 0..8 {
            if chunk[lane] < lane_min[lane] {
                lane_min[lane] = chunk[lane];
                lane_index[lane] = chunk_index * 8 + lane;
            }
        }
    }
    let tail_start = values.len() - tail.len();
    for (lane, value) in tail.iter().enumerate() {
        if *value < lane_min[lane] {
            lane_min[lane] = *value;
            lane_index[lane] = tail_start + lane;
        }
    }
    // Smallest value; among equal values the first position, which is the smallest index.
    let mut best = (usize::MAX, f32::INFINITY);
    for lane in 0..8 {
        let better =
            lane_min[lane] < best.1 || (lane_min[lane] == best.1 && lane_index[lane] < best.0);
        if better {
            best = (lane_index[lane], lane_min[lane]);
        }
    }
    if best.0 == usize::MAX {
        // Empty, or nothing below infinity (all NaN or +inf): the first entry, like a running argmin.
        return (0, values.first().copied().unwrap_or(f32::INFINITY));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_with_rows_equal_dot_bit_for_bit() {
        for dim in [1usize, 7, 8, 13, 64, 515] {
            let query: Vec<f32> = (0..dim)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            // 19 rows: two eight-row passes and a rest of three.
            let matrix: Vec<f32> = (0..dim * 19)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.0)
                .collect();
            let mut scores = Vec::new();
            dots_with_rows(&query, &matrix, dim, &mut scores);
            assert_eq!(scores.len(), 19);
            for (row, score) in matrix.chunks_exact(dim).zip(&scores) {
                assert_eq!(score.to_bits(), dot(&query, row).to_bits(), "dim {dim}");
            }
        }
    }

    #[test]
    fn argmin_takes_the_first_of_equal_minima() {
        let values = [3.0, 1.0, 2.0, 1.0, 5.0, 1.0, 0.5, 0.5, 9.0, 0.5];
        assert_eq!(argmin(&values), (6, 0.5));
        assert_eq!(argmin(&[f32::NAN, 2.0]), (1, 2.0));
        assert_eq!(argmin(&[]).0, 0);
    }
}
