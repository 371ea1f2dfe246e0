//! One search, from a query vector to the `/v1` answer.

use clipedge_api::clip_retrieval::IndexShape;
use clipedge_api::{
    default_rerank, generation_error, items_with_records, merge, near_duplicates,
    AestheticPreference, ApiError, Dedup, ErrorCode, QueryStats, SearchResponse, Timings,
    ValidSearch, AESTHETIC_COLUMNS, MAX_FILTERED_RESULTS, MAX_RERANK_CANDIDATES, NEAR_DEDUP_WINDOW,
    NEAR_DUPLICATE_COSINE, SAFETY_COLUMN, SAFE_VALUE,
};
use clipedge_format::{Hit, ItemRecord};
use clipedge_index::route::auto_group_probe;
use clipedge_index::{Generation, GenerationError};
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
/// merge and de-duplicate, filter, then read the records of the answer's page through
/// `source`.
///
/// When filters or near-duplicate removal leave fewer results than the page needs and the
/// leaves had more, the fan-out is run again with twice the candidates (at most
/// [`MAX_DEEPENINGS`] times): deterministic, so the same request on the same generation ranks
/// the same.
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
    let served = &generation.manifest.generation;
    if let Some(pinned) = &search.generation {
        if pinned != served {
            return RootAnswer {
                result: Err(ApiError::new(
                    ErrorCode::GenerationChanged,
                    format!(
                        "the pages so far came from generation {pinned}, the index now serves \
                         {served}: page again from offset 0"
                    ),
                )),
                fan_out: FanOut::default(),
            };
        }
    }
    // A default rerank follows the index's size (`clipedge_api::default_rerank`); a large k
    // lowers it again below (`rerank_for`).
    let widened;
    let search = if search.rerank_default && search.rerank > 0 {
        widened = ValidSearch {
            rerank: default_rerank(generation.manifest.count).max(search.rerank),
            ..search.clone()
        };
        &widened
    } else {
        search
    };
    let probe_started = now_ms();
    // A default nprobe widens for large answers: the probed lists must hold the candidates.
    let nprobe = if search.nprobe_default {
        IndexShape::of(&generation.manifest)
            .nprobe_for(search.candidates())
            .max(search.nprobe)
    } else {
        search.nprobe
    };
    let groups = auto_group_probe(
        &generation.routing,
        generation.group_screen(),
        query,
        nprobe,
    );
    let policy = leaves.policy();
    let calls = plan_calls(
        &generation.routing,
        &groups,
        nprobe,
        policy.max_calls,
        policy.min_lists_per_call,
        policy.scanners,
    );
    timings.probe = now_ms() - probe_started;

    let mut candidates = search.candidates();
    let mut rounds = FanOutTotals::default();
    let mut deepenings = 0;
    loop {
        let scan_started = now_ms();
        let rerank = if search.rerank == 0 {
            0
        } else {
            search.rerank_for(candidates).max(1)
        };
        let job = LeafJob {
            generation: served,
            query,
            k: candidates as u32,
            rerank: rerank as u32,
        };
        let fan_out = leaves.scan(&job, &calls).await;
        timings.scan += now_ms() - scan_started;
        let merge_started = now_ms();
        let ranked = rank(generation, source, &fan_out, search).await;
        timings.merge += now_ms() - merge_started;
        let saturated = fan_out.candidates.len() >= candidates;
        let short = ranked
            .as_ref()
            .is_ok_and(|ranked| ranked.kept.len() < search.end());
        if short && saturated && candidates < MAX_RERANK_CANDIDATES && deepenings < MAX_DEEPENINGS {
            rounds.add(&fan_out);
            candidates = (2 * candidates).min(MAX_RERANK_CANDIDATES);
            deepenings += 1;
            continue;
        }
        let fan_out = rounds.fold_into(fan_out);
        let merge_started = now_ms();
        let result = match ranked {
            Ok(ranked) => {
                answer(
                    generation, source, &fan_out, search, ranked, root_base, timings,
                )
                .await
            }
            Err(error) => Err(error),
        };
        let result = result.map(|mut response| {
            response.timings.merge += now_ms() - merge_started;
            response
        });
        return RootAnswer { result, fan_out };
    }
}

