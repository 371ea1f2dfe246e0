//! Where the heavy build kernels run: the CPU (always) or a CUDA GPU (when its libraries load).
//!
//! Three kernels carry a build: nearest centroid by L2 (k-means training), best centroid by
//! inner product (filing vectors into lists, the criterion queries probe by) and residual PQ
//! encoding. The CPU functions of `clipedge-linalg` are the reference; the CUDA twin computes the
//! same things:
//! - centroid search: an fp16 tensor-core GEMM (fp32 accumulate) chunked over centroids keeps
//!   the best [`cuda::CANDIDATES`] per vector, then those are rescored exactly in fp32. Results
//!   equal the CPU's except where two centroids score within float rounding of each other;
//! - PQ encoding: fp32 without fused multiply-add and the CPU's codebook norms, so the codes of
//!   a vector filed into the same list are bit-identical to [`ProductQuantizer::encode_one`]'s.
//!
//! `--device auto` takes CUDA when `libcuda`, `libcublas` and `libnvrtc` load and a GPU answers,
//! else the CPU, and says which in the log.

#[cfg(feature = "cuda")]
mod cuda;

use std::fmt;

use clipedge_linalg::balanced::{BalancedConfig, BalancedStats};
use clipedge_linalg::{KMeans, KMeansConfig, LinalgError, ProductQuantizer};
use rayon::prelude::*;
use thiserror::Error;
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cuda is not available: {reason}")]
    CudaUnavailable { reason: String },
    #[error("cuda {operation} failed: {message}")]
    Cuda {
        operation: &'static str,
        message: String,
    },
    #[error("invalid kernel input: {0}")]
    Input(String),
    #[error(transparent)]
    Linalg(#[from] LinalgError),
}

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn parse(text: &str) -> Option<DeviceChoice> {
        match text {
            "auto" => Some(DeviceChoice::Auto),
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" | "gpu" => Some(DeviceChoice::Cuda),
            _ => None,
        }
    }
}

/// The device the build kernels run on.
pub struct Device {
    backend: Backend,
}

enum Backend {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(Box<cuda::CudaBackend>),
}

impl fmt::Debug for Device {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Device({})", self.name())
    }
}

/// How a centroid set is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Highest inner product (list assignment).
    InnerProduct,
    /// Smallest squared L2 distance (k-means training).
    L2,
}

/// Centroids uploaded once and searched by many batches.
pub struct Centroids {
    dim: usize,
    count: usize,
    metric: Metric,
    host: Vec<f32>,
    #[cfg(feature = "cuda")]
    device: Option<cuda::DeviceCentroids>,
}

impl Centroids {
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn host(&self) -> &[f32] {
        &self.host
    }
}

/// A PQ codebook (and the coarse centroids residuals are taken against) ready to encode with.
pub struct Encoder<'a> {
    pq: &'a ProductQuantizer,
    coarse: &'a Centroids,
    #[cfg(feature = "cuda")]
    device: Option<cuda::DeviceCodebook>,
}

/// Exact top-k by inner product of a fixed query set, computed on a GPU (fp32 SGEMM, no
/// reduced precision): the recall gate's ground truth. The CPU keeps its own heaps instead
/// (`ExactTopK` in the gate), so this exists only on a GPU device.
pub struct DeviceTopK<'d> {
    k: usize,
    #[cfg(feature = "cuda")]
    backend: &'d cuda::CudaBackend,
    #[cfg(feature = "cuda")]
    state: cuda::DeviceTopK,
    #[cfg(not(feature = "cuda"))]
    _device: std::marker::PhantomData<&'d Device>,
}

impl fmt::Debug for DeviceTopK<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "DeviceTopK(k {})", self.k)
    }
}

impl DeviceTopK<'_> {
    /// Adds `vectors` (row-major, the queries' dimension) with ids `first_id, first_id + 1, ...`.
    pub fn add_batch(&mut self, vectors: &[f32], first_id: u64) -> Result<(), DeviceError> {
        #[cfg(feature = "cuda")]
        return self.backend.top_k_add(&mut self.state, vectors, first_id);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (vectors, first_id);
            unreachable!("a DeviceTopK exists only on a cuda device")
        }
    }

    /// Each query's best `k` ids, best first.
    pub fn finish(self) -> Result<Vec<Vec<u64>>, DeviceError> {
        #[cfg(feature = "cuda")]
        return self.backend.top_k_finish(self.state, self.k);
        #[cfg(not(feature = "cuda"))]
        unreachable!("a DeviceTopK exists only on a cuda device")
    }
}

