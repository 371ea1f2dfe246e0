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

/// Indices of the `count` rows of `matrix` (row-major, `dim` wide) with the highest inner product with `query`,
/// best first; ties go to the lower index.
pub fn top_rows_by_dot(query: &[f32], matrix: &[f32], dim: usize, count: usize) -> Vec<(u32, f32)> {
    let mut top = crate::TopK::new(count);
    for (row, vector) in matrix.chunks_exact(dim).enumerate() {
        top.push(dot(query, vector), row as u64);
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
