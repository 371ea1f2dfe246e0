//! One scanner invocation, from request bytes to response bytes, without the Lambda runtime.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clipedge_format::{generation_path, GroupBlob, ListView, RerankKind};
use clipedge_index::route::{self, ProbedList};
use clipedge_index::scan::{self, QueryTables};
use clipedge_index::{IndexError, IndexReader, OpenOptions, SearchStats};
use clipedge_linalg::dot::dots_with_rows;
use clipedge_linalg::TopK;
use clipedge_protocol::{
    decode_request, encode_response, verify, Encoding, GroupResult, ListResult, ProtocolError,
    ScanRequest, ScanResponse, ScanStats, ScanStatus, ScanTargets, MAX_REQUEST_BYTES,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use clipedge_storage::{ByteLru, Storage, StorageError};
use futures::stream::{self, StreamExt};
use http::HeaderMap;
use lru::LruCache;
use thiserror::Error;
use tracing::{info, warn};

use crate::config::{Auth, ScannerConfig};

/// `groups.bin` up to this size is read whole when a generation is opened (one GET); larger
/// ones are read group by group as requests name them.
const PRELOAD_GROUPS_MAX_BYTES: u64 = 8 << 20;

/// An HTTP answer: status, content type and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON error body: `{"error": "...", "status": N}`.
    pub fn error(status: u16, message: &str) -> Reply {
        let body = serde_json::json!({ "error": message, "status": status });
        Reply {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        }
    }

    /// The error message of an error reply.
    pub fn error_message(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        value.get("error")?.as_str().map(str::to_string)
    }
}

/// Failures that end a whole request (per-list failures are statuses in the response).
#[derive(Debug, Error)]
enum RequestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Unavailable(String),
}

impl RequestError {
    fn status(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::NotFound(_) => 404,
            RequestError::Corrupt(_) => 500,
            RequestError::Unavailable(_) => 503,
        }
    }

    fn from_index(error: IndexError) -> RequestError {
        let message = error_chain(&error);
        match error {
            IndexError::NoIndex { .. } | IndexError::Storage(StorageError::NotFound { .. }) => {
                RequestError::NotFound(message)
            }
            IndexError::Storage(StorageError::InvalidLocation { .. })
            | IndexError::InvalidQuery { .. }
            | IndexError::InvalidParams { .. } => RequestError::BadRequest(message),
            IndexError::Storage(StorageError::Range { .. })
            | IndexError::Format(_)
            | IndexError::Codebooks { .. } => RequestError::Corrupt(message),
            IndexError::Storage(_) => RequestError::Unavailable(message),
        }
    }
}

/// The error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A per-list (or per-group) storage failure as a status.
fn storage_status(error: &StorageError) -> ScanStatus {
    match error {
        StorageError::NotFound { .. } => ScanStatus::Missing,
        StorageError::Range { .. } => ScanStatus::Corrupt,
        _ => ScanStatus::Unavailable,
    }
}

fn index_status(error: &IndexError) -> ScanStatus {
    match error {
        IndexError::Storage(storage_error) => storage_status(storage_error),
        _ => ScanStatus::Corrupt,
    }
}

/// A cached list is valid for one index root and generation only: a new generation never
/// sees the lists of an old one, even where list ids coincide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListKey {
    index: String,
    generation: String,
    list_id: u32,
}

/// A group or list that could not be read, and why.
type Failure = (ScanStatus, String);

/// A group blob with `<query, centroid>` of each of its lists.
type GroupWithBiases = (Arc<GroupBlob>, Vec<f32>);

/// Group statuses, the lists to scan, and lists that failed with their group.
type ResolvedTargets = (Vec<GroupResult>, Vec<ProbedList>, Vec<ListResult>);

/// What happened to one list before scanning.
enum Fetched {
    Verified { bytes: Bytes, cached: bool },
    Failed { status: ScanStatus, detail: String },
}

/// The scanner state kept across warm invocations: open generations and verified lists.
pub struct Scanner {
    config: ScannerConfig,
    lists: Mutex<ByteLru<ListKey, Bytes>>,
    generations: Mutex<LruCache<(String, String), Arc<IndexReader>>>,
}

impl Scanner {
    pub fn new(config: ScannerConfig) -> Scanner {
        let open_generations =
            NonZeroUsize::new(config.open_generations).unwrap_or(NonZeroUsize::MIN);
        Scanner {
            lists: Mutex::new(ByteLru::new(config.list_cache_bytes)),
            generations: Mutex::new(LruCache::new(open_generations)),
            config,
        }
    }

    pub fn config(&self) -> &ScannerConfig {
        &self.config
    }

