//! Object storage for clipedge.
//!
//! Every byte an index reader or writer moves goes through [`Storage`]: one API for a local
//! directory (the embedded default) and `s3://` buckets (AWS or any S3-compatible server).
//! Round trips dominate query latency on object storage, so the API is shaped around them:
//! range reads are coalesced, every GET and byte is counted, transient failures are retried
//! with backoff, and [`ByteLru`] keeps hot lists across requests.

mod cache;
mod error;
mod stats;
mod store;

pub use bytes::Bytes;
pub use cache::ByteLru;
pub use clipedge_io::{Counted, ObjectSource, SourceError};
pub use error::StorageError;
pub use stats::{IoCounters, IoStats};
pub use store::{source_error, ObjectInfo, Storage, StorageConfig, Versioned};
