//! Usage metering: one record per metered request (search, knn, item and metadata lookups),
//! accounted to the caller's key name, with what it cost — scanner calls, object GETs and bytes
//! (the Worker's and the scanners'), the Worker's milliseconds and the scanners' reported ones.
//!
//! Written as one structured log line (`{"event":"clipedge_usage",…}`, Workers Logs) and, when
//! `CLIPEDGE_USAGE_DATASET` names a binding, as a Workers Analytics Engine data point. Neither
//! holds the key or the query text: only the key's name and the first digits of its hash.
//! `scripts/usage_report.py` sums a month of either.

use serde::Serialize;

use crate::access::{Caller, ANONYMOUS};

/// The `event` field of a usage log line.
pub const USAGE_EVENT: &str = "clipedge_usage";

/// What the scanner fan-out of one query cost (zero for requests without one).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FanOutUsage {
    /// Scanner invocations, answered or not (each is a billed Lambda call).
    pub calls: u32,
    pub gets: u64,
    pub bytes_read: u64,
    /// The scanners' own reported milliseconds, summed.
    pub scanner_ms: f64,
    /// Some lists went unscanned (the answer was flagged `partial`).
    pub partial: bool,
}

/// One usage record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub event: &'static str,
    pub unix_ms: u64,
    /// The key's name, or `anonymous`.
    pub key: String,
    /// First hex digits of the key's SHA-256 (absent for anonymous callers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub tier: String,
    /// `search`, `knn`, `item` or `metadata`.
    pub route: &'static str,
    /// The index the request read (its name; several may be served, `CLIPEDGE_INDEXES`).
    pub index: String,
    pub status: u16,
    /// 1 for an answered search (`search`, `knn` with status 200), else 0.
    pub queries: u32,
    pub scanner_calls: u32,
    pub gets: u64,
    pub bytes: u64,
    /// The Worker's milliseconds for the request (wall time as workerd reports it).
    pub worker_ms: f64,
    pub scanner_ms: f64,
    pub partial: bool,
}

impl Usage {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        caller: &Caller,
        route: &'static str,
        status: u16,
        unix_ms: u64,
        own_gets: u64,
        own_bytes: u64,
        fan_out: FanOutUsage,
        worker_ms: f64,
    ) -> Usage {
        let is_query = matches!(route, "search" | "knn");
        Usage {
            event: USAGE_EVENT,
            unix_ms,
            key: caller.name.clone(),
            key_id: caller.key_id.clone(),
            tier: caller.tier.clone(),
            route,
            index: String::new(),
            status,
            queries: u32::from(is_query && status == 200),
            scanner_calls: fan_out.calls,
            gets: own_gets + fan_out.gets,
            bytes: own_bytes + fan_out.bytes_read,
            worker_ms: round_ms(worker_ms),
            scanner_ms: round_ms(fan_out.scanner_ms),
            partial: fan_out.partial,
        }
    }

    /// Names the index the request read.
    pub fn with_index(self, index: &str) -> Usage {
        Usage {
            index: index.to_string(),
            ..self
        }
    }

    /// The log line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The Analytics Engine layout (documented in the README with its SQL): the index (the
    /// sampling key) is the key id; blobs name the key, tier, route, status and index; doubles
    /// hold the figures in a fixed order.
    pub fn data_point_index(&self) -> String {
        self.key_id.clone().unwrap_or_else(|| ANONYMOUS.to_string())
    }

    pub fn data_point_blobs(&self) -> [String; 5] {
        [
            self.key.clone(),
            self.tier.clone(),
            self.route.to_string(),
            self.status.to_string(),
            self.index.clone(),
        ]
    }

    /// double1 queries, double2 scanner calls, double3 GETs, double4 bytes, double5 Worker ms,
    /// double6 scanner ms, double7 partial (0/1).
    pub fn data_point_doubles(&self) -> [f64; 7] {
        [
            f64::from(self.queries),
            f64::from(self.scanner_calls),
            self.gets as f64,
            self.bytes as f64,
            self.worker_ms,
            self.scanner_ms,
            f64::from(u8::from(self.partial)),
        ]
    }
}

fn round_ms(ms: f64) -> f64 {
    if ms.is_finite() {
        (ms.max(0.0) * 100.0).round() / 100.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_search_is_one_query_with_its_costs_and_no_secrets() {
        let caller = Caller {
            name: "acme".to_string(),
            tier: "pro".to_string(),
            key_id: Some("0123456789ab".to_string()),
        };
        let fan_out = FanOutUsage {
            calls: 3,
            gets: 10,
            bytes_read: 5000,
            scanner_ms: 12.345,
            partial: false,
        };
        let usage = Usage::new(
            &caller,
            "search",
            200,
            1_700_000_000_000,
            2,
            300,
            fan_out,
            41.5,
        )
        .with_index("laion");
        assert_eq!((usage.queries, usage.gets, usage.bytes), (1, 12, 5300));
        assert_eq!(usage.data_point_blobs()[4], "laion");
        assert_eq!(usage.scanner_ms, 12.35);
        let line: serde_json::Value = serde_json::from_str(&usage.to_json()).unwrap();
        assert_eq!(line["event"], USAGE_EVENT);
        assert_eq!(line["key"], "acme");
        assert_eq!(line["key_id"], "0123456789ab");
        assert_eq!(line["scanner_calls"], 3);
        assert_eq!(usage.data_point_index(), "0123456789ab");
        assert_eq!(usage.data_point_blobs()[2], "search");
        assert_eq!(usage.data_point_doubles()[..4], [1.0, 3.0, 12.0, 5300.0]);
    }

    #[test]
    fn failed_searches_and_lookups_are_not_queries() {
        let anonymous = Caller::anonymous();
        let failed = Usage::new(
            &anonymous,
            "knn",
            502,
            0,
            1,
            10,
            FanOutUsage::default(),
            3.0,
        );
        assert_eq!(failed.queries, 0);
        let item = Usage::new(
            &anonymous,
            "item",
            200,
            0,
            2,
            10,
            FanOutUsage::default(),
            3.0,
        );
        assert_eq!(item.queries, 0);
        assert_eq!(item.data_point_index(), ANONYMOUS);
        let line: serde_json::Value = serde_json::from_str(&item.to_json()).unwrap();
        assert!(line.get("key_id").is_none());
        assert_eq!(round_ms(f64::NAN), 0.0);
    }
}
