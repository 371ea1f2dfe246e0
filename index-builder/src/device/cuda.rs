//! The CUDA twin of the build kernels: cuBLAS for the big GEMM, four small NVRTC kernels.
//!
//! Nothing here needs CUDA at build time: cudarc loads `libcuda`, `libcublas` and `libnvrtc` when
//! a backend is opened (found on the loader path, e.g. `LD_LIBRARY_PATH` pointing into the
//! `nvidia-*-cu13` pip wheels), and the kernels are compiled for the GPU that answers.
//!
//! The batch loop is a two-deep pipeline: while the GPU scores batch `i` (compute stream), the
//! host stages batch `i + 1` in pinned memory and the copy stream uploads it, so the bus and the
//! host copy hide behind the GEMM. Scores leave the GEMM in fp16 (half the HBM traffic of the
//! chunked distance matrix) scaled into ±1, and the best [`CANDIDATES`] per vector are rescored
//! exactly in fp32.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use clipedge_linalg::ProductQuantizer;
use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use rayon::prelude::*;

use super::{DeviceError, Metric};

/// Centroids kept per vector from the fp16 GEMM and rescored in fp32. Eight absorb fp16's
/// rounding of inputs and scores (relative error ~1e-3 on a dot) for all but vectors whose
/// best few centroids score alike — where either answer is as good.
pub const CANDIDATES: usize = 8;
/// fp16 scores of one (batch × centroid chunk) GEMM: bounded so the distance matrix is never
/// materialised for a whole batch against a large centroid set.
const SCORE_BUFFER_HALVES: usize = 256 << 20;
/// Vectors per GEMM batch (the host hands over larger slices; they are cut to this).
const MAX_BATCH_ROWS: usize = 16384;
/// The PQ kernel keeps a residual sub-vector in registers.
const MAX_DSUB: usize = 64;
/// Rows per parallel task when staging a batch in pinned memory.
const STAGE_ROWS: usize = 256;
/// The most neighbours a query keeps in the GPU's exact top-k (`TRUTH_K` in the kernels).
pub const MAX_TRUTH_K: usize = 16;
/// fp32 scores of one (queries × vector chunk) GEMM of the exact top-k.
const TRUTH_SCORE_FLOATS: usize = 64 << 20;
/// Vectors per exact top-k chunk (their fp32 copy on the device: 128 MiB at d 512).
const TRUTH_CHUNK_ROWS: usize = 65_536;
/// `NO_ID` in the kernels: an empty slot.
const NO_ID: i64 = i64::MAX;

const KERNELS: &str = r#"
#define CANDIDATES 8
#define MAX_DSUB 64
#define NO_INDEX 0x7fffffff
// Spelled out: NVRTC compiles without the host math headers that define INFINITY.
#define POS_INF __int_as_float(0x7f800000)
#define NEG_INF __int_as_float(0xff800000)

// The better of two (score, index) pairs: the higher score, then the lower index (the CPU's
// order, so ties break the same way).
template <typename Id>
__device__ __forceinline__ bool better(float a, Id ai, float b, Id bi) {
    return a > b || (a == b && ai < bi);
}

__device__ __forceinline__ float half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Inserts (value, index) into a list of N sorted best first, dropping the worst. Fully unrolled
// with constant indices, so the list stays in registers (a data-dependent index would put it in
// local memory).
template <int N, typename Id>
__device__ __forceinline__ void insert(float* vals, Id* idx, float value, Id index) {
    if (!better(value, index, vals[N - 1], idx[N - 1])) return;
    bool placed = false;
#pragma unroll
    for (int slot = N - 1; slot > 0; slot--) {
        if (!placed) {
            if (better(value, index, vals[slot - 1], idx[slot - 1])) {
                vals[slot] = vals[slot - 1];
                idx[slot] = idx[slot - 1];
            } else {
                vals[slot] = value;
                idx[slot] = index;
                placed = true;
            }
        }
    }
    if (!placed) { vals[0] = value; idx[0] = index; }
}

// Merges the warp's 32 sorted lists of N: lane 0 writes the best N of them to out_vals/out_idx,
// best first (`none` marks an empty slot).
template <int N, typename Id>
__device__ __forceinline__ void warp_merge(float* vals, Id* idx, Id none, int lane,
                                           float* out_vals, Id* out_idx) {
    for (int r = 0; r < N; r++) {
        float head = vals[0];
        Id head_index = idx[0];
        for (int step = 16; step > 0; step >>= 1) {
            float other = __shfl_xor_sync(0xffffffff, head, step);
            Id other_index = __shfl_xor_sync(0xffffffff, head_index, step);
            if (better(other, other_index, head, head_index)) { head = other; head_index = other_index; }
        }
        if (idx[0] == head_index && head_index != none) {
#pragma unroll
            for (int s = 0; s + 1 < N; s++) { vals[s] = vals[s + 1]; idx[s] = idx[s + 1]; }
            vals[N - 1] = NEG_INF;
            idx[N - 1] = none;
        }
        if (lane == 0) { out_vals[r] = head; out_idx[r] = head_index; }
    }
}

extern "C" __global__ void to_half(const float* __restrict__ x, unsigned short* __restrict__ y,
                                   unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x[i]));
    y[i] = h;
}