/// Fan-outs run again with more candidates at most this many times.
pub const MAX_DEEPENINGS: usize = 2;

/// The counts of the fan-out rounds before the last (usage metering counts every call).
#[derive(Debug, Default)]
struct FanOutTotals {
    calls: u32,
    gets: u64,
    bytes_read: u64,
    scanner_ms: f64,
    lists_scanned_by_calls: u64,
    list_cache_hits: u64,
}

impl FanOutTotals {
    fn add(&mut self, fan_out: &FanOut) {
        self.calls += fan_out.calls;
        self.gets += fan_out.gets;
        self.bytes_read += fan_out.bytes_read;
        self.scanner_ms += fan_out.scanner_ms;
        self.lists_scanned_by_calls += fan_out.lists_scanned_by_calls;
        self.list_cache_hits += fan_out.list_cache_hits;
    }

    fn fold_into(self, mut fan_out: FanOut) -> FanOut {
        fan_out.calls += self.calls;
        fan_out.gets += self.gets;
        fan_out.bytes_read += self.bytes_read;
        fan_out.scanner_ms += self.scanner_ms;
        fan_out.lists_scanned_by_calls += self.lists_scanned_by_calls;
        fan_out.list_cache_hits += self.list_cache_hits;
        fan_out
    }
}

/// The window of one fan-out's ranking: the hits kept after de-duplication and filters, best
/// first, with the records the filter read (aligned with `kept`, `None` where unread).
struct Ranked {
    kept: Vec<Hit>,
    records: Vec<Option<ItemRecord>>,
    not_applied: Vec<String>,
}

/// Merges, de-duplicates (exact, then near) and filters the candidates of one fan-out, up to
/// the search's window.
async fn rank<S: ObjectSource>(
    generation: &Generation,
    source: &S,
    fan_out: &FanOut,
    search: &ValidSearch,
) -> Result<Ranked, ApiError> {
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
    let mut not_applied = Vec::new();
    let mut pool = merge(
        std::slice::from_ref(&fan_out.candidates),
        usize::MAX,
        search.dedup != Dedup::Off,
    );
    if search.dedup == Dedup::Near {
        let compared = pool.len().min(NEAR_DEDUP_WINDOW);
        let hits: Vec<(u64, u32)> = pool[..compared]
            .iter()
            .map(|hit| (hit.id, hit.list_id))
            .collect();
        match generation.stored_vectors(source, &hits).await {
            Ok(vectors) => {
                let dropped = near_duplicates(&vectors, NEAR_DUPLICATE_COSINE);
                let mut position = 0;
                pool.retain(|_| {
                    let keep = !dropped.get(position).copied().unwrap_or(false);
                    position += 1;
                    keep
                });
            }
            // Without stored copies there is nothing to compare: exact duplicates only.
            Err(GenerationError::NoVectorCopies) => not_applied.push("dedup_near".to_string()),
            Err(error) => return Err(generation_error(error)),
        }
    }
    let mut ranked = if search.safety {
        safety_filter(generation, source, fan_out, pool, search, not_applied).await?
    } else {
        // An aesthetic preference re-ranks more than the window, so results from below it can
        // move up; the window is cut after.
        let keep = match search.aesthetic {
            Some(_) => search.window().max(MAX_FILTERED_RESULTS),
            None => search.window(),
        };
        pool.truncate(keep);
        let records = vec![None; pool.len()];
        Ranked {
            kept: pool,
            records,
            not_applied,
        }
    };
    if let Some(preference) = search.aesthetic {
        ranked = aesthetic_rerank(generation, source, fan_out, ranked, preference).await?;
        ranked.kept.truncate(search.window());
        ranked.records.truncate(search.window());
    }
    Ok(ranked)
}

