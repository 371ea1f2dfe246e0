//! The recall gate: a new generation is published only if its recall@10 on a sample of
//! queries, against exact ground truth over the whole input, is high enough and not much
//! below the live generation's.
//!
//! - [`ExactTopK`] computes the ground truth while the input streams past, in memory
//!   proportional to queries × k (never to the number of vectors).
//! - [`evaluate_recall`] searches the new generation as a reader would.
//! - [`decide`] applies the thresholds; [`write_gate_record`] stores the outcome as
//!   `generations/<name>/gate.json`, which the next run reads to compare against.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};

use bytes::Bytes;
use clipedge_format::{generation_path, Manifest, SearchDefaults};
use clipedge_index::{IndexError, IndexReader, OpenOptions, SearchParams};
use clipedge_storage::{Storage, StorageError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::info;

use crate::device::{Device, DeviceTopK};

/// The object a generation's gate outcome is stored in.
pub const GATE_FILE: &str = "gate.json";

#[derive(Debug, Error)]
pub enum GateError {
    #[error("invalid recall gate input: {0}")]
    Input(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot search generation {generation}: {source}")]
    Index {
        generation: String,
        // Boxed: an index error is large, and every gate result would carry its size.
        source: Box<IndexError>,
    },
    #[error("unreadable gate record {object}: {source}")]
    Record {
        object: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Lifecycle(#[from] crate::LifecycleError),
    #[error("exact top-k on the device failed: {0}")]
    Device(String),
}

/// A candidate neighbour; `Ord` says which is better: the higher score, then the lower id
/// (so ties break the same way whatever order the vectors arrive in).
#[derive(Debug, Clone, Copy)]
struct Neighbour {
    score: f32,
    id: u64,
}

impl Ord for Neighbour {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Neighbour {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Neighbour {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Neighbour {}

/// Bytes of base vectors one task scores every query against: about half a core's L2 cache.
const TILE_BYTES: usize = 512 << 10;

/// Offers `candidate` to a heap of the best `k`.
fn offer_one(heap: &mut BinaryHeap<Reverse<Neighbour>>, k: usize, candidate: Neighbour) {
    if heap.len() < k {
        heap.push(Reverse(candidate));
        return;
    }
    let Some(Reverse(worst)) = heap.peek() else {
        return;
    };
    if candidate > *worst {
        heap.pop();
        heap.push(Reverse(candidate));
    }
}

/// Exact top-`k` by inner product for a fixed set of queries, fed the base vectors batch by
/// batch. Each query keeps a heap of its `k` best, so memory is O(queries × k) whatever the
/// number of vectors, and the result does not depend on how the input was split.
#[derive(Debug)]
pub struct ExactTopK<'d> {
    /// Where a GPU computes the truth instead of the heaps below (fp32 either way).
    device: Option<DeviceTopK<'d>>,
    queries: Vec<f32>,
    dim: usize,
    k: usize,
    /// Per query, its best `k` so far with the worst on top.
    best: Vec<BinaryHeap<Reverse<Neighbour>>>,
    vectors_seen: u64,
    tile_rows: usize,
}

impl<'d> ExactTopK<'d> {
    /// On `device` when it is a GPU (one fp32 SGEMM per chunk against all queries and a
    /// selection kernel: the CPU's 28 s for 200 queries × 10M vectors on 16 cores becomes
    /// seconds), else on the CPU as [`ExactTopK::new`].
    pub fn on_device(
        device: &'d Device,
        queries: Vec<f32>,
        dim: usize,
        k: usize,
    ) -> Result<ExactTopK<'d>, GateError> {
        let mut top = ExactTopK::new(queries, dim, k)?;
        top.device = device
            .exact_top_k(&top.queries, dim, k)
            .map_err(|error| GateError::Device(error.to_string()))?;
        Ok(top)
    }

    /// On the CPU. `queries` is row-major, `dim` wide.
    pub fn new(queries: Vec<f32>, dim: usize, k: usize) -> Result<ExactTopK<'d>, GateError> {
        if dim == 0 || !queries.len().is_multiple_of(dim) {
            return Err(GateError::Input(format!(
                "{} query floats do not form rows of dimension {dim}",
                queries.len()
            )));
        }
        if k == 0 {
            return Err(GateError::Input("k must be at least 1".to_string()));
        }
        if let Some(position) = queries.iter().position(|value| !value.is_finite()) {
            return Err(GateError::Input(format!(
                "query {} has a non-finite value",
                position / dim
            )));
        }
        let query_count = queries.len() / dim;
        Ok(ExactTopK {
            device: None,
            queries,
            dim,
            k,
            best: (0..query_count)
                .map(|_| BinaryHeap::with_capacity(k + 1))
                .collect(),
            vectors_seen: 0,
            tile_rows: (TILE_BYTES / (dim * 4)).max(1),
        })
    }

    /// Smaller tiles, so tests' batches cross tile boundaries.
    #[cfg(test)]
    fn with_tile_rows(mut self, tile_rows: usize) -> Self {
        self.tile_rows = tile_rows.max(1);
        self
    }

    pub fn query_count(&self) -> usize {
        self.best.len()
    }

    pub fn vectors_seen(&self) -> u64 {
        self.vectors_seen
    }

    /// Adds `vectors` (row-major, `dim` wide) with ids `first_id, first_id + 1, ...`.
    pub fn add_batch(&mut self, vectors: &[f32], first_id: u64) -> Result<(), GateError> {
        if let Some(device) = self.device_feed(vectors, first_id)? {
            return device
                .add_batch(vectors, first_id)
                .map_err(|error| GateError::Device(error.to_string()));
        }
        self.check_batch(vectors, first_id)?;
        self.add_batch_on_cpu(vectors, first_id);
        self.vectors_seen += (vectors.len() / self.dim) as u64;
        Ok(())
    }

    /// For a GPU top-k: checks and counts `vectors` as [`ExactTopK::add_batch`] does and hands
    /// back the device top-k for the build's own pass over the batch to feed
    /// ([`crate::device::Device::assign_encode_and_truth`]). `None` on the CPU: call
    /// `add_batch` instead.
    pub fn device_feed(
        &mut self,
        vectors: &[f32],
        first_id: u64,
    ) -> Result<Option<&mut DeviceTopK<'d>>, GateError> {
        if self.device.is_none() {
            return Ok(None);
        }
        self.check_batch(vectors, first_id)?;
        self.vectors_seen += (vectors.len() / self.dim) as u64;
        Ok(self.device.as_mut())
    }

    fn check_batch(&self, vectors: &[f32], first_id: u64) -> Result<(), GateError> {
        let dim = self.dim;
        if !vectors.len().is_multiple_of(dim) {
            return Err(GateError::Input(format!(
                "a batch of {} floats does not form rows of dimension {dim}",
                vectors.len()
            )));
        }
        let rows = (vectors.len() / dim) as u64;
        // A NaN would outrank every real neighbour under the total order used for ties.
        if let Some(row) = vectors
            .par_chunks(dim)
            .position_first(|row| row.iter().any(|value| !value.is_finite()))
        {
            return Err(GateError::Input(format!(
                "vector {} has a non-finite value",
                first_id.saturating_add(row as u64)
            )));
        }
        // The GPU keeps ids as i64.
        if first_id
            .checked_add(rows)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(GateError::Input(format!(
                "ids from {first_id} overflow for a batch of {rows} vectors"
            )));
        }
        Ok(())
    }

    fn add_batch_on_cpu(&mut self, vectors: &[f32], first_id: u64) {
        let dim = self.dim;
        let k = self.k;
        // Each task takes one cache-sized tile of the batch and scores every query against it
        // with one SGEMM, so the batch is read from memory once (tasks over queries read it
        // once per task: at 10M vectors and 200 queries that was 37 s of a 178 s run on 16
        // cores). Each tile keeps its own best `k` per query; those merge into the heaps after.
        let tile_rows = self.tile_rows;
        let queries = &self.queries;
        let query_count = self.best.len();
        let tile_best: Vec<Vec<Vec<Neighbour>>> = vectors
            .par_chunks(tile_rows * dim)
            .enumerate()
            .map(|(tile_index, tile)| {
                let tile_first_id = first_id + (tile_index * tile_rows) as u64;
                let rows = tile.len() / dim;
                let mut products = vec![0f32; rows * query_count];
                clipedge_linalg::gemm::inner_products(
                    tile,
                    rows,
                    dim,
                    queries,
                    query_count,
                    &mut products,
                );
                let mut heap = BinaryHeap::with_capacity(k + 1);
                (0..query_count)
                    .map(|query| {
                        heap.clear();
                        for (row, row_products) in products.chunks_exact(query_count).enumerate() {
                            offer_one(
                                &mut heap,
                                k,
                                Neighbour {
                                    score: row_products[query],
                                    id: tile_first_id + row as u64,
                                },
                            );
                        }
                        heap.drain().map(|Reverse(neighbour)| neighbour).collect()
                    })
                    .collect()
            })
            .collect();
        self.best
            .par_iter_mut()
            .enumerate()
            .for_each(|(query, heap)| {
                for tile in &tile_best {
                    for neighbour in &tile[query] {
                        offer_one(heap, k, *neighbour);
                    }
                }
            });
    }

    /// Whether a GPU computes this top-k.
    pub fn is_on_device(&self) -> bool {
        self.device.is_some()
    }

    /// The ids of each query's best `k` (fewer when fewer vectors were added), best first.
    pub fn finish(self) -> Result<Vec<Vec<u64>>, GateError> {
        if let Some(device) = self.device {
            return device
                .finish()
                .map_err(|error| GateError::Device(error.to_string()));
        }
        Ok(self
            .best
            .into_iter()
            .map(|heap| {
                let mut neighbours: Vec<Neighbour> = heap
                    .into_iter()
                    .map(|Reverse(neighbour)| neighbour)
                    .collect();
                neighbours.sort_by(|left, right| right.cmp(left));
                neighbours
                    .into_iter()
                    .map(|neighbour| neighbour.id)
                    .collect()
            })
            .collect())
    }
}

/// The generation a gate measures: one whose manifest is written, or one whose manifest is
/// still in hand (the builder writes it after the gate, with the measured search defaults).
#[derive(Debug, Clone, Copy)]
pub enum Candidate<'a> {
    Written(&'a str),
    Unfinished(&'a Manifest),
}

impl<'a> Candidate<'a> {
    pub fn name(self) -> &'a str {
        match self {
            Candidate::Written(name) => name,
            Candidate::Unfinished(manifest) => &manifest.generation,
        }
    }
}

/// A generation opened for measuring, its queries checked against its dimension.
struct Measured<'a> {
    reader: IndexReader,
    generation: &'a str,
    queries: &'a [f32],
    truth: &'a [Vec<u64>],
    /// Neighbours a query can find at best (fewer than k when the index holds fewer).
    expected: usize,
    k: usize,
}

impl<'a> Measured<'a> {
    async fn open(
        storage: &Storage,
        candidate: Candidate<'a>,
        queries: &'a [f32],
        truth: &'a [Vec<u64>],
        k: usize,
    ) -> Result<Measured<'a>, GateError> {
        let generation = candidate.name();
        if k == 0 {
            return Err(GateError::Input("k must be at least 1, got 0".to_string()));
        }
        let options = match candidate {
            Candidate::Written(name) => OpenOptions {
                generation: Some(name.to_string()),
                ..OpenOptions::default()
            },
            Candidate::Unfinished(manifest) => OpenOptions {
                manifest: Some(manifest.clone()),
                ..OpenOptions::default()
            },
        };
        let reader = IndexReader::open(storage.clone(), options)
            .await
            .map_err(|source| GateError::Index {
                generation: generation.to_string(),
                source: Box::new(source),
            })?;
        let dim = reader.manifest().dim as usize;
        if queries.is_empty() || !queries.len().is_multiple_of(dim) {
            return Err(GateError::Input(format!(
                "{} query floats do not form rows of the index's dimension {dim}",
                queries.len()
            )));
        }
        let query_count = queries.len() / dim;
        if truth.len() != query_count {
            return Err(GateError::Input(format!(
                "{} ground-truth rows for {query_count} queries",
                truth.len()
            )));
        }
        let expected = k.min(usize::try_from(reader.manifest().count).unwrap_or(usize::MAX));
        if let Some(short) = truth.iter().find(|true_ids| true_ids.len() < expected) {
            return Err(GateError::Input(format!(
                "ground truth has {} neighbours for a query, recall@{k} needs {expected}",
                short.len()
            )));
        }
        Ok(Measured {
            reader,
            generation,
            queries,
            truth,
            expected,
            k,
        })
    }

    /// Mean recall@k at `nprobe` and `rerank`.
    async fn recall(&self, nprobe: usize, rerank: usize) -> Result<f64, GateError> {
        if nprobe == 0 {
            return Err(GateError::Input(
                "nprobe must be at least 1, got 0".to_string(),
            ));
        }
        let dim = self.reader.manifest().dim as usize;
        let params = SearchParams {
            parallel: true,
            ..SearchParams::new(self.k, nprobe, rerank)
        };
        let mut recall_sum = 0f64;
        for (query, true_ids) in self.queries.chunks_exact(dim).zip(self.truth) {
            let relevant: HashSet<u64> = true_ids[..self.expected].iter().copied().collect();
            let result =
                self.reader
                    .search(query, &params)
                    .await
                    .map_err(|source| GateError::Index {
                        generation: self.generation.to_string(),
                        source: Box::new(source),
                    })?;
            let found = result
                .hits
                .iter()
                .take(self.k)
                .filter(|hit| relevant.contains(&hit.id))
                .count();
            recall_sum += found as f64 / self.expected.max(1) as f64;
        }
        let recall = recall_sum / self.truth.len() as f64;
        info!(
            generation = self.generation,
            queries = self.truth.len(),
            k = self.k,
            nprobe,
            rerank,
            recall,
            "measured recall"
        );
        Ok(recall)
    }
}

