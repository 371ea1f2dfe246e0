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
