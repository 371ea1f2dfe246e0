//! The request and response of one scanner invocation.

use clipedge_format::Hit;
use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// Upper bound on the query dimension a request may carry.
pub const MAX_DIM: usize = 4096;
/// Upper bound on groups or lists in one request: a batch, not a whole index.
pub const MAX_TARGETS: usize = 4096;
/// Upper bound on `k` and on `k * rerank` candidates: keeps every response far below the
/// 6 MB Lambda payload cap (a candidate is at most 37 bytes encoded).
pub const MAX_CANDIDATES: usize = 100_000;

/// What to scan: the caller ranked the routing groups (or the lists) itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanTargets {
    /// Routing groups: the scanner reads their blobs (fine centroids and list locations),
    /// ranks the fine lists by `<q, centroid>` and scans the best `nprobe` of them.
    Groups { group_ids: Vec<u32>, nprobe: u32 },
    /// Fine lists by id, scanned in the given order.
    Lists { list_ids: Vec<u32> },
}

/// One scanner invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanRequest {
    /// Echoed in the response and in the scanner's logs.
    pub request_id: String,
    /// The index root: `s3://bucket/prefix` (or a path / `file://` URL for a local scanner).
    pub index: String,
    /// The generation the caller routed with; the scanner never reads another.
    pub generation: String,
    /// The query vector (the index's dimension).
    pub query: Vec<f32>,
    pub targets: ScanTargets,
    /// Candidates wanted back (k′).
    pub k: u32,
    /// `k * rerank` PQ candidates are rescored exactly with the lists' rerank copies;
    /// 0 returns PQ scores.
    pub rerank: u32,
    /// Time budget from arrival, in milliseconds: lists not done by then are reported
    /// [`ScanStatus::TimedOut`] and the candidates found so far are returned.
    pub deadline_ms: u32,
}

impl ScanRequest {
    /// Checks what can be checked without the index: sizes, finiteness, non-empty fields.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let invalid = |reason: String| Err(ProtocolError::InvalidRequest { reason });
        if self.index.is_empty() {
            return invalid("index is empty".to_string());
        }
        if self.generation.is_empty() {
            return invalid("generation is empty".to_string());
        }
        if self.query.is_empty() || self.query.len() > MAX_DIM {
            return invalid(format!(
                "query has dimension {}, expected 1..={MAX_DIM}",
                self.query.len()
            ));
        }
        if self.query.iter().any(|value| !value.is_finite()) {
            return invalid("query has a non-finite value".to_string());
        }
        let target_count = match &self.targets {
            ScanTargets::Groups { group_ids, nprobe } => {
                if *nprobe == 0 {
                    return invalid("nprobe must be at least 1".to_string());
                }
                group_ids.len()
            }
            ScanTargets::Lists { list_ids } => list_ids.len(),
        };
        if target_count == 0 || target_count > MAX_TARGETS {
            return invalid(format!(
                "request names {target_count} groups or lists, expected 1..={MAX_TARGETS}"
            ));
        }
        let candidates = (self.k as u64) * (self.rerank.max(1) as u64);
        if self.k == 0 || candidates > MAX_CANDIDATES as u64 {
            return invalid(format!(
                "k ({}) times rerank ({}) must be in 1..={MAX_CANDIDATES}",
                self.k, self.rerank
            ));
        }
        if self.deadline_ms == 0 {
            return invalid("deadline_ms must be at least 1".to_string());
        }
        Ok(())
    }
}

/// What became of one group or list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScanStatus {
    /// Read, verified and scanned.
    Ok,
    /// Its object (or its range) does not exist: the generation is incomplete or deleted.
    Missing,
    /// Bytes arrived but failed their checksum or header check, or the id is outside the index.
    Corrupt,
    /// Not finished before the deadline.
    TimedOut,
    /// Storage failed after retries (server down, throttled): worth retrying elsewhere.
    Unavailable,
}

impl ScanStatus {
    pub fn is_ok(self) -> bool {
        self == ScanStatus::Ok
    }
}

/// Status of one requested group (only for [`ScanTargets::Groups`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResult {
    pub group_id: u32,
    pub status: ScanStatus,
    /// Why it failed; empty when ok.
    pub detail: String,
}

/// Status of one list the scanner tried to scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResult {
    pub list_id: u32,
    pub status: ScanStatus,
    /// Served from the scanner's list cache (no GET).
    pub cached: bool,
    /// Why it failed; empty when ok.
    pub detail: String,
}

/// Where the invocation's time and bytes went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanStats {
    /// GETs sent (generation metadata, group blobs, lists).
    pub gets: u64,
    pub bytes_read: u64,
    /// Lists served from the scanner's cache.
    pub list_cache_hits: u32,
    pub lists_scanned: u32,
    pub codes_scanned: u64,
    /// Whether the generation's metadata (manifest, routing, codebooks) was already open.
    pub generation_cached: bool,
    pub fetch_ms: f32,
    pub scan_ms: f32,
    pub rerank_ms: f32,
    /// From the request's arrival to the response's encoding.
    pub total_ms: f32,
}

/// The answer of one scanner invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanResponse {
    pub request_id: String,
    pub generation: String,
    /// One entry per requested group, in request order (empty for list targets).
    pub groups: Vec<GroupResult>,
    /// One entry per list the scanner chose or was given, in scan order.
    pub lists: Vec<ListResult>,
    /// The top `k` over the lists that were scanned, best first.
    pub candidates: Vec<Hit>,
    /// The catalog record (JSON) of each candidate, aligned with `candidates`, when the lists
    /// carry their records (an empty string for one that does not); empty otherwise. The front
    /// then shows results without reading the catalog.
    pub records: Vec<String>,
    pub stats: ScanStats,
}

impl ScanResponse {
    /// Whether every group and list was scanned.
    pub fn is_complete(&self) -> bool {
        self.groups.iter().all(|group| group.status.is_ok())
            && self.lists.iter().all(|list| list.status.is_ok())
    }

    /// Lists to send again (to this or another scanner).
    pub fn failed_lists(&self) -> Vec<u32> {
        self.lists
            .iter()
            .filter(|list| !list.status.is_ok())
            .map(|list| list.list_id)
            .collect()
    }

    /// Groups whose blob could not be read: none of their lists were chosen.
    pub fn failed_groups(&self) -> Vec<u32> {
        self.groups
            .iter()
            .filter(|group| !group.status.is_ok())
            .map(|group| group.group_id)
            .collect()
    }
}
