//! Exact top rows by inner product, read from an fp16 copy.
//!
//! Ranking a query against thousands of f32 centroids reads the whole matrix per query (2 MiB
//! at 1,024 × 512): past the L2 cache that read is most of a small query's time. The screen
//! scores every row from an fp16 copy (half the bytes), bounds the error of those scores, and
//! rescores in f32 only the rows that could still be in the top `count`. The result is the
//! exact pass returns, bit for bit, ties included: every row whose exact score
//! reaches the `count`-th best is rescored.
//!
//! The bound: an fp16 value differs from its f32 by at most 2^-11 relative (normal range) or
//! 2^-25 absolute (subnormal), so `|<q, c> - <q, ĉ>| <= 2^-11 |q|·|c| + 2^-25 |q|_1`, plus the
//! f32 summation error of both dots (at most `depth · 2^-24 · |q|·|c|` each). The screen
//! doubles that.

use half::f16;

use crate::dot::{dot, top_rows_by_dot_plus};
use crate::TopK;

/// Largest magnitude stored: fp16 overflows at 65,504.
const FP16_SAFE_MAX: f32 = 60_000.0;

/// An fp16 copy of a row-major f32 matrix, for [`Fp16Screen::top_rows`].
#[derive(Clone)]
pub struct Fp16Screen {
    bits: Vec<u16>,
    dim: usize,
    rows: usize,
    max_row_norm: f32,
}

