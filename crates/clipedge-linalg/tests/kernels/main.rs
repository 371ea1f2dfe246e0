//! Integration tests of the clipedge-linalg kernels, one module per kernel, built as a
//! single test binary to keep link time down.

mod common;

mod fastscan;
mod gemm;
mod kmeans;
mod pq;
mod rerank;
mod scan8;
mod topk;