/// Mean recall@k of `generation` over `queries` (row-major, the index's dimension):
/// `|found ∩ truth| / k` per query, where `truth` holds each query's exact neighbours, best
/// first (at least `k` of them unless the index holds fewer vectors).
pub async fn evaluate_recall(
    storage: &Storage,
    generation: &str,
    queries: &[f32],
    truth: &[Vec<u64>],
    k: usize,
    nprobe: usize,
    rerank: usize,
) -> Result<f64, GateError> {
    let measured =
        Measured::open(storage, Candidate::Written(generation), queries, truth, k).await?;
    measured.recall(nprobe, rerank).await
}

/// The nprobe values a calibrating gate tries, in order: `from`, then about 1.5× each step
/// (16, 24, 32, 48, 64, 96, …), ending at `max` (which is always tried).
pub fn nprobe_ladder(from: usize, max: usize) -> Vec<usize> {
    let from = from.max(1);
    let max = max.max(from);
    let mut ladder = vec![from];
    let mut nprobe = from;
    while nprobe < max {
        // Steps alternate ×1.5 and ×4/3 on powers of two (16 → 24 → 32), at least one list.
        let next = if nprobe.is_power_of_two() {
            nprobe + (nprobe / 2).max(1)
        } else {
            nprobe.next_power_of_two()
        };
        nprobe = next.min(max);
        ladder.push(nprobe);
    }
    ladder
}

