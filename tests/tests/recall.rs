//! Recall against brute force on CLIP-like data, for in-distribution (image-like) and
//! out-of-distribution (text-like) queries.
//!
//! Thresholds come from measurements on this fixture (10k vectors, dim 64, 64 lists, seeded and
//! deterministic) with margins: at full probe with rerank the indexes measure 0.99-1.0, without
//! rerank about 0.72-0.77.

use std::sync::OnceLock;

use clipedge_datagen::QueryKind;
use clipedge_format::RerankKind;
use clipedge_index::{IndexReader, OpenOptions, SearchParams};
use clipedge_index_builder::{train, write_generation, NoProgress, TrainedIndex};
use clipedge_tests::{quick_config, recall, search_ids, temp_storage, Dataset};
use tempfile::TempDir;

const N: usize = 10_000;
const DIM: usize = 64;
const QUERIES: usize = 100;
const NLIST: usize = 64;
const K: usize = 10;
/// Candidates reranked exactly: `K * RERANK`.
const RERANK: usize = 10;
const KINDS: [QueryKind; 2] = [QueryKind::InDistribution, QueryKind::OutOfDistribution];

struct Fixture {
    data: Dataset,
    truth_in: Vec<u32>,
    truth_out: Vec<u32>,
}

impl Fixture {
    fn truth(&self, kind: QueryKind) -> &[u32] {
        match kind {
            QueryKind::InDistribution => &self.truth_in,
            QueryKind::OutOfDistribution => &self.truth_out,
        }
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data = Dataset::new(N, DIM, QUERIES, 3);
        Fixture {
            truth_in: data.truth(QueryKind::InDistribution, K),
            truth_out: data.truth(QueryKind::OutOfDistribution, K),
            data,
        }
    })
}

/// Index shape under test; 4-bit uses twice the sub-quantizers so both store 16 bytes a code.
#[derive(Debug, Clone, Copy)]
enum Variant {
    EightBit,
    FourBit,
}

/// Training is the slow part of a build, so each code size is trained once per test binary
/// and written as many generations as the tests need (rerank kind only affects writing).
fn trained(variant: Variant) -> &'static TrainedIndex {
    static EIGHT: OnceLock<TrainedIndex> = OnceLock::new();
    static FOUR: OnceLock<TrainedIndex> = OnceLock::new();
    let (cell, m, bits) = match variant {
        Variant::EightBit => (&EIGHT, 16, 8),
        Variant::FourBit => (&FOUR, 32, 4),
    };
    cell.get_or_init(|| {
        let config = quick_config(NLIST, m, bits, RerankKind::Fp16);
        train(&fixture().data.vectors(), &config, &NoProgress).expect("train")
    })
}

/// Writes a generation of the fixture with `rerank` copies and opens it (unpublished, by name).
async fn index(variant: Variant, rerank: RerankKind) -> (TempDir, IndexReader) {
    let trained = trained(variant);
    let config = quick_config(NLIST, trained.pq.m, trained.pq.bits, rerank);
    let (dir, storage) = temp_storage();
    let (manifest, _, _) = write_generation(
        &storage,
        &fixture().data.vectors(),
        trained,
        &config,
        &NoProgress,
    )
    .await
    .expect("write a generation");
    let options = OpenOptions {
        generation: Some(manifest.generation),
        ..OpenOptions::default()
    };
    let reader = IndexReader::open(storage, options).await.expect("open");
    (dir, reader)
}

async fn measure(reader: &IndexReader, kind: QueryKind, nprobe: usize, rerank: usize) -> f64 {
    let fixture = fixture();
    let params = SearchParams::new(K, nprobe, rerank);
    let ids = search_ids(reader, fixture.data.queries(kind), &params)
        .await
        .expect("search");
    recall(&ids, fixture.truth(kind), K, K)
}

async fn assert_full_probe_recall(variant: Variant, rerank: RerankKind, at_least: f64) {
    let (_dir, reader) = index(variant, rerank).await;
    for kind in KINDS {
        let measured = measure(&reader, kind, NLIST, RERANK).await;
        assert!(
            measured >= at_least,
            "{variant:?} {rerank:?} {kind:?}: recall@{K} {measured:.3} < {at_least}"
        );
    }
}

#[tokio::test]
async fn eight_bit_pq_with_fp16_rerank_finds_the_true_neighbors_at_full_probe() {
    assert_full_probe_recall(Variant::EightBit, RerankKind::Fp16, 0.95).await;
}

#[tokio::test]
async fn four_bit_fast_scan_with_fp16_rerank_finds_the_true_neighbors_at_full_probe() {
    assert_full_probe_recall(Variant::FourBit, RerankKind::Fp16, 0.95).await;
}

