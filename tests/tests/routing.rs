//! Two-level routing (groups of fine lists) against flat routing (one group per list).

use std::sync::OnceLock;

use clipedge_datagen::QueryKind;
use clipedge_format::RerankKind;
use clipedge_index::{IndexReader, SearchParams};
use clipedge_index_builder::BuildConfig;
use clipedge_tests::{build, open, recall, search_ids, temp_storage, Dataset};
use tempfile::TempDir;

const N: usize = 6_000;
const DIM: usize = 32;
const QUERIES: usize = 60;
const NLIST: usize = 64;
const GROUPS: usize = 16;
const K: usize = 10;

fn data() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| Dataset::new(N, DIM, QUERIES, 11))
}

fn config(ngroups: Option<usize>) -> BuildConfig {
    BuildConfig {
        ngroups,
        ..clipedge_tests::quick_config(NLIST, 16, 4, RerankKind::Fp16)
    }
}

async fn index(ngroups: Option<usize>) -> (TempDir, IndexReader) {
    let (dir, storage) = temp_storage();
    build(&storage, &data().vectors(), &config(ngroups)).await;
    (dir, open(&storage).await)
}

fn params(nprobe: usize, group_probe: Option<usize>) -> SearchParams {
    SearchParams {
        group_probe,
        ..SearchParams::new(K, nprobe, 10)
    }
}

#[tokio::test]
async fn grouped_index_has_fewer_groups_covering_every_list() {
    let (_dir, grouped) = index(Some(GROUPS)).await;
    let manifest = grouped.manifest();
    let routing = grouped.routing();
    // k-means may leave a group empty (then it is dropped), but most must survive.
    assert!(
        (2..=GROUPS as u32).contains(&manifest.ngroups),
        "{}",
        manifest.ngroups
    );
    assert_eq!(routing.ngroups(), manifest.ngroups as usize);
    assert_eq!(manifest.nlist as usize, NLIST);
    let mut next_list = 0;
    for group in &routing.groups {
        assert_eq!(group.first_list, next_list);
        assert!(group.list_count > 0);
        next_list += group.list_count;
    }
    assert_eq!(next_list as usize, NLIST);
    let locations = clipedge_tests::list_locations(&grouped).await;
    assert_eq!(locations.len(), NLIST);
    let stored: u64 = locations.iter().map(|list| u64::from(list.count)).sum();
    assert_eq!(stored, N as u64);
}

#[tokio::test]
async fn probing_every_group_gives_the_same_hits_as_flat_routing() {
    let (_flat_dir, flat) = index(None).await;
    let (_grouped_dir, grouped) = index(Some(GROUPS)).await;
    assert_eq!(flat.manifest().ngroups as usize, NLIST, "flat routing");
    let ngroups = grouped.manifest().ngroups as usize;
    assert!(ngroups < NLIST);
    for kind in [QueryKind::InDistribution, QueryKind::OutOfDistribution] {
        for query in data().queries(kind).chunks_exact(DIM) {
            // With every group open the fine lists compete on the same centroids as in the
            // flat index, so any nprobe picks the same lists. List ids differ (lists are
            // renumbered group by group), everything else must not.
            for nprobe in [1, 4, 16, NLIST] {
                let expected = flat.search(query, &params(nprobe, None)).await.unwrap();
                let found = grouped
                    .search(query, &params(nprobe, Some(ngroups)))
                    .await
                    .unwrap();
                let strip = |hits: &[clipedge_format::Hit]| -> Vec<(u64, f32, u64, u64)> {
                    hits.iter()
                        .map(|hit| (hit.id, hit.score, hit.content_hash, hit.metadata_ref))
                        .collect()
                };
                assert_eq!(
                    strip(&found.hits),
                    strip(&expected.hits),
                    "{kind:?} nprobe {nprobe}"
                );
                assert_eq!(found.stats.groups_probed, ngroups);
                assert_eq!(found.stats.lists_scanned, nprobe);
                assert_eq!(found.stats.codes_scanned, expected.stats.codes_scanned);
            }
            // The automatic group probe opens every group when every list is wanted.
            let automatic = grouped.search(query, &params(NLIST, None)).await.unwrap();
            let expected = flat.search(query, &params(NLIST, None)).await.unwrap();
            let ids =
                |hits: &[clipedge_format::Hit]| hits.iter().map(|hit| hit.id).collect::<Vec<_>>();
            assert_eq!(ids(&automatic.hits), ids(&expected.hits), "{kind:?}");
        }
    }
}

