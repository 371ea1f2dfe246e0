//! One search, from a query vector to the `/v1` answer.

use clipedge_api::{
    generation_error, items_with_records, merge, ApiError, ErrorCode, QueryStats, SearchResponse,
    Timings, ValidSearch,
};
use clipedge_index::route::auto_group_probe;
use clipedge_index::Generation;
use clipedge_io::ObjectSource;

use crate::plan::{plan_calls, Call, FanOut};

/// How a query's routing groups may be spread over leaf calls.
#[derive(Debug, Clone, Copy)]
pub struct FanOutPolicy<'a> {
    /// Calls at most (a Worker holds six connections).
    pub max_calls: usize,
    /// A call is worth making for at least this many lists.
    pub min_lists_per_call: usize,
    /// The scanner functions groups are spread over by rendezvous hashing (cache affinity);
    /// empty or one for a single leaf.
    pub scanners: &'a [String],
}

/// What every leaf call of one query shares.
#[derive(Debug, Clone, Copy)]
pub struct LeafJob<'a> {
    pub generation: &'a str,
    pub query: &'a [f32],
    /// Candidates each call returns.
    pub k: u32,
    /// Candidates reranked exactly = `k * rerank`.
    pub rerank: u32,
}

/// Where a root's calls go: scanner Lambdas over HTTP at the edge, the in-process leaf in
/// `clipedge serve`. A leaf never fails the query by itself: failed calls, groups and lists are
/// folded into the [`FanOut`], and the root decides (partial answer, or `scanners_failed`).
#[allow(async_fn_in_trait)]
pub trait Leaves {
    fn policy(&self) -> FanOutPolicy<'_>;
    /// Runs every planned call (with the retries it allows) and folds the answers.
    async fn scan(&self, job: &LeafJob<'_>, calls: &[Call]) -> FanOut;
}

/// The answer or the error, and the fan-out behind either (usage metering counts the calls of
/// a failed search too).
#[derive(Debug)]
pub struct RootAnswer {
    pub result: Result<SearchResponse, ApiError>,
    pub fan_out: FanOut,
}

/// Answers `search` for the (already encoded) `query` on `generation`: probe, plan, fan out,
/// merge and de-duplicate, then read the top records through `source`.
///
/// `now_ms` is the front's monotonic clock in milliseconds (std's `Instant` does not run in a
/// Worker). The timings' `encode` stays the caller's; `stats` count the leaves' reads and
/// calls, and the caller adds its own reads (query lookup, records) from its counted source.
pub async fn search<S: ObjectSource, L: Leaves>(
    generation: &Generation,
    source: &S,
    leaves: &L,
    query: &[f32],
    search: &ValidSearch,
    root_base: &str,
    now_ms: impl Fn() -> f64,
) -> RootAnswer {
    let mut timings = Timings::default();
    let probe_started = now_ms();
    let groups = auto_group_probe(&generation.routing, query, search.nprobe);
    let policy = leaves.policy();
    let calls = plan_calls(
        &generation.routing,
        &groups,
        search.nprobe,
        policy.max_calls,
        policy.min_lists_per_call,
        policy.scanners,
    );
    timings.probe = now_ms() - probe_started;

    let scan_started = now_ms();
    let job = LeafJob {
        generation: &generation.manifest.generation,
        query,
        k: search.candidates() as u32,
        rerank: search.rerank as u32,
    };
    let fan_out = leaves.scan(&job, &calls).await;
    timings.scan = now_ms() - scan_started;
    let result = answer(
        generation, source, &fan_out, search, root_base, timings, now_ms,
    )
    .await;
    RootAnswer { result, fan_out }
}

/// The merge and result assembly half of [`search`].
async fn answer<S: ObjectSource>(
    generation: &Generation,
    source: &S,
    fan_out: &FanOut,
    search: &ValidSearch,
    root_base: &str,
    mut timings: Timings,
    now_ms: impl Fn() -> f64,
) -> Result<SearchResponse, ApiError> {
    let merge_started = now_ms();
    let failed_lists = fan_out.failed_lists(&generation.routing);
    if fan_out.lists_scanned() == 0 && !failed_lists.is_empty() {
        let first_error = fan_out.errors.first().cloned().unwrap_or_default();
        return Err(ApiError::new(
            ErrorCode::ScannersFailed,
            format!(
                "every scanner call failed ({} calls, {} lists unscanned): {first_error}",
                fan_out.calls.max(1),
                failed_lists.len()
            ),
        ));
    }
    let merged = merge(
        std::slice::from_ref(&fan_out.candidates),
        search.k,
        search.dedup,
    );
    let refs: Vec<u64> = merged
        .iter()
        .take(search.records)
        .map(|hit| hit.metadata_ref)
        .collect();
    let records = generation
        .records(source, &refs)
        .await
        .map_err(generation_error)?;
    let results = items_with_records(&merged, records, root_base);
    timings.merge = now_ms() - merge_started;
    Ok(SearchResponse {
        results,
        partial: !failed_lists.is_empty(),
        failed_lists,
        timings,
        stats: QueryStats {
            gets: fan_out.gets,
            bytes_read: fan_out.bytes_read,
            scanner_calls: fan_out.calls,
            scanner_ms: fan_out.scanner_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use clipedge_api::Query;
    use clipedge_format::{
        BuildInfo, FileRef, GroupEntry, Hit, Manifest, Metric, ModelInfo, PqParams, RerankKind,
        RoutingTable, FORMAT_VERSION,
    };
    use clipedge_io::MemorySource;
    use clipedge_protocol::{ListResult, ScanResponse, ScanStats, ScanStatus};

    use super::*;

    /// A flat index of `lists` one-list groups in 2 dimensions, without a catalog.
    fn generation(lists: u32) -> Generation {
        let file = |path: &str| FileRef {
            path: path.to_string(),
            bytes: 0,
            crc32: 0,
        };
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            generation: "0001700000000000-deadbeef".to_string(),
            created_unix_ms: 0,
            model: ModelInfo {
                id: "test".to_string(),
                fingerprint: "sha256:test".to_string(),
            },
            dim: 2,
            metric: Metric::InnerProduct,
            count: u64::from(lists) * 10,
            nlist: lists,
            ngroups: lists,
            pq: PqParams {
                m: 1,
                bits: 8,
                dsub: 2,
                by_residual: true,
            },
            rerank: RerankKind::Int8,
            routing: file("routing.bin"),
            groups: file("groups.bin"),
            codebooks: file("codebooks.bin"),
            shards: Vec::new(),
            build: BuildInfo {
                seed: 0,
                train_size: 0,
                kmeans_iters: 0,
                builder: "test".to_string(),
            },
            catalog: None,
        };
        let groups = (0..lists)
            .map(|list| GroupEntry {
                first_list: list,
                list_count: 1,
                offset: 0,
                length: 0,
                crc32: 0,
                radius: 0.0,
            })
            .collect();
        let centroids = (0..lists)
            .flat_map(|list| [1.0, list as f32 / lists as f32])
            .collect();
        let routing = RoutingTable {
            dim: 2,
            nlist: lists,
            centroids,
            groups,
        };
        Generation { manifest, routing }
    }

    /// Answers each call with one hit per list (score = 1 / (list + 1), lists 0 and 1 holding
    /// the same image), except the calls that hold a list in `failing`, which fail outright.
    struct ScriptedLeaves {
        max_calls: usize,
        failing: Vec<u32>,
        seen_calls: RefCell<Vec<Vec<u32>>>,
    }

    impl Leaves for ScriptedLeaves {
        fn policy(&self) -> FanOutPolicy<'_> {
            FanOutPolicy {
                max_calls: self.max_calls,
                min_lists_per_call: 1,
                scanners: &[],
            }
        }

        async fn scan(&self, job: &LeafJob<'_>, calls: &[Call]) -> FanOut {
            let mut fan_out = FanOut::default();
            for call in calls {
                let lists = call.batch.lists.clone();
                self.seen_calls.borrow_mut().push(lists.clone());
                if lists.iter().any(|list| self.failing.contains(list)) {
                    fan_out.add_failed_call(&lists, "scanner unreachable".to_string());
                    continue;
                }
                let hit = |list: u32| Hit {
                    id: u64::from(list),
                    score: 1.0 / (list as f32 + 1.0),
                    content_hash: u64::from(list.max(1)),
                    metadata_ref: 0,
                    list_id: list,
                };
                fan_out.add_response(&ScanResponse {
                    request_id: String::new(),
                    generation: job.generation.to_string(),
                    groups: Vec::new(),
                    lists: lists
                        .iter()
                        .map(|&list_id| ListResult {
                            list_id,
                            status: ScanStatus::Ok,
                            cached: false,
                            detail: String::new(),
                        })
                        .collect(),
                    candidates: lists.iter().map(|&list| hit(list)).collect(),
                    stats: ScanStats::default(),
                });
            }
            fan_out
        }
    }

    fn valid_search(k: usize, nprobe: usize) -> ValidSearch {
        ValidSearch {
            query: Query::Vector(vec![1.0, 0.0]),
            k,
            nprobe,
            rerank: 2,
            dedup: true,
            records: k,
        }
    }

    fn run(leaves: &ScriptedLeaves, search: &ValidSearch) -> RootAnswer {
        let generation = generation(8);
        futures::executor::block_on(super::search(
            &generation,
            &MemorySource::default(),
            leaves,
            &[1.0, 0.0],
            search,
            "/",
            || 0.0,
        ))
    }

    #[test]
    fn calls_follow_the_policy_and_duplicates_are_merged_away() {
        let leaves = ScriptedLeaves {
            max_calls: 3,
            failing: Vec::new(),
            seen_calls: RefCell::default(),
        };
        let answer = run(&leaves, &valid_search(4, 8));
        let response = answer.result.unwrap();
        let calls = leaves.seen_calls.borrow();
        assert!(!calls.is_empty() && calls.len() <= 3, "{calls:?}");
        let mut scanned: Vec<u32> = calls.iter().flatten().copied().collect();
        scanned.sort_unstable();
        assert_eq!(
            scanned,
            (0..8).collect::<Vec<_>>(),
            "every probed list once"
        );
        let ids: Vec<u64> = response.results.iter().map(|item| item.id).collect();
        assert_eq!(ids, vec![0, 2, 3, 4], "list 1 repeats list 0's image");
        assert!(!response.partial && response.failed_lists.is_empty());
        assert_eq!(response.stats.scanner_calls, calls.len() as u32);
    }

    #[test]
    fn a_failed_call_makes_the_answer_partial_and_names_its_lists() {
        let leaves = ScriptedLeaves {
            max_calls: 8,
            failing: vec![0],
            seen_calls: RefCell::default(),
        };
        let response = run(&leaves, &valid_search(3, 8)).result.unwrap();
        assert!(response.partial);
        assert_eq!(response.failed_lists, vec![0]);
        let ids: Vec<u64> = response.results.iter().map(|item| item.id).collect();
        assert_eq!(ids, vec![1, 2, 3], "the other lists still answer");
    }

    #[test]
    fn when_every_call_fails_the_search_fails_and_the_calls_are_still_counted() {
        let leaves = ScriptedLeaves {
            max_calls: 2,
            failing: (0..8).collect(),
            seen_calls: RefCell::default(),
        };
        let answer = run(&leaves, &valid_search(3, 8));
        let error = answer.result.unwrap_err();
        assert_eq!(error.code, ErrorCode::ScannersFailed, "{error:?}");
        assert!(error.message.contains("scanner unreachable"), "{error:?}");
        assert_eq!(
            answer.fan_out.calls,
            leaves.seen_calls.borrow().len() as u32
        );
    }
}
