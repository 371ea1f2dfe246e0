//! Scanning lists and reranking candidates. No I/O: works on verified [`ListView`]s.

use clipedge_format::{Hit, ListView, RerankKind};
use clipedge_linalg::fastscan::{self, QuantizedLut};
use clipedge_linalg::{prefetch, rerank, scan8, ProductQuantizer, Scored, TopK};

/// The query's lookup tables, built once and shared by every list (by-residual inner-product
/// tables do not depend on the list: the list's part is the bias `<query, centroid>`).
pub enum QueryTables {
    Byte(Vec<f32>),
    Nibble(QuantizedLut),
}

impl QueryTables {
    pub fn new(pq: &ProductQuantizer, query: &[f32]) -> QueryTables {
        let lut = pq.inner_product_table(query);
        if pq.bits == 4 {
            QueryTables::Nibble(QuantizedLut::from_float(&lut))
        } else {
            QueryTables::Byte(lut)
        }
    }
}

/// Candidate keys pack the list's slot in the probe order and the row inside the list.
pub fn candidate_key(slot: usize, row: usize) -> u64 {
    ((slot as u64) << 32) | row as u64
}

pub fn split_key(key: u64) -> (usize, usize) {
    ((key >> 32) as usize, (key & 0xffff_ffff) as usize)
}

/// Scans one list into `top` with approximate (PQ) scores.
pub fn scan_list(
    tables: &QueryTables,
    list: &ListView<'_>,
    bias: f32,
    slot: usize,
    top: &mut TopK,
) {
    let key_base = candidate_key(slot, 0);
    match tables {
        QueryTables::Byte(lut) => scan8::scan_list(lut, list.codes(), bias, key_base, top),
        QueryTables::Nibble(lut) => {
            fastscan::scan_list(lut, list.codes(), list.count, bias, key_base, top)
        }
    }
}

/// Scans `lists` (with their biases) and keeps the `candidates` best by PQ score. With
/// `parallel`, lists are spread over the rayon pool and the per-thread selections merged;
/// ties resolve by key either way, so the result does not depend on the thread count.
pub fn scan_lists(
    tables: &QueryTables,
    lists: &[(ListView<'_>, f32)],
    candidates: usize,
    parallel: bool,
) -> Vec<Scored> {
    if !parallel || lists.len() < 2 {
        return scan_lists_serial(tables, lists, candidates);
    }
    scan_lists_parallel(tables, lists, candidates)
}

fn scan_lists_serial(
    tables: &QueryTables,
    lists: &[(ListView<'_>, f32)],
    candidates: usize,
) -> Vec<Scored> {
    let mut top = TopK::new(candidates);
    for (slot, (list, bias)) in lists.iter().enumerate() {
        if let Some((next, _)) = lists.get(slot + 1) {
            prefetch::read(next.codes(), 4);
        }
        scan_list(tables, list, *bias, slot, &mut top);
    }
    top.into_sorted()
}

// Without the reader feature there is no thread pool (wasm32): `parallel` scans serially.
#[cfg(not(feature = "reader"))]
fn scan_lists_parallel(
    tables: &QueryTables,
    lists: &[(ListView<'_>, f32)],
    candidates: usize,
) -> Vec<Scored> {
    scan_lists_serial(tables, lists, candidates)
}

#[cfg(feature = "reader")]
fn scan_lists_parallel(
    tables: &QueryTables,
    lists: &[(ListView<'_>, f32)],
    candidates: usize,
) -> Vec<Scored> {
    use rayon::prelude::*;
    let partial: Vec<Vec<Scored>> = lists
        .par_iter()
        .enumerate()
        .map(|(slot, (list, bias))| {
            let mut top = TopK::new(candidates);
            scan_list(tables, list, *bias, slot, &mut top);
            top.into_sorted()
        })
        .collect();
    let mut merged = TopK::new(candidates);
    for scored in partial {
        merged.extend(scored);
    }
    merged.into_sorted()
}

/// Exact score of one candidate from the rerank copy stored in its list.
pub fn exact_score(query: &[f32], list: &ListView<'_>, row: usize) -> Option<f32> {
    match list.rerank {
        RerankKind::Fp16 => Some(rerank::dot_fp16_le(query, list.rerank_fp16(row))),
        RerankKind::Int8 => {
            let (scale, values) = list.rerank_int8(row);
            Some(rerank::dot_int8(query, scale, values))
        }
        RerankKind::None => None,
    }
}

/// Exact scores of `candidates` in order (`None` where a list has no rerank copies), four
/// copies at a time: the same values as [`exact_score`] one by one, with four copies' loads and
/// adds in flight.
pub fn exact_scores(
    query: &[f32],
    lists: &[(ListView<'_>, f32)],
    candidates: &[Scored],
) -> Vec<Option<f32>> {
    let locate = |candidate: &Scored| {
        let (slot, row) = split_key(candidate.key);
        (&lists[slot].0, row)
    };
    let mut scores = Vec::with_capacity(candidates.len());
    let mut quads = candidates.chunks_exact(4);
    for quad in &mut quads {
        let located = [0, 1, 2, 3].map(|index| locate(&quad[index]));
        let kinds = located.map(|(list, _)| list.rerank);
        if kinds.iter().all(|kind| *kind == RerankKind::Fp16) {
            let rows = located.map(|(list, row)| list.rerank_fp16(row));
            scores.extend(rerank::dot_fp16_le_x4(query, rows).map(Some));
        } else if kinds.iter().all(|kind| *kind == RerankKind::Int8) {
            let copies = located.map(|(list, row)| list.rerank_int8(row));
            scores.extend(rerank::dot_int8_x4(query, copies).map(Some));
        } else {
            scores.extend(located.map(|(list, row)| exact_score(query, list, row)));
        }
    }
    for candidate in quads.remainder() {
        let (list, row) = locate(candidate);
        scores.push(exact_score(query, list, row));
    }
    scores
}

/// Turns candidates into the final `k` hits: rescored exactly when `rerank` is set and the
/// lists carry rerank copies, else in PQ order. Each hit comes with where it lies: its list's
/// slot in `lists` and its row there.
pub fn finish(
    query: &[f32],
    lists: &[(ListView<'_>, f32)],
    candidates: &[Scored],
    k: usize,
    rerank: bool,
) -> Vec<(Hit, usize, usize)> {
    let mut top = TopK::new(k);
    if rerank {
        let exact = exact_scores(query, lists, candidates);
        for (candidate, score) in candidates.iter().zip(exact) {
            top.push(score.unwrap_or(candidate.score), candidate.key);
        }
    } else {
        for candidate in candidates {
            top.push(candidate.score, candidate.key);
        }
    }
    top.into_sorted()
        .into_iter()
        .map(|scored| {
            let (slot, row) = split_key(scored.key);
            let list = &lists[slot].0;
            let hit = Hit {
                id: list.id(row),
                score: scored.score,
                content_hash: list.content_hash(row),
                metadata_ref: list.metadata_ref(row),
                list_id: list.list_id,
            };
            (hit, slot, row)
        })
        .collect()
}
