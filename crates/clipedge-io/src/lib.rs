//! Reading objects, whatever holds them.
//!
//! Every reader of an index (the generation reader, the catalog, the stored-vector lookup) is
//! written once against [`ObjectSource`]; `clipedge-storage` implements it for local
//! directories and S3 (object_store), the edge Worker for its R2 binding and presigned GETs.
//! The trait's futures carry no `Send` bound because the Worker's are not `Send`; a caller that
//! holds a concrete native source still gets `Send` futures (auto traits leak through them).
//!
//! Decorators add what every backend would otherwise repeat: [`Prefixed`] puts keys under a
//! root, [`Counted`] counts GETs and bytes for a query's `stats`. [`conformance`] is the one test
//! suite every implementation runs (tantivy runs one suite against every `Directory` the same
//! way).

pub mod conformance;
mod memory;
mod ranges;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use thiserror::Error;

pub use memory::MemorySource;
pub use ranges::coalesce_ranges;

/// Why an object could not be read. Messages name the object.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("object {key} does not exist")]
    NotFound { key: String },
    #[error("object {key} has {size} bytes, more than the {limit}-byte limit")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("range {start}..{end} of object {key} is not inside it ({got} bytes came back)")]
    Range {
        key: String,
        start: u64,
        end: u64,
        got: u64,
    },
    #[error("cannot read object {key}: {reason}")]
    Failed { key: String, reason: String },
}

impl SourceError {
    pub fn failed(key: &str, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Failed {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, SourceError::NotFound { .. })
    }
}

/// What [`ObjectSource::get_ranges`] returns: one buffer per requested range, in request order.
#[derive(Debug, Clone, Default)]
pub struct RangeRead {
    pub parts: Vec<Bytes>,
    /// GETs actually sent after coalescing.
    pub requests: usize,
    /// Bytes actually transferred, gaps included.
    pub bytes: u64,
}

/// How a source's [`ObjectSource::get_ranges`] turns ranges into GETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    /// Ranges closer than this are fetched with one GET: a wasted gap costs less than a round
    /// trip (about 60 ms to first byte on S3).
    pub coalesce_gap_bytes: u64,
    /// A coalesced GET never grows past this.
    pub max_coalesced_bytes: u64,
    /// GETs in flight at once for one call.
    pub max_concurrency: usize,
}

impl Default for ReadPolicy {
    fn default() -> Self {
        ReadPolicy {
            coalesce_gap_bytes: 256 * 1024,
            max_coalesced_bytes: 64 * 1024 * 1024,
            max_concurrency: 6,
        }
    }
}

/// Reads objects by key. Implementations retry transient failures themselves; an error here is
/// final for the request.
#[allow(async_fn_in_trait)]
pub trait ObjectSource {
    /// The whole object. With `limit`, an object larger than that is refused with
    /// [`SourceError::TooLarge`] (before its body is read where the backend can tell).
    async fn get(&self, key: &str, limit: Option<u64>) -> Result<Bytes, SourceError>;

    /// The bytes `range` of the object: exactly `range.end - range.start` of them, or an error.
    /// An empty range reads nothing and returns no bytes.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SourceError>;

    fn read_policy(&self) -> ReadPolicy {
        ReadPolicy::default()
    }

    /// Many ranges of one object: nearby ones share a GET, GETs run concurrently.
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<RangeRead, SourceError> {
        read_ranges(self, key, ranges).await
    }
}

/// The default [`ObjectSource::get_ranges`], public so an implementation that overrides it can
/// still fall back to it.
pub async fn read_ranges<S: ObjectSource + ?Sized>(
    source: &S,
    key: &str,
    ranges: &[Range<u64>],
) -> Result<RangeRead, SourceError> {
    let policy = source.read_policy();
    let merged = coalesce_ranges(
        ranges,
        policy.coalesce_gap_bytes,
        policy.max_coalesced_bytes,
    );
    let fetched: Vec<Bytes> = stream::iter(merged.iter().cloned())
        .map(|range| source.get_range(key, range))
        .buffered(policy.max_concurrency.max(1))
        .try_collect()
        .await?;
    let bytes = merged.iter().map(|range| range.end - range.start).sum();
    let mut parts = Vec::with_capacity(ranges.len());
    for range in ranges {
        if range.start >= range.end {
            parts.push(Bytes::new());
            continue;
        }
        // Merged ranges are sorted and disjoint: the one holding this range ends at or after it.
        let index = merged.partition_point(|merged_range| merged_range.end < range.end);
        let container = &merged[index];
        let offset = (range.start - container.start) as usize;
        parts.push(fetched[index].slice(offset..offset + (range.end - range.start) as usize));
    }
    Ok(RangeRead {
        parts,
        requests: merged.len(),
        bytes,
    })
}