// One warp per row: the best CANDIDATES of (scores[row][c] + bias_scale * bias[offset + c])
// over this chunk, merged with the row's candidates from earlier chunks. Scores are fp16 (the
// GEMM ran with alpha = bias_scale, so they stay within ±1); lanes read two at a time.
extern "C" __global__ void top_candidates(const unsigned short* __restrict__ scores, int rows,
                                          int cols, int offset, const float* __restrict__ bias,
                                          float bias_scale, int has_bias, float* best_vals,
                                          int* best_idx, int first_chunk) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float vals[CANDIDATES];
    int idx[CANDIDATES];
#pragma unroll
    for (int r = 0; r < CANDIDATES; r++) { vals[r] = NEG_INF; idx[r] = NO_INDEX; }
    if (!first_chunk && lane < CANDIDATES) {
        insert<CANDIDATES>(vals, idx, best_vals[row * CANDIDATES + lane], best_idx[row * CANDIDATES + lane]);
    }
    const unsigned short* line = scores + (size_t)row * cols;
    if ((cols & 1) == 0) {
        const unsigned int* pairs = (const unsigned int*)line;
        int pair_count = cols >> 1;
        for (int p = lane; p < pair_count; p += 32) {
            unsigned int two = pairs[p];
            int c = 2 * p;
            float low = half_to_float((unsigned short)(two & 0xffffu));
            float high = half_to_float((unsigned short)(two >> 16));
            if (has_bias) {
                low += bias_scale * bias[offset + c];
                high += bias_scale * bias[offset + c + 1];
            }
            insert<CANDIDATES>(vals, idx, low, offset + c);
            insert<CANDIDATES>(vals, idx, high, offset + c + 1);
        }
    } else {
        for (int c = lane; c < cols; c += 32) {
            float value = half_to_float(line[c]);
            if (has_bias) value += bias_scale * bias[offset + c];
            insert<CANDIDATES>(vals, idx, value, offset + c);
        }
    }
    warp_merge<CANDIDATES>(vals, idx, (int)NO_INDEX, lane, best_vals + row * CANDIDATES,
                           best_idx + row * CANDIDATES);
}

// One warp per row: exact fp32 scores of the candidates; the best wins (ties to the lower index).
extern "C" __global__ void rescore(const float* __restrict__ x, int rows, int dim,
                                   const float* __restrict__ centroids, const float* __restrict__ bias,
                                   const int* __restrict__ candidates, int* labels, float* dots) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* v = x + (size_t)row * dim;
    float best = NEG_INF;
    float best_dot = 0.0f;
    int best_index = NO_INDEX;
    for (int r = 0; r < CANDIDATES; r++) {
        int c = candidates[row * CANDIDATES + r];
        if (c == NO_INDEX) continue;
        const float* w = centroids + (size_t)c * dim;
        float sum = 0.0f;
        for (int d = lane; d < dim; d += 32) sum += v[d] * w[d];
        for (int step = 16; step > 0; step >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, step);
        float score = sum + bias[c];
        if (better(score, c, best, best_index)) { best = score; best_dot = sum; best_index = c; }
    }
    if (lane == 0) { labels[row] = best_index; dots[row] = best_dot; }
}

// The gate's exact top-k: TRUTH_K best kept per query; ids are 64-bit (a billion-row input).
#define TRUTH_K 16
#define NO_ID 0x7fffffffffffffffLL

// One warp per query: the best TRUTH_K of its fp32 scores over `cols` vectors (ids first_id,
// first_id + 1, ...), merged with what earlier chunks kept. Same order as the CPU heaps: the
// higher score, then the lower id.
extern "C" __global__ void top_k_rows(const float* __restrict__ scores, int rows, int cols,
                                      long long first_id, float* best_vals, long long* best_ids,
                                      int first_chunk) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float vals[TRUTH_K];
    long long ids[TRUTH_K];
#pragma unroll
    for (int r = 0; r < TRUTH_K; r++) { vals[r] = NEG_INF; ids[r] = NO_ID; }
    if (!first_chunk && lane < TRUTH_K) {
        insert<TRUTH_K>(vals, ids, best_vals[row * TRUTH_K + lane], best_ids[row * TRUTH_K + lane]);
    }
    const float* line = scores + (size_t)row * cols;
    for (int c = lane; c < cols; c += 32) insert<TRUTH_K>(vals, ids, line[c], first_id + c);
    warp_merge<TRUTH_K>(vals, ids, (long long)NO_ID, lane, best_vals + row * TRUTH_K,
                        best_ids + row * TRUTH_K);
}

// Block (rows tile, sub-quantizer): the codebook of one sub-quantizer in shared memory, one
// thread per row. Compiled without FMA contraction and fed the host's norms, so distances round
// exactly like the CPU encoder's `norm - 2 * (0 + x0*c0 + x1*c1 + ...)`.
extern "C" __global__ void pq_encode(const float* __restrict__ x, int rows, int dim,
                                     const int* __restrict__ labels, const float* __restrict__ coarse,
                                     const float* __restrict__ codebooks, const float* __restrict__ norms,
                                     int m, int ksub, int dsub, unsigned char* codes) {
    extern __shared__ float book[];
    int sub = blockIdx.y;
    for (int i = threadIdx.x; i < ksub * dsub; i += blockDim.x) {
        book[i] = codebooks[(size_t)sub * ksub * dsub + i];
    }
    __syncthreads();
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    float residual[MAX_DSUB];
    const float* v = x + (size_t)row * dim + sub * dsub;
    const float* c = coarse + (size_t)labels[row] * dim + sub * dsub;
    for (int d = 0; d < dsub; d++) residual[d] = v[d] - c[d];
    float best = POS_INF;
    int best_code = 0;
    for (int k = 0; k < ksub; k++) {
        const float* entry = book + k * dsub;
        float product = 0.0f;
        for (int d = 0; d < dsub; d++) product += residual[d] * entry[d];
        float distance = norms[sub * ksub + k] - 2.0f * product;
        if (distance < best) { best = distance; best_code = k; }
    }
    codes[(size_t)row * m + sub] = (unsigned char)best_code;
}
"#;

