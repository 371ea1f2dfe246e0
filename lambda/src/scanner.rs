//! One scanner invocation, from request bytes to response bytes, without the Lambda runtime:
//! size and signature checks, decoding, the generation (kept open across warm invocations),
//! then `IndexReader::leaf_search` (the same leaf `IndexReader::search` ends in) and encoding.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clipedge_index::{IndexReader, LeafRequest, LeafTargets, ListCache, OpenOptions, ReadPlan};
use clipedge_protocol::{
    decode_request, encode_response, verify_any, Encoding, GroupResult, ListResult, ProtocolError,
    ScanRequest, ScanResponse, ScanStats, ScanStatus, ScanTargets, MAX_REQUEST_BYTES,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use clipedge_storage::Storage;
use http::HeaderMap;
use lru::LruCache;
use tracing::{info, warn};

use crate::config::{Auth, ScannerConfig};
use crate::reply::{Reply, RequestError};

/// `groups.bin` up to this size is read whole when a generation is opened (one GET); larger
/// ones are read group by group as requests name them.
const PRELOAD_GROUPS_MAX_BYTES: u64 = 8 << 20;

/// The scanner state kept across warm invocations: open generations and verified lists.
pub struct Scanner {
    config: ScannerConfig,
    /// One byte budget for the lists of every open generation (keyed by index and generation).
    lists: ListCache,
    generations: Mutex<LruCache<(String, String), Arc<IndexReader>>>,
}

impl Scanner {
    pub fn new(config: ScannerConfig) -> Scanner {
        let open_generations =
            NonZeroUsize::new(config.open_generations).unwrap_or(NonZeroUsize::MIN);
        Scanner {
            lists: ListCache::new(config.list_cache_bytes),
            generations: Mutex::new(LruCache::new(open_generations)),
            config,
        }
    }

    pub fn config(&self) -> &ScannerConfig {
        &self.config
    }

    /// Bytes of verified lists held in the cache.
    pub fn cached_list_bytes(&self) -> u64 {
        self.lists.used_bytes()
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
            secrets,
            max_skew_ms,
        } = &self.config.auth
        {
            let verified = verify_any(
                secrets.iter().map(Vec::as_slice),
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

    /// Opens the generation (bounded by the deadline) and runs the leaf search on it.
    async fn scan(
        &self,
        request: &ScanRequest,
        deadline: Instant,
    ) -> Result<ScanResponse, RequestError> {
        let mut stats = ScanStats::default();
        let open_started = Instant::now();
        let opened = tokio::time::timeout_at(
            deadline.into(),
            self.open_generation(&request.index, &request.generation, &mut stats),
        )
        .await;
        let Ok(opened) = opened else {
            return Ok(all_timed_out(request, stats));
        };
        let reader = opened?;
        let open_ms = open_started.elapsed().as_secs_f32() * 1000.0;
        let leaf_request = LeafRequest {
            query: &request.query,
            targets: LeafTargets::from_scan(&request.targets),
            k: request.k as usize,
            rerank: request.rerank as usize,
            deadline: Some(deadline),
            reads: ReadPlan::OneByOne {
                concurrency: self.config.fetch_concurrency,
            },
            parallel: false,
        };
        let leaf = reader
            .leaf_search(&leaf_request)
            .await
            .map_err(RequestError::from_index)?;
        let mut response =
            leaf.into_scan_response(request.request_id.clone(), request.generation.clone());
        // The generation's own reads and opening time, when this call opened it.
        response.stats.gets += stats.gets;
        response.stats.bytes_read += stats.bytes_read;
        response.stats.generation_cached = stats.generation_cached;
        response.stats.fetch_ms += open_ms;
        Ok(response)
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
            // Lists go to the scanner's cache, shared by every open generation.
            list_cache_bytes: 0,
            preload_groups_max_bytes: PRELOAD_GROUPS_MAX_BYTES,
            group_cache_bytes: self.config.group_cache_bytes,
            generation: Some(generation.to_string()),
            manifest: None,
        };
        let opened = IndexReader::open(storage.clone(), options).await;
        let io = storage.stats().snapshot();
        stats.gets += io.gets;
        stats.bytes_read += io.bytes_read;
        let reader = opened.map_err(RequestError::from_index)?;
        let reader = Arc::new(reader.with_list_cache(self.lists.clone()));
        info!(index, generation, "opened index generation");
        self.generations
            .lock()
            .expect("generation cache lock")
            .put(key, reader.clone());
        Ok(reader)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
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
        records: Vec::new(),
        stats,
    }
}
