//! The leaf search: scan a set of groups or lists of one open generation.
//!
//! Every query path ends here. `IndexReader::search` routes a query to groups and asks the leaf
//! for them; the scanner Lambda decodes a signed request and asks the leaf for the groups or
//! lists it names. The leaf reads what is missing (verified once, then kept in the list cache),
//! scans the lists in probe order into one top-k and reranks it, and reports a status for every
//! group and list, so a failure stays local and the caller resends only what failed (as
//! Quickwit's leaf search answers per split). A deadline bounds the reads and the scan.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use clipedge_format::{FormatError, GroupBlob, Hit, ListView, RerankKind};
use clipedge_linalg::dot::dots_with_rows;
use clipedge_linalg::{prefetch, TopK};
use clipedge_protocol::{
    GroupResult, ListResult, ScanResponse, ScanStats, ScanStatus, ScanTargets,
};
use clipedge_storage::{ByteLru, ObjectSource, SourceError, StorageError};
use futures::stream::{self, StreamExt};

use crate::reader::{IndexReader, SearchStats};
use crate::route::{self, ProbedList};
use crate::scan::{self, QueryTables};
use crate::IndexError;

/// What the leaf scans.
#[derive(Debug, Clone, Copy)]
pub enum LeafTargets<'a> {
    /// Read these groups' blobs, rank their fine lists by `<q, c_list>` and scan the best
    /// `nprobe`.
    Groups { group_ids: &'a [u32], nprobe: usize },
    /// Scan these lists in this order.
    Lists { list_ids: &'a [u32] },
}

impl<'a> LeafTargets<'a> {
    /// The targets of a scan request (the wire form of the same choice).
    pub fn from_scan(targets: &'a ScanTargets) -> LeafTargets<'a> {
        match targets {
            ScanTargets::Groups { group_ids, nprobe } => LeafTargets::Groups {
                group_ids,
                nprobe: *nprobe as usize,
            },
            ScanTargets::Lists { list_ids } => LeafTargets::Lists { list_ids },
        }
    }
}

/// How the leaf reads group blobs and lists that are not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// One coalesced read for the groups and one per shard for the lists, all at once: the
    /// fewest GETs, for a process that holds the whole index.
    Coalesced,
    /// One range GET per group and per list, at most `concurrency` at a time: each read
    /// succeeds, fails or runs past the deadline on its own (the scanner's plan).
    OneByOne { concurrency: usize },
}

/// One leaf search.
#[derive(Debug, Clone, Copy)]
pub struct LeafRequest<'a> {
    pub query: &'a [f32],
    pub targets: LeafTargets<'a>,
    /// Hits wanted back.
    pub k: usize,
    /// Candidates reranked exactly = `k * rerank`; 0 returns PQ scores.
    pub rerank: usize,
    /// Groups and lists not read by then are `TimedOut`, and so are lists not scanned by then.
    pub deadline: Option<Instant>,
    pub reads: ReadPlan,
    /// Scan lists on the rayon pool (only without a deadline, which is checked between lists).
    pub parallel: bool,
}

/// What one leaf search found.
#[derive(Debug)]
pub struct LeafResponse {
    /// One per requested group, in request order (empty for list targets).
    pub groups: Vec<GroupResult>,
    /// Lists that failed with their group first, then one per list chosen or named, in scan
    /// order.
    pub lists: Vec<ListResult>,
    /// The best `k` over the lists scanned, best first.
    pub hits: Vec<Hit>,
    /// Each hit's catalog record (JSON) from its list, aligned with `hits`, when the lists
    /// carry records; empty otherwise.
    pub records: Vec<String>,
    pub stats: SearchStats,
    /// The first group or list that failed for a reason other than the deadline, as an error:
    /// what a caller that needs every list answers with.
    pub first_error: Option<IndexError>,
}

impl LeafResponse {
    /// The scanner protocol's answer carrying this leaf search: what the scanner Lambda sends
    /// and what `clipedge serve`'s in-process leaf hands its root.
    pub fn into_scan_response(self, request_id: String, generation: String) -> ScanResponse {
        let stats = self.stats;
        ScanResponse {
            request_id,
            generation,
            groups: self.groups,
            lists: self.lists,
            candidates: self.hits,
            records: self.records,
            stats: ScanStats {
                gets: stats.gets,
                bytes_read: stats.bytes_read,
                list_cache_hits: stats.list_cache_hits as u32,
                lists_scanned: stats.lists_scanned as u32,
                codes_scanned: stats.codes_scanned,
                generation_cached: true,
                fetch_ms: (stats.route_us + stats.fetch_us) as f32 / 1000.0,
                scan_ms: stats.scan_us as f32 / 1000.0,
                rerank_ms: stats.rerank_us as f32 / 1000.0,
                total_ms: 0.0,
            },
        }
    }
}