/// The records behind `refs`, in order: those the scanners returned with their candidates
/// (lists that carry their records), the rest read from the catalog in one coalesced read.
async fn records_of<S: ObjectSource>(
    generation: &Generation,
    source: &S,
    fan_out: &FanOut,
    refs: &[u64],
) -> Result<Vec<ItemRecord>, ApiError> {
    let known: Vec<Option<ItemRecord>> = refs
        .iter()
        .map(|metadata_ref| {
            let json = fan_out.records.get(metadata_ref)?;
            serde_json::from_str(json).ok()
        })
        .collect();
    let missing: Vec<u64> = refs
        .iter()
        .zip(&known)
        .filter(|(_, record)| record.is_none())
        .map(|(metadata_ref, _)| *metadata_ref)
        .collect();
    let mut read = generation
        .records(source, &missing)
        .await
        .map_err(generation_error)?
        .into_iter();
    Ok(known
        .into_iter()
        .map(|record| record.unwrap_or_else(|| read.next().unwrap_or_default()))
        .collect())
}

/// Reads the catalog records of `ranked`'s hits in `range` that have none yet.
async fn read_missing_records<S: ObjectSource>(
    generation: &Generation,
    source: &S,
    fan_out: &FanOut,
    ranked: &mut Ranked,
    range: std::ops::Range<usize>,
) -> Result<(), ApiError> {
    let unread: Vec<usize> = range
        .filter(|index| ranked.records[*index].is_none())
        .collect();
    if unread.is_empty() {
        return Ok(());
    }
    let refs: Vec<u64> = unread
        .iter()
        .map(|index| ranked.kept[*index].metadata_ref)
        .collect();
    let read = records_of(generation, source, fan_out, &refs).await?;
    for (index, record) in unread.into_iter().zip(read) {
        ranked.records[index] = Some(record);
    }
    Ok(())
}

/// Re-ranks the first [`MAX_FILTERED_RESULTS`] kept hits toward an aesthetic level read from
/// their catalog records ([`AestheticPreference`]); the adjusted value becomes the score.
/// Without an aesthetic column in the catalog nothing moves and the answer says `aesthetic`
/// was not applied.
async fn aesthetic_rerank<S: ObjectSource>(
    generation: &Generation,
    source: &S,
    fan_out: &FanOut,
    mut ranked: Ranked,
    preference: AestheticPreference,
) -> Result<Ranked, ApiError> {
    let reranked = ranked.kept.len().min(MAX_FILTERED_RESULTS);
    // The first few records tell whether the catalog has the column (clip-retrieval's client
    // sends a preference with every query, so the common answer is "no", and cheap).
    let probe = reranked.min(64);
    read_missing_records(generation, source, fan_out, &mut ranked, 0..probe).await?;
    let has_column = ranked.records[..probe].iter().flatten().any(|record| {
        AESTHETIC_COLUMNS
            .iter()
            .any(|column| record.extra.contains_key(*column))
    });
    if !has_column {
        ranked.not_applied.push("aesthetic".to_string());
        return Ok(ranked);
    }
    read_missing_records(generation, source, fan_out, &mut ranked, probe..reranked).await?;
    let aesthetic_of = |record: &Option<ItemRecord>| -> Option<f32> {
        let record = record.as_ref()?;
        AESTHETIC_COLUMNS.iter().find_map(|column| {
            let value = record.extra.get(*column)?;
            value
                .as_f64()
                .or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()))
                .map(|number| number as f32)
                .filter(|number| number.is_finite())
        })
    };
    let values: Vec<Option<f32>> = ranked.records[..reranked]
        .iter()
        .map(aesthetic_of)
        .collect();
    let mut order: Vec<(Hit, Option<ItemRecord>)> = ranked
        .kept
        .drain(..reranked)
        .zip(ranked.records.drain(..reranked))
        .zip(values)
        .map(|((mut hit, record), value)| {
            let distance = value.map_or(9.0, |value| (value - preference.wanted).abs().min(9.0));
            hit.score -= preference.weight * distance / 9.0;
            (hit, record)
        })
        .collect();
    // Stable: equal adjusted scores keep the similarity order.
    order.sort_by(|left, right| right.0.score.total_cmp(&left.0.score));
    let (hits, records): (Vec<Hit>, Vec<Option<ItemRecord>>) = order.into_iter().unzip();
    ranked.kept.splice(0..0, hits);
    ranked.records.splice(0..0, records);
    Ok(ranked)
}