fn cuda_error(operation: &'static str, error: impl std::fmt::Debug) -> DeviceError {
    DeviceError::Cuda {
        operation,
        message: format!("{error:?}"),
    }
}

pub struct CudaBackend {
    context: Arc<CudaContext>,
    /// Kernels, GEMMs and downloads.
    stream: Arc<CudaStream>,
    /// Uploads of the next batch, overlapping the current batch's compute.
    copy_stream: Arc<CudaStream>,
    blas: CudaBlas,
    to_half: CudaFunction,
    top_candidates: CudaFunction,
    rescore: CudaFunction,
    pq_encode: CudaFunction,
    top_k_rows: CudaFunction,
    /// Pinned staging is slow to allocate (page locking): slots are kept for the next pass,
    /// which matters for k-means' many small assignment calls.
    slot_pool: Mutex<Vec<Slot>>,
    name: String,
}

pub struct DeviceCentroids {
    dim: usize,
    count: usize,
    fp32: CudaSlice<f32>,
    fp16: CudaSlice<u16>,
    /// Added to each inner product: 0 (inner product) or `-‖c‖² / 2` (L2, as a maximisation).
    bias: CudaSlice<f32>,
    metric: Metric,
    /// Host copy of the squared norms (L2 distances are reported as `‖x‖² − 2·x·c + ‖c‖²`).
    norms: Vec<f32>,
    /// The largest centroid norm: with a batch's largest row norm it bounds every score.
    max_norm: f32,
}

pub struct DeviceCodebook {
    m: usize,
    ksub: usize,
    dsub: usize,
    centroids: CudaSlice<f32>,
    norms: CudaSlice<f32>,
}

/// Exact top-k by inner product for a fixed query set, kept on the device between batches.
pub struct DeviceTopK {
    dim: usize,
    query_count: usize,
    queries: CudaSlice<f32>,
    /// Per query, [`MAX_TRUTH_K`] best so far, best first.
    best_vals: CudaSlice<f32>,
    best_ids: CudaSlice<i64>,
    /// One chunk of host vectors (allocated on the first host batch) and the scores of a
    /// chunk against every query.
    chunk: Option<CudaSlice<f32>>,
    scores: CudaSlice<f32>,
    chunk_rows: usize,
    started: bool,
}

/// One in-flight batch: its pinned staging and result buffers and its rows on the device.
struct Slot {
    dim: usize,
    capacity_rows: usize,
    /// Write-combined pinned memory: the host only writes it, the copy engine reads it.
    input: PinnedHostSlice<f32>,
    x32: CudaSlice<f32>,
    labels: PinnedHostSlice<i32>,
    dots: PinnedHostSlice<f32>,
    codes: PinnedHostSlice<u8>,
    /// `|x|²` of each staged row, computed while staging (the L2 sink needs them).
    norms: Vec<f32>,
    rows: usize,
}

/// What a pipelined pass hands back per batch.
struct BatchResult<'a> {
    /// `|x|²` of each row.
    norms: &'a [f32],
    labels: &'a [i32],
    dots: &'a [f32],
    codes: &'a [u8],
}

fn libraries_present() -> Result<(), DeviceError> {
    // SAFETY: these only try to dlopen the libraries by name.
    let present = unsafe {
        [
            ("libcuda", cudarc::driver::sys::is_culib_present()),
            ("libcublas", blas_sys::is_culib_present()),
            ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, found)| !found)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DeviceError::CudaUnavailable {
        reason: format!(
            "{} not found on the library path (LD_LIBRARY_PATH)",
            missing.join(", ")
        ),
    })
}