/// Refuses an object larger than `limit` (for backends that only learn the size by reading).
pub fn check_limit(key: &str, bytes: &Bytes, limit: Option<u64>) -> Result<(), SourceError> {
    match limit {
        Some(limit) if bytes.len() as u64 > limit => Err(SourceError::TooLarge {
            key: key.to_string(),
            size: bytes.len() as u64,
            limit,
        }),
        _ => Ok(()),
    }
}

/// The error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// Checks that a backend returned exactly the bytes of `range`.
pub fn check_range(key: &str, range: &Range<u64>, bytes: &Bytes) -> Result<(), SourceError> {
    let expected = range.end.saturating_sub(range.start);
    if bytes.len() as u64 == expected {
        return Ok(());
    }
    Err(SourceError::Range {
        key: key.to_string(),
        start: range.start,
        end: range.end,
        got: bytes.len() as u64,
    })
}

impl<S: ObjectSource + ?Sized> ObjectSource for &S {
    async fn get(&self, key: &str, limit: Option<u64>) -> Result<Bytes, SourceError> {
        (**self).get(key, limit).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SourceError> {
        (**self).get_range(key, range).await
    }
    fn read_policy(&self) -> ReadPolicy {
        (**self).read_policy()
    }
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<RangeRead, SourceError> {
        (**self).get_ranges(key, ranges).await
    }
}

/// Keys under a root: `Prefixed::new(source, "indexes/laion")` reads `CURRENT` as
/// `indexes/laion/CURRENT`. An empty prefix passes keys through.
#[derive(Debug, Clone)]
pub struct Prefixed<S> {
    inner: S,
    prefix: String,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: &str) -> Prefixed<S> {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Prefixed { inner, prefix }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The full key of `key` in the inner source.
    pub fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key.trim_start_matches('/'))
    }
}

impl<S: ObjectSource> ObjectSource for Prefixed<S> {
    async fn get(&self, key: &str, limit: Option<u64>) -> Result<Bytes, SourceError> {
        self.inner.get(&self.key(key), limit).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SourceError> {
        self.inner.get_range(&self.key(key), range).await
    }
    fn read_policy(&self) -> ReadPolicy {
        self.inner.read_policy()
    }
    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<RangeRead, SourceError> {
        self.inner.get_ranges(&self.key(key), ranges).await
    }
}

/// GETs sent and bytes received through a source, for a query's `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub gets: u64,
    pub bytes_read: u64,
}

impl std::ops::Sub for ReadCounts {
    type Output = ReadCounts;
    fn sub(self, earlier: ReadCounts) -> ReadCounts {
        ReadCounts {
            gets: self.gets.saturating_sub(earlier.gets),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
        }
    }
}

/// Counts the GETs and bytes that pass through it (failed GETs count as sent).
#[derive(Debug, Default)]
pub struct Counted<S> {
    inner: S,
    gets: AtomicU64,
    bytes_read: AtomicU64,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Counted<S> {
        Counted {
            inner,
            gets: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn counts(&self) -> ReadCounts {
        ReadCounts {
            gets: self.gets.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
        }
    }

    fn record(&self, result: &Result<Bytes, SourceError>) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if let Ok(bytes) = result {
            self.bytes_read
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

impl<S: ObjectSource> ObjectSource for Counted<S> {
    async fn get(&self, key: &str, limit: Option<u64>) -> Result<Bytes, SourceError> {
        let result = self.inner.get(key, limit).await;
        self.record(&result);
        result
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SourceError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let result = self.inner.get_range(key, range).await;
        self.record(&result);
        result
    }
    fn read_policy(&self) -> ReadPolicy {
        self.inner.read_policy()
    }
    // get_ranges is the default: it goes through this get_range, so every GET is counted once.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_and_counted_compose() {
        let memory = MemorySource::default();
        memory.insert("root/a.bin", Bytes::from_static(b"0123456789"));
        let source = Counted::new(Prefixed::new(&memory, "/root/"));
        assert_eq!(&source.get("a.bin", None).await.unwrap()[..], b"0123456789");
        assert_eq!(&source.get_range("a.bin", 2..5).await.unwrap()[..], b"234");
        let read = source
            .get_ranges("a.bin", &[8..10, 0..1, 3..3])
            .await
            .unwrap();
        assert_eq!(read.parts.len(), 3);
        assert_eq!(&read.parts[0][..], b"89");
        assert_eq!(&read.parts[1][..], b"0");
        assert!(read.parts[2].is_empty());
        // 10 + 3 bytes, then one coalesced GET of the whole 0..10.
        assert_eq!(
            source.counts(),
            ReadCounts {
                gets: 3,
                bytes_read: 23
            }
        );
        assert!(source.get("b.bin", None).await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn memory_source_passes_the_conformance_suite() {
        let memory = MemorySource::default();
        for (key, bytes) in conformance::objects() {
            memory.insert(&format!("suite/{key}"), bytes);
        }
        conformance::check(&Prefixed::new(&memory, "suite"))
            .await
            .unwrap();
    }
}
