//! The leaf search on its own: every way of asking for the same lists gives the same hits, a
//! passed deadline gives statuses instead of an error, and one list cache serves two
//! generations without mixing their lists.

use std::time::{Duration, Instant};

use clipedge_datagen::QueryKind;
use clipedge_format::RerankKind;
use clipedge_index::{
    route, IndexError, IndexReader, LeafRequest, LeafTargets, ListCache, OpenOptions, ReadPlan,
    SearchParams,
};
use clipedge_index_builder::BuildConfig;
use clipedge_protocol::ScanStatus;
use clipedge_storage::Storage;
use clipedge_tests::{build, group_blobs, probed_lists, quick_config, temp_storage, Dataset};

const DIM: usize = 32;
const K: usize = 10;
const RERANK: usize = 8;
const NPROBE: usize = 6;

fn build_config(seed: u64) -> BuildConfig {
    BuildConfig {
        seed,
        ngroups: Some(8),
        shard_target_bytes: 48 << 10,
        ..quick_config(48, 8, 4, RerankKind::Fp16)
    }
}

async fn open_generation(
    storage: &Storage,
    generation: &str,
    list_cache_bytes: u64,
) -> IndexReader {
    let options = OpenOptions {
        generation: Some(generation.to_string()),
        list_cache_bytes,
        ..OpenOptions::default()
    };
    IndexReader::open(storage.clone(), options)
        .await
        .expect("open the generation")
}

fn leaf_request<'a>(
    query: &'a [f32],
    targets: LeafTargets<'a>,
    reads: ReadPlan,
) -> LeafRequest<'a> {
    LeafRequest {
        query,
        targets,
        k: K,
        rerank: RERANK,
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        reads,
        parallel: false,
    }
}

#[tokio::test]
async fn groups_lists_and_read_plans_give_the_hits_of_search() {
    let (_dir, storage) = temp_storage();
    let data = Dataset::new(3_000, DIM, 6, 11);
    let report = build(&storage, &data.vectors(), &build_config(3)).await;
    let reader = open_generation(&storage, &report.generation, 0).await;
    let blobs = group_blobs(&reader).await;
    let params = SearchParams::new(K, NPROBE, RERANK);
    for query in data.queries(QueryKind::OutOfDistribution).chunks_exact(DIM) {
        let expected = reader.search(query, &params).await.expect("search");
        let group_ids = route::auto_group_probe(reader.routing(), None, query, NPROBE);
        let list_ids = probed_lists(&reader, &blobs, query, NPROBE);
        let plans = [ReadPlan::Coalesced, ReadPlan::OneByOne { concurrency: 3 }];
        for reads in plans {
            let by_groups = LeafTargets::Groups {
                group_ids: &group_ids,
                nprobe: NPROBE,
            };
            let by_lists = LeafTargets::Lists {
                list_ids: &list_ids,
            };
            for targets in [by_groups, by_lists] {
                let leaf = reader
                    .leaf_search(&leaf_request(query, targets, reads))
                    .await
                    .expect("leaf search");
                assert!(leaf.first_error.is_none(), "{:?}", leaf.first_error);
                assert!(leaf.lists.iter().all(|list| list.status == ScanStatus::Ok));
                let scanned: Vec<u32> = leaf.lists.iter().map(|list| list.list_id).collect();
                assert_eq!(scanned, list_ids, "{targets:?} {reads:?}");
                assert_eq!(leaf.hits, expected.hits, "{targets:?} {reads:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_passed_deadline_is_statuses_and_bad_ids_are_refused() {
    let (_dir, storage) = temp_storage();
    let data = Dataset::new(2_000, DIM, 2, 12);
    let report = build(&storage, &data.vectors(), &build_config(4)).await;
    let reader = open_generation(&storage, &report.generation, 0).await;
    let query = &data.queries(QueryKind::OutOfDistribution)[..DIM];
    let list_ids = [5, 1, 30];
    let request = LeafRequest {
        deadline: Some(Instant::now()),
        ..leaf_request(
            query,
            LeafTargets::Lists {
                list_ids: &list_ids,
            },
            ReadPlan::OneByOne { concurrency: 2 },
        )
    };
    let leaf = reader.leaf_search(&request).await.expect("leaf search");
    assert!(leaf.hits.is_empty());
    assert!(leaf.first_error.is_none(), "a timeout is not an error");
    assert_eq!(leaf.lists.len(), list_ids.len());
    assert!(
        leaf.lists
            .iter()
            .all(|list| list.status == ScanStatus::TimedOut),
        "{:?}",
        leaf.lists
    );

    for list_ids in [vec![48], vec![3, 3]] {
        let request = leaf_request(
            query,
            LeafTargets::Lists {
                list_ids: &list_ids,
            },
            ReadPlan::Coalesced,
        );
        let refused = reader.leaf_search(&request).await;
        assert!(
            matches!(refused, Err(IndexError::InvalidParams { .. })),
            "{list_ids:?}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn one_list_cache_serves_two_generations_apart() {
    let (_dir, storage) = temp_storage();
    let data = Dataset::new(2_000, DIM, 2, 13);
    let first = build(&storage, &data.vectors(), &build_config(5)).await;
    let second = build(&storage, &data.vectors(), &build_config(6)).await;
    let cache = ListCache::new(64 << 20);
    let old = open_generation(&storage, &first.generation, 0)
        .await
        .with_list_cache(cache.clone());
    let new = open_generation(&storage, &second.generation, 0)
        .await
        .with_list_cache(cache.clone());
    let query = &data.queries(QueryKind::OutOfDistribution)[..DIM];
    let params = SearchParams::new(K, NPROBE, RERANK);

    let old_cold = old
        .search(query, &params)
        .await
        .expect("search the old generation");
    assert_eq!(old_cold.stats.list_cache_hits, 0);
    let bytes_after_old = cache.used_bytes();
    assert!(bytes_after_old > 0);
    // Same list ids, other generation: nothing of the old one's is served.
    let new_cold = new
        .search(query, &params)
        .await
        .expect("search the new generation");
    assert_eq!(new_cold.stats.list_cache_hits, 0);
    assert!(new_cold.stats.gets > 0);
    assert!(
        cache.used_bytes() > bytes_after_old,
        "one budget holds both"
    );

    let old_warm = old
        .search(query, &params)
        .await
        .expect("search the old generation");
    assert_eq!(old_warm.stats.gets, 0);
    assert_eq!(old_warm.stats.list_cache_hits, old_warm.stats.lists_scanned);
    assert_eq!(old_warm.hits, old_cold.hits);
}