/// The most neighbours per query the GPU's exact top-k keeps; larger `k` stays on the CPU.
#[cfg(feature = "cuda")]
pub const MAX_DEVICE_TOP_K: usize = cuda::MAX_TRUTH_K;
#[cfg(not(feature = "cuda"))]
pub const MAX_DEVICE_TOP_K: usize = 0;

impl Device {
    pub fn cpu() -> Device {
        Device {
            backend: Backend::Cpu,
        }
    }

    /// Opens the device `choice` names; `Auto` falls back to the CPU (with a log line saying why).
    pub fn open(choice: DeviceChoice) -> Result<Device, DeviceError> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::cpu()),
            DeviceChoice::Cuda => Device::open_cuda(),
            DeviceChoice::Auto => match Device::open_cuda() {
                Ok(device) => {
                    info!(device = %device.name(), "building on the gpu");
                    Ok(device)
                }
                Err(error) => {
                    warn!(%error, "no usable gpu, building on the cpu");
                    Ok(Device::cpu())
                }
            },
        }
    }

    #[cfg(feature = "cuda")]
    fn open_cuda() -> Result<Device, DeviceError> {
        Ok(Device {
            backend: Backend::Cuda(Box::new(cuda::CudaBackend::open()?)),
        })
    }

    #[cfg(not(feature = "cuda"))]
    fn open_cuda() -> Result<Device, DeviceError> {
        Err(DeviceError::CudaUnavailable {
            reason: "this build has no cuda support (feature `cuda` off)".to_string(),
        })
    }

    pub fn is_gpu(&self) -> bool {
        !matches!(self.backend, Backend::Cpu)
    }

    /// `cpu (N threads)` or the GPU's name and compute capability.
    pub fn name(&self) -> String {
        match &self.backend {
            Backend::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            #[cfg(feature = "cuda")]
            Backend::Cuda(cuda) => cuda.name(),
        }
    }

    /// An exact top-`k` over `queries` (row-major, `dim` wide) on this device, or `None` where
    /// the CPU computes it (a CPU device, or `k` above [`MAX_DEVICE_TOP_K`]).
    pub fn exact_top_k(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
    ) -> Result<Option<DeviceTopK<'_>>, DeviceError> {
        if dim == 0 || queries.is_empty() || !queries.len().is_multiple_of(dim) {
            return Err(DeviceError::Input(format!(
                "{} query floats do not form rows of dimension {dim}",
                queries.len()
            )));
        }
        if k == 0 || k > MAX_DEVICE_TOP_K {
            return Ok(None);
        }
        match &self.backend {
            Backend::Cpu => Ok(None),
            #[cfg(feature = "cuda")]
            Backend::Cuda(cuda) => Ok(Some(DeviceTopK {
                k,
                state: cuda.top_k_start(queries, dim)?,
                backend: cuda,
            })),
        }
    }

    /// Uploads `host` (`count × dim`, row-major) for searches under `metric`.
    pub fn centroids(
        &self,
        host: Vec<f32>,
        dim: usize,
        metric: Metric,
    ) -> Result<Centroids, DeviceError> {
        if dim == 0 || host.is_empty() || !host.len().is_multiple_of(dim) {
            return Err(DeviceError::Input(format!(
                "{} centroid floats do not form rows of dimension {dim}",
                host.len()
            )));
        }
        let count = host.len() / dim;
        #[cfg(feature = "cuda")]
        let device = match &self.backend {
            Backend::Cuda(cuda) => Some(cuda.upload_centroids(&host, dim, metric)?),
            Backend::Cpu => None,
        };
        Ok(Centroids {
            dim,
            count,
            metric,
            host,
            #[cfg(feature = "cuda")]
            device,
        })
    }

    /// For each row of `data`, the best centroid under the set's metric (ties to the lower
    /// index) and its squared L2 distance (L2) or inner product (inner product).
    pub fn search(
        &self,
        centroids: &Centroids,
        data: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>), DeviceError> {
        let dim = centroids.dim;
        if !data.len().is_multiple_of(dim) {
            return Err(DeviceError::Input(format!(
                "{} floats do not form rows of dimension {dim}",
                data.len()
            )));
        }
        match &self.backend {
            Backend::Cpu => Ok(cpu_search(centroids, data)),
            #[cfg(feature = "cuda")]
            Backend::Cuda(cuda) => {
                let uploaded = centroids.device.as_ref().ok_or_else(|| {
                    DeviceError::Input("centroids were uploaded to another device".to_string())
                })?;
                cuda.search(uploaded, data)
            }
        }
    }

    /// Prepares residual PQ encoding against `coarse` (which must be this device's).
    pub fn encoder<'a>(
        &self,
        pq: &'a ProductQuantizer,
        coarse: &'a Centroids,
    ) -> Result<Encoder<'a>, DeviceError> {
        if pq.dim != coarse.dim {
            return Err(DeviceError::Input(format!(
                "codebook dimension {} differs from the centroids' {}",
                pq.dim, coarse.dim
            )));
        }
        #[cfg(feature = "cuda")]
        let device = match &self.backend {
            Backend::Cuda(cuda) => Some(cuda.upload_codebook(pq)?),
            Backend::Cpu => None,
        };
        Ok(Encoder {
            pq,
            coarse,
            #[cfg(feature = "cuda")]
            device,
        })
    }

    /// [`Device::search`] under the inner product, then [`Device::encode_residuals`] with the
    /// labels found: the build's hot loop (a GPU moves each batch across the bus once).
    pub fn assign_and_encode(
        &self,
        encoder: &Encoder<'_>,
        data: &[f32],
    ) -> Result<(Vec<u32>, Vec<u8>), DeviceError> {
        self.assign_encode_inner(encoder, data, None)
    }

    /// [`Device::assign_and_encode`] that also feeds `truth` (ids from `first_id`) each batch
    /// while it is on the GPU: the batch crosses the bus once, where a separate
    /// [`DeviceTopK::add_batch`] uploads it again (at 1B × 512 that is ~2 TB more).
    pub fn assign_encode_and_truth(
        &self,
        encoder: &Encoder<'_>,
        data: &[f32],
        truth: &mut DeviceTopK<'_>,
        first_id: u64,
    ) -> Result<(Vec<u32>, Vec<u8>), DeviceError> {
        self.assign_encode_inner(encoder, data, Some((truth, first_id)))
    }

    fn assign_encode_inner(
        &self,
        encoder: &Encoder<'_>,
        data: &[f32],
        truth: Option<(&mut DeviceTopK<'_>, u64)>,
    ) -> Result<(Vec<u32>, Vec<u8>), DeviceError> {
        if encoder.coarse.metric != Metric::InnerProduct {
            return Err(DeviceError::Input(
                "lists are assigned by inner product".to_string(),
            ));
        }
        match &self.backend {
            Backend::Cpu => {
                if truth.is_some() {
                    return Err(DeviceError::Input(
                        "a device top-k was handed to the cpu".to_string(),
                    ));
                }
                let (labels, _) = self.search(encoder.coarse, data)?;
                let codes = self.encode_residuals(encoder, data, &labels)?;
                Ok((labels, codes))
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(cuda) => {
                if !data.len().is_multiple_of(encoder.coarse.dim) {
                    return Err(DeviceError::Input(format!(
                        "{} floats do not form rows of dimension {}",
                        data.len(),
                        encoder.coarse.dim
                    )));
                }
                let (Some(codebook), Some(coarse)) =
                    (encoder.device.as_ref(), encoder.coarse.device.as_ref())
                else {
                    return Err(DeviceError::Input(
                        "the encoder was prepared on another device".to_string(),
                    ));
                };
                let truth = truth.map(|(top, first_id)| (&mut top.state, first_id));
                cuda.search_and_encode(coarse, codebook, data, truth)
            }
        }
    }

    /// PQ codes (`rows × m`, one byte per sub-quantizer) of `data − coarse[labels[row]]`.
    pub fn encode_residuals(
        &self,
        encoder: &Encoder<'_>,
        data: &[f32],
        labels: &[u32],
    ) -> Result<Vec<u8>, DeviceError> {
        let dim = encoder.pq.dim;
        let rows = labels.len();
        if data.len() != rows * dim {
            return Err(DeviceError::Input(format!(
                "{} floats for {rows} labelled rows of dimension {dim}",
                data.len()
            )));
        }
        if let Some(label) = labels
            .iter()
            .find(|label| **label as usize >= encoder.coarse.count)
        {
            return Err(DeviceError::Input(format!(
                "label {label} is not below the {} centroids",
                encoder.coarse.count
            )));
        }
        match &self.backend {
            Backend::Cpu => Ok(cpu_encode_residuals(encoder, data, labels)),
            #[cfg(feature = "cuda")]
            Backend::Cuda(cuda) => {
                let (Some(codebook), Some(coarse)) =
                    (encoder.device.as_ref(), encoder.coarse.device.as_ref())
                else {
                    return Err(DeviceError::Input(
                        "the encoder was prepared on another device".to_string(),
                    ));
                };
                cuda.encode_residuals(codebook, coarse, data, labels)
            }
        }
    }
}

/// One k-means assignment step on `device`: each point's nearest centroid by L2.
fn l2_assign(
    device: &Device,
    dim: usize,
    points: &[f32],
    centroids: &[f32],
) -> Result<(Vec<u32>, Vec<f32>), LinalgError> {
    let uploaded = device
        .centroids(centroids.to_vec(), dim, Metric::L2)
        .map_err(|error| LinalgError::KMeans(error.to_string()))?;
    device
        .search(&uploaded, points)
        .map_err(|error| LinalgError::KMeans(error.to_string()))
}

/// k-means with every assignment step on `device`: [`KMeans::train`]'s code and seeds, so the CPU
/// device trains exactly what `KMeans::train` does and a GPU what its assignments lead to.
pub fn train_kmeans(
    device: &Device,
    data: &[f32],
    dim: usize,
    config: &KMeansConfig,
) -> Result<KMeans, DeviceError> {
    if !device.is_gpu() {
        return Ok(KMeans::train(data, dim, config)?);
    }
    let mut assign = |points: &[f32], centroids: &[f32]| l2_assign(device, dim, points, centroids);
    Ok(KMeans::train_with(data, dim, config, &mut assign)?)
}

/// Hierarchical balanced k-means ([`clipedge_linalg::balanced`]) with every assignment on
/// `device`: the CPU device trains exactly what `train_balanced` does.
pub fn train_balanced_kmeans(
    device: &Device,
    data: &[f32],
    dim: usize,
    config: &BalancedConfig,
) -> Result<(KMeans, BalancedStats), DeviceError> {
    if !device.is_gpu() {
        return Ok(clipedge_linalg::balanced::train_balanced(
            data, dim, config,
        )?);
    }
    // Where the time goes (device assignments against the host's sums and gathers), for the
    // GPU check's log: thousands of small fine k-means assignments are the suspect.
    let started = std::time::Instant::now();
    let (mut calls, mut assign_s) = (0u64, 0f64);
    let mut assign = |points: &[f32], centroids: &[f32]| {
        let assign_started = std::time::Instant::now();
        let assigned = l2_assign(device, dim, points, centroids);
        calls += 1;
        assign_s += assign_started.elapsed().as_secs_f64();
        assigned
    };
    let trained = clipedge_linalg::balanced::train_balanced_with(data, dim, config, &mut assign)?;
    tracing::info!(
        k = config.k,
        points = data.len() / dim.max(1),
        assign_calls = calls,
        assign_s,
        total_s = started.elapsed().as_secs_f64(),
        "balanced k-means on the device"
    );
    Ok(trained)
}

fn cpu_search(centroids: &Centroids, data: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let dim = centroids.dim;
    match centroids.metric {
        Metric::L2 => clipedge_linalg::gemm::nearest_centroids(data, dim, &centroids.host),
        Metric::InnerProduct => {
            let labels =
                clipedge_linalg::gemm::best_inner_product_centroids(data, dim, &centroids.host);
            let products = data
                .chunks_exact(dim)
                .zip(&labels)
                .map(|(row, label)| {
                    let centroid =
                        &centroids.host[*label as usize * dim..(*label as usize + 1) * dim];
                    clipedge_linalg::dot::dot(row, centroid)
                })
                .collect();
            (labels, products)
        }
    }
}

fn cpu_encode_residuals(encoder: &Encoder<'_>, data: &[f32], labels: &[u32]) -> Vec<u8> {
    let dim = encoder.pq.dim;
    let m = encoder.pq.m;
    let coarse = &encoder.coarse.host;
    let mut codes = vec![0u8; labels.len() * m];
    codes
        .par_chunks_mut(m * 256)
        .zip(data.par_chunks(dim * 256))
        .zip(labels.par_chunks(256))
        .for_each(|((codes, rows), labels)| {
            let mut residual = vec![0f32; dim];
            for ((code, row), label) in codes
                .chunks_exact_mut(m)
                .zip(rows.chunks_exact(dim))
                .zip(labels)
            {
                let centroid = &coarse[*label as usize * dim..(*label as usize + 1) * dim];
                for ((r, x), c) in residual.iter_mut().zip(row).zip(centroid) {
                    *r = x - c;
                }
                encoder.pq.encode_one(&residual, code);
            }
        });
    codes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn cpu_search_finds_the_brute_force_best() {
        let dim = 16;
        let device = Device::cpu();
        let data = seeded(300, dim, 1);
        let host = seeded(40, dim, 2);
        for metric in [Metric::L2, Metric::InnerProduct] {
            let centroids = device.centroids(host.clone(), dim, metric).unwrap();
            let (labels, values) = device.search(&centroids, &data).unwrap();
            for (row, (label, value)) in data.chunks_exact(dim).zip(labels.iter().zip(&values)) {
                let score = |c: &[f32]| match metric {
                    Metric::L2 => -clipedge_linalg::dot::l2_squared(row, c),
                    Metric::InnerProduct => clipedge_linalg::dot::dot(row, c),
                };
                let best = host
                    .chunks_exact(dim)
                    .map(score)
                    .fold(f32::NEG_INFINITY, f32::max);
                let chosen = score(&host[*label as usize * dim..(*label as usize + 1) * dim]);
                assert!(
                    (best - chosen).abs() < 1e-5,
                    "{metric:?}: {best} vs {chosen}"
                );
                assert!((value.abs() - chosen.abs()).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn cpu_residual_codes_equal_encode_one() {
        let dim = 16;
        let device = Device::cpu();
        let data = seeded(600, dim, 3);
        let pq = ProductQuantizer::train(&data, dim, 4, 4, 4, 9).unwrap();
        let coarse = device
            .centroids(seeded(5, dim, 4), dim, Metric::InnerProduct)
            .unwrap();
        let (labels, _) = device.search(&coarse, &data).unwrap();
        let encoder = device.encoder(&pq, &coarse).unwrap();
        let codes = device.encode_residuals(&encoder, &data, &labels).unwrap();
        for (row, (label, code)) in data
            .chunks_exact(dim)
            .zip(labels.iter().zip(codes.chunks_exact(4)))
        {
            let centroid = &coarse.host()[*label as usize * dim..(*label as usize + 1) * dim];
            let residual: Vec<f32> = row.iter().zip(centroid).map(|(x, c)| x - c).collect();
            let mut expected = [0u8; 4];
            pq.encode_one(&residual, &mut expected);
            assert_eq!(code, expected);
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let device = Device::cpu();
        assert!(device.centroids(vec![1.0; 5], 2, Metric::L2).is_err());
        let centroids = device.centroids(vec![1.0; 4], 2, Metric::L2).unwrap();
        assert!(device.search(&centroids, &[1.0; 3]).is_err());
        let pq = ProductQuantizer::train(&seeded(64, 2, 5), 2, 2, 4, 2, 1).unwrap();
        let encoder = device.encoder(&pq, &centroids).unwrap();
        let error = device
            .encode_residuals(&encoder, &[0.0; 4], &[0, 7])
            .unwrap_err();
        assert!(error.to_string().contains("label 7"), "{error}");
    }
}