impl CudaBackend {
    pub fn open() -> Result<CudaBackend, DeviceError> {
        libraries_present()?;
        // cudarc panics on a library that loads but lacks a symbol (an older CUDA); that must be
        // a fallback to the CPU, not a crash.
        catch_unwind(AssertUnwindSafe(CudaBackend::open_inner)).unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "the cuda libraries panicked while loading".to_string());
            Err(DeviceError::CudaUnavailable { reason })
        })
    }

    fn open_inner() -> Result<CudaBackend, DeviceError> {
        let context = CudaContext::new(0).map_err(|error| DeviceError::CudaUnavailable {
            reason: format!("no gpu answered: {error:?}"),
        })?;
        let (major, minor) = context
            .compute_capability()
            .map_err(|error| cuda_error("query compute capability", error))?;
        let name = context
            .name()
            .map_err(|error| cuda_error("query device name", error))?;
        // Two streams before any allocation: cudarc then orders every buffer's uses across
        // them with events.
        let stream = context
            .new_stream()
            .map_err(|error| cuda_error("create stream", error))?;
        let copy_stream = context
            .new_stream()
            .map_err(|error| cuda_error("create stream", error))?;
        let blas =
            CudaBlas::new(stream.clone()).map_err(|error| cuda_error("cublas init", error))?;
        // PTX for this GPU's own virtual architecture: never newer than what the driver knows.
        let ptx = compile_ptx_with_opts(
            KERNELS,
            CompileOptions {
                fmad: Some(false),
                options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
                ..Default::default()
            },
        )
        .map_err(|error| cuda_error("nvrtc compile", error))?;
        let module = context
            .load_module(ptx)
            .map_err(|error| cuda_error("load kernels", error))?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(|error| cuda_error("load kernel", error))
        };
        Ok(CudaBackend {
            to_half: function("to_half")?,
            top_candidates: function("top_candidates")?,
            rescore: function("rescore")?,
            pq_encode: function("pq_encode")?,
            top_k_rows: function("top_k_rows")?,
            slot_pool: Mutex::new(Vec::new()),
            context,
            stream,
            copy_stream,
            blas,
            name: format!("cuda: {name} (sm_{major}{minor})"),
        })
    }

    pub fn name(&self) -> String {
        self.name.clone()
    }

    fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        host: &[T],
    ) -> Result<CudaSlice<T>, DeviceError> {
        self.stream
            .clone_htod(host)
            .map_err(|error| cuda_error("copy to device", error))
    }

    fn half_of(&self, fp32: &CudaSlice<f32>, len: usize) -> Result<CudaSlice<u16>, DeviceError> {
        let mut fp16 = self
            .stream
            .alloc_zeros::<u16>(len.max(1))
            .map_err(|error| cuda_error("allocate", error))?;
        let n = len as u64;
        let mut launch = self.stream.launch_builder(&self.to_half);
        launch.arg(fp32).arg(&mut fp16).arg(&n);
        // SAFETY: the kernel reads `len` floats and writes `len` halves, both allocated so.
        unsafe { launch.launch(LaunchConfig::for_num_elems(len.max(1) as u32)) }
            .map_err(|error| cuda_error("launch to_half", error))?;
        Ok(fp16)
    }

    pub fn upload_centroids(
        &self,
        host: &[f32],
        dim: usize,
        metric: Metric,
    ) -> Result<DeviceCentroids, DeviceError> {
        let count = host.len() / dim;
        let norms: Vec<f32> = host
            .chunks_exact(dim)
            .map(|centroid| clipedge_linalg::dot::dot(centroid, centroid))
            .collect();
        let bias: Vec<f32> = match metric {
            Metric::InnerProduct => vec![0.0; count],
            Metric::L2 => norms.iter().map(|norm| -0.5 * norm).collect(),
        };
        let max_norm = norms.iter().copied().fold(0.0f32, f32::max).sqrt();
        let fp32 = self.upload(host)?;
        let fp16 = self.half_of(&fp32, host.len())?;
        Ok(DeviceCentroids {
            dim,
            count,
            fp32,
            fp16,
            bias: self.upload(&bias)?,
            metric,
            norms,
            max_norm,
        })
    }

    pub fn upload_codebook(&self, pq: &ProductQuantizer) -> Result<DeviceCodebook, DeviceError> {
        if pq.dsub > MAX_DSUB {
            return Err(DeviceError::Input(format!(
                "the gpu encoder handles sub-vectors of up to {MAX_DSUB} dimensions, got {}",
                pq.dsub
            )));
        }
        Ok(DeviceCodebook {
            m: pq.m,
            ksub: pq.ksub,
            dsub: pq.dsub,
            centroids: self.upload(&pq.centroids)?,
            norms: self.upload(pq.norms())?,
        })
    }

    pub fn search(
        &self,
        centroids: &DeviceCentroids,
        data: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>), DeviceError> {
        let dim = centroids.dim;
        let rows_total = data.len() / dim;
        let mut labels = Vec::with_capacity(rows_total);
        let mut values = Vec::with_capacity(rows_total);
        self.pipelined(centroids, None, data, None, |batch| {
            for (row_norm, (label, product)) in
                batch.norms.iter().zip(batch.labels.iter().zip(batch.dots))
            {
                let label = *label as u32;
                // `|x|²` from staging: the same dot as before, not recomputed on one thread.
                let value = match centroids.metric {
                    Metric::InnerProduct => *product,
                    Metric::L2 => {
                        (row_norm - 2.0 * product + centroids.norms[label as usize]).max(0.0)
                    }
                };
                labels.push(label);
                values.push(value);
            }
        })?;
        Ok((labels, values))
    }

    /// List assignment and residual PQ codes in one pass: each batch crosses the bus once and
    /// its labels never leave the device before the encoder reads them.
    /// With `truth`, each batch is also scored against the gate's queries while it is on the
    /// device (its ids start at the given first id).
    pub fn search_and_encode(
        &self,
        coarse: &DeviceCentroids,
        codebook: &DeviceCodebook,
        data: &[f32],
        truth: Option<(&mut DeviceTopK, u64)>,
    ) -> Result<(Vec<u32>, Vec<u8>), DeviceError> {
        let rows_total = data.len() / coarse.dim;
        let mut labels = Vec::with_capacity(rows_total);
        let mut codes = Vec::with_capacity(rows_total * codebook.m);
        self.pipelined(coarse, Some(codebook), data, truth, |batch| {
            labels.extend(batch.labels.iter().map(|label| *label as u32));
            codes.extend_from_slice(batch.codes);
        })?;
        Ok((labels, codes))
    }

    /// Starts an exact top-[`MAX_TRUTH_K`] over `queries` (row-major, `dim` wide).
    pub fn top_k_start(&self, queries: &[f32], dim: usize) -> Result<DeviceTopK, DeviceError> {
        let query_count = queries.len() / dim;
        let chunk_rows = TRUTH_CHUNK_ROWS.min((TRUTH_SCORE_FLOATS / query_count.max(1)).max(1));
        let allocate = |error| cuda_error("allocate exact top-k", error);
        Ok(DeviceTopK {
            dim,
            query_count,
            queries: self.upload(queries)?,
            best_vals: self
                .stream
                .alloc_zeros::<f32>(query_count * MAX_TRUTH_K)
                .map_err(allocate)?,
            best_ids: self
                .stream
                .alloc_zeros::<i64>(query_count * MAX_TRUTH_K)
                .map_err(allocate)?,
            chunk: None,
            scores: self
                .stream
                .alloc_zeros::<f32>(chunk_rows * query_count)
                .map_err(allocate)?,
            chunk_rows,
            started: false,
        })
    }

    /// Scores `vectors` (ids `first_id, first_id + 1, ...`) against every query in fp32 and
    /// keeps each query's best, uploading them chunk by chunk.
    pub fn top_k_add(
        &self,
        state: &mut DeviceTopK,
        vectors: &[f32],
        first_id: u64,
    ) -> Result<(), DeviceError> {
        let dim = state.dim;
        let mut chunk = match state.chunk.take() {
            Some(chunk) => chunk,
            None => self
                .stream
                .alloc_zeros::<f32>(state.chunk_rows * dim)
                .map_err(|error| cuda_error("allocate exact top-k", error))?,
        };
        let mut result = Ok(());
        for (index, part) in vectors.chunks(state.chunk_rows * dim).enumerate() {
            let part_first_id = first_id + (index * state.chunk_rows) as u64;
            result = self
                .stream
                .memcpy_htod(part, &mut chunk.slice_mut(..part.len()))
                .map_err(|error| cuda_error("copy to device", error))
                .and_then(|()| {
                    self.top_k_device_rows(state, &chunk, part.len() / dim, part_first_id)
                });
            if result.is_err() {
                break;
            }
        }
        state.chunk = Some(chunk);
        result
    }

    /// [`CudaBackend::top_k_add`] for `rows` vectors already on the device (the build's batch
    /// buffer: the batch crosses the bus once for assignment, encoding and the truth).
    fn top_k_device_rows(
        &self,
        state: &mut DeviceTopK,
        x: &CudaSlice<f32>,
        rows: usize,
        first_id: u64,
    ) -> Result<(), DeviceError> {
        let dim = state.dim;
        let warps_config = LaunchConfig {
            grid_dim: ((state.query_count * 32).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut done = 0usize;
        while done < rows {
            let part_rows = state.chunk_rows.min(rows - done);
            let part = x.slice(done * dim..(done + part_rows) * dim);
            self.truth_gemm(state, &part, part_rows)?;
            let (rows_i, cols_i, first_id_i, first) = (
                state.query_count as i32,
                part_rows as i32,
                (first_id + done as u64) as i64,
                i32::from(!state.started),
            );
            let mut launch = self.stream.launch_builder(&self.top_k_rows);
            launch
                .arg(&state.scores)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&first_id_i)
                .arg(&mut state.best_vals)
                .arg(&mut state.best_ids)
                .arg(&first);
            // SAFETY: scores hold query_count × part_rows floats of this part, the best buffers
            // query_count × MAX_TRUTH_K.
            unsafe { launch.launch(warps_config) }
                .map_err(|error| cuda_error("launch top_k_rows", error))?;
            state.started = true;
            done += part_rows;
        }
        Ok(())
    }

    /// `scores[query][row] = query · x[row]` in fp32 (no TF32: this is the ground truth).
    fn truth_gemm(
        &self,
        state: &mut DeviceTopK,
        x: &CudaView<'_, f32>,
        rows: usize,
    ) -> Result<(), DeviceError> {
        let dim = state.dim;
        let (a, _read_a) = x.device_ptr(&self.stream);
        let (b, _read_b) = state.queries.device_ptr(&self.stream);
        let (c, _write_c) = state.scores.device_ptr_mut(&self.stream);
        // Column-major view: scoresᵀ (rows × queries) = x (stored dim × rows, transposed)
        // · queriesᵀ (dim × queries) — i.e. row-major scores[queries][rows].
        // SAFETY: the pointers cover rows × dim, queries × dim and queries × rows floats.
        unsafe {
            self.gemm_transposed_a(
                (rows, state.query_count, dim),
                1.0,
                (a, b, c),
                blas_sys::cudaDataType::CUDA_R_32F,
            )
        }
        .map_err(|error| cuda_error("cublas sgemm", error))
    }

    /// `C = alpha · Aᵀ · B` in cuBLAS' column-major terms, fp32 accumulate, where `A` is
    /// `k × m`, `B` is `k × n` and `C` is `m × n` (all packed), elements of `data_type`:
    /// row-major, `C[n][m]` holds the dot products of `B`'s and `A`'s `k`-long rows.
    ///
    /// # Safety
    /// The pointers must address device buffers of at least `k·m`, `k·n` and `m·n` elements.
    unsafe fn gemm_transposed_a(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, b, c): (u64, u64, u64),
        data_type: blas_sys::cudaDataType,
    ) -> Result<(), cudarc::cublas::result::CublasError> {
        let beta = 0.0f32;
        blas_result::gemm_ex(
            *self.blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m as i32,
            n as i32,
            k as i32,
            (&alpha as *const f32).cast(),
            a as *const _,
            data_type,
            k as i32,
            b as *const _,
            data_type,
            k as i32,
            (&beta as *const f32).cast(),
            c as *mut _,
            data_type,
            m as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }

    /// Each query's best `k` ids, best first (fewer when fewer vectors were added).
    pub fn top_k_finish(&self, state: DeviceTopK, k: usize) -> Result<Vec<Vec<u64>>, DeviceError> {
        let download = |error| cuda_error("copy to host", error);
        let ids = self.stream.clone_dtoh(&state.best_ids).map_err(download)?;
        if !state.started {
            return Ok(vec![Vec::new(); state.query_count]);
        }
        Ok(ids
            .chunks_exact(MAX_TRUTH_K)
            .map(|best| {
                best.iter()
                    .take(k)
                    .filter(|id| **id != NO_ID)
                    .map(|id| *id as u64)
                    .collect()
            })
            .collect())
    }

    fn new_slot(
        &self,
        batch_rows: usize,
        dim: usize,
        code_bytes: usize,
    ) -> Result<Slot, DeviceError> {
        let pinned = |operation| move |error| cuda_error(operation, error);
        // SAFETY: pinned buffers are written (input by the host, results by the device)
        // before they are read, and only their written prefix is read.
        let (input, labels, dots, codes) = unsafe {
            (
                self.context
                    .alloc_pinned::<f32>(batch_rows * dim)
                    .map_err(pinned("allocate pinned input"))?,
                // Not write-combined: the host reads these back.
                self.context
                    .alloc_pinned_with_flags::<i32>(batch_rows, 0)
                    .map_err(pinned("allocate pinned labels"))?,
                self.context
                    .alloc_pinned_with_flags::<f32>(batch_rows, 0)
                    .map_err(pinned("allocate pinned products"))?,
                self.context
                    .alloc_pinned_with_flags::<u8>((batch_rows * code_bytes).max(1), 0)
                    .map_err(pinned("allocate pinned codes"))?,
            )
        };
        let x32 = self
            .stream
            .alloc_zeros::<f32>(batch_rows * dim)
            .map_err(|error| cuda_error("allocate", error))?;
        Ok(Slot {
            dim,
            capacity_rows: batch_rows,
            input,
            x32,
            labels,
            dots,
            codes,
            norms: Vec::with_capacity(batch_rows),
            rows: 0,
        })
    }

    /// Runs every batch of `data` through the search (and the encoder, given a codebook),
    /// two batches in flight, handing each batch's results to `sink` in order.
    fn pipelined(
        &self,
        centroids: &DeviceCentroids,
        codebook: Option<&DeviceCodebook>,
        data: &[f32],
        mut truth: Option<(&mut DeviceTopK, u64)>,
        mut sink: impl FnMut(BatchResult<'_>),
    ) -> Result<(), DeviceError> {
        let dim = centroids.dim;
        let (mut scores, chunk_cols, batch_rows) = self.score_buffer(centroids.count)?;
        let code_bytes = codebook.map_or(0, |book| book.m);
        let batches: Vec<&[f32]> = data.chunks(batch_rows * dim).collect();
        let mut slots = self.take_slots(batches.len().min(2), batch_rows, dim, code_bytes)?;
        for step in 0..=batches.len() {
            if let Some(batch) = batches.get(step) {
                let slot = &mut slots[step % 2];
                self.enqueue(slot, batch, centroids, codebook, &mut scores, chunk_cols)?;
                if let Some((top, first_id)) = truth.as_mut() {
                    let batch_first_id = *first_id + (step * batch_rows) as u64;
                    self.top_k_device_rows(top, &slot.x32, slot.rows, batch_first_id)?;
                }
            }
            let Some(finished) = step.checked_sub(1) else {
                continue;
            };
            let slot = &slots[finished % 2];
            let rows = slot.rows;
            let synced = |error| cuda_error("wait for a batch", error);
            let labels = slot.labels.as_slice().map_err(synced)?;
            let dots = slot.dots.as_slice().map_err(synced)?;
            let codes = slot.codes.as_slice().map_err(synced)?;
            sink(BatchResult {
                norms: &slot.norms[..rows],
                labels: &labels[..rows],
                dots: &dots[..rows],
                codes: &codes[..rows * code_bytes],
            });
        }
        let mut pool = self
            .slot_pool
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        pool.extend(slots);
        pool.truncate(2);
        Ok(())
    }

    /// `count` slots for batches of up to `batch_rows` rows, from the pool where they fit.
    fn take_slots(
        &self,
        count: usize,
        batch_rows: usize,
        dim: usize,
        code_bytes: usize,
    ) -> Result<Vec<Slot>, DeviceError> {
        let mut pooled = std::mem::take(
            &mut *self
                .slot_pool
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        let mut slots = Vec::with_capacity(count);
        while slots.len() < count {
            let Some(mut slot) = pooled.pop() else {
                slots.push(self.new_slot(batch_rows, dim, code_bytes)?);
                continue;
            };
            if slot.dim != dim || slot.capacity_rows < batch_rows {
                continue;
            }
            // A download fills the whole pinned buffer, so it must match the device's codes
            // (`capacity_rows × m`) exactly.
            let code_len = (slot.capacity_rows * code_bytes).max(1);
            if slot.codes.len() != code_len {
                // SAFETY: as in `new_slot`: written by the device before it is read.
                slot.codes = unsafe { self.context.alloc_pinned_with_flags::<u8>(code_len, 0) }
                    .map_err(|error| cuda_error("allocate pinned codes", error))?;
            }
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Stages `batch` in the slot's pinned buffer, uploads it on the copy stream and queues its
    /// search (and encode) and the downloads on the compute stream; returns without waiting.
    fn enqueue(
        &self,
        slot: &mut Slot,
        batch: &[f32],
        centroids: &DeviceCentroids,
        codebook: Option<&DeviceCodebook>,
        scores: &mut CudaSlice<u16>,
        chunk_cols: usize,
    ) -> Result<(), DeviceError> {
        let dim = centroids.dim;
        let rows = batch.len() / dim;
        // Waits until this slot's previous upload has left the staging buffer.
        let staging = slot
            .input
            .as_mut_slice()
            .map_err(|error| cuda_error("wait for an upload", error))?;
        slot.norms.clear();
        slot.norms.resize(rows, 0.0);
        let max_row_norm = staging[..batch.len()]
            .par_chunks_mut(STAGE_ROWS * dim)
            .zip(batch.par_chunks(STAGE_ROWS * dim))
            .zip(slot.norms.par_chunks_mut(STAGE_ROWS))
            .map(|((staged, rows), norms)| {
                staged.copy_from_slice(rows);
                let mut max = 0.0f32;
                for (norm, row) in norms.iter_mut().zip(rows.chunks_exact(dim)) {
                    *norm = clipedge_linalg::dot::dot(row, row);
                    max = max.max(*norm);
                }
                max
            })
            .reduce(|| 0.0, f32::max)
            .sqrt();
        self.copy_stream
            .memcpy_htod(&slot.input, &mut slot.x32)
            .map_err(|error| cuda_error("copy to device", error))?;
        // Cauchy–Schwarz: every |x·c| of the batch is at most this product, so scaled scores
        // stay within ±1, where fp16 keeps 11 bits of precision and cannot overflow.
        let bound = max_row_norm * centroids.max_norm;
        let scale = if bound.is_finite() && bound > 0.0 {
            1.0 / bound
        } else {
            1.0
        };
        // Results are allocated at the slot's full size: a download into pinned memory copies
        // the whole pinned buffer.
        let capacity = slot.capacity_rows;
        let (labels, dots) = self.search_on_device(
            centroids, &slot.x32, rows, capacity, scores, chunk_cols, scale,
        )?;
        let download = |error| cuda_error("copy to host", error);
        self.stream
            .memcpy_dtoh(&labels, &mut slot.labels)
            .map_err(download)?;
        self.stream
            .memcpy_dtoh(&dots, &mut slot.dots)
            .map_err(download)?;
        if let Some(codebook) = codebook {
            let codes =
                self.encode_on_device(codebook, centroids, &slot.x32, &labels, rows, capacity)?;
            self.stream
                .memcpy_dtoh(&codes, &mut slot.codes)
                .map_err(download)?;
        }
        slot.rows = rows;
        Ok(())
    }

    /// Labels and inner products of `rows` vectors already on the device, in buffers of
    /// `out_rows ≥ rows` entries.
    #[allow(clippy::too_many_arguments)]
    fn search_on_device(
        &self,
        centroids: &DeviceCentroids,
        x32: &CudaSlice<f32>,
        rows: usize,
        out_rows: usize,
        scores: &mut CudaSlice<u16>,
        chunk_cols: usize,
        scale: f32,
    ) -> Result<(CudaSlice<i32>, CudaSlice<f32>), DeviceError> {
        let dim = centroids.dim;
        let x16 = self.half_of(x32, rows * dim)?;
        let mut best_vals = self
            .stream
            .alloc_zeros::<f32>(rows * CANDIDATES)
            .map_err(|error| cuda_error("allocate", error))?;
        let mut best_idx = self
            .stream
            .alloc_zeros::<i32>(rows * CANDIDATES)
            .map_err(|error| cuda_error("allocate", error))?;
        let warps_config = LaunchConfig {
            grid_dim: ((rows * 32).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let has_bias = i32::from(centroids.metric == Metric::L2);
        let mut offset = 0usize;
        while offset < centroids.count {
            let cols = chunk_cols.min(centroids.count - offset);
            self.scores_gemm(centroids, &x16, rows, offset, cols, scale, scores)?;
            let (rows_i, cols_i, offset_i, first) = (
                rows as i32,
                cols as i32,
                offset as i32,
                i32::from(offset == 0),
            );
            let mut launch = self.stream.launch_builder(&self.top_candidates);
            launch
                .arg(&*scores)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&offset_i)
                .arg(&centroids.bias)
                .arg(&scale)
                .arg(&has_bias)
                .arg(&mut best_vals)
                .arg(&mut best_idx)
                .arg(&first);
            // SAFETY: scores hold rows × cols halves of this chunk; the candidate buffers
            // rows × CANDIDATES; bias covers every centroid.
            unsafe { launch.launch(warps_config) }
                .map_err(|error| cuda_error("launch top_candidates", error))?;
            offset += cols;
        }
        let mut labels = self
            .stream
            .alloc_zeros::<i32>(out_rows.max(rows))
            .map_err(|error| cuda_error("allocate", error))?;
        let mut dots = self
            .stream
            .alloc_zeros::<f32>(out_rows.max(rows))
            .map_err(|error| cuda_error("allocate", error))?;
        let (rows_i, dim_i) = (rows as i32, dim as i32);
        let mut launch = self.stream.launch_builder(&self.rescore);
        launch
            .arg(x32)
            .arg(&rows_i)
            .arg(&dim_i)
            .arg(&centroids.fp32)
            .arg(&centroids.bias)
            .arg(&best_idx)
            .arg(&mut labels)
            .arg(&mut dots);
        // SAFETY: x32 holds at least rows × dim, centroids count × dim, candidates index below
        // count.
        unsafe { launch.launch(warps_config) }
            .map_err(|error| cuda_error("launch rescore", error))?;
        Ok((labels, dots))
    }

    fn score_buffer(&self, count: usize) -> Result<(CudaSlice<u16>, usize, usize), DeviceError> {
        // An even chunk width keeps every score row 4-byte aligned for paired loads.
        let chunk_cols = count.min(SCORE_BUFFER_HALVES / MAX_BATCH_ROWS);
        let batch_rows = MAX_BATCH_ROWS.min((SCORE_BUFFER_HALVES / chunk_cols).max(1));
        let scores = self
            .stream
            .alloc_zeros::<u16>(batch_rows * chunk_cols)
            .map_err(|error| cuda_error("allocate scores", error))?;
        Ok((scores, chunk_cols, batch_rows))
    }

    /// `scores[row][c] = scale · x[row] · centroid[offset + c]` for `cols` centroids, fp16 in,
    /// fp32 accumulate, fp16 out.
    #[allow(clippy::too_many_arguments)]
    fn scores_gemm(
        &self,
        centroids: &DeviceCentroids,
        x16: &CudaSlice<u16>,
        rows: usize,
        offset: usize,
        cols: usize,
        scale: f32,
        scores: &mut CudaSlice<u16>,
    ) -> Result<(), DeviceError> {
        let dim = centroids.dim;
        let chunk = centroids.fp16.slice(offset * dim..(offset + cols) * dim);
        let (a, _read_a) = chunk.device_ptr(&self.stream);
        let (b, _read_b) = x16.device_ptr(&self.stream);
        let (c, _write_c) = scores.device_ptr_mut(&self.stream);
        // Column-major view: scoresᵀ (cols × rows) = chunk (cols × dim, stored as dim × cols,
        // hence transposed) · xᵀ (dim × rows) — i.e. row-major scores[rows][cols].
        // SAFETY: the pointers cover cols × dim, rows × dim and rows × cols elements.
        unsafe {
            self.gemm_transposed_a(
                (cols, rows, dim),
                scale,
                (a, b, c),
                blas_sys::cudaDataType::CUDA_R_16F,
            )
        }
        .map_err(|error| cuda_error("cublas gemm", error))
    }

    pub fn encode_residuals(
        &self,
        codebook: &DeviceCodebook,
        coarse: &DeviceCentroids,
        data: &[f32],
        labels: &[u32],
    ) -> Result<Vec<u8>, DeviceError> {
        let dim = coarse.dim;
        let mut codes = Vec::with_capacity(labels.len() * codebook.m);
        for (batch, batch_labels) in data
            .chunks(MAX_BATCH_ROWS * dim)
            .zip(labels.chunks(MAX_BATCH_ROWS))
        {
            let x = self.upload(batch)?;
            let signed: Vec<i32> = batch_labels.iter().map(|label| *label as i32).collect();
            let labels_device = self.upload(&signed)?;
            let rows = batch_labels.len();
            let out = self.encode_on_device(codebook, coarse, &x, &labels_device, rows, rows)?;
            codes.extend(
                self.stream
                    .clone_dtoh(&out)
                    .map_err(|error| cuda_error("copy to host", error))?,
            );
        }
        Ok(codes)
    }

    fn encode_on_device(
        &self,
        codebook: &DeviceCodebook,
        coarse: &DeviceCentroids,
        x: &CudaSlice<f32>,
        labels: &CudaSlice<i32>,
        rows: usize,
        out_rows: usize,
    ) -> Result<CudaSlice<u8>, DeviceError> {
        let mut out = self
            .stream
            .alloc_zeros::<u8>((out_rows.max(rows) * codebook.m).max(1))
            .map_err(|error| cuda_error("allocate", error))?;
        let (rows_i, dim_i, m_i, ksub_i, dsub_i) = (
            rows as i32,
            coarse.dim as i32,
            codebook.m as i32,
            codebook.ksub as i32,
            codebook.dsub as i32,
        );
        let config = LaunchConfig {
            grid_dim: (rows.div_ceil(256) as u32, codebook.m as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (codebook.ksub * codebook.dsub * 4) as u32,
        };
        let mut launch = self.stream.launch_builder(&self.pq_encode);
        launch
            .arg(x)
            .arg(&rows_i)
            .arg(&dim_i)
            .arg(labels)
            .arg(&coarse.fp32)
            .arg(&codebook.centroids)
            .arg(&codebook.norms)
            .arg(&m_i)
            .arg(&ksub_i)
            .arg(&dsub_i)
            .arg(&mut out);
        // SAFETY: x is rows × dim, labels index the coarse centroids (checked by the caller or
        // produced by the search), the codebook holds m × ksub × dsub floats, out rows × m bytes.
        unsafe { launch.launch(config) }.map_err(|error| cuda_error("launch pq_encode", error))?;
        Ok(out)
    }
}
