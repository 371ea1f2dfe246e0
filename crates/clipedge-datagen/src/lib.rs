//! Test and benchmark data for clipedge.
//!
//! - [`synthetic`]: seeded synthetic vectors shaped like CLIP image embeddings (uneven
//!   semantic clusters, a low-rank anisotropic spread, a shared modality offset), plus
//!   queries that are either drawn from the same distribution or shaped like CLIP text
//!   embeddings searched against images. Those text-like queries are out of distribution
//!   (the "modality gap"), which is the case that breaks indexes tuned on in-distribution
//!   queries. Output depends only on the seed, never on the thread count.
//! - [`io`]: readers and writers for the usual vector file formats (`.fvecs`, `.ivecs`,
//!   NumPy `.npy`) that reject malformed files with errors naming the file and the problem.
//! - [`truth`]: exact, deterministic top-k by inner product and recall@k.

pub mod io;
pub mod synthetic;
pub mod truth;

pub use io::{
    read_fvecs, read_ivecs, read_npy, read_npy_layout, read_vectors, write_fvecs, write_ivecs,
    write_npy, write_npy_f16, Matrix, NpyDtype, NpyLayout, VectorIoError,
};
pub use synthetic::{ClipLikeConfig, ClipLikeGenerator, QueryKind};
pub use truth::{ground_truth, recall_at_k, TruthAccumulator};