/// The gate's verdict on a new generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub passed: bool,
    pub recall_at_10: f64,
    /// The live generation's recorded recall, if it has a gate record.
    pub previous_recall_at_10: Option<f64>,
    pub min_recall: f64,
    pub max_regression: f64,
    /// Why it passed or failed, in words.
    pub reason: String,
}

/// Passes when `recall >= min_recall` and, if the live generation's recall is known,
/// `recall >= previous - max_regression`. A recall that is not a number never passes.
pub fn decide(
    recall: f64,
    previous: Option<f64>,
    min_recall: f64,
    max_regression: f64,
) -> GateDecision {
    let verdict = |passed: bool, reason: String| GateDecision {
        passed,
        recall_at_10: recall,
        previous_recall_at_10: previous,
        min_recall,
        max_regression,
        reason,
    };
    if !recall.is_finite() {
        return verdict(false, format!("recall@10 is {recall}, not a measurement"));
    }
    if recall < min_recall {
        return verdict(
            false,
            format!("recall@10 {recall:.4} is below the minimum {min_recall:.4}"),
        );
    }
    let Some(previous) = previous.filter(|previous| previous.is_finite()) else {
        return verdict(
            true,
            format!(
                "recall@10 {recall:.4} meets the minimum {min_recall:.4} (no live recall to compare)"
            ),
        );
    };
    let floor = previous - max_regression;
    if recall < floor {
        return verdict(
            false,
            format!(
                "recall@10 {recall:.4} regresses more than {max_regression:.4} from the live generation's {previous:.4}"
            ),
        );
    }
    verdict(
        true,
        format!(
            "recall@10 {recall:.4} meets the minimum {min_recall:.4} and is within {max_regression:.4} of the live generation's {previous:.4}"
        ),
    )
}