/// Records returned with the best hits at most: a page shows at most 1,000 results, and the
/// rest of a deep candidate list (up to 100,000) would not fit the protocol's 4 MiB answer.
const MAX_RECORDS_RETURNED: usize = 1024;
/// ... and at most this many record bytes (records are ~100 bytes; a few are much longer).
const MAX_RECORD_BYTES_RETURNED: usize = 1 << 20;

/// The stored catalog record of each hit, read from its list at the hit's row (JSON without
/// the CRC-32 the list's own checksum already covers), or nothing when no scanned list carries
/// records: the front then shows the hits without a catalog read. Past the caps, and for a hit
/// whose list has no records, the entry is empty and the front reads that record from the
/// catalog.
fn hit_records(located: &[(Hit, usize, usize)], lists: &[(ListView<'_>, f32)]) -> Vec<String> {
    if !lists.iter().any(|(view, _)| view.has_records()) {
        return Vec::new();
    }
    let mut budget = MAX_RECORD_BYTES_RETURNED;
    located
        .iter()
        .enumerate()
        .map(|(rank, (_, slot, row))| {
            if rank >= MAX_RECORDS_RETURNED {
                return String::new();
            }
            let json = lists[*slot]
                .0
                .record(*row)
                .and_then(|stored| stored.len().checked_sub(4).map(|len| &stored[..len]))
                .and_then(|json| std::str::from_utf8(json).ok())
                .filter(|json| json.len() <= budget)
                .unwrap_or_default();
            budget -= json.len();
            json.to_string()
        })
        .collect()
}

/// Verified list bytes kept across searches, bounded in bytes. One cache can serve several
/// readers (the scanner shares one across every generation it holds open): entries are keyed
/// by index root and generation, so a new generation never sees an old one's lists.
#[derive(Clone)]
pub struct ListCache {
    lists: Arc<Mutex<ByteLru<ListKey, Bytes>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListKey {
    generation: Arc<str>,
    list_id: u32,
}

impl ListCache {
    pub fn new(capacity_bytes: u64) -> ListCache {
        ListCache {
            lists: Arc::new(Mutex::new(ByteLru::new(capacity_bytes))),
        }
    }

    /// Bytes of lists held.
    pub fn used_bytes(&self) -> u64 {
        self.lists.lock().expect("list cache lock").used_bytes()
    }

    fn get(&self, generation: &Arc<str>, list_id: u32) -> Option<Bytes> {
        let key = ListKey {
            generation: generation.clone(),
            list_id,
        };
        self.lists.lock().expect("list cache lock").get(&key)
    }

    fn insert(&self, generation: &Arc<str>, list_id: u32, bytes: Bytes) {
        let key = ListKey {
            generation: generation.clone(),
            list_id,
        };
        let length = bytes.len() as u64;
        self.lists
            .lock()
            .expect("list cache lock")
            .insert(key, bytes, length);
    }
}

pub use clipedge_io::error_chain;

/// A read failure of one group or list as its status.
fn source_status(error: &SourceError) -> ScanStatus {
    match error {
        SourceError::NotFound { .. } => ScanStatus::Missing,
        SourceError::Range { .. } => ScanStatus::Corrupt,
        _ => ScanStatus::Unavailable,
    }
}

fn index_status(error: &IndexError) -> ScanStatus {
    match error {
        IndexError::Source(source_error) => source_status(source_error),
        IndexError::Storage(StorageError::NotFound { .. }) => ScanStatus::Missing,
        IndexError::Storage(StorageError::Range { .. }) => ScanStatus::Corrupt,
        IndexError::Storage(_) => ScanStatus::Unavailable,
        _ => ScanStatus::Corrupt,
    }
}

/// Why a group or a list could not be used.
#[derive(Debug, Clone)]
struct Failure {
    status: ScanStatus,
    detail: String,
}

impl Failure {
    fn timed_out(detail: String) -> Failure {
        Failure {
            status: ScanStatus::TimedOut,
            detail,
        }
    }
}

/// A group blob with `<query, c_list>` of each of its lists.
type GroupWithBiases = (Arc<GroupBlob>, Vec<f32>);

/// A list's bytes, verified, and whether they came from the cache.
struct VerifiedList {
    bytes: Bytes,
    cached: bool,
}

/// The counters and the first error, threaded through one leaf search.
#[derive(Default)]
struct LeafState {
    stats: SearchStats,
    first_error: Option<IndexError>,
}

impl LeafState {
    /// Records `error` (kept if it is the first) and returns its failure.
    fn fail(&mut self, status: ScanStatus, detail: String, error: IndexError) -> Failure {
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
        Failure { status, detail }
    }

    fn fail_index(&mut self, error: IndexError) -> Failure {
        let status = index_status(&error);
        let detail = error_chain(&error);
        self.fail(status, detail, error)
    }
}

/// `future`'s output, or `None` when the deadline passes first.
async fn before<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), future).await.ok(),
        None => Some(future.await),
    }
}

