//! The clipedge index build pipeline, run nightly on a rented box (and by `clipedge build`).
//!
//! 1. [`train`]: coarse k-means into `nlist` fine lists (hierarchical balanced k-means from
//!    [`BALANCED_KMEANS_FROM`] lists on), hierarchical k-means of the fine
//!    centroids into routing groups (lists renumbered so each group's lists are contiguous),
//!    PQ codebooks trained on residuals.
//! 2. [`write_generation`]: assign every vector to its list, encode residual PQ codes and rerank
//!    copies list by list in parallel, stream list blobs into shard objects, then write the group
//!    blobs, routing table, codebooks and manifest of a new generation.
//! 3. Publish: move `CURRENT` to the new generation with a conditional write. Nothing of a
//!    published generation is ever overwritten (every object is written with create-only puts).
//!
//! The CPU path here is the reference; a GPU box runs the same stages with GPU k-means.

mod build;
pub mod device;
mod gate;
mod lifecycle;
mod metadata;
mod pipeline;
mod progress;
pub mod remote;
mod source;
#[cfg(test)]
mod test_support;

pub use build::{
    build_index, content_hash, publish, train, train_on, write_generation, write_manifest,
    BuildConfig, BuildError, BuildReport, TrainedIndex, VectorSet, BALANCED_KMEANS_FROM,
    GROUP_CAPACITY_PERCENT,
};
pub use gate::{
    decide, evaluate_recall, gate_generation, live_recall, nprobe_ladder, read_gate_record,
    write_gate_record, Candidate, ExactTopK, GateConfig, GateDecision, GateError, GateRecord,
    ProbeRecall, GATE_FILE,
};
pub use lifecycle::{
    current_generation, gc, list_generations, rollback, GcOptions, GcReport, GenerationInfo,
    KeepReason, LifecycleError, RollbackReport,
};
pub use pipeline::{write_generation_streamed, StreamOptions, WriteSeconds};
pub use progress::{NoProgress, Progress};

/// The gate searches with the API's defaults (`clipedge_api::DEFAULT_NPROBE`, and the rerank
/// factor of the index's size, [`gate_default_rerank`]): a generation is judged as it will be
/// served.
pub const GATE_DEFAULT_NPROBE: usize = 16;

/// The most lists `run`'s gate calibrates a generation's default nprobe to: the default grows
/// with the index (16 of 4,096 lists reached 0.94 recall@10 at 10M, 16 of 65,536 only 0.59), and
/// this bounds what one query may cost.
pub const GATE_DEFAULT_MAX_NPROBE: usize = 512;

/// The rerank factor the API gives a search of `n` vectors that names none
/// (`clipedge_api::default_rerank`, which a test holds this equal to; the builder does not link
/// the API crate).
pub fn gate_default_rerank(n: u64) -> usize {
    if n >= 1_000_000 {
        50
    } else {
        10
    }
}
pub use metadata::MetadataReader;
pub use source::EmbeddingSource;

#[cfg(test)]
mod tests {
    #[test]
    fn the_gate_searches_with_the_api_defaults() {
        assert_eq!(super::GATE_DEFAULT_NPROBE, clipedge_api::DEFAULT_NPROBE);
        assert_eq!(
            super::gate_default_rerank(1000),
            clipedge_api::DEFAULT_RERANK
        );
        assert_eq!(
            super::gate_default_rerank(10_000_000),
            clipedge_api::LARGE_INDEX_RERANK
        );
    }
}