/// `generations/<name>/gate.json`: the gate's decision and how recall was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    pub generation: String,
    /// Queries recall was measured on.
    pub queries: u64,
    /// The nprobe judged: the generation's default (`search_defaults` in its manifest).
    pub nprobe: u32,
    pub rerank: u32,
    pub measured_unix_ms: u64,
    /// Recall at each nprobe a calibrating gate tried, smallest first (empty for a fixed
    /// nprobe).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<ProbeRecall>,
    #[serde(flatten)]
    pub decision: GateDecision,
}

/// One measurement of a calibrating gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecall {
    pub nprobe: u32,
    pub recall_at_10: f64,
}

/// Stores `record` as its generation's `gate.json` (create-only: a generation is gated once).
pub async fn write_gate_record(storage: &Storage, record: &GateRecord) -> Result<(), GateError> {
    clipedge_format::validate_generation_name(&record.generation).map_err(|source| {
        GateError::Input(format!(
            "invalid generation name {:?}: {source}",
            record.generation
        ))
    })?;
    let object = generation_path(&record.generation, GATE_FILE);
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|source| GateError::Record {
        object: object.clone(),
        source,
    })?;
    bytes.push(b'\n');
    storage.put_new(&object, Bytes::from(bytes)).await?;
    Ok(())
}

/// The gate record of `generation`, or `None` if it has none (built before the gate existed,
/// or by `clipedge build`).
pub async fn read_gate_record(
    storage: &Storage,
    generation: &str,
) -> Result<Option<GateRecord>, GateError> {
    clipedge_format::validate_generation_name(generation).map_err(|source| {
        GateError::Input(format!("invalid generation name {generation:?}: {source}"))
    })?;
    let object = generation_path(generation, GATE_FILE);
    let Some(versioned) = storage.get_if_exists(&object).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&versioned.bytes)
        .map_err(|source| GateError::Record { object, source })?;
    Ok(Some(record))
}

/// The recall recorded for the generation `CURRENT` names: what a new generation is compared
/// against, so read it before publishing. `None` when nothing is published or the live
/// generation has no gate record.
pub async fn live_recall(storage: &Storage) -> Result<Option<f64>, GateError> {
    let Some(current) = crate::lifecycle::current_generation(storage).await? else {
        return Ok(None);
    };
    let record = read_gate_record(storage, &current).await?;
    Ok(record.map(|record| record.decision.recall_at_10))
}

/// How a generation is gated.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Neighbours compared per query (10: the gate's figure is recall@10).
    pub k: usize,
    /// Lists probed: the generation is judged at the first nprobe of
    /// [`nprobe_ladder`]`(nprobe, max_nprobe)` that meets the target (the minimum recall, or
    /// the live generation's recall less the allowed regression if that is higher), and served
    /// with it by default. `max_nprobe == nprobe` judges at one fixed nprobe.
    pub nprobe: usize,
    pub max_nprobe: usize,
    pub rerank: usize,
    pub min_recall: f64,
    pub max_regression: f64,
}

impl GateConfig {
    /// Judged at one fixed `nprobe`.
    pub fn new(nprobe: usize, rerank: usize, min_recall: f64, max_regression: f64) -> Self {
        GateConfig {
            k: 10,
            nprobe,
            max_nprobe: nprobe,
            rerank,
            min_recall,
            max_regression,
        }
    }

    /// Judged at the smallest nprobe from `from` up to `max` that meets the target.
    pub fn calibrating(
        from: usize,
        max: usize,
        rerank: usize,
        min_recall: f64,
        max_regression: f64,
    ) -> Self {
        GateConfig {
            max_nprobe: max.max(from),
            ..GateConfig::new(from, rerank, min_recall, max_regression)
        }
    }
}