    /// Bytes of verified lists held in the cache.
    pub fn cached_list_bytes(&self) -> u64 {
        self.lists.lock().expect("list cache lock").used_bytes()
    }

    /// Handles one request: authentication first (no I/O for an unauthenticated request),
    /// then decoding, then the scan. Never panics on bad input; every failure is a status
    /// with a reason.
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        self.handle_at(headers, body, now_ms).await
    }

    /// [`Scanner::handle`] with the clock given (unix milliseconds).
    pub async fn handle_at(&self, headers: &HeaderMap, body: &[u8], now_ms: u64) -> Reply {
        let arrived = Instant::now();
        if body.len() > MAX_REQUEST_BYTES {
            return Reply::error(
                413,
                &format!(
                    "request body is {} bytes, over the limit of {MAX_REQUEST_BYTES}",
                    body.len()
                ),
            );
        }
        if let Auth::Hmac {
            secret,
            max_skew_ms,
        } = &self.config.auth
        {
            let verified = verify(
                secret,
                header(headers, TIMESTAMP_HEADER),
                header(headers, SIGNATURE_HEADER),
                body,
                now_ms,
                *max_skew_ms,
            );
            if let Err(error) = verified {
                warn!(%error, "refused a scan request");
                let status = if error.is_unauthenticated() { 401 } else { 403 };
                return Reply::error(status, &error.to_string());
            }
        }
        let encoding = Encoding::from_content_type(header(headers, "content-type"));
        let request = match decode_request(body, encoding) {
            Ok(request) => request,
            Err(error) => {
                let status = match error {
                    ProtocolError::TooLarge { .. } => 413,
                    _ => 400,
                };
                warn!(%error, "refused a malformed scan request");
                return Reply::error(status, &error.to_string());
            }
        };
        if !self.config.allows_index(&request.index) {
            let message = format!("index {} is not in the scanner's allowlist", request.index);
            return Reply::error(403, &message);
        }
        let deadline = arrived + Duration::from_millis(request.deadline_ms as u64);
        let mut response = match self.scan(&request, deadline).await {
            Ok(response) => response,
            Err(error) => {
                warn!(request_id = request.request_id, %error, "scan request failed");
                return Reply::error(error.status(), &error.to_string());
            }
        };
        response.stats.total_ms = arrived.elapsed().as_secs_f32() * 1000.0;
        info!(
            request_id = request.request_id,
            lists = response.lists.len(),
            failed = response.failed_lists().len(),
            candidates = response.candidates.len(),
            gets = response.stats.gets,
            cache_hits = response.stats.list_cache_hits,
            total_ms = response.stats.total_ms,
            "scanned"
        );
        match encode_response(&response, encoding) {
            Ok(body) => Reply {
                status: 200,
                content_type: encoding.content_type(),
                body,
            },
            Err(error) => Reply::error(500, &error.to_string()),
        }
    }

    async fn scan(
        &self,
        request: &ScanRequest,
        deadline: Instant,
    ) -> Result<ScanResponse, RequestError> {
        let mut stats = ScanStats::default();
        let fetch_started = Instant::now();
        let opened = tokio::time::timeout_at(
            deadline.into(),
            self.open_generation(&request.index, &request.generation, &mut stats),
        )
        .await;
        let Ok(opened) = opened else {
            return Ok(all_timed_out(request, stats));
        };
        let reader = opened?;
        let dim = reader.manifest().dim as usize;
        if request.query.len() != dim {
            return Err(RequestError::BadRequest(format!(
                "query has dimension {}, index has {dim}",
                request.query.len()
            )));
        }

        let (groups, probed, mut list_results) = self
            .resolve_targets(&reader, request, deadline, &mut stats)
            .await?;
        let fetched = self
            .fetch_lists(&reader, request, &probed, deadline, &mut stats)
            .await;
        stats.fetch_ms = fetch_started.elapsed().as_secs_f32() * 1000.0;

        // Lists that arrived verified, in probe order: their position is the candidate slot,
        // exactly as in `IndexReader::search`, so ties break the same way.
        let mut scannable: Vec<(usize, ListView<'_>, f32)> = Vec::with_capacity(probed.len());
        let mut outcomes: Vec<ListResult> = Vec::with_capacity(probed.len());
        for (probe, fetched) in probed.iter().zip(&fetched) {
            let (status, cached, detail) = match fetched {
                Fetched::Verified { bytes, cached } => {
                    match ListView::parse_verified(bytes, &reader.expectation(probe)) {
                        Ok(view) => {
                            scannable.push((outcomes.len(), view, probe.bias));
                            (ScanStatus::Ok, *cached, String::new())
                        }
                        Err(error) => (ScanStatus::Corrupt, *cached, error.to_string()),
                    }
                }
                Fetched::Failed { status, detail } => (*status, false, detail.clone()),
            };
            outcomes.push(ListResult {
                list_id: probe.list_id,
                status,
                cached,
                detail,
            });
        }

        let vector_count = usize::try_from(reader.manifest().count)
            .unwrap_or(usize::MAX)
            .max(1);
        let k = (request.k as usize).min(vector_count);
        let rerank = request.rerank > 0 && reader.manifest().rerank != RerankKind::None;
        let candidate_count = if rerank {
            k.saturating_mul(request.rerank as usize).min(vector_count)
        } else {
            k
        };
        let scan_started = Instant::now();
        let tables = QueryTables::new(reader.pq(), &request.query);
        let mut top = TopK::new(candidate_count);
        let mut lists: Vec<(ListView<'_>, f32)> = Vec::with_capacity(scannable.len());
        for (outcome_index, view, bias) in scannable {
            // The deadline is checked between lists: one list's scan is short.
            if Instant::now() >= deadline {
                let outcome = &mut outcomes[outcome_index];
                outcome.status = ScanStatus::TimedOut;
                outcome.detail = "not scanned before the deadline".to_string();
                continue;
            }
            scan::scan_list(&tables, &view, bias, lists.len(), &mut top);
            stats.codes_scanned += view.count as u64;
            lists.push((view, bias));
        }
        stats.lists_scanned = lists.len() as u32;
        let candidates = top.into_sorted();
        let rerank_started = Instant::now();
        stats.scan_ms = (rerank_started - scan_started).as_secs_f32() * 1000.0;
        let hits = scan::finish(&request.query, &lists, &candidates, k, rerank);
        stats.rerank_ms = rerank_started.elapsed().as_secs_f32() * 1000.0;

        list_results.extend(outcomes);
        Ok(ScanResponse {
            request_id: request.request_id.clone(),
            generation: request.generation.clone(),
            groups,
            lists: list_results,
            candidates: hits,
            stats,
        })
    }

    async fn open_generation(
        &self,
        index: &str,
        generation: &str,
        stats: &mut ScanStats,
    ) -> Result<Arc<IndexReader>, RequestError> {
        let key = (index.to_string(), generation.to_string());
        let cached = self
            .generations
            .lock()
            .expect("generation cache lock")
            .get(&key)
            .cloned();
        if let Some(reader) = cached {
            stats.generation_cached = true;
            return Ok(reader);
        }
        clipedge_format::validate_generation_name(generation)
            .map_err(|error| RequestError::BadRequest(error.to_string()))?;
        let storage = Storage::open_with(index, self.config.storage.clone())
            .map_err(|error| RequestError::BadRequest(error.to_string()))?;
        let options = OpenOptions {
            // Lists are cached here, keyed by generation, not inside the reader.
            list_cache_bytes: 0,
            preload_groups_max_bytes: PRELOAD_GROUPS_MAX_BYTES,
            group_cache_bytes: self.config.group_cache_bytes,
            generation: Some(generation.to_string()),
        };
        let opened = IndexReader::open(storage.clone(), options).await;
        let io = storage.stats().snapshot();
        stats.gets += io.gets;
        stats.bytes_read += io.bytes_read;
        let reader = Arc::new(opened.map_err(RequestError::from_index)?);
        info!(index, generation, "opened index generation");
        self.generations
            .lock()
            .expect("generation cache lock")
            .put(key, reader.clone());
        Ok(reader)
    }

    /// The lists to scan, best first (groups) or in request order (lists), with the group
    /// statuses and the lists that already failed because their group could not be read.
    async fn resolve_targets(
        &self,
        reader: &IndexReader,
        request: &ScanRequest,
        deadline: Instant,
        stats: &mut ScanStats,
    ) -> Result<ResolvedTargets, RequestError> {
        let routing = reader.routing();
        match &request.targets {
            ScanTargets::Groups { group_ids, nprobe } => {
                check_ids("group", group_ids, routing.ngroups() as u64)?;
                let loaded = self.load_groups(reader, group_ids, deadline, stats).await;
                let mut blobs = Vec::with_capacity(loaded.len());
                let mut results = Vec::with_capacity(loaded.len());
                for (group_id, outcome) in group_ids.iter().zip(loaded) {
                    let (status, detail) = match outcome {
                        Ok(blob) => {
                            blobs.push(blob);
                            (ScanStatus::Ok, String::new())
                        }
                        Err((status, detail)) => (status, detail),
                    };
                    results.push(GroupResult {
                        group_id: *group_id,
                        status,
                        detail,
                    });
                }
                let nprobe = (*nprobe as usize).min(routing.nlist as usize);
                let probed = route::rank_lists(&request.query, &blobs, nprobe);
                Ok((results, probed, Vec::new()))
            }
            ScanTargets::Lists { list_ids } => {
                check_ids("list", list_ids, routing.nlist as u64)?;
                // The group holding each list: groups cover 0..nlist in order.
                let group_of = |list_id: u32| {
                    routing
                        .groups
                        .partition_point(|entry| entry.first_list + entry.list_count <= list_id)
                        as u32
                };
                let mut group_ids: Vec<u32> = Vec::new();
                for list_id in list_ids {
                    let group_id = group_of(*list_id);
                    if !group_ids.contains(&group_id) {
                        group_ids.push(group_id);
                    }
                }
                let loaded = self.load_groups(reader, &group_ids, deadline, stats).await;
                let mut by_group: HashMap<u32, Result<GroupWithBiases, Failure>> = HashMap::new();
                for (group_id, outcome) in group_ids.iter().zip(loaded) {
                    // Biases computed exactly as `route::rank_lists` does, row by row of the group.
                    let with_biases = outcome.map(|blob| {
                        let mut biases = Vec::with_capacity(blob.lists.len());
                        dots_with_rows(&request.query, &blob.centroids, blob.dim, &mut biases);
                        (blob, biases)
                    });
                    by_group.insert(*group_id, with_biases);
                }
                let mut probed = Vec::with_capacity(list_ids.len());
                let mut failed = Vec::new();
                for list_id in list_ids {
                    let group_id = group_of(*list_id);
                    match &by_group[&group_id] {
                        Ok((blob, biases)) => {
                            let local = (*list_id - blob.first_list) as usize;
                            match (blob.lists.get(local), biases.get(local)) {
                                (Some(location), Some(bias)) => probed.push(ProbedList {
                                    list_id: *list_id,
                                    location: *location,
                                    bias: *bias,
                                }),
                                _ => failed.push(ListResult {
                                    list_id: *list_id,
                                    status: ScanStatus::Corrupt,
                                    cached: false,
                                    detail: format!(
                                        "group {group_id} does not hold list {list_id}"
                                    ),
                                }),
                            }
                        }
                        Err((status, detail)) => failed.push(ListResult {
                            list_id: *list_id,
                            status: *status,
                            cached: false,
                            detail: detail.clone(),
                        }),
                    }
                }
                Ok((Vec::new(), probed, failed))
            }
        }
    }

    /// Group blobs one by one (concurrently, bounded), so each group gets its own status.
    async fn load_groups(
        &self,
        reader: &IndexReader,
        group_ids: &[u32],
        deadline: Instant,
        stats: &mut ScanStats,
    ) -> Vec<Result<Arc<GroupBlob>, Failure>> {
        // Owned ids: a closure over `&u32` makes the future fail the runtime's `Send` bound
        // (a higher-ranked lifetime the compiler cannot prove general enough).
        let loads: Vec<_> = group_ids
            .iter()
            .copied()
            .map(|group_id| async move {
                let mut group_stats = SearchStats::default();
                let loaded = tokio::time::timeout_at(
                    deadline.into(),
                    reader.load_groups(&[group_id], &mut group_stats),
                )
                .await;
                let outcome = match loaded {
                    Err(_elapsed) => Err((
                        ScanStatus::TimedOut,
                        format!("group {group_id} not read before the deadline"),
                    )),
                    Ok(Err(error)) => Err((index_status(&error), error_chain(&error))),
                    Ok(Ok(mut blobs)) => match blobs.pop() {
                        Some(blob) => Ok(blob),
                        None => Err((
                            ScanStatus::Corrupt,
                            format!("group {group_id} not returned"),
                        )),
                    },
                };
                (outcome, group_stats)
            })
            .collect();
        let results: Vec<_> = stream::iter(loads)
            .buffered(self.config.fetch_concurrency)
            .collect()
            .await;
        let mut outcomes = Vec::with_capacity(results.len());
        for (outcome, group_stats) in results {
            stats.gets += group_stats.gets;
            stats.bytes_read += group_stats.bytes_read;
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Each probed list from the cache or with one range GET (concurrently, bounded), verified
    /// on arrival; lists still in flight at the deadline are reported timed out.
    async fn fetch_lists(
        &self,
        reader: &IndexReader,
        request: &ScanRequest,
        probed: &[ProbedList],
        deadline: Instant,
        stats: &mut ScanStats,
    ) -> Vec<Fetched> {
        let key = |list_id: u32| ListKey {
            index: request.index.clone(),
            generation: request.generation.clone(),
            list_id,
        };
        let mut fetched: Vec<Option<Fetched>> = Vec::with_capacity(probed.len());
        {
            let mut cache = self.lists.lock().expect("list cache lock");
            for probe in probed {
                fetched.push(
                    cache
                        .get(&key(probe.list_id))
                        .map(|bytes| Fetched::Verified {
                            bytes,
                            cached: true,
                        }),
                );
            }
        }
        stats.list_cache_hits = fetched.iter().filter(|slot| slot.is_some()).count() as u32;
        let missing: Vec<usize> = (0..probed.len())
            .filter(|slot| fetched[*slot].is_none())
            .collect();
        let manifest = reader.manifest();
        let fetches = stream::iter(missing.iter().copied())
            .map(|slot| {
                let probe = probed[slot];
                async move {
                    let Some(shard) = manifest.shards.get(probe.location.shard as usize) else {
                        let detail = format!(
                            "list {} names shard {}, the manifest has {}",
                            probe.list_id,
                            probe.location.shard,
                            manifest.shards.len()
                        );
                        return (slot, Err((ScanStatus::Corrupt, detail)), 0);
                    };
                    let object = generation_path(&manifest.generation, &shard.path);
                    let start = probe.location.offset;
                    let end = start + probe.location.length as u64;
                    match reader.storage().get_range(&object, start..end).await {
                        Ok(bytes) => {
                            let length = bytes.len() as u64;
                            // Full check once, on arrival: the cache holds only verified lists.
                            match ListView::parse(&bytes, &reader.expectation(&probe)) {
                                Ok(_) => (slot, Ok(bytes), length),
                                Err(error) => {
                                    (slot, Err((ScanStatus::Corrupt, error.to_string())), length)
                                }
                            }
                        }
                        Err(error) => (slot, Err((storage_status(&error), error_chain(&error))), 0),
                    }
                }
            })
            .buffer_unordered(self.config.fetch_concurrency);
        let mut fetches = pin!(fetches);
        loop {
            let next = tokio::time::timeout_at(deadline.into(), fetches.next()).await;
            let Ok(Some((slot, outcome, length))) = next else {
                break;
            };
            if length > 0 {
                stats.gets += 1;
                stats.bytes_read += length;
            }
            fetched[slot] = Some(match outcome {
                Ok(bytes) => {
                    self.lists.lock().expect("list cache lock").insert(
                        key(probed[slot].list_id),
                        bytes.clone(),
                        bytes.len() as u64,
                    );
                    Fetched::Verified {
                        bytes,
                        cached: false,
                    }
                }
                Err((status, detail)) => Fetched::Failed { status, detail },
            });
        }
        fetched
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| Fetched::Failed {
                    status: ScanStatus::TimedOut,
                    detail: "not read before the deadline".to_string(),
                })
            })
            .collect()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Ids must exist in the generation and appear once: anything else is a caller's bug.
fn check_ids(kind: &str, ids: &[u32], count: u64) -> Result<(), RequestError> {
    if let Some(id) = ids.iter().find(|id| **id as u64 >= count) {
        return Err(RequestError::BadRequest(format!(
            "{kind} {id} does not exist: the generation has {count} {kind}s"
        )));
    }
    let mut seen = ids.to_vec();
    seen.sort_unstable();
    if let Some(pair) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(RequestError::BadRequest(format!(
            "{kind} {} is named twice",
            pair[0]
        )));
    }
    Ok(())
}

/// The answer when the deadline passed before the generation was even open.
fn all_timed_out(request: &ScanRequest, stats: ScanStats) -> ScanResponse {
    let detail = "generation not opened before the deadline".to_string();
    let (groups, lists) = match &request.targets {
        ScanTargets::Groups { group_ids, .. } => (
            group_ids
                .iter()
                .map(|group_id| GroupResult {
                    group_id: *group_id,
                    status: ScanStatus::TimedOut,
                    detail: detail.clone(),
                })
                .collect(),
            Vec::new(),
        ),
        ScanTargets::Lists { list_ids } => (
            Vec::new(),
            list_ids
                .iter()
                .map(|list_id| ListResult {
                    list_id: *list_id,
                    status: ScanStatus::TimedOut,
                    cached: false,
                    detail: detail.clone(),
                })
                .collect(),
        ),
    };
    ScanResponse {
        request_id: request.request_id.clone(),
        generation: request.generation.clone(),
        groups,
        lists,
        candidates: Vec::new(),
        stats,
    }
}
