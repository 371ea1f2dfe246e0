//! The root of every clipedge search (Quickwit's root/leaf split): [`root::search`] probes the
//! routing table, plans the leaf calls ([`plan`]), fans out through a [`root::Leaves`], folds
//! the answers and their failures, merges, de-duplicates, reads the catalog records of the top
//! `k` and assembles the `/v1` answer.
//!
//! Both fronts run this one root: the edge Worker with scanner Lambdas as its leaves,
//! `clipedge serve` with the in-process leaf (`clipedge_index::IndexReader::leaf_search`). So
//! their answers, partial answers and errors cannot drift apart. Pure apart from the two
//! traits it is generic over (leaves and the object source); builds for wasm32.

pub mod plan;
pub mod root;

pub use plan::{plan_batches, plan_calls, Batch, Call, FanOut};
pub use root::{search, FanOutPolicy, LeafJob, Leaves, RootAnswer};