/// The whole gate for an unpublished generation: measures its recall (calibrating nprobe when
/// the config asks), compares it with the live generation's recorded recall, and stores the
/// outcome as the generation's `gate.json` whether it passed or not (a failed generation is
/// kept for inspection). Publishing, or not, is the caller's move; so is writing an
/// unfinished candidate's manifest with [`GateRecord::search_defaults`].
pub async fn gate_generation(
    storage: &Storage,
    candidate: Candidate<'_>,
    queries: &[f32],
    truth: &[Vec<u64>],
    config: &GateConfig,
    now_unix_ms: u64,
) -> Result<GateRecord, GateError> {
    let generation = candidate.name();
    let measured = Measured::open(storage, candidate, queries, truth, config.k).await?;
    // A generation is never its own baseline (a gate run again after publishing).
    let live = crate::lifecycle::current_generation(storage).await?;
    let previous = match live {
        Some(live) if live != generation => read_gate_record(storage, &live)
            .await?
            .map(|record| record.decision.recall_at_10),
        _ => None,
    };
    let target = previous
        .filter(|previous| previous.is_finite())
        .map_or(config.min_recall, |previous| {
            config.min_recall.max(previous - config.max_regression)
        });
    let nlist = measured.reader.manifest().nlist as usize;
    let max_nprobe = config.max_nprobe.min(nlist).max(1);
    let ladder = nprobe_ladder(config.nprobe, max_nprobe);
    let fixed = ladder.len() == 1;
    let mut calibration = Vec::with_capacity(ladder.len());
    for nprobe in ladder {
        let recall = measured.recall(nprobe, config.rerank).await?;
        calibration.push(ProbeRecall {
            nprobe: u32::try_from(nprobe).unwrap_or(u32::MAX),
            recall_at_10: recall,
        });
        if recall >= target {
            break;
        }
    }
    // The generation is judged at the last nprobe measured: the first to meet the target, or
    // the ladder's end.
    let judged = calibration
        .last()
        .expect("the ladder has at least one nprobe");
    let (nprobe, recall) = (judged.nprobe, judged.recall_at_10);
    let mut decision = decide(recall, previous, config.min_recall, config.max_regression);
    if !fixed {
        decision.reason = format!("at nprobe {nprobe} (calibrated): {}", decision.reason);
        if !decision.passed && nprobe as usize >= max_nprobe {
            decision.reason.push_str(&format!(
                "; nprobe {nprobe} is the most the gate may try (raise the gate's max nprobe, \
                 rerank or PQ size)"
            ));
        }
    }
    let record = GateRecord {
        generation: generation.to_string(),
        queries: truth.len() as u64,
        nprobe,
        rerank: u32::try_from(config.rerank).unwrap_or(u32::MAX),
        measured_unix_ms: now_unix_ms,
        calibration: if fixed { Vec::new() } else { calibration },
        decision,
    };
    write_gate_record(storage, &record).await?;
    info!(
        generation,
        passed = record.decision.passed,
        recall = record.decision.recall_at_10,
        nprobe = record.nprobe,
        previous = ?record.decision.previous_recall_at_10,
        reason = %record.decision.reason,
        "recall gate"
    );
    Ok(record)
}

impl GateRecord {
    /// What the generation's manifest carries as its measured search defaults.
    pub fn search_defaults(&self) -> SearchDefaults {
        SearchDefaults {
            nprobe: self.nprobe,
            rerank: self.rerank,
            recall_at_10: self.decision.recall_at_10,
            queries: self.queries,
        }
    }
}

#[cfg(test)]
mod tests {
    use clipedge_datagen::{ClipLikeConfig, ClipLikeGenerator, QueryKind};

    use super::*;
    use crate::test_support::*;