/// Ids must exist in the generation and appear once: anything else is a caller's bug.
fn check_ids(kind: &str, ids: &[u32], count: u64) -> Result<(), IndexError> {
    if let Some(id) = ids.iter().find(|id| **id as u64 >= count) {
        return Err(IndexError::InvalidParams {
            reason: format!("{kind} {id} does not exist: the generation has {count} {kind}s"),
        });
    }
    let mut sorted_ids = ids.to_vec();
    sorted_ids.sort_unstable();
    if let Some(pair) = sorted_ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(IndexError::InvalidParams {
            reason: format!("{kind} {} is named twice", pair[0]),
        });
    }
    Ok(())
}

impl IndexReader {
    /// Scans `request.targets` of this generation. Only a bad request is an error (query
    /// dimension, ids outside the generation or named twice); a group or list that cannot be
    /// read or verified, or is not done by the deadline, gets its status and the rest is still
    /// scanned. Hits are bit for bit those of the same lists scanned in the same order by any
    /// other caller of the leaf.
    pub async fn leaf_search(&self, request: &LeafRequest<'_>) -> Result<LeafResponse, IndexError> {
        let dim = self.generation.manifest.dim as usize;
        if request.query.len() != dim {
            return Err(IndexError::InvalidQuery {
                reason: format!(
                    "query has dimension {}, index has {dim}",
                    request.query.len()
                ),
            });
        }
        match request.targets {
            LeafTargets::Groups { group_ids, .. } => {
                check_ids("group", group_ids, self.generation.routing.ngroups() as u64)?
            }
            LeafTargets::Lists { list_ids } => {
                check_ids("list", list_ids, self.generation.routing.nlist as u64)?
            }
        }
        let mut state = LeafState::default();
        let started = Instant::now();
        let (groups, probed, mut lists) = self.resolve_targets(request, &mut state).await;
        let routed = Instant::now();
        let fetched = self
            .fetch_lists(&probed, request.deadline, request.reads, &mut state)
            .await;

        // Lists that arrived verified, in probe order: a list's position among them is its
        // candidate slot, so ties break the same way for every caller.
        let mut scannable: Vec<(usize, ListView<'_>, f32)> = Vec::with_capacity(probed.len());
        let mut outcomes: Vec<ListResult> = Vec::with_capacity(probed.len());
        for (index, (probe, result)) in probed.iter().zip(&fetched).enumerate() {
            // The header check reads each list's first line: fetch the next one's meanwhile.
            if let Some(Ok(next)) = fetched.get(index + 1) {
                prefetch::read(&next.bytes, 1);
            }
            let (status, cached, detail) = match result {
                Ok(list) => match ListView::parse_verified(&list.bytes, &self.expectation(probe)) {
                    Ok(view) => {
                        scannable.push((outcomes.len(), view, probe.bias));
                        (ScanStatus::Ok, list.cached, String::new())
                    }
                    Err(error) => {
                        let detail = error.to_string();
                        let failure = state.fail(ScanStatus::Corrupt, detail, error.into());
                        (failure.status, list.cached, failure.detail)
                    }
                },
                Err(failure) => (failure.status, false, failure.detail.clone()),
            };
            outcomes.push(ListResult {
                list_id: probe.list_id,
                status,
                cached,
                detail,
            });
        }

        // Verifying the views is part of fetching: the scan time is the scan alone.
        let fetch_finished = Instant::now();
        let vector_count = usize::try_from(self.generation.manifest.count)
            .unwrap_or(usize::MAX)
            .max(1);
        let k = request.k.min(vector_count);
        let rerank = request.rerank > 0 && self.generation.manifest.rerank != RerankKind::None;
        let candidate_count = if rerank {
            k.saturating_mul(request.rerank).min(vector_count)
        } else {
            k
        };
        let tables = QueryTables::new(&self.pq, request.query);
        let mut scanned_lists: Vec<(ListView<'_>, f32)> = Vec::with_capacity(scannable.len());
        let candidates = match request.deadline {
            None => {
                for (_, view, bias) in scannable {
                    scanned_lists.push((view, bias));
                }
                scan::scan_lists(&tables, &scanned_lists, candidate_count, request.parallel)
            }
            Some(deadline) => {
                let mut top = TopK::new(candidate_count);
                let mut remaining = scannable.into_iter().peekable();
                while let Some((outcome_index, view, bias)) = remaining.next() {
                    if let Some((_, next, _)) = remaining.peek() {
                        prefetch::read(next.codes(), 4);
                    }
                    // Checked between lists: one list's scan is short.
                    if Instant::now() >= deadline {
                        let outcome = &mut outcomes[outcome_index];
                        outcome.status = ScanStatus::TimedOut;
                        outcome.detail = "not scanned before the deadline".to_string();
                        continue;
                    }
                    let slot = scanned_lists.len();
                    scan::scan_list(&tables, &view, bias, slot, &mut top);
                    scanned_lists.push((view, bias));
                }
                top.into_sorted()
            }
        };
        for (view, _) in &scanned_lists {
            state.stats.codes_scanned += view.count as u64;
        }
        state.stats.lists_scanned = scanned_lists.len();
        state.stats.candidates = candidates.len();
        let scan_finished = Instant::now();

        let located = scan::finish(request.query, &scanned_lists, &candidates, k, rerank);
        let records = hit_records(&located, &scanned_lists);
        let hits = located.into_iter().map(|(hit, _, _)| hit).collect();
        let finished = Instant::now();
        state.stats.route_us = (routed - started).as_micros() as u64;
        state.stats.fetch_us = (fetch_finished - routed).as_micros() as u64;
        state.stats.scan_us = (scan_finished - fetch_finished).as_micros() as u64;
        state.stats.rerank_us = (finished - scan_finished).as_micros() as u64;
        lists.extend(outcomes);
        Ok(LeafResponse {
            groups,
            lists,
            hits,
            records,
            stats: state.stats,
            first_error: state.first_error,
        })
    }

    /// The group statuses, the lists to scan (best first for groups, in request order for
    /// lists) and the lists that failed with their group.
    async fn resolve_targets(
        &self,
        request: &LeafRequest<'_>,
        state: &mut LeafState,
    ) -> (Vec<GroupResult>, Vec<ProbedList>, Vec<ListResult>) {
        match request.targets {
            LeafTargets::Groups { group_ids, nprobe } => {
                let loaded = self.read_groups(group_ids, request, state).await;
                let mut blobs = Vec::with_capacity(loaded.len());
                let mut results = Vec::with_capacity(loaded.len());
                for (group_id, outcome) in group_ids.iter().zip(loaded) {
                    let (status, detail) = match outcome {
                        Ok(blob) => {
                            blobs.push(blob);
                            (ScanStatus::Ok, String::new())
                        }
                        Err(failure) => (failure.status, failure.detail),
                    };
                    results.push(GroupResult {
                        group_id: *group_id,
                        status,
                        detail,
                    });
                }
                let nprobe = nprobe.min(self.generation.routing.nlist as usize);
                let probed = route::rank_lists(request.query, &blobs, nprobe);
                (results, probed, Vec::new())
            }
            LeafTargets::Lists { list_ids } => {
                let mut group_ids: Vec<u32> = Vec::new();
                for list_id in list_ids {
                    let group_id = self.group_of_list(*list_id);
                    if !group_ids.contains(&group_id) {
                        group_ids.push(group_id);
                    }
                }
                let loaded = self.read_groups(&group_ids, request, state).await;
                let mut biases_by_group: BTreeMap<u32, Result<GroupWithBiases, Failure>> =
                    BTreeMap::new();
                for (group_id, outcome) in group_ids.iter().zip(loaded) {
                    // Biases computed exactly as `route::rank_lists` does, row by row of the group.
                    let with_biases = outcome.map(|blob| {
                        let mut biases = Vec::with_capacity(blob.lists.len());
                        dots_with_rows(request.query, &blob.centroids, blob.dim, &mut biases);
                        (blob, biases)
                    });
                    biases_by_group.insert(*group_id, with_biases);
                }
                let mut probed = Vec::with_capacity(list_ids.len());
                let mut failed = Vec::new();
                for list_id in list_ids {
                    let group_id = self.group_of_list(*list_id);
                    let (status, detail) = match &biases_by_group[&group_id] {
                        Err(failure) => (failure.status, failure.detail.clone()),
                        Ok((blob, biases)) => {
                            let local = (*list_id - blob.first_list) as usize;
                            if let (Some(location), Some(bias)) =
                                (blob.lists.get(local), biases.get(local))
                            {
                                probed.push(ProbedList {
                                    list_id: *list_id,
                                    location: *location,
                                    bias: *bias,
                                });
                                continue;
                            }
                            let reason = format!("group {group_id} does not hold list {list_id}");
                            let error = IndexError::Format(FormatError::Invalid {
                                what: "routing.bin".to_string(),
                                reason: reason.clone(),
                            });
                            let failure = state.fail(ScanStatus::Corrupt, reason, error);
                            (failure.status, failure.detail)
                        }
                    };
                    failed.push(ListResult {
                        list_id: *list_id,
                        status,
                        cached: false,
                        detail,
                    });
                }
                (Vec::new(), probed, failed)
            }
        }
    }

    /// The group holding `list_id` (an id already checked against the generation).
    fn group_of_list(&self, list_id: u32) -> u32 {
        let group = self.generation.routing.group_of_list(list_id);
        debug_assert!(group.is_some(), "list {list_id} outside the routing table");
        group.unwrap_or(0) as u32
    }

    /// The blobs of `group_ids`, each with its own outcome, in the given order.
    async fn read_groups(
        &self,
        group_ids: &[u32],
        request: &LeafRequest<'_>,
        state: &mut LeafState,
    ) -> Vec<Result<Arc<GroupBlob>, Failure>> {
        let concurrency = match request.reads {
            ReadPlan::Coalesced => {
                let loaded = before(
                    request.deadline,
                    self.load_groups(group_ids, &mut state.stats),
                )
                .await;
                return match loaded {
                    Some(Ok(blobs)) => blobs.into_iter().map(Ok).collect(),
                    Some(Err(error)) => {
                        let failure = state.fail_index(error);
                        group_ids.iter().map(|_| Err(failure.clone())).collect()
                    }
                    None => group_ids
                        .iter()
                        .map(|group_id| {
                            Err(Failure::timed_out(format!(
                                "group {group_id} not read before the deadline"
                            )))
                        })
                        .collect(),
                };
            }
            ReadPlan::OneByOne { concurrency } => concurrency.max(1),
        };
        // Owned ids: a closure over `&u32` makes the future fail a runtime's `Send` bound
        // (a higher-ranked lifetime the compiler cannot prove general enough).
        let deadline = request.deadline;
        let loads: Vec<_> = group_ids
            .iter()
            .copied()
            .map(|group_id| async move {
                let mut group_stats = SearchStats::default();
                let loaded =
                    before(deadline, self.load_groups(&[group_id], &mut group_stats)).await;
                (group_id, loaded, group_stats)
            })
            .collect();
        let results: Vec<_> = stream::iter(loads).buffered(concurrency).collect().await;
        let mut outcomes = Vec::with_capacity(results.len());
        for (group_id, loaded, group_stats) in results {
            state.stats.gets += group_stats.gets;
            state.stats.bytes_read += group_stats.bytes_read;
            let outcome = match loaded {
                None => Err(Failure::timed_out(format!(
                    "group {group_id} not read before the deadline"
                ))),
                Some(Err(error)) => Err(state.fail_index(error)),
                Some(Ok(mut blobs)) => match blobs.pop() {
                    Some(blob) => Ok(blob),
                    None => Err(Failure {
                        status: ScanStatus::Corrupt,
                        detail: format!("group {group_id} not returned"),
                    }),
                },
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Verified bytes of each probed list: from the list cache, or read as `plan` says and
    /// verified in full once, on arrival (the cache holds only verified lists). Lists still
    /// being read at the deadline are `TimedOut`.
    async fn fetch_lists(
        &self,
        probed: &[ProbedList],
        deadline: Option<Instant>,
        plan: ReadPlan,
        state: &mut LeafState,
    ) -> Vec<Result<VerifiedList, Failure>> {
        let mut fetched: Vec<Option<Result<VerifiedList, Failure>>> =
            Vec::with_capacity(probed.len());
        for probe in probed {
            let cached = self.list_cache.get(&self.cache_key, probe.list_id);
            fetched.push(cached.map(|bytes| {
                Ok(VerifiedList {
                    bytes,
                    cached: true,
                })
            }));
        }
        state.stats.list_cache_hits = fetched.iter().filter(|slot| slot.is_some()).count();

        // What to read: slots grouped into reads of one shard each.
        let mut units: Vec<(u32, Vec<usize>)> = Vec::new();
        match plan {
            ReadPlan::Coalesced => {
                let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                for (slot, probe) in probed.iter().enumerate() {
                    if fetched[slot].is_none() {
                        by_shard.entry(probe.location.shard).or_default().push(slot);
                    }
                }
                units.extend(by_shard);
            }
            ReadPlan::OneByOne { .. } => {
                for (slot, probe) in probed.iter().enumerate() {
                    if fetched[slot].is_none() {
                        units.push((probe.location.shard, vec![slot]));
                    }
                }
            }
        }
        let concurrency = match plan {
            ReadPlan::Coalesced => units.len().max(1),
            ReadPlan::OneByOne { concurrency } => concurrency.max(1),
        };
        let mut reads = Vec::with_capacity(units.len());
        for (shard, slots) in units {
            let Some(shard_ref) = self.generation.manifest.shards.get(shard as usize) else {
                for slot in slots {
                    let probe = &probed[slot];
                    let reason = format!(
                        "list {} names shard {shard}, the manifest has {}",
                        probe.list_id,
                        self.generation.manifest.shards.len()
                    );
                    let error = IndexError::Format(FormatError::Invalid {
                        what: "group blob".to_string(),
                        reason: reason.clone(),
                    });
                    fetched[slot] = Some(Err(state.fail(ScanStatus::Corrupt, reason, error)));
                }
                continue;
            };
            let object = self.object(&shard_ref.path);
            let ranges: Vec<_> = slots
                .iter()
                .map(|slot| {
                    let location = probed[*slot].location;
                    location.offset..location.offset + location.length as u64
                })
                .collect();
            reads.push(async move {
                let read = self.storage.get_ranges(&object, &ranges).await;
                (slots, read)
            });
        }
        let mut reads = pin!(stream::iter(reads).buffer_unordered(concurrency));
        while let Some(Some((slots, read))) = before(deadline, reads.next()).await {
            let read = match read {
                Ok(read) => read,
                Err(error) => {
                    let status = source_status(&error);
                    let detail = error_chain(&error);
                    let failure = state.fail(status, detail, IndexError::Source(error));
                    for slot in slots {
                        fetched[slot] = Some(Err(failure.clone()));
                    }
                    continue;
                }
            };
            state.stats.gets += read.requests as u64;
            state.stats.bytes_read += read.bytes;
            for (slot, bytes) in slots.into_iter().zip(read.parts) {
                let probe = &probed[slot];
                let outcome = match ListView::parse(&bytes, &self.expectation(probe)) {
                    Ok(_) => {
                        self.list_cache
                            .insert(&self.cache_key, probe.list_id, bytes.clone());
                        Ok(VerifiedList {
                            bytes,
                            cached: false,
                        })
                    }
                    Err(error) => {
                        let detail = error.to_string();
                        Err(state.fail(ScanStatus::Corrupt, detail, error.into()))
                    }
                };
                fetched[slot] = Some(outcome);
            }
        }
        fetched
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    Err(Failure::timed_out(
                        "not read before the deadline".to_string(),
                    ))
                })
            })
            .collect()
    }
}