/// Mean recall@K and mean groups opened over the queries of `kind`.
async fn recall_and_groups(
    reader: &IndexReader,
    kind: QueryKind,
    truth: &[u32],
    search: &SearchParams,
) -> (f64, f64) {
    let ids = search_ids(reader, data().queries(kind), search)
        .await
        .unwrap();
    let mut groups = 0;
    for query in data().queries(kind).chunks_exact(DIM) {
        groups += reader
            .search(query, search)
            .await
            .unwrap()
            .stats
            .groups_probed;
    }
    (recall(&ids, truth, K, K), groups as f64 / QUERIES as f64)
}

#[tokio::test]
async fn automatic_group_probe_prunes_groups_and_keeps_reasonable_recall() {
    let (_flat_dir, flat) = index(None).await;
    let (_grouped_dir, grouped) = index(Some(GROUPS)).await;
    let ngroups = grouped.manifest().ngroups as f64;
    for kind in [QueryKind::InDistribution, QueryKind::OutOfDistribution] {
        let truth = data().truth(kind, K);
        // The automatic probe opens GROUPS_PER_PROBED_LIST groups per probed list
        // (route::auto_group_probe), and at nprobe 1 must still leave at least half shut.
        let (_, groups_at_1) = recall_and_groups(&grouped, kind, &truth, &params(1, None)).await;
        let per_list = clipedge_index::route::GROUPS_PER_PROBED_LIST as f64;
        assert!(
            (per_list..=ngroups / 2.0).contains(&groups_at_1),
            "{kind:?}: {groups_at_1} of {ngroups} groups opened for nprobe 1"
        );
        for (nprobe, slack) in [(8, 0.15), (16, 0.02)] {
            let (flat_recall, _) =
                recall_and_groups(&flat, kind, &truth, &params(nprobe, None)).await;
            let (grouped_recall, _) =
                recall_and_groups(&grouped, kind, &truth, &params(nprobe, None)).await;
            assert!(
                grouped_recall >= 0.7 && grouped_recall >= flat_recall - slack,
                "{kind:?} nprobe {nprobe}: grouped {grouped_recall:.3}, flat {flat_recall:.3}"
            );
        }
    }
}

#[tokio::test]
async fn an_explicit_group_probe_limits_the_lists_scanned_to_those_groups() {
    let (_dir, grouped) = index(Some(GROUPS)).await;
    let routing = grouped.routing().clone();
    for query in data().out_of_distribution.chunks_exact(DIM).take(10) {
        let top_group = clipedge_index::route::rank_groups(&routing, None, query, 1)[0] as usize;
        let entry = routing.groups[top_group];
        let lists = entry.first_list..entry.first_list + entry.list_count;
        let result = grouped
            .search(query, &params(NLIST, Some(1)))
            .await
            .unwrap();
        assert_eq!(result.stats.groups_probed, 1);
        assert_eq!(result.stats.lists_scanned, entry.list_count as usize);
        assert!(!result.hits.is_empty());
        for hit in &result.hits {
            assert!(
                lists.contains(&hit.list_id),
                "hit from list {} outside {lists:?}",
                hit.list_id
            );
        }
    }
}

/// Near-duplicate removal reads stored vectors in a batch (`Generation::stored_vectors`: one
/// read per list, one per routing group): on a grouped index every hit gets its own vector back,
/// in order, whatever group and list it is in.
#[tokio::test]
async fn a_batch_of_stored_vectors_matches_the_vectors_indexed() {
    let (dir, grouped) = index(Some(GROUPS)).await;
    let query = data().queries(QueryKind::InDistribution);
    let result = grouped
        .search(&query[..DIM], &SearchParams::new(300, NLIST, 2))
        .await
        .unwrap();
    let hits: Vec<(u64, u32)> = result
        .hits
        .iter()
        .map(|hit| (hit.id, hit.list_id))
        .collect();
    let lists: std::collections::HashSet<u32> = hits.iter().map(|hit| hit.1).collect();
    assert!(
        lists.len() > GROUPS,
        "hits across many lists: {}",
        lists.len()
    );
    let storage =
        clipedge_storage::Storage::open(dir.path().to_str().expect("a utf-8 path")).unwrap();
    let vectors = grouped
        .generation()
        .stored_vectors(&storage, &hits)
        .await
        .unwrap();
    assert_eq!(vectors.len(), hits.len());
    for ((id, _), vector) in hits.iter().zip(&vectors) {
        let vector = vector.as_ref().expect("every hit's list holds it");
        let indexed = data().row(*id as usize);
        let error = vector
            .iter()
            .zip(indexed)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0_f32, f32::max);
        assert!(error < 1e-2, "id {id}: off by {error}");
    }
    // A hit named with the wrong list is not found there.
    let (id, list) = hits[0];
    let wrong = grouped
        .generation()
        .stored_vectors(&storage, &[(id, (list + 1) % NLIST as u32)])
        .await
        .unwrap();
    assert_eq!(wrong, vec![None]);
}