/// Keeps the pool's hits whose record says `NSFW: UNLIKELY`, reading records in rank order
/// until the page's end is filled. When the first records read carry no `NSFW` column, the
/// catalog has none: nothing is dropped and the answer says `safety` was not applied.
async fn safety_filter<S: ObjectSource>(
    generation: &Generation,
    source: &S,
    fan_out: &FanOut,
    pool: Vec<Hit>,
    search: &ValidSearch,
    mut not_applied: Vec<String>,
) -> Result<Ranked, ApiError> {
    let end = search.end();
    let mut kept = Vec::with_capacity(end.min(pool.len()));
    let mut records = Vec::with_capacity(end.min(pool.len()));
    let mut read = 0;
    let mut column_seen = false;
    while kept.len() < end && read < pool.len() {
        // The first batch only tells whether the catalog has the column: keep it small.
        let wanted = 2 * (end - kept.len());
        let batch_len = if read == 0 {
            wanted.clamp(1, 64)
        } else {
            wanted.clamp(32, 2 * MAX_FILTERED_RESULTS)
        };
        let batch_end = (read + batch_len).min(pool.len());
        let refs: Vec<u64> = pool[read..batch_end]
            .iter()
            .map(|hit| hit.metadata_ref)
            .collect();
        let batch = records_of(generation, source, fan_out, &refs).await?;
        let first_batch = read == 0;
        if first_batch {
            column_seen = batch
                .iter()
                .any(|record| record.extra.contains_key(SAFETY_COLUMN));
            if !column_seen {
                not_applied.push("safety".to_string());
                let mut pool = pool;
                pool.truncate(search.window());
                let mut records: Vec<Option<ItemRecord>> = batch.into_iter().map(Some).collect();
                records.resize(pool.len(), None);
                return Ok(Ranked {
                    kept: pool,
                    records,
                    not_applied,
                });
            }
            if end > MAX_FILTERED_RESULTS {
                return Err(ApiError::new(
                    ErrorCode::KOutOfRange,
                    format!(
                        "the safety filter reads the catalog record of every result, so offset \
                         + k (here {end}) may be at most {MAX_FILTERED_RESULTS} with it; turn \
                         it off for more"
                    ),
                ));
            }
        }
        for (hit, record) in pool[read..batch_end].iter().zip(batch) {
            let safe = record
                .extra
                .get(SAFETY_COLUMN)
                .and_then(|value| value.as_str())
                .is_some_and(|value| value.eq_ignore_ascii_case(SAFE_VALUE));
            if safe && kept.len() < end {
                kept.push(*hit);
                records.push(Some(record));
            }
        }
        read = batch_end;
    }
    debug_assert!(column_seen);
    Ok(Ranked {
        kept,
        records,
        not_applied,
    })
}

