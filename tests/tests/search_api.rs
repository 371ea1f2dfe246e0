//! The search API's contract: invalid input is refused, hits carry what was indexed with them,
//! and the statistics and caches report what happened.

use std::collections::HashSet;

use clipedge_format::RerankKind;
use clipedge_index::{IndexError, IndexReader, SearchParams};
use clipedge_index_builder::{content_hash, VectorSet};
use clipedge_storage::Storage;
use clipedge_tests::{build, open, quick_config, Dataset};

const DIM: usize = 32;
const NLIST: usize = 16;

async fn memory_index(vectors: &VectorSet<'_>, bits: u8) -> IndexReader {
    let storage = Storage::open("memory://").unwrap();
    build(
        &storage,
        vectors,
        &quick_config(NLIST, 8, bits, RerankKind::Fp16),
    )
    .await;
    open(&storage).await
}

#[tokio::test]
async fn invalid_queries_and_parameters_are_refused() {
    let data = Dataset::new(2_000, DIM, 1, 31);
    let reader = memory_index(&data.vectors(), 4).await;
    let good = data.in_distribution.clone();
    let params = SearchParams::new(10, 4, 10);
    reader.search(&good, &params).await.unwrap();

    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let mut infinite = good.clone();
    infinite[DIM - 1] = f32::NEG_INFINITY;
    let longer = [good.as_slice(), &[0.0]].concat();
    let bad_queries: [(&str, &[f32]); 5] = [
        ("empty", &[]),
        ("shorter", &good[..DIM - 1]),
        ("longer", &longer),
        ("NaN", &nan),
        ("infinite", &infinite),
    ];
    for (what, query) in bad_queries {
        let outcome = reader.search(query, &params).await;
        assert!(
            matches!(outcome, Err(IndexError::InvalidQuery { .. })),
            "{what}: {outcome:?}"
        );
    }

    let bad_params = [
        ("k = 0", SearchParams::new(0, 4, 10)),
        ("nprobe = 0", SearchParams::new(10, 0, 10)),
        (
            "group probe 0",
            SearchParams {
                group_probe: Some(0),
                ..params.clone()
            },
        ),
    ];
    for (what, bad) in bad_params {
        let outcome = reader.search(&good, &bad).await;
        assert!(
            matches!(outcome, Err(IndexError::InvalidParams { .. })),
            "{what}: {outcome:?}"
        );
    }
    // Errors explain themselves.
    let message = reader
        .search(&good[..DIM - 1], &params)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&format!("{}", DIM - 1)) && message.contains(&DIM.to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn oversized_k_and_nprobe_return_every_vector_once() {
    // 1000 is not a multiple of 32: 4-bit lists end in partly filled blocks whose padding
    // slots must never come back as hits.
    let n = 1_000;
    let data = Dataset::new(n, DIM, 1, 32);
    for bits in [8, 4] {
        let reader = memory_index(&data.vectors(), bits).await;
        for rerank in [0, 3] {
            let params = SearchParams::new(n + 50, NLIST * 4, rerank);
            let result = reader
                .search(&data.out_of_distribution, &params)
                .await
                .unwrap();
            assert_eq!(result.stats.lists_scanned, NLIST);
            assert_eq!(result.stats.codes_scanned, n as u64);
            assert_eq!(result.hits.len(), n, "bits {bits} rerank {rerank}");
            let ids: HashSet<u64> = result.hits.iter().map(|hit| hit.id).collect();
            assert_eq!(ids, (0..n as u64).collect::<HashSet<_>>());
        }
    }
}

#[tokio::test]
async fn hits_carry_the_ids_hashes_and_metadata_refs_given_at_build() {
    let data = Dataset::new(2_000, DIM, 1, 33);
    let n = data.len();
    let ids: Vec<u64> = (0..n as u64)
        .map(|row| 0xfeed_0000_0000 + row * 7)
        .collect();
    let hashes: Vec<u64> = (0..n as u64)
        .map(|row| row.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let metas: Vec<u64> = (0..n as u64).map(|row| u64::MAX - row).collect();
    let vectors = VectorSet {
        ids: Some(&ids),
        content_hashes: Some(&hashes),
        metadata_refs: Some(&metas),
        ..data.vectors()
    };
    let reader = memory_index(&vectors, 8).await;
    let params = SearchParams::new(5, NLIST, 10);
    for row in (0..n).step_by(97) {
        let result = reader.search(data.row(row), &params).await.unwrap();
        // A stored vector is its own nearest neighbor once every list is probed and reranked.
        assert_eq!(result.hits[0].id, ids[row], "row {row}");
        assert!((result.hits[0].score - 1.0).abs() < 2e-3);
        for hit in &result.hits {
            let hit_row = ((hit.id - 0xfeed_0000_0000) / 7) as usize;
            assert_eq!(hit.id, ids[hit_row]);
            assert_eq!(hit.content_hash, hashes[hit_row]);
            assert_eq!(hit.metadata_ref, metas[hit_row]);
        }
    }
}

#[tokio::test]
async fn duplicate_vectors_share_a_content_hash_and_default_ids_are_rows() {
    let data = Dataset::new(1_500, DIM, 1, 34);
    let originals = data.len();
    // The first 20 vectors indexed a second time, as the same image uploaded twice.
    let mut base = data.base.clone();
    base.extend_from_slice(&data.base[..20 * DIM]);
    let reader = memory_index(&VectorSet::new(&base, DIM), 8).await;
    let params = SearchParams::new(4, NLIST, 10);
    for row in 0..20 {
        let vector = data.row(row);
        let result = reader.search(vector, &params).await.unwrap();
        let top_two: HashSet<u64> = result.hits[..2].iter().map(|hit| hit.id).collect();
        assert_eq!(
            top_two,
            HashSet::from([row as u64, (originals + row) as u64])
        );
        assert_eq!(result.hits[0].content_hash, content_hash(vector));
        assert_eq!(result.hits[1].content_hash, content_hash(vector));
        assert_eq!(result.hits[0].score, result.hits[1].score);
        // Default metadata refs are rows too.
        for hit in &result.hits {
            assert_eq!(hit.metadata_ref, hit.id);
        }
        // Distinct vectors have distinct hashes.
        for hit in &result.hits[2..] {
            assert_ne!(hit.content_hash, content_hash(vector));
        }
    }
}

#[tokio::test]
async fn statistics_report_io_and_the_list_cache_serves_repeated_searches() {
    let data = Dataset::new(2_000, DIM, 1, 35);
    let reader = memory_index(&data.vectors(), 4).await;
    let query = &data.in_distribution;
    let params = SearchParams::new(10, 5, 10);
    let first = reader.search(query, &params).await.unwrap();
    assert_eq!(first.stats.lists_scanned, 5);
    assert_eq!(
        first.stats.groups_probed, 5,
        "flat routing opens one group a list"
    );
    assert_eq!(first.stats.list_cache_hits, 0);
    assert!(
        first.stats.gets >= 1 && first.stats.bytes_read > 0,
        "{:?}",
        first.stats
    );
    assert!(first.stats.candidates >= 10);
    let before = reader.storage().stats().snapshot();
    let second = reader.search(query, &params).await.unwrap();
    let io = reader.storage().stats().snapshot() - before;
    assert_eq!(second.hits, first.hits);
    assert_eq!(second.stats.list_cache_hits, 5);
    assert_eq!((second.stats.gets, second.stats.bytes_read), (0, 0));
    assert_eq!(io.gets, 0, "a cached search reads nothing from storage");
}

#[tokio::test]
async fn absurd_k_and_nprobe_are_clamped_rather_than_fatal() {
    // A serving process takes k and nprobe from requests: one absurd request must not take it
    // down. usize::MAX overflows the capacity computation (a panic); values like 2^40 would
    // instead abort the process on allocation failure, which a test cannot even observe.
    let n = 500;
    let data = Dataset::new(n, DIM, 1, 36);
    let reader = memory_index(&data.vectors(), 4).await;
    let query = &data.in_distribution;
    let wide = reader
        .search(query, &SearchParams::new(10, usize::MAX, 10))
        .await
        .expect("nprobe beyond nlist scans every list");
    assert_eq!(wide.stats.lists_scanned, NLIST);
    let deep = reader
        .search(query, &SearchParams::new(usize::MAX, NLIST, 10))
        .await
        .expect("k beyond the index size returns every vector");
    assert_eq!(deep.hits.len(), n);
}
