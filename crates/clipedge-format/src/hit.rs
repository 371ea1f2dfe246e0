//! The one record a search produces: a row of a list, scored.

use serde::{Deserialize, Serialize};

/// One scored row of a list: enough to rank it, de-duplicate it (content hash) and show it
/// (metadata reference into the catalog). The in-process scan returns it, the scanner protocol
/// carries it (its field order is the wire order, `docs/protocol.md`) and both fronts merge it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: u64,
    /// Exact inner product when reranked, else the PQ estimate.
    pub score: f32,
    pub content_hash: u64,
    pub metadata_ref: u64,
    pub list_id: u32,
}