    /// Every score, sorted best first (ties to the lower id), cut at `k`.
    fn brute_force(
        base: &[f32],
        queries: &[f32],
        dim: usize,
        k: usize,
        first_id: u64,
    ) -> Vec<Vec<u64>> {
        queries
            .chunks_exact(dim)
            .map(|query| {
                let mut scored: Vec<Neighbour> = base
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(row, vector)| Neighbour {
                        score: clipedge_linalg::dot::dot(query, vector),
                        id: first_id + row as u64,
                    })
                    .collect();
                scored.sort_by(|left, right| right.cmp(left));
                scored
                    .into_iter()
                    .take(k)
                    .map(|neighbour| neighbour.id)
                    .collect()
            })
            .collect()
    }

    fn streamed(
        base: &[f32],
        queries: &[f32],
        dim: usize,
        k: usize,
        first_id: u64,
        batch_rows: &[usize],
    ) -> Vec<Vec<u64>> {
        let mut top = ExactTopK::new(queries.to_vec(), dim, k)
            .unwrap()
            .with_tile_rows(3);
        let mut row = 0usize;
        for &rows in batch_rows {
            top.add_batch(&base[row * dim..(row + rows) * dim], first_id + row as u64)
                .unwrap();
            row += rows;
        }
        assert_eq!(row * dim, base.len(), "the batches cover the base");
        assert_eq!(top.vectors_seen(), row as u64);
        top.finish().unwrap()
    }

    #[test]
    fn exact_top_k_equals_brute_force_however_the_input_is_batched() {
        let (mut base, queries) = dataset(500, 7, 11);
        // Exact duplicates tie: the lower id must win wherever the batches split.
        base.copy_within(0..50 * DIM, 450 * DIM);
        let expected = brute_force(&base, &queries, DIM, 10, 1_000);
        assert_eq!(expected.len(), 7);
        for batches in [
            vec![500],
            vec![1, 499],
            vec![137, 0, 200, 163],
            vec![1; 500],
            vec![449, 2, 49],
        ] {
            assert_eq!(
                streamed(&base, &queries, DIM, 10, 1_000, &batches),
                expected,
                "batches {:?}",
                &batches[..batches.len().min(5)]
            );
        }
        let ties_seen = expected
            .iter()
            .flatten()
            .any(|id| (1_000..1_050).contains(id));
        assert!(
            ties_seen,
            "the test wants a duplicated vector among the answers"
        );
        for ids in &expected {
            for (rank, id) in ids.iter().enumerate() {
                if (1_450..1_500).contains(id) {
                    let twin = id - 450;
                    assert!(
                        ids[..rank].contains(&twin),
                        "duplicate {id} ranks only after its lower-id twin {twin}: {ids:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn exact_top_k_with_fewer_vectors_than_k_returns_them_all() {
        let (base, queries) = dataset(4, 2, 12);
        let expected = brute_force(&base, &queries, DIM, 10, 0);
        assert_eq!(expected[0].len(), 4);
        assert_eq!(streamed(&base, &queries, DIM, 10, 0, &[3, 1]), expected);
    }

    #[test]
    fn exact_top_k_refuses_bad_shapes() {
        assert!(ExactTopK::new(vec![0.0; 10], 3, 1).is_err());
        assert!(ExactTopK::new(vec![0.0; 9], 3, 0).is_err());
        assert!(ExactTopK::new(vec![0.0, f32::NAN, 0.0], 3, 1).is_err());
        let mut top = ExactTopK::new(vec![0.0; 9], 3, 2).unwrap();
        assert_eq!(top.query_count(), 3);
        assert!(top.add_batch(&[1.0; 4], 0).is_err());
        assert!(top.add_batch(&[1.0; 6], u64::MAX).is_err());
        let with_nan = top.add_batch(&[1.0, 1.0, 1.0, 1.0, f32::NAN, 1.0], 40);
        let message = with_nan.expect_err("NaN refused").to_string();
        assert!(message.contains("vector 41"), "{message}");
        assert!(top.add_batch(&[1.0; 6], 0).is_ok());
    }

    #[test]
    fn decide_applies_the_minimum_and_the_regression_limit() {
        // (recall, previous, passes)
        let table = [
            (0.97, None, true),
            (0.94, None, false),
            (0.95, None, true),
            (0.97, Some(0.975), true),
            (0.97, Some(0.985), false),
            (0.96, Some(0.97), true),
            (0.94, Some(0.90), false),
            (0.99, Some(f64::NAN), true),
            (f64::NAN, None, false),
        ];
        for (recall, previous, passes) in table {
            let decision = decide(recall, previous, 0.95, 0.01);
            assert_eq!(
                decision.passed, passes,
                "recall {recall}, previous {previous:?}: {}",
                decision.reason
            );
            assert_eq!(decision.min_recall, 0.95);
            assert_eq!(decision.max_regression, 0.01);
            assert!(!decision.reason.is_empty());
        }
        let regressed = decide(0.96, Some(0.98), 0.95, 0.01);
        assert!(
            regressed.reason.contains("regresses"),
            "{}",
            regressed.reason
        );
        assert_eq!(regressed.previous_recall_at_10, Some(0.98));
        let too_low = decide(0.90, None, 0.95, 0.01);
        assert!(
            too_low.reason.contains("below the minimum"),
            "{}",
            too_low.reason
        );
    }

    #[test]
    #[ignore = "throughput measurement, run by hand"]
    fn exact_top_k_throughput() {
        let dim = 512;
        let generator = ClipLikeGenerator::new(ClipLikeConfig::new(dim, 1));
        let base = generator.base(50_000);
        let queries = generator.queries(1_000, QueryKind::InDistribution);
        let mut top = ExactTopK::new(queries, dim, 10).unwrap();
        let started = std::time::Instant::now();
        for (batch, rows) in base.chunks(10_000 * dim).enumerate() {
            top.add_batch(rows, (batch * 10_000) as u64).unwrap();
        }
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "50k x 1000 queries x 512: {seconds:.2} s, {:.0} vectors/s, {:.1} GFLOP/s",
            50_000.0 / seconds,
            2.0 * 50_000.0 * 1_000.0 * 512.0 / seconds / 1e9
        );
    }

    #[tokio::test]
    async fn recall_of_a_built_generation_rises_with_nprobe() {
        let (_dir, storage) = temp_storage();
        let (base, queries) = dataset(3_000, 30, 13);
        let generation = build_generation(&storage, &base).await;
        let mut top = ExactTopK::new(queries.clone(), DIM, 10).unwrap();
        for (batch, rows) in base.chunks(700 * DIM).enumerate() {
            top.add_batch(rows, (batch * 700) as u64).unwrap();
        }
        let truth = top.finish().unwrap();

        let exhaustive = evaluate_recall(&storage, &generation, &queries, &truth, 10, NLIST, 50)
            .await
            .unwrap();
        let one_list = evaluate_recall(&storage, &generation, &queries, &truth, 10, 1, 50)
            .await
            .unwrap();
        assert!(
            exhaustive >= 0.95,
            "all lists and a deep rerank: {exhaustive}"
        );
        assert!(
            one_list < exhaustive - 0.1,
            "one list {one_list}, all {exhaustive}"
        );

        let wrong_truth =
            evaluate_recall(&storage, &generation, &queries, &truth[1..], 10, 1, 1).await;
        assert!(
            matches!(wrong_truth, Err(GateError::Input(_))),
            "{wrong_truth:?}"
        );
        let missing = evaluate_recall(
            &storage,
            "1000000000000-00000000",
            &queries,
            &truth,
            10,
            1,
            1,
        )
        .await;
        let message = missing.expect_err("no such generation").to_string();
        assert!(message.contains("1000000000000-00000000"), "{message}");
    }

    #[tokio::test]
    async fn balanced_kmeans_lists_search_as_well_as_flat_ones() {
        let (base, queries) = dataset(8_000, 40, 17);
        let mut top = ExactTopK::new(queries.clone(), DIM, 10).unwrap();
        top.add_batch(&base, 0).unwrap();
        let truth = top.finish().unwrap();
        let mut recalls = Vec::new();
        for balanced_from in [usize::MAX, 64] {
            let (_dir, storage) = temp_storage();
            let config = crate::BuildConfig {
                balanced_kmeans_from: balanced_from,
                ..crate::BuildConfig::new(64, 8, 8)
            };
            let generation = crate::build_index(
                &storage,
                &crate::VectorSet::new(&base, DIM),
                &config,
                &crate::NoProgress,
            )
            .await
            .unwrap()
            .generation;
            recalls.push(
                evaluate_recall(&storage, &generation, &queries, &truth, 10, 8, 20)
                    .await
                    .unwrap(),
            );
        }
        let (flat, balanced) = (recalls[0], recalls[1]);
        assert!(flat > 0.5, "flat lists: {flat}");
        // Measured: balanced 0.885, flat 0.925 (even lists hold fewer candidates per probe).
        assert!(
            balanced >= flat - 0.05,
            "balanced {balanced} vs flat {flat}"
        );
    }

    #[tokio::test]
    async fn a_generation_that_regresses_from_the_live_one_fails_and_stays_unpublished() {
        let (_dir, storage) = temp_storage();
        let (base, queries) = dataset(3_000, 20, 15);
        let live = build_generation(&storage, &base).await;
        let mut top = ExactTopK::new(queries.clone(), DIM, 10).unwrap();
        top.add_batch(&base, 0).unwrap();
        let truth = top.finish().unwrap();
        let serving = GateConfig::new(NLIST, 50, 0.9, 0.02);
        let first = gate_generation(
            &storage,
            Candidate::Written(&live),
            &queries,
            &truth,
            &serving,
            now_unix_ms(),
        )
        .await
        .unwrap();
        assert!(first.decision.passed, "{}", first.decision.reason);
        assert_eq!(
            first.decision.previous_recall_at_10, None,
            "never its own baseline"
        );

        // The next build, written but not published, is gated with one list only.
        let vectors = crate::VectorSet::new(&base, DIM);
        let trained = crate::train(&vectors, &quick_config(), &crate::NoProgress).unwrap();
        let (manifest, _assign, _encode) = crate::write_generation(
            &storage,
            &vectors,
            &trained,
            &quick_config(),
            &crate::NoProgress,
        )
        .await
        .unwrap();
        let narrow = GateConfig {
            min_recall: 0.0,
            ..GateConfig::new(1, 50, 0.9, 0.02)
        };
        let second = gate_generation(
            &storage,
            Candidate::Written(&manifest.generation),
            &queries,
            &truth,
            &narrow,
            now_unix_ms(),
        )
        .await
        .unwrap();
        assert!(!second.decision.passed, "{}", second.decision.reason);
        assert_eq!(
            second.decision.previous_recall_at_10,
            Some(first.decision.recall_at_10)
        );
        assert!(second.decision.reason.contains("regresses"));
        assert_eq!(
            read_gate_record(&storage, &manifest.generation)
                .await
                .unwrap(),
            Some(second)
        );
        assert_eq!(
            crate::current_generation(&storage).await.unwrap(),
            Some(live),
            "the gate never moves CURRENT"
        );
    }

    #[test]
    fn the_nprobe_ladder_steps_about_one_and_a_half_times_up_to_its_end() {
        assert_eq!(
            nprobe_ladder(16, 512),
            vec![16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
        );
        assert_eq!(nprobe_ladder(1, 8), vec![1, 2, 3, 4, 6, 8]);
        assert_eq!(nprobe_ladder(10, 40), vec![10, 16, 24, 32, 40]);
        assert_eq!(nprobe_ladder(16, 16), vec![16]);
        assert_eq!(
            nprobe_ladder(16, 4),
            vec![16],
            "a max below the start is the start"
        );
    }

    #[tokio::test]
    async fn a_calibrating_gate_judges_an_unwritten_generation_at_the_first_nprobe_that_meets_the_target(
    ) {
        let (dir, storage) = temp_storage();
        let (base, queries) = dataset(3_000, 30, 16);
        let mut top = ExactTopK::new(queries.clone(), DIM, 10).unwrap();
        top.add_batch(&base, 0).unwrap();
        let truth = top.finish().unwrap();
        let manifest = unfinished_generation(&storage, dir.path(), &base).await;
        let manifest_object = generation_path(&manifest.generation, "manifest.json");
        assert!(
            storage
                .get_if_exists(&manifest_object)
                .await
                .unwrap()
                .is_none(),
            "deferred: the generation is unfinished"
        );

        // The recall at each rung, measured on the same unwritten generation.
        let measured = Measured::open(
            &storage,
            Candidate::Unfinished(&manifest),
            &queries,
            &truth,
            10,
        )
        .await
        .unwrap();
        let mut by_nprobe = Vec::new();
        for nprobe in nprobe_ladder(1, NLIST) {
            by_nprobe.push((nprobe, measured.recall(nprobe, 4).await.unwrap()));
        }
        let (lowest, highest) = (by_nprobe[0].1, by_nprobe.last().unwrap().1);
        assert!(lowest < highest, "recall rises with nprobe: {by_nprobe:?}");
        let target = (lowest + highest) / 2.0;
        let expected = by_nprobe
            .iter()
            .find(|(_, recall)| *recall >= target)
            .copied()
            .unwrap();

        let config = GateConfig::calibrating(1, NLIST, 4, target, 0.01);
        let record = gate_generation(
            &storage,
            Candidate::Unfinished(&manifest),
            &queries,
            &truth,
            &config,
            now_unix_ms(),
        )
        .await
        .unwrap();
        assert!(record.decision.passed, "{}", record.decision.reason);
        assert_eq!(record.nprobe as usize, expected.0, "{by_nprobe:?}");
        assert_eq!(record.decision.recall_at_10, expected.1);
        assert!(record.decision.reason.contains("calibrated"));
        let tried: Vec<usize> = record
            .calibration
            .iter()
            .map(|rung| rung.nprobe as usize)
            .collect();
        assert_eq!(
            tried,
            nprobe_ladder(1, expected.0),
            "stops at the first that meets it"
        );
        assert!(record.calibration[..tried.len() - 1]
            .iter()
            .all(|rung| rung.recall_at_10 < target));

        // Finished with the measured default, the generation opens with it.
        let finished = clipedge_format::Manifest {
            search_defaults: Some(record.search_defaults()),
            ..manifest.clone()
        };
        crate::write_manifest(&storage, &finished).await.unwrap();
        let reader = IndexReader::open(
            storage.clone(),
            OpenOptions {
                generation: Some(manifest.generation.clone()),
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(reader.manifest().default_nprobe(), Some(expected.0));

        // A target no rung meets: judged at the last one, failed, and the reason names the cap.
        let another = unfinished_generation(&storage, dir.path(), &base).await;
        let failed = gate_generation(
            &storage,
            Candidate::Unfinished(&another),
            &queries,
            &truth,
            &GateConfig::calibrating(1, 4, 4, 1.0 + 1e-9, 0.01),
            now_unix_ms(),
        )
        .await
        .unwrap();
        assert!(!failed.decision.passed);
        assert_eq!(failed.nprobe, 4);
        assert_eq!(failed.calibration.len(), nprobe_ladder(1, 4).len());
        assert!(
            failed.decision.reason.contains("the most the gate may try"),
            "{}",
            failed.decision.reason
        );
    }

    /// A generation of `base` written up to its manifest, which is left unwritten.
    async fn unfinished_generation(
        storage: &Storage,
        dir: &std::path::Path,
        base: &[f32],
    ) -> clipedge_format::Manifest {
        use crate::device::Device;
        use crate::pipeline::{write_generation_streamed, StreamOptions};
        use crate::EmbeddingSource;

        let file = dir.join("base.npy");
        clipedge_datagen::write_npy(&file, base, DIM).unwrap();
        let source = EmbeddingSource::open(&file).unwrap();
        let vectors = crate::VectorSet::new(base, DIM);
        let trained = crate::train(&vectors, &quick_config(), &crate::NoProgress).unwrap();
        let (manifest, _) = write_generation_streamed(
            storage,
            &source,
            &trained,
            &quick_config(),
            &Device::cpu(),
            &StreamOptions {
                defer_manifest: true,
                spill_dir: dir.to_path_buf(),
                ..StreamOptions::default()
            },
            None,
            &crate::NoProgress,
        )
        .await
        .unwrap();
        manifest
    }

    #[tokio::test]
    async fn gate_records_are_written_once_and_the_live_one_is_the_baseline() {
        let (_dir, storage) = temp_storage();
        assert_eq!(
            live_recall(&storage).await.unwrap(),
            None,
            "nothing published"
        );
        let (base, _queries) = dataset(1_000, 1, 14);
        let generation = build_generation(&storage, &base).await;
        assert_eq!(live_recall(&storage).await.unwrap(), None, "no record yet");
        assert_eq!(read_gate_record(&storage, &generation).await.unwrap(), None);

        let record = GateRecord {
            generation: generation.clone(),
            queries: 100,
            nprobe: 8,
            rerank: 10,
            measured_unix_ms: now_unix_ms(),
            calibration: Vec::new(),
            decision: decide(0.97, None, 0.95, 0.01),
        };
        write_gate_record(&storage, &record).await.unwrap();
        assert_eq!(
            read_gate_record(&storage, &generation).await.unwrap(),
            Some(record.clone())
        );
        let stored = storage
            .get(&generation_path(&generation, GATE_FILE))
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(
            json["recall_at_10"],
            serde_json::json!(0.97),
            "flat JSON: {json}"
        );
        assert_eq!(json["passed"], serde_json::json!(true));
        let again = write_gate_record(&storage, &record).await;
        assert!(
            matches!(
                again,
                Err(GateError::Storage(StorageError::AlreadyExists { .. }))
            ),
            "{again:?}"
        );
        assert_eq!(live_recall(&storage).await.unwrap(), Some(0.97));
    }
}
