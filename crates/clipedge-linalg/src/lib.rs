//! Hot kernels of clipedge: everything that touches vectors or codes in a loop.
//!
//! Each kernel has a portable scalar path that defines the result, and SIMD paths
//! (x86_64 AVX2 chosen at run time, wasm32 `simd128` and aarch64 NEON chosen at compile
//! time; NEON is part of the aarch64 baseline) that
//! return bit-identical results: integer kernels are exact, float kernels keep the
//! scalar path's lane layout and summation order and never fuse multiply-adds.

pub mod balanced;
pub mod capped;
pub mod dot;
pub mod fastscan;
pub mod gemm;
pub mod kmeans;
mod par;
pub mod pq;
pub mod prefetch;
pub mod rerank;
pub mod scan8;
pub mod screen;
pub mod topk;

pub use kmeans::{KMeans, KMeansConfig, KMeansInit};
pub use pq::ProductQuantizer;
pub use topk::{Scored, TopK};

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum LinalgError {
    #[error("invalid k-means input: {0}")]
    KMeans(String),
    #[error("invalid product quantizer: {0}")]
    Pq(String),
}

/// Which implementation the dispatching kernels use on this machine.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if fastscan::has_avx512bw() {
            return "avx512";
        }
        if fastscan::has_avx2() {
            return "avx2";
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        return "simd128";
    }
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    {
        return "neon";
    }
    #[allow(unreachable_code)]
    "scalar"
}
