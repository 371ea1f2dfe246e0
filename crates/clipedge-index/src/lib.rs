//! Searching a clipedge index generation.
//!
//! The query path is split so each tier can take the part it runs:
//! - [`route`] (pure): pick routing groups by their top-level centroids, then the best fine
//!   lists inside them. The edge Worker runs the first half; scanners run the second.
//! - [`scan`] (pure): build the query's lookup tables, scan list codes into a top-k of
//!   candidates, rerank the candidates exactly with the rerank copies stored in the same lists.
//! - [`generation`] (pure apart from its [`clipedge_io::ObjectSource`]): `CURRENT`, the
//!   manifest and routing table, catalog entries and records, stored vectors. Every front opens
//!   generations and reads items here.
//! - [`IndexReader`] (feature `reader`, on by default): opens a generation (manifest, routing
//!   table, codebooks, group blobs). Its [`IndexReader::search`] is route + leaf.
//! - [`leaf`] (feature `reader`): the leaf search every query path ends in, in process or in the
//!   scanner Lambda: scan a set of groups or lists of one generation, reading what is not cached
//!   (verified once, kept in a [`ListCache`]), with a status per group and list and a deadline.

#[cfg(feature = "reader")]
mod error;
pub mod generation;
#[cfg(feature = "reader")]
pub mod leaf;
#[cfg(feature = "reader")]
mod reader;
pub mod route;
pub mod scan;

#[cfg(feature = "reader")]
pub use error::IndexError;
pub use generation::{current_generation, Generation, GenerationError};
#[cfg(feature = "reader")]
pub use leaf::{LeafRequest, LeafResponse, LeafTargets, ListCache, ReadPlan};
#[cfg(feature = "reader")]
pub use reader::{IndexReader, OpenOptions, SearchParams, SearchResult, SearchStats};