impl std::fmt::Debug for Fp16Screen {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Fp16Screen")
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl Fp16Screen {
    /// `None` when the screen cannot help or cannot be exact: no fast fp16 conversion on this
    /// machine, an empty or ragged matrix, or values that are not finite or overflow fp16.
    pub fn new(matrix: &[f32], dim: usize) -> Option<Fp16Screen> {
        if !has_fast_fp16() || dim == 0 || matrix.is_empty() || !matrix.len().is_multiple_of(dim) {
            return None;
        }
        if matrix
            .iter()
            .any(|value| !value.is_finite() || value.abs() > FP16_SAFE_MAX)
        {
            return None;
        }
        let max_row_norm = matrix
            .chunks_exact(dim)
            .map(|row| dot(row, row).sqrt())
            .fold(0f32, f32::max);
        Some(Fp16Screen {
            bits: matrix
                .iter()
                .map(|value| f16::from_f32(*value).to_bits())
                .collect(),
            dim,
            rows: matrix.len() / dim,
            max_row_norm,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        2 * self.bits.len()
    }

    /// Exactly [`top_rows_by_dot_plus`] over `matrix` (the matrix this screen was built from).
    pub fn top_rows(
        &self,
        query: &[f32],
        matrix: &[f32],
        count: usize,
        offset: impl Fn(usize) -> f32,
    ) -> Vec<(u32, f32)> {
        assert_eq!(
            matrix.len(),
            self.rows * self.dim,
            "screen built from another matrix"
        );
        let count = count.min(self.rows);
        let query_is_finite = query.iter().all(|value| value.is_finite());
        // Past a quarter of the rows, rescoring the rows near the cut in f32 reads about as
        // much as the exact pass saves (nprobe 256 of 1,024 lists was slower screened).
        if count == 0 || 4 * count > self.rows || query.len() != self.dim || !query_is_finite {
            return top_rows_by_dot_plus(query, matrix, self.dim, count, offset);
        }
        let mut approximate = Vec::with_capacity(self.rows);
        approximate_dots(query, &self.bits, self.dim, &mut approximate);

        let query_norm = dot(query, query).sqrt();
        let query_abs_sum: f32 = query.iter().map(|value| value.abs()).sum();
        // Summation: the exact dot adds in eight lanes (depth dim/8 + 4); the screen's rows past
        // the last eight-row pass add serially (depth dim + 8 at most).
        let summation = (self.dim + self.dim / 8 + 16) as f32 * 2f32.powi(-24);
        let relative = 2f32.powi(-11) + summation;
        let bound = 2.0
            * (relative * query_norm * self.max_row_norm * 1.01 + 2f32.powi(-25) * query_abs_sum);
        let mut approximate_top = TopK::new(count);
        for (row, score) in approximate.iter_mut().enumerate() {
            *score += offset(row);
            approximate_top.push(*score, row as u64);
        }
        let cutoff = approximate_top.threshold() - 2.0 * bound;
        if !cutoff.is_finite() {
            return top_rows_by_dot_plus(query, matrix, self.dim, count, offset);
        }
        let mut exact = TopK::new(count);
        for (row, score) in approximate.iter().enumerate() {
            if *score >= cutoff {
                let values = &matrix[row * self.dim..(row + 1) * self.dim];
                exact.push(dot(query, values) + offset(row), row as u64);
            }
        }
        sorted_rows(exact)
    }
}

fn sorted_rows(top: TopK) -> Vec<(u32, f32)> {
    top.into_sorted()
        .into_iter()
        .map(|scored| (scored.key as u32, scored.score))
        .collect()
}

/// Whether this machine converts fp16 in hardware (the screen's premise).
pub fn has_fast_fp16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `<query, row>` from fp16 rows, appended to `out`. Only bounded by the screen, not bit-exact
/// with anything.
fn approximate_dots(query: &[f32], bits: &[u16], dim: usize, out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_fast_fp16() {
            // SAFETY: AVX2 and F16C checked at run time.
            unsafe { approximate_dots_f16c(query, bits, dim, out) };
            return;
        }
    }
    out.extend(bits.chunks_exact(dim).map(|row| {
        row.iter()
            .zip(query)
            .map(|(bits, value)| f16::from_bits(*bits).to_f32() * value)
            .sum::<f32>()
    }));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn approximate_dots_f16c(query: &[f32], bits: &[u16], dim: usize, out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    const ROWS: usize = 8;
    let full = dim / 8 * 8;
    let octets = bits.chunks_exact(ROWS * dim);
    let rest = octets.remainder();
    let tail_dot = |row: &[u16]| -> f32 {
        (full..dim)
            .map(|column| f16::from_bits(row[column]).to_f32() * query[column])
            .sum()
    };
    for octet in octets {
        let base = octet.as_ptr();
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut index = 0;
        while index < full {
            let q = _mm256_loadu_ps(query.as_ptr().add(index));
            for (row, row_acc) in acc.iter_mut().enumerate() {
                // SAFETY: row < 8 and index + 8 <= dim, inside this octet of 8 * dim values.
                let halves = _mm_loadu_si128(base.add(row * dim + index) as *const __m128i);
                *row_acc = _mm256_add_ps(*row_acc, _mm256_mul_ps(q, _mm256_cvtph_ps(halves)));
            }
            index += 8;
        }
        for (row, row_acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), *row_acc);
            out.push(lanes.iter().sum::<f32>() + tail_dot(&octet[row * dim..(row + 1) * dim]));
        }
    }
    for row in rest.chunks_exact(dim) {
        let mut sum = 0f32;
        for (bits, value) in row[..full].iter().zip(query) {
            sum += f16::from_bits(*bits).to_f32() * value;
        }
        out.push(sum + tail_dot(row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::top_rows_by_dot;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn gaussian(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                // Sum of uniforms: close enough to a normal for spread-out scores.
                (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0
            })
            .collect()
    }

    #[test]
    fn screened_top_rows_equal_the_exact_ones_bit_for_bit() {
        if !has_fast_fp16() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (rows, dim) in [(1024usize, 512usize), (300, 13), (64, 8), (2000, 7)] {
            let matrix = gaussian(&mut rng, rows * dim);
            let screen = Fp16Screen::new(&matrix, dim).expect("finite matrix");
            for trial in 0..20 {
                let query = gaussian(&mut rng, dim);
                for count in [1usize, 8, 31, rows / 4, rows / 3] {
                    let expected = top_rows_by_dot(&query, &matrix, dim, count);
                    let screened = screen.top_rows(&query, &matrix, count, |_| 0.0);
                    let bits = |found: &[(u32, f32)]| {
                        found
                            .iter()
                            .map(|(row, score)| (*row, score.to_bits()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        bits(&screened),
                        bits(&expected),
                        "rows {rows}, dim {dim}, trial {trial}, count {count}"
                    );
                }
            }
        }
    }

    #[test]
    fn near_ties_and_duplicate_rows_stay_exact() {
        if !has_fast_fp16() {
            return;
        }
        // Rows differing below fp16 precision: the screen cannot order them, the rescoring must.
        let dim = 16;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let base = gaussian(&mut rng, dim);
        let mut matrix = Vec::new();
        for row in 0..400 {
            let nudge = 1.0 + (row % 37) as f32 * 1e-6;
            matrix.extend(base.iter().map(|value| value * nudge));
        }
        let screen = Fp16Screen::new(&matrix, dim).unwrap();
        let query = gaussian(&mut rng, dim);
        for count in [1, 5, 40, 150] {
            assert_eq!(
                screen.top_rows(&query, &matrix, count, |_| 0.0),
                top_rows_by_dot(&query, &matrix, dim, count)
            );
        }
    }

    #[test]
    fn per_row_offsets_rank_like_the_exact_pass() {
        if !has_fast_fp16() {
            return;
        }
        // The two-level routing's bound: `<q, c> + |q| * radius`, radii as wide as the scores.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (rows, dim) = (777, 64);
        let matrix = gaussian(&mut rng, rows * dim);
        let radii: Vec<f32> = (0..rows).map(|_| rng.random::<f32>() * 3.0).collect();
        let screen = Fp16Screen::new(&matrix, dim).unwrap();
        for _ in 0..20 {
            let query = gaussian(&mut rng, dim);
            let norm = dot(&query, &query).sqrt();
            let offset = |row: usize| norm * radii[row];
            for count in [1, 16, 100] {
                assert_eq!(
                    screen.top_rows(&query, &matrix, count, offset),
                    top_rows_by_dot_plus(&query, &matrix, dim, count, offset)
                );
            }
        }
    }

    #[test]
    fn matrices_the_screen_cannot_bound_are_refused() {
        assert!(Fp16Screen::new(&[1.0, f32::NAN], 2).is_none());
        assert!(Fp16Screen::new(&[1.0, 1e6], 2).is_none());
        assert!(Fp16Screen::new(&[1.0, 2.0, 3.0], 2).is_none());
        assert!(Fp16Screen::new(&[], 2).is_none());
    }

    #[test]
    fn a_query_with_nan_falls_back_to_the_exact_pass() {
        if !has_fast_fp16() {
            return;
        }
        let matrix: Vec<f32> = (0..64 * 8).map(|value| value as f32 / 100.0).collect();
        let screen = Fp16Screen::new(&matrix, 8).unwrap();
        let mut query = vec![0.5f32; 8];
        query[3] = f32::NAN;
        assert_eq!(
            screen.top_rows(&query, &matrix, 4, |_| 0.0),
            top_rows_by_dot(&query, &matrix, 8, 4)
        );
    }
}