#[tokio::test]
async fn int8_rerank_finds_the_true_neighbors_at_full_probe() {
    assert_full_probe_recall(Variant::EightBit, RerankKind::Int8, 0.95).await;
}

#[tokio::test]
async fn recall_grows_with_nprobe() {
    let (_dir, reader) = index(Variant::EightBit, RerankKind::Fp16).await;
    for kind in KINDS {
        let mut curve = Vec::new();
        for nprobe in [1, 2, 4, 8, 16, 32, 64] {
            curve.push(measure(&reader, kind, nprobe, RERANK).await);
        }
        // Probing more lists only adds candidates; the reranked top-k can only lose a true
        // neighbor if PQ pushes it out of the candidate pool, which a tiny slack absorbs.
        for pair in curve.windows(2) {
            assert!(pair[1] >= pair[0] - 0.005, "{kind:?}: {curve:.3?}");
        }
        // Measured ~0.32-0.46 at nprobe 1 and ~1.0 at nprobe 64: the curve must really climb.
        assert!(curve[0] < 0.7, "{kind:?}: {curve:.3?}");
        assert!(curve[6] - curve[0] > 0.3, "{kind:?}: {curve:.3?}");
    }
}

#[tokio::test]
async fn pq_recall_collapses_without_exact_rerank_for_text_like_queries() {
    for variant in [Variant::EightBit, Variant::FourBit] {
        let (_dir, reader) = index(variant, RerankKind::Fp16).await;
        let kind = QueryKind::OutOfDistribution;
        let pq_only = measure(&reader, kind, NLIST, 0).await;
        let reranked = measure(&reader, kind, NLIST, RERANK).await;
        // Measured: PQ alone ~0.72-0.77, reranked ~0.99+.
        assert!(pq_only < 0.88, "{variant:?}: PQ-only recall {pq_only:.3}");
        assert!(
            reranked - pq_only > 0.1,
            "{variant:?}: reranked {reranked:.3}, PQ-only {pq_only:.3}"
        );
    }
}

#[tokio::test]
async fn an_index_without_rerank_copies_scores_by_pq_alone() {
    let (_dir, reader) = index(Variant::EightBit, RerankKind::None).await;
    let kind = QueryKind::OutOfDistribution;
    // Asking for rerank changes nothing when the lists carry no rerank copies.
    let with_rerank_param = measure(&reader, kind, NLIST, RERANK).await;
    let without = measure(&reader, kind, NLIST, 0).await;
    assert_eq!(with_rerank_param, without);
    assert!(without < 0.88, "PQ-only recall {without:.3}");
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn reranked_scores_are_exact_inner_products_up_to_storage_precision() {
    let data = &fixture().data;
    for (rerank, tolerance) in [(RerankKind::Fp16, 2e-3f32), (RerankKind::Int8, 1.5e-2)] {
        let (_dir, reader) = index(Variant::EightBit, rerank).await;
        let mut largest_pq_error = 0f32;
        for query in data.out_of_distribution.chunks_exact(DIM).take(20) {
            let reranked = reader
                .search(query, &SearchParams::new(K, 8, RERANK))
                .await
                .unwrap();
            assert_eq!(reranked.hits.len(), K);
            for pair in reranked.hits.windows(2) {
                assert!(pair[0].score >= pair[1].score, "hits are best first");
            }
            for hit in &reranked.hits {
                let exact = dot(query, data.row(hit.id as usize));
                assert!(
                    (hit.score - exact).abs() <= tolerance,
                    "{rerank:?}: score {} vs exact {exact}",
                    hit.score
                );
            }
            let pq_only = reader
                .search(query, &SearchParams::new(K, 8, 0))
                .await
                .unwrap();
            for hit in &pq_only.hits {
                let exact = dot(query, data.row(hit.id as usize));
                largest_pq_error = largest_pq_error.max((hit.score - exact).abs());
            }
        }
        // PQ scores are approximations: if they matched the exact ones the test above would
        // prove nothing about reranking.
        assert!(largest_pq_error > 2.0 * tolerance, "{largest_pq_error}");
    }
}

#[tokio::test]
async fn parallel_scan_returns_the_same_hits_as_serial() {
    for variant in [Variant::EightBit, Variant::FourBit] {
        let (_dir, reader) = index(variant, RerankKind::Fp16).await;
        for query in fixture().data.in_distribution.chunks_exact(DIM).take(20) {
            let serial = SearchParams::new(K, 16, RERANK);
            let parallel = SearchParams {
                parallel: true,
                ..serial.clone()
            };
            let expected = reader.search(query, &serial).await.unwrap().hits;
            let found = reader.search(query, &parallel).await.unwrap().hits;
            assert_eq!(found, expected, "{variant:?}");
        }
    }
}
