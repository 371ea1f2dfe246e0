//! Searching a clipedge index generation.
//!
//! The query path is split so each tier can take the part it runs:
//! - [`route`] (pure): pick routing groups by their top-level centroids, then the best fine
//!   lists inside them. The edge Worker runs the first half; scanners run the second.
//! - [`scan`] (pure): build the query's lookup tables, scan list codes into a top-k of
//!   candidates, rerank the candidates exactly with the rerank copies stored in the same lists.
//! - [`IndexReader`]: the I/O around them for one process holding a whole index (CLI, embedded
//!   server, scanner Lambda; feature `reader`, on by default): opens a generation, fetches group blobs and lists with one range
//!   GET each (coalesced), verifies checksums and caches verified lists.

#[cfg(feature = "reader")]
mod error;
#[cfg(feature = "reader")]
mod reader;
pub mod route;
pub mod scan;

#[cfg(feature = "reader")]
pub use error::IndexError;
#[cfg(feature = "reader")]
pub use reader::{IndexReader, OpenOptions, SearchParams, SearchResult, SearchStats};