/// The answer's page of a ranking: its hits with their records (those the filter did not
/// read already are read now).
async fn answer<S: ObjectSource>(
    generation: &Generation,
    source: &S,
    fan_out: &FanOut,
    search: &ValidSearch,
    ranked: Ranked,
    root_base: &str,
    timings: Timings,
) -> Result<SearchResponse, ApiError> {
    let failed_lists = fan_out.failed_lists(&generation.routing);
    let Ranked {
        kept,
        records,
        not_applied,
    } = ranked;
    let page_start = search.offset.min(kept.len());
    let page_end = search.end().min(kept.len());
    let page = &kept[page_start..page_end];
    let known_records = &records[page_start..page_end];
    let with_records = search.records.min(page.len());
    let unread: Vec<u64> = page[..with_records]
        .iter()
        .zip(known_records)
        .filter(|(_, record)| record.is_none())
        .map(|(hit, _)| hit.metadata_ref)
        .collect();
    let mut read = records_of(generation, source, fan_out, &unread)
        .await?
        .into_iter();
    let page_records: Vec<ItemRecord> = known_records[..with_records]
        .iter()
        .map(|known| match known {
            Some(record) => record.clone(),
            None => read.next().unwrap_or_default(),
        })
        .collect();
    let results = items_with_records(page, page_records, root_base);
    let next_offset = (search.paged && kept.len() > page_end).then_some(page_end);
    Ok(SearchResponse {
        results,
        generation: generation.manifest.generation.clone(),
        offset: search.offset,
        next_offset,
        not_applied,
        partial: !failed_lists.is_empty(),
        failed_lists,
        timings,
        stats: QueryStats {
            gets: fan_out.gets,
            bytes_read: fan_out.bytes_read,
            scanner_calls: fan_out.calls,
            scanner_ms: fan_out.scanner_ms,
            lists_scanned: u32::try_from(fan_out.lists_scanned_by_calls).unwrap_or(u32::MAX),
            list_cache_hits: u32::try_from(fan_out.list_cache_hits).unwrap_or(u32::MAX),
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
        generation_of(lists, u64::from(lists) * 10)
    }

    /// [`generation`] claiming `count` vectors.
    fn generation_of(lists: u32, count: u64) -> Generation {
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
            count,
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
            search_defaults: None,
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
        Generation::new(manifest, routing)
    }

    /// Answers each call with one hit per list (score = 1 / (list + 1), lists 0 and 1 holding
    /// the same image), except the calls that hold a list in `failing`, which fail outright.
    struct ScriptedLeaves {
        max_calls: usize,
        failing: Vec<u32>,
        seen_calls: RefCell<Vec<Vec<u32>>>,
        /// Answer with each candidate's catalog record, as lists that carry records do.
        records: bool,
        /// The rerank factor of each fan-out.
        seen_rerank: RefCell<Vec<u32>>,
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
            self.seen_rerank.borrow_mut().push(job.rerank);
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
                    metadata_ref: u64::from(list),
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
                    records: if self.records {
                        lists
                            .iter()
                            .map(|list| {
                                format!(r#"{{"caption":"list {list}","url":"media/{list}.webp"}}"#)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    // One list of each call found in the scanner's cache.
                    stats: ScanStats {
                        lists_scanned: lists.len() as u32,
                        list_cache_hits: 1,
                        ..ScanStats::default()
                    },
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
            dedup: Dedup::Exact,
            records: k,
            offset: 0,
            paged: false,
            generation: None,
            safety: false,
            aesthetic: None,
            nprobe_default: false,
            rerank_default: false,
        }
    }

    fn run(leaves: &ScriptedLeaves, search: &ValidSearch) -> RootAnswer {
        run_on(&generation(8), leaves, search)
    }

    fn run_on(
        generation: &Generation,
        leaves: &ScriptedLeaves,
        search: &ValidSearch,
    ) -> RootAnswer {
        futures::executor::block_on(super::search(
            generation,
            &MemorySource::default(),
            leaves,
            &[1.0, 0.0],
            search,
            "/",
            || 0.0,
        ))
    }

    /// Leaves that answer every call, at most `max_calls` a search.
    fn answering(max_calls: usize) -> ScriptedLeaves {
        ScriptedLeaves {
            max_calls,
            failing: Vec::new(),
            seen_calls: RefCell::default(),
            records: false,
            seen_rerank: RefCell::default(),
        }
    }

    #[test]
    fn calls_follow_the_policy_and_duplicates_are_merged_away() {
        let leaves = answering(3);
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
        // The warm-hit ratio is observable: lists scanned and the cache's share of them.
        assert_eq!(response.stats.lists_scanned, 8);
        assert_eq!(response.stats.list_cache_hits, calls.len() as u32);
    }

    #[test]
    fn a_default_rerank_follows_the_index_size_and_an_explicit_one_stays() {
        let rerank_of = |count: u64, rerank: usize, rerank_default: bool| {
            let leaves = answering(1);
            let search = ValidSearch {
                rerank,
                rerank_default,
                ..valid_search(4, 8)
            };
            run_on(&generation_of(8, count), &leaves, &search)
                .result
                .unwrap();
            let seen = leaves.seen_rerank.borrow()[0];
            seen
        };
        assert_eq!(rerank_of(80, 10, true), 10);
        assert_eq!(rerank_of(10_000_000, 10, true), 50);
        assert_eq!(rerank_of(10_000_000, 10, false), 10);
        assert_eq!(rerank_of(10_000_000, 0, false), 0);
    }

    #[test]
    fn a_default_nprobe_is_the_generations_measured_one_and_an_explicit_one_stays() {
        let lists_scanned = |measured: Option<u32>, nprobe: usize, nprobe_default: bool| {
            let mut generation = generation_of(64, 64_000);
            generation.manifest.search_defaults =
                measured.map(|nprobe| clipedge_format::SearchDefaults {
                    nprobe,
                    rerank: 10,
                    recall_at_10: 0.95,
                    queries: 100,
                });
            let search = ValidSearch {
                nprobe,
                nprobe_default,
                ..valid_search(4, nprobe)
            };
            run_on(&generation, &answering(1), &search)
                .result
                .unwrap()
                .stats
                .lists_scanned
        };
        assert_eq!(lists_scanned(None, 16, true), 16, "the API's fixed default");
        assert_eq!(
            lists_scanned(Some(24), 16, true),
            24,
            "the gate's measured one"
        );
        assert_eq!(lists_scanned(Some(24), 8, false), 8, "named by the request");
    }

    #[test]
    fn records_returned_by_the_scanners_are_the_results_captions() {
        let leaves = ScriptedLeaves {
            records: true,
            ..answering(3)
        };
        let response = run(&leaves, &valid_search(4, 8)).result.unwrap();
        // The generation has no catalog: without the scanners' records the captions are empty.
        let shown: Vec<(u64, &str, &str)> = response
            .results
            .iter()
            .map(|item| (item.id, item.caption.as_str(), item.url.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (0, "list 0", "/media/0.webp"),
                (2, "list 2", "/media/2.webp"),
                (3, "list 3", "/media/3.webp"),
                (4, "list 4", "/media/4.webp"),
            ]
        );
    }

    #[test]
    fn pages_cut_one_ranking_and_name_the_generation() {
        let leaves = answering(3);
        let page = |offset: usize, generation: Option<&str>| {
            let search = ValidSearch {
                offset,
                paged: true,
                generation: generation.map(str::to_string),
                ..valid_search(3, 8)
            };
            run(&leaves, &search).result
        };
        let ids = |response: &SearchResponse| -> Vec<u64> {
            response.results.iter().map(|item| item.id).collect()
        };
        let first = page(0, None).unwrap();
        assert_eq!(ids(&first), vec![0, 2, 3]);
        assert_eq!(first.generation, "0001700000000000-deadbeef");
        assert_eq!(first.next_offset, Some(3));
        let second = page(3, Some(&first.generation)).unwrap();
        assert_eq!(ids(&second), vec![4, 5, 6]);
        let last = page(6, Some(&first.generation)).unwrap();
        assert_eq!((ids(&last), last.next_offset), (vec![7], None));
        let moved = page(3, Some("0001600000000000-cafebabe")).unwrap_err();
        assert_eq!(
            (moved.code, moved.status()),
            (ErrorCode::GenerationChanged, 409)
        );
        assert!(
            moved.message.contains("0001600000000000-cafebabe"),
            "{moved:?}"
        );
    }

    #[test]
    fn a_failed_call_makes_the_answer_partial_and_names_its_lists() {
        let leaves = ScriptedLeaves {
            failing: vec![0],
            ..answering(8)
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
            failing: (0..8).collect(),
            ..answering(2)
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
