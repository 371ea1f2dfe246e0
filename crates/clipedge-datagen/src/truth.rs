//! Exact nearest neighbors by inner product, and recall against them.

use clipedge_linalg::gemm::inner_products;
use clipedge_linalg::TopK;
use rayon::prelude::*;

/// Queries scored together by one matrix product; with [`BASE_ROWS_PER_BLOCK`] this keeps
/// the score block (1 MiB) in cache.
const QUERIES_PER_CHUNK: usize = 256;
const BASE_ROWS_PER_BLOCK: usize = 1024;
/// Base rows one task scans; segments are merged afterwards, so several threads share the
/// work even when there are few queries.
const BASE_ROWS_PER_SEGMENT: usize = 64 * BASE_ROWS_PER_BLOCK;

/// Exact top-`k` base rows by inner product (higher is better, ties to the lower row) for
/// each query. Returns `nq * k` row ids, row-major, best first.
///
/// Deterministic for any thread count: blocks are fixed, and merging per-segment top-k
/// lists under the total order (score, then row) gives the same set whatever the order.
///
/// # Panics
///
/// If `dim` is zero, a slice length is not a multiple of `dim`, `k` exceeds the number of
/// base rows, or the base has more rows than `u32` ids can name.
pub fn ground_truth(base: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<u32> {
    assert!(dim > 0, "ground truth needs a positive dim");
    assert!(
        base.len().is_multiple_of(dim),
        "base length is not a multiple of dim"
    );
    assert!(
        queries.len().is_multiple_of(dim),
        "queries length is not a multiple of dim"
    );
    let base_rows = base.len() / dim;
    assert!(
        k <= base_rows,
        "cannot take the top {k} of {base_rows} base rows"
    );
    assert!(
        base_rows <= u32::MAX as usize + 1,
        "base has more rows than u32 ids can name"
    );
    if k == 0 {
        return Vec::new();
    }
    let mut accumulator = TruthAccumulator::new(queries.to_vec(), dim, k);
    accumulator.add_shard(base);
    accumulator.finish()
}

/// [`ground_truth`] over a base that arrives in shards, one after another (rows numbered on
/// from the previous shard), holding only the queries' top-`k` lists: the ids equal
/// `ground_truth` on the concatenated base, for sets too large to hold whole.
pub struct TruthAccumulator {
    queries: Vec<f32>,
    dim: usize,
    k: usize,
    tops: Vec<TopK>,
    rows_seen: usize,
}

impl TruthAccumulator {
    /// # Panics
    ///
    /// If `dim` is zero or the queries' length is not a multiple of it.
    pub fn new(queries: Vec<f32>, dim: usize, k: usize) -> TruthAccumulator {
        assert!(dim > 0, "ground truth needs a positive dim");
        assert!(
            queries.len().is_multiple_of(dim),
            "queries length is not a multiple of dim"
        );
        let query_count = queries.len() / dim;
        TruthAccumulator {
            queries,
            dim,
            k,
            tops: vec![TopK::new(k); query_count],
            rows_seen: 0,
        }
    }

    /// Scores the next shard's rows against every query.
    pub fn add_shard(&mut self, shard: &[f32]) {
        let dim = self.dim;
        assert!(
            shard.len().is_multiple_of(dim),
            "shard length is not a multiple of dim"
        );
        let first_row = self.rows_seen;
        assert!(
            first_row + shard.len() / dim <= u32::MAX as usize + 1,
            "base has more rows than u32 ids can name"
        );
        let k = self.k;
        self.queries
            .par_chunks(QUERIES_PER_CHUNK * dim)
            .zip(self.tops.par_chunks_mut(QUERIES_PER_CHUNK))
            .for_each(|(query_chunk, chunk_tops)| {
                let query_count = query_chunk.len() / dim;
                let shard_tops = shard
                    .par_chunks(BASE_ROWS_PER_SEGMENT * dim)
                    .enumerate()
                    .map(|(segment_index, segment)| {
                        let segment_first = first_row + segment_index * BASE_ROWS_PER_SEGMENT;
                        scan_segment(segment, segment_first, query_chunk, query_count, dim, k)
                    })
                    .reduce(
                        || vec![TopK::new(k); query_count],
                        |mut left, right| {
                            for (left_top, right_top) in left.iter_mut().zip(right) {
                                left_top.extend(right_top.into_sorted());
                            }
                            left
                        },
                    );
                for (top, shard_top) in chunk_tops.iter_mut().zip(shard_tops) {
                    top.extend(shard_top.into_sorted());
                }
            });
        self.rows_seen += shard.len() / dim;
    }

    /// `nq * k` row ids, row-major, best first.
    ///
    /// # Panics
    ///
    /// If fewer than `k` rows were added.
    pub fn finish(self) -> Vec<u32> {
        assert!(
            self.k <= self.rows_seen,
            "cannot take the top {} of {} base rows",
            self.k,
            self.rows_seen
        );
        self.tops
            .into_iter()
            .flat_map(|top| {
                top.into_sorted()
                    .into_iter()
                    .map(|scored| scored.key as u32)
            })
            .collect()
    }
}

fn scan_segment(
    segment: &[f32],
    first_row: usize,
    query_chunk: &[f32],
    query_count: usize,
    dim: usize,
    k: usize,
) -> Vec<TopK> {
    let mut tops = vec![TopK::new(k); query_count];
    let mut scores = vec![0f32; BASE_ROWS_PER_BLOCK * query_count];
    for (block_index, block) in segment.chunks(BASE_ROWS_PER_BLOCK * dim).enumerate() {
        let block_rows = block.len() / dim;
        let block_scores = &mut scores[..block_rows * query_count];
        // block_scores[row * query_count + query] = <base row, query>.
        inner_products(
            block,
            block_rows,
            dim,
            query_chunk,
            query_count,
            block_scores,
        );
        let block_first_row = first_row + block_index * BASE_ROWS_PER_BLOCK;
        for (row_offset, row_scores) in block_scores.chunks_exact(query_count).enumerate() {
            let row = (block_first_row + row_offset) as u64;
            for (top, &score) in tops.iter_mut().zip(row_scores) {
                // Cheap pre-check: most rows cannot enter a full heap.
                if score >= top.threshold() {
                    top.push(score, row);
                }
            }
        }
    }
    tops
}

/// Recall@k averaged over queries: the fraction of each query's first `k` true ids that
/// appear among its first `k` result ids. Rows are `result_stride` and `truth_stride`
/// wide; duplicate result ids count once. Returns 0 when there are no queries.
///
/// # Panics
///
/// If `k` is zero or exceeds a stride, or the two inputs hold different query counts.
pub fn recall_at_k(
    results: &[u32],
    result_stride: usize,
    truth: &[u32],
    truth_stride: usize,
    k: usize,
) -> f64 {
    assert!(k > 0, "recall@k needs a positive k");
    assert!(
        k <= result_stride && k <= truth_stride,
        "k {k} exceeds the result stride {result_stride} or the truth stride {truth_stride}"
    );
    assert!(
        results.len().is_multiple_of(result_stride),
        "results length is not a multiple of its stride"
    );
    assert!(
        truth.len().is_multiple_of(truth_stride),
        "truth length is not a multiple of its stride"
    );
    let query_count = truth.len() / truth_stride;
    assert_eq!(
        results.len() / result_stride,
        query_count,
        "results and truth hold different query counts"
    );
    if query_count == 0 {
        return 0.0;
    }
    let mut sorted_results = Vec::with_capacity(k);
    let mut found_total = 0usize;
    for (result_row, truth_row) in results
        .chunks_exact(result_stride)
        .zip(truth.chunks_exact(truth_stride))
    {
        sorted_results.clear();
        sorted_results.extend_from_slice(&result_row[..k]);
        sorted_results.sort_unstable();
        found_total += truth_row[..k]
            .iter()
            .filter(|id| sorted_results.binary_search(id).is_ok())
            .count();
    }
    found_total as f64 / (query_count * k) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn shards_added_one_by_one_give_the_whole_base_truth() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let dim = 24;
        // Shards of uneven sizes, one past a segment boundary, and duplicate rows for ties.
        let mut base: Vec<f32> = (0..(70_000 * dim))
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let copied = base[..dim * 50].to_vec();
        base[dim * 69_000..dim * 69_050].copy_from_slice(&copied);
        let queries: Vec<f32> = (0..(300 * dim))
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let expected = ground_truth(&base, &queries, dim, 10);
        let mut accumulator = TruthAccumulator::new(queries, dim, 10);
        for shard in [
            &base[..dim * 3],
            &base[dim * 3..dim * 66_000],
            &base[dim * 66_000..],
        ] {
            accumulator.add_shard(shard);
        }
        assert_eq!(accumulator.finish(), expected);
    }

    fn naive_top_k(base: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        for query in queries.chunks_exact(dim) {
            let mut scored: Vec<(f32, u32)> = base
                .chunks_exact(dim)
                .enumerate()
                .map(|(row, vector)| {
                    let score: f32 = query.iter().zip(vector).map(|(a, b)| a * b).sum();
                    (score, row as u32)
                })
                .collect();
            let best_first =
                |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            if k < scored.len() {
                scored.select_nth_unstable_by(k, best_first);
            }
            scored[..k].sort_by(best_first);
            ids.extend(scored[..k].iter().map(|&(_, row)| row));
        }
        ids
    }

    #[test]
    fn matches_brute_force_with_exact_scores_and_ties() {
        // Small integers make every sum exact in f32 whatever the summation order, so the
        // comparison is exact and the many ties exercise the lower-row rule.
        let dim = 6;
        let base_rows = BASE_ROWS_PER_SEGMENT + 3 * BASE_ROWS_PER_BLOCK + 17;
        let query_count = QUERIES_PER_CHUNK + 9;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let base: Vec<f32> = (0..base_rows * dim)
            .map(|_| rng.random_range(-2i32..=2) as f32)
            .collect();
        let queries: Vec<f32> = (0..query_count * dim)
            .map(|_| rng.random_range(-2i32..=2) as f32)
            .collect();
        let k = 10;
        let truth = ground_truth(&base, &queries, dim, k);
        assert_eq!(truth.len(), query_count * k);
        assert_eq!(truth, naive_top_k(&base, &queries, dim, k));
    }

    #[test]
    fn matches_brute_force_on_random_floats() {
        let dim = 24;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let base: Vec<f32> = (0..3000 * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let queries: Vec<f32> = (0..40 * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let truth = ground_truth(&base, &queries, dim, 5);
        assert_eq!(truth, naive_top_k(&base, &queries, dim, 5));
    }

    #[test]
    fn is_independent_of_thread_count() {
        let dim = 8;
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let base: Vec<f32> = (0..(2 * BASE_ROWS_PER_SEGMENT + 100) * dim)
            .map(|_| rng.random::<f32>())
            .collect();
        let queries: Vec<f32> = (0..20 * dim).map(|_| rng.random::<f32>()).collect();
        let run_with_threads = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| ground_truth(&base, &queries, dim, 7))
        };
        assert_eq!(run_with_threads(1), run_with_threads(2));
    }

    #[test]
    fn k_equal_to_base_rows_returns_everything_ranked() {
        let base = [1.0f32, 0.0, 0.0, 1.0, 0.5, 0.5];
        let queries = [1.0f32, 0.0, 0.0, 1.0];
        assert_eq!(ground_truth(&base, &queries, 2, 3), vec![0, 2, 1, 1, 2, 0]);
        assert!(ground_truth(&base, &queries, 2, 0).is_empty());
    }

    #[test]
    fn recall_arithmetic() {
        let truth = [1, 2, 3, 9, 4, 5, 6, 9];
        // Query 0: 2 of the first 3 true ids; query 1: all 3.
        let results = [1, 3, 7, 6, 5, 4];
        let recall = recall_at_k(&results, 3, &truth, 4, 3);
        assert!((recall - 5.0 / 6.0).abs() < 1e-12, "{recall}");
        assert_eq!(recall_at_k(&results, 3, &truth, 4, 1), 0.5);
        // Duplicates in the results are not counted twice.
        let duplicated = [1, 1, 1, 4, 4, 4];
        assert!((recall_at_k(&duplicated, 3, &truth, 4, 3) - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(recall_at_k(&[], 3, &[], 4, 3), 0.0);
        assert_eq!(recall_at_k(&truth, 4, &truth, 4, 4), 1.0);
    }
}
