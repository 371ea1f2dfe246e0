use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clipedge_format::{
    code_bytes, encode_codebooks, generation_path, BuildInfo, CatalogBuilder, CatalogRef,
    Codebooks, CurrentPointer, FileRef, GroupBlob, GroupEntry, ItemRecord, ListBlobBuilder,
    ListLocation, Manifest, ModelInfo, PqParams, RerankData, RerankKind, RoutingTable, ShardRef,
    CURRENT_OBJECT, FORMAT_VERSION,
};
use clipedge_linalg::balanced::BalancedConfig;
use clipedge_linalg::fastscan::pack_block_codes;
use clipedge_linalg::kmeans::sample_rows;
use clipedge_linalg::{rerank, KMeansConfig, KMeansInit, LinalgError, ProductQuantizer};
use clipedge_storage::{Storage, StorageError};
use rayon::prelude::*;
use serde::Serialize;
use thiserror::Error;
use tracing::info;

use crate::device::{Device, DeviceError, Metric};
use crate::Progress;

/// Independent, reproducible seeds for each seeded stage of one build.
fn derive_seed(seed: u64, stage: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&stage.to_le_bytes(), seed)
}

/// List blobs start at multiples of this inside a shard, so columns stay aligned in memory.
pub(crate) const LIST_ALIGN: u64 = 64;
/// Routing stays flat (one group per list) up to this many lists.
const FLAT_ROUTING_MAX_LISTS: usize = 4096;
/// Average lists per group when routing is two-level.
const LISTS_PER_GROUP: usize = 64;
/// Largest routing group, in percent of the mean group size (the default of
/// [`BuildConfig::group_cap_percent`]).
pub const GROUP_CAPACITY_PERCENT: usize = 150;
/// Capped assignment + mean update rounds after the groups' Lloyd iterations.
const GROUP_CAPPED_ITERATIONS: u32 = 10;
/// Flat Lloyd's work grows with nlist² (its sample grows with nlist too); at 65,536 lists a
/// 4.2M-point sample costs ~2.8·10¹⁵ multiply-adds per iteration, the hierarchical scheme
/// ~1/250 of that per fine iteration plus three full passes.
pub const BALANCED_KMEANS_FROM: usize = 65_536;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("invalid build config: {0}")]
    Config(String),
    #[error("invalid input vectors: {0}")]
    Input(String),
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("corrupt CURRENT pointer: {0}")]
    Pointer(#[from] clipedge_format::FormatError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("reading vectors: {0}")]
    Source(String),
    #[error("spill file {path}: {source}")]
    Spill {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub nlist: usize,
    /// Routing groups; `None`: flat up to 4096 lists, else about 64 lists a group.
    pub ngroups: Option<usize>,
    /// Largest routing group in percent of the mean (default 150); 0 trains the groups by
    /// plain k-means, uncapped. Capped groups give scanners even shares of the lists (cache
    /// affinity); plain ones follow the data more closely.
    pub group_cap_percent: usize,
    pub pq_m: usize,
    pub pq_bits: u8,
    pub rerank: RerankKind,
    /// Vectors sampled for coarse k-means; `None`: `min(n, max(100_000, 64 * nlist))`.
    pub train_size: Option<usize>,
    pub seed: u64,
    pub kmeans_iterations: u32,
    /// From this many lists on, the coarse quantizer is trained by hierarchical balanced
    /// k-means (√nlist mesoclusters, fine clusters within each, a few full passes that re-seed
    /// lists under 0.2 × the mean); below it by flat Lloyd.
    pub balanced_kmeans_from: usize,
    pub pq_iterations: u32,
    /// A shard is closed once it holds at least this many bytes.
    pub shard_target_bytes: u64,
    pub model: ModelInfo,
}

impl BuildConfig {
    pub fn new(nlist: usize, pq_m: usize, pq_bits: u8) -> Self {
        BuildConfig {
            nlist,
            ngroups: None,
            group_cap_percent: GROUP_CAPACITY_PERCENT,
            pq_m,
            pq_bits,
            rerank: RerankKind::Fp16,
            train_size: None,
            seed: 1234,
            kmeans_iterations: 20,
            balanced_kmeans_from: BALANCED_KMEANS_FROM,
            pq_iterations: 16,
            shard_target_bytes: 256 << 20,
            model: ModelInfo {
                id: "external".to_string(),
                fingerprint: "unspecified".to_string(),
            },
        }
    }

    fn resolved_groups(&self) -> usize {
        match self.ngroups {
            Some(groups) => groups,
            None if self.nlist <= FLAT_ROUTING_MAX_LISTS => self.nlist,
            None => self.nlist.div_ceil(LISTS_PER_GROUP),
        }
    }

    fn resolved_train_size(&self, n: usize) -> usize {
        self.train_size
            .unwrap_or((64 * self.nlist).max(100_000))
            .min(n)
    }
}

/// The vectors to index and, optionally, what to store with each (defaults: id = row,
/// content hash = [`content_hash`] of the vector, metadata ref = row).
#[derive(Debug, Clone, Copy)]
pub struct VectorSet<'a> {
    pub data: &'a [f32],
    pub dim: usize,
    pub ids: Option<&'a [u64]>,
    pub content_hashes: Option<&'a [u64]>,
    pub metadata_refs: Option<&'a [u64]>,
    /// Caption and image URL of each row: written to the generation's `catalog.bin`, whose
    /// references then replace `metadata_refs`. Needs ids = rows (`ids: None`).
    pub records: Option<&'a [ItemRecord]>,
}

impl<'a> VectorSet<'a> {
    pub fn new(data: &'a [f32], dim: usize) -> Self {
        VectorSet {
            data,
            dim,
            ids: None,
            content_hashes: None,
            metadata_refs: None,
            records: None,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn row(&self, row: usize) -> &'a [f32] {
        &self.data[row * self.dim..(row + 1) * self.dim]
    }
}

/// Hash of a vector's bytes: identical vectors (the same image indexed twice) share it.
pub fn content_hash(vector: &[f32]) -> u64 {
    let mut bytes = Vec::with_capacity(vector.len() * 4);
    for value in vector {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Everything learned from the training sample.
#[derive(Debug, Clone)]
pub struct TrainedIndex {
    pub dim: usize,
    /// Fine centroids in final list order (grouped), `nlist * dim`.
    pub fine_centroids: Vec<f32>,
    /// Top-level centroids, `ngroups * dim`.
    pub group_centroids: Vec<f32>,
    /// Lists of group `g` are `group_first_list[g]..group_first_list[g + 1]`.
    pub group_first_list: Vec<u32>,
    pub pq: ProductQuantizer,
    pub train_size: usize,
    pub train_seconds: f64,
}

impl TrainedIndex {
    pub fn nlist(&self) -> usize {
        self.fine_centroids.len() / self.dim
    }

    pub fn ngroups(&self) -> usize {
        self.group_centroids.len() / self.dim
    }
}

pub(crate) fn validate(vectors: &VectorSet<'_>, config: &BuildConfig) -> Result<(), BuildError> {
    let n = vectors.len();
    let dim = vectors.dim;
    if dim == 0 || !vectors.data.len().is_multiple_of(dim) {
        return Err(BuildError::Input(format!(
            "{} floats do not form rows of dimension {dim}",
            vectors.data.len()
        )));
    }
    if n == 0 {
        return Err(BuildError::Input("no vectors".to_string()));
    }
    if n > u32::MAX as usize {
        return Err(BuildError::Input(format!(
            "{n} vectors exceed one build's limit of 2^32"
        )));
    }
    if let Some(row) = vectors.data.iter().position(|x| !x.is_finite()) {
        return Err(BuildError::Input(format!(
            "row {} has a non-finite value",
            row / dim
        )));
    }
    for (name, column) in [
        ("ids", vectors.ids),
        ("content hashes", vectors.content_hashes),
        ("metadata refs", vectors.metadata_refs),
    ] {
        if let Some(column) = column {
            if column.len() != n {
                return Err(BuildError::Input(format!(
                    "{} {name} for {n} vectors",
                    column.len()
                )));
            }
        }
    }
    if let Some(records) = vectors.records {
        if records.len() != n {
            return Err(BuildError::Input(format!(
                "{} records for {n} vectors",
                records.len()
            )));
        }
        if vectors.ids.is_some() || vectors.metadata_refs.is_some() {
            return Err(BuildError::Input(
                "records need ids = rows and no explicit metadata refs".to_string(),
            ));
        }
    }
    if config.nlist == 0 || config.nlist > n {
        return Err(BuildError::Config(format!(
            "nlist must be in 1..={n} (one list needs at least one vector), got {}",
            config.nlist
        )));
    }
    let groups = config.resolved_groups();
    if groups == 0 || groups > config.nlist {
        return Err(BuildError::Config(format!(
            "groups must be in 1..={}, got {groups}",
            config.nlist
        )));
    }
    if (1..100).contains(&config.group_cap_percent) {
        return Err(BuildError::Config(format!(
            "the group cap must be 0 (uncapped) or at least 100 % of the mean, got {} %",
            config.group_cap_percent
        )));
    }
    ProductQuantizer::validate_shape(dim, config.pq_m, config.pq_bits)?;
    let ksub = 1usize << config.pq_bits;
    if config.resolved_train_size(n) < ksub.max(config.nlist) {
        return Err(BuildError::Config(format!(
            "train size {} is below max(nlist, 2^bits) = {}",
            config.resolved_train_size(n),
            ksub.max(config.nlist)
        )));
    }
    if config.kmeans_iterations == 0 || config.pq_iterations == 0 {
        return Err(BuildError::Config(
            "k-means iterations must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// Up to this many lists the coarse k-means starts from k-means++; above it from a random
/// sample (faiss's default everywhere). k-means++ seeding is `k` sequential passes over
/// `16 · k` points, so its cost grows with `k²`: with it, a 10M run's training at 16,384 lists
/// had not finished after 240 s on a 16-core H100 box; with random init it took 142 s (most of
/// that the since-fixed cluster sums).
const PLUS_PLUS_MAX_LISTS: usize = 4096;

fn coarse_init(nlist: usize) -> KMeansInit {
    if nlist <= PLUS_PLUS_MAX_LISTS {
        KMeansInit::PlusPlus
    } else {
        KMeansInit::Random
    }
}

/// Coarse quantizer, routing groups and PQ codebooks from a seeded sample, on the CPU.
pub fn train(
    vectors: &VectorSet<'_>,
    config: &BuildConfig,
    progress: &dyn Progress,
) -> Result<TrainedIndex, BuildError> {
    train_on(&Device::cpu(), vectors, config, progress)
}

/// [`train`] with the coarse k-means assignments and the PQ sample's list assignment on
/// `device` (the CPU device gives exactly [`train`]'s result).
pub fn train_on(
    device: &Device,
    vectors: &VectorSet<'_>,
    config: &BuildConfig,
    progress: &dyn Progress,
) -> Result<TrainedIndex, BuildError> {
    validate(vectors, config)?;
    let started = Instant::now();
    let dim = vectors.dim;
    let n = vectors.len();
    let train_size = config.resolved_train_size(n);
    let mut sample_rng = clipedge_linalg::kmeans::seeded_rng(derive_seed(config.seed, 1));
    // Borrowed when the whole set is the sample: at 65,536 lists that is 4.2M × 512 floats
    // (8.6 GB) the nightly job would otherwise hold twice.
    let sample: std::borrow::Cow<'_, [f32]> = if train_size < n {
        sample_rows(vectors.data, dim, train_size, &mut sample_rng).into()
    } else {
        vectors.data.into()
    };

    progress.stage("train coarse k-means", u64::from(config.kmeans_iterations));
    let coarse = if config.nlist >= config.balanced_kmeans_from {
        let (coarse, stats) = crate::device::train_balanced_kmeans(
            device,
            &sample,
            dim,
            &BalancedConfig {
                k: config.nlist,
                iterations: config.kmeans_iterations,
                // The hierarchical start is rougher than flat Lloyd's: recall at equal nprobe
                // was 0.870 after 3 full passes, 0.885 after 8, flat 0.925 (the gate test's
                // data, 64 lists); a pass is ~1.5 s at 4.2M × 65,536 on an H100.
                full_passes: 8,
                seed: derive_seed(config.seed, 2),
                min_size_fraction: 0.2,
            },
        )?;
        info!(
            mesoclusters = stats.mesoclusters,
            reseeded = stats.reseeded,
            smallest = stats.smallest,
            largest = stats.largest,
            "balanced coarse k-means"
        );
        coarse
    } else {
        crate::device::train_kmeans(
            device,
            &sample,
            dim,
            &KMeansConfig {
                k: config.nlist,
                iterations: config.kmeans_iterations,
                seed: derive_seed(config.seed, 2),
                max_points_per_centroid: usize::MAX,
                init: coarse_init(config.nlist),
            },
        )?
    };
    progress.advance(u64::from(config.kmeans_iterations));
    info!(
        seconds = started.elapsed().as_secs_f64(),
        "trained coarse quantizer"
    );

    let ngroups = config.resolved_groups();
    progress.stage("train routing groups", 1);
    let (fine_centroids, group_centroids, group_first_list) = if ngroups == config.nlist {
        let first: Vec<u32> = (0..=config.nlist as u32).collect();
        (coarse.centroids.clone(), coarse.centroids.clone(), first)
    } else {
        // Capped so no group holds more than 1.5× the mean: plain k-means over the lists made
        // giant groups that every query opened and no scanner's cache could hold. A cap of 0
        // (a capacity of every list) keeps plain k-means' groups.
        let capacity = match config.group_cap_percent {
            0 => config.nlist,
            percent => (config.nlist * percent).div_ceil(ngroups * 100),
        };
        let capped = clipedge_linalg::capped::train_capped(
            &coarse.centroids,
            dim,
            ngroups,
            capacity,
            config.kmeans_iterations,
            GROUP_CAPPED_ITERATIONS,
            derive_seed(config.seed, 3),
        )?;
        let groups = capped.kmeans;
        let labels = capped.labels;
        // Stable bucket sort: lists of group 0 first, in their k-means order, then group 1...
        let mut order: Vec<usize> = (0..config.nlist).collect();
        order.sort_by_key(|list| (labels[*list], *list));
        let mut fine = Vec::with_capacity(coarse.centroids.len());
        let mut first = vec![0u32; ngroups + 1];
        for &list in &order {
            fine.extend_from_slice(coarse.centroid(list));
            first[labels[list] as usize + 1] += 1;
        }
        for group in 0..ngroups {
            first[group + 1] += first[group];
        }
        // A group k-means left empty is dropped: routing needs every group to own a list.
        let mut kept_centroids = Vec::with_capacity(groups.centroids.len());
        let mut kept_first = vec![0u32];
        for group in 0..ngroups {
            if first[group + 1] > first[group] {
                kept_centroids.extend_from_slice(groups.centroid(group));
                kept_first.push(first[group + 1]);
            }
        }
        (fine, kept_centroids, kept_first)
    };
    progress.advance(1);
    info!(
        seconds = started.elapsed().as_secs_f64(),
        "trained routing groups"
    );

    progress.stage("train product quantizer", 1);
    let pq_sample_rows = (256usize * (1 << config.pq_bits)).min(sample.len() / dim);
    let mut pq_rng = clipedge_linalg::kmeans::seeded_rng(derive_seed(config.seed, 4));
    let pq_sample = sample_rows(&sample, dim, pq_sample_rows, &mut pq_rng);
    let fine_on_device = device.centroids(fine_centroids.clone(), dim, Metric::InnerProduct)?;
    let (labels, _) = device.search(&fine_on_device, &pq_sample)?;
    drop(fine_on_device);
    let mut residuals = pq_sample;
    for (row, label) in residuals.chunks_exact_mut(dim).zip(&labels) {
        let centroid = &fine_centroids[*label as usize * dim..(*label as usize + 1) * dim];
        for (x, c) in row.iter_mut().zip(centroid) {
            *x -= c;
        }
    }
    let pq = ProductQuantizer::train(
        &residuals,
        dim,
        config.pq_m,
        config.pq_bits,
        config.pq_iterations,
        derive_seed(config.seed, 5),
    )?;
    progress.advance(1);

    Ok(TrainedIndex {
        dim,
        fine_centroids,
        group_centroids,
        group_first_list,
        pq,
        train_size,
        train_seconds: started.elapsed().as_secs_f64(),
    })
}

/// What `clipedge build` prints as its last line.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub n: u64,
    pub d: u32,
    pub generation: String,
    pub nlist: u32,
    pub ngroups: u32,
    pub pq_m: u32,
    pub pq_bits: u8,
    pub rerank: String,
    pub build_s: f64,
    pub train_s: f64,
    pub assign_s: f64,
    pub encode_s: f64,
    pub train_size: u64,
    pub train_vectors_per_s: f64,
    pub encode_vectors_per_s: f64,
    pub index_bytes: u64,
    pub files: u64,
}

fn file_ref(path: &str, bytes: &[u8]) -> FileRef {
    FileRef {
        path: path.to_string(),
        bytes: bytes.len() as u64,
        crc32: clipedge_format::checksum(bytes),
    }
}

/// A list blob's length; `record_bytes`: the records column's bytes when the list has one.
pub(crate) fn list_blob_len(
    count: usize,
    dim: usize,
    config: &BuildConfig,
    record_bytes: Option<u64>,
) -> u64 {
    let codes = code_bytes(count, config.pq_m, config.pq_bits);
    let records = record_bytes.map_or(0, |bytes| 4 * (count as u64 + 1) + bytes);
    (32 + 24 * count + codes.next_multiple_of(8) + config.rerank.bytes_per_vector(dim) * count)
        as u64
        + records
}

/// Bytes of the stored record a metadata reference points at.
pub(crate) fn stored_record_len(metadata_ref: u64) -> u64 {
    let range = clipedge_format::record_range(metadata_ref);
    range.end - range.start
}

fn encode_list(
    list_id: u32,
    rows: &[u32],
    vectors: &VectorSet<'_>,
    catalog: Option<&CatalogBuilder>,
    trained: &TrainedIndex,
    config: &BuildConfig,
) -> Vec<u8> {
    let dim = vectors.dim;
    let m = config.pq_m;
    let centroid = &trained.fine_centroids[list_id as usize * dim..(list_id as usize + 1) * dim];
    let mut ids = Vec::with_capacity(rows.len());
    let mut hashes = Vec::with_capacity(rows.len());
    let mut metas = Vec::with_capacity(rows.len());
    let mut codes = vec![0u8; rows.len() * m];
    let mut residual = vec![0f32; dim];
    let mut fp16 = Vec::new();
    let mut int8_scales = Vec::new();
    let mut int8_values = Vec::new();
    for (index, &row) in rows.iter().enumerate() {
        let row = row as usize;
        let vector = vectors.row(row);
        ids.push(vectors.ids.map_or(row as u64, |ids| ids[row]));
        hashes.push(
            vectors
                .content_hashes
                .map_or_else(|| content_hash(vector), |hashes| hashes[row]),
        );
        metas.push(vectors.metadata_refs.map_or(row as u64, |metas| metas[row]));
        for ((r, x), c) in residual.iter_mut().zip(vector).zip(centroid) {
            *r = x - c;
        }
        trained
            .pq
            .encode_one(&residual, &mut codes[index * m..(index + 1) * m]);
        match config.rerank {
            RerankKind::Fp16 => fp16.extend(rerank::encode_fp16(vector)),
            RerankKind::Int8 => {
                let (scale, values) = rerank::encode_int8(vector);
                int8_scales.push(scale);
                int8_values.extend(values);
            }
            RerankKind::None => {}
        }
    }
    let rerank_data = rerank_data(config.rerank, fp16, int8_scales, int8_values);
    let records: Option<Vec<&[u8]>> = catalog.map(|catalog| {
        rows.iter()
            .map(|row| catalog.stored_record(*row as usize))
            .collect()
    });
    let columns = ListColumns {
        ids: &ids,
        content_hashes: &hashes,
        metadata_refs: &metas,
        codes,
        rerank: &rerank_data,
        records: records.as_deref(),
    };
    assemble_list_blob(list_id, dim, config, columns)
}

/// A list's rerank column of `kind` from the copies gathered for it.
pub(crate) fn rerank_data(
    kind: RerankKind,
    fp16: Vec<u16>,
    scales: Vec<f32>,
    values: Vec<i8>,
) -> RerankData {
    match kind {
        RerankKind::Fp16 => RerankData::Fp16(fp16),
        RerankKind::Int8 => RerankData::Int8 { scales, values },
        RerankKind::None => RerankData::None,
    }
}

/// The columns of one list, rows in input order; `codes` one byte per sub-quantizer.
pub(crate) struct ListColumns<'a> {
    pub ids: &'a [u64],
    pub content_hashes: &'a [u64],
    pub metadata_refs: &'a [u64],
    pub codes: Vec<u8>,
    pub rerank: &'a RerankData,
    /// Each row's stored catalog record, when the generation has a catalog.
    pub records: Option<&'a [&'a [u8]]>,
}

/// One list blob (docs/format.md), the same bytes whichever path computed its columns.
pub(crate) fn assemble_list_blob(
    list_id: u32,
    dim: usize,
    config: &BuildConfig,
    columns: ListColumns<'_>,
) -> Vec<u8> {
    let m = config.pq_m;
    let stored_codes = if config.pq_bits == 4 {
        pack_block_codes(&columns.codes, m)
    } else {
        columns.codes
    };
    ListBlobBuilder {
        list_id,
        dim,
        m,
        bits: config.pq_bits,
        ids: columns.ids,
        content_hashes: columns.content_hashes,
        metadata_refs: columns.metadata_refs,
        codes: &stored_codes,
        rerank: columns.rerank,
        records: columns.records,
    }
    .encode()
}

/// A sortable, unique generation name: creation time then a per-process nonce.
pub(crate) fn new_generation_name(now_ms: u64) -> String {
    let nonce_input = format!("{}-{}-{:?}", std::process::id(), now_ms, SystemTime::now());
    let nonce = xxhash_rust::xxh3::xxh3_64(nonce_input.as_bytes()) as u32;
    format!("{now_ms:013}-{nonce:08x}")
}

/// Assigns, encodes and writes a whole new generation (not yet published). Returns its manifest
/// and the assign and encode seconds.
pub async fn write_generation(
    storage: &Storage,
    vectors: &VectorSet<'_>,
    trained: &TrainedIndex,
    config: &BuildConfig,
    progress: &dyn Progress,
) -> Result<(Manifest, f64, f64), BuildError> {
    validate(vectors, config)?;
    let dim = vectors.dim;
    let n = vectors.len();
    let nlist = trained.nlist();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let generation = new_generation_name(now_ms);
    // Records are laid out first: their references go into the list entries.
    let catalog = vectors
        .records
        .map(CatalogBuilder::new)
        .transpose()
        .map_err(|error| BuildError::Input(error.to_string()))?;
    let with_refs;
    let vectors = match &catalog {
        Some(catalog) => {
            with_refs = VectorSet {
                metadata_refs: Some(catalog.metadata_refs()),
                ..*vectors
            };
            &with_refs
        }
        None => vectors,
    };

    progress.stage("assign vectors to lists", n as u64);
    let assign_started = Instant::now();
    let labels = clipedge_linalg::gemm::best_inner_product_centroids(
        vectors.data,
        dim,
        &trained.fine_centroids,
    );
    // Rows of each list, in input order.
    let mut lists: Vec<Vec<u32>> = vec![Vec::new(); nlist];
    for (row, label) in labels.iter().enumerate() {
        lists[*label as usize].push(row as u32);
    }
    drop(labels);
    progress.advance(n as u64);
    let assign_seconds = assign_started.elapsed().as_secs_f64();

    progress.stage("encode and write shards", n as u64);
    let encode_started = Instant::now();
    let mut locations: Vec<ListLocation> = Vec::with_capacity(nlist);
    let mut shards: Vec<ShardRef> = Vec::new();
    let mut next_list = 0usize;
    while next_list < nlist {
        // Take lists until the shard reaches its target size, then encode them in parallel.
        let first = next_list;
        let mut planned_bytes = 0u64;
        while next_list < nlist && (next_list == first || planned_bytes < config.shard_target_bytes)
        {
            let record_bytes = catalog.as_ref().map(|catalog| {
                lists[next_list]
                    .iter()
                    .map(|row| stored_record_len(catalog.metadata_refs()[*row as usize]))
                    .sum()
            });
            planned_bytes += list_blob_len(lists[next_list].len(), dim, config, record_bytes)
                .next_multiple_of(LIST_ALIGN);
            next_list += 1;
        }
        let blobs: Vec<Vec<u8>> = (first..next_list)
            .into_par_iter()
            .map(|list_id| {
                encode_list(
                    list_id as u32,
                    &lists[list_id],
                    vectors,
                    catalog.as_ref(),
                    trained,
                    config,
                )
            })
            .collect();
        let shard_index = shards.len() as u32;
        let mut shard = Vec::with_capacity(planned_bytes as usize);
        let mut encoded_rows = 0u64;
        for (list_id, blob) in (first..next_list).zip(blobs) {
            let offset = shard.len() as u64;
            locations.push(ListLocation {
                shard: shard_index,
                count: lists[list_id].len() as u32,
                offset,
                length: blob.len() as u32,
                crc32: clipedge_format::checksum(&blob),
            });
            encoded_rows += lists[list_id].len() as u64;
            shard.extend_from_slice(&blob);
            shard.resize(
                (shard.len() as u64).next_multiple_of(LIST_ALIGN) as usize,
                0,
            );
        }
        let shard_path = format!("shard-{shard_index:05}.bin");
        let shard_bytes = shard.len() as u64;
        storage
            .put_new(
                &generation_path(&generation, &shard_path),
                Bytes::from(shard),
            )
            .await?;
        shards.push(ShardRef {
            path: shard_path,
            bytes: shard_bytes,
            lists: (next_list - first) as u32,
        });
        progress.advance(encoded_rows);
    }
    let encode_seconds = encode_started.elapsed().as_secs_f64();

    let catalog = match catalog {
        Some(catalog) => {
            let mut row_lists = vec![0u32; n];
            for (list_id, rows) in lists.iter().enumerate() {
                for row in rows {
                    row_lists[*row as usize] = list_id as u32;
                }
            }
            let (bytes, catalog_ref) = catalog
                .finish(&row_lists, "catalog.bin")
                .map_err(|error| BuildError::Input(error.to_string()))?;
            storage
                .put_new(
                    &generation_path(&generation, "catalog.bin"),
                    Bytes::from(bytes),
                )
                .await?;
            Some(catalog_ref)
        }
        None => None,
    };

    let manifest = finish_generation(
        storage,
        &generation,
        now_ms,
        trained,
        config,
        n as u64,
        &locations,
        shards,
        catalog,
    )
    .await?;
    write_manifest(storage, &manifest).await?;
    Ok((manifest, assign_seconds, encode_seconds))
}

/// Writes the group blobs, routing table and codebooks of a generation whose shards are
/// written, and returns its manifest; [`write_manifest`] then completes it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish_generation(
    storage: &Storage,
    generation: &str,
    now_ms: u64,
    trained: &TrainedIndex,
    config: &BuildConfig,
    count: u64,
    locations: &[ListLocation],
    shards: Vec<ShardRef>,
    catalog: Option<CatalogRef>,
) -> Result<Manifest, BuildError> {
    let dim = trained.dim;
    let nlist = trained.nlist();
    let ngroups = trained.ngroups();
    let mut groups_file = Vec::new();
    let mut group_entries = Vec::with_capacity(ngroups);
    for group in 0..ngroups {
        let first_list = trained.group_first_list[group];
        let end_list = trained.group_first_list[group + 1];
        let blob = GroupBlob {
            first_list,
            dim,
            centroids: trained.fine_centroids[first_list as usize * dim..end_list as usize * dim]
                .to_vec(),
            lists: locations[first_list as usize..end_list as usize].to_vec(),
        }
        .encode();
        let group_centroid = &trained.group_centroids[group * dim..(group + 1) * dim];
        let radius = trained.fine_centroids[first_list as usize * dim..end_list as usize * dim]
            .chunks_exact(dim)
            .map(|fine| clipedge_linalg::dot::l2_squared(fine, group_centroid).sqrt())
            .fold(0f32, f32::max);
        group_entries.push(GroupEntry {
            first_list,
            list_count: end_list - first_list,
            offset: groups_file.len() as u64,
            length: blob.len() as u32,
            crc32: clipedge_format::checksum(&blob),
            radius,
        });
        groups_file.extend_from_slice(&blob);
    }
    let routing_file = RoutingTable {
        dim,
        nlist: nlist as u32,
        centroids: trained.group_centroids.clone(),
        groups: group_entries,
    }
    .encode();
    let codebooks_file = encode_codebooks(&Codebooks {
        m: trained.pq.m,
        ksub: trained.pq.ksub,
        dsub: trained.pq.dsub,
        centroids: trained.pq.centroids.clone(),
    });
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        generation: generation.to_string(),
        created_unix_ms: now_ms,
        model: config.model.clone(),
        dim: dim as u32,
        metric: clipedge_format::Metric::InnerProduct,
        count,
        nlist: nlist as u32,
        ngroups: ngroups as u32,
        pq: PqParams {
            m: config.pq_m as u32,
            bits: config.pq_bits,
            dsub: (dim / config.pq_m) as u32,
            by_residual: true,
        },
        rerank: config.rerank,
        routing: file_ref("routing.bin", &routing_file),
        groups: file_ref("groups.bin", &groups_file),
        codebooks: file_ref("codebooks.bin", &codebooks_file),
        shards,
        build: BuildInfo {
            seed: config.seed,
            train_size: trained.train_size as u64,
            kmeans_iters: config.kmeans_iterations,
            builder: format!("clipedge-index-builder {}", env!("CARGO_PKG_VERSION")),
        },
        catalog,
        search_defaults: None,
    };
    for (name, bytes) in [
        ("groups.bin", groups_file),
        ("routing.bin", routing_file),
        ("codebooks.bin", codebooks_file),
    ] {
        storage
            .put_new(&generation_path(generation, name), Bytes::from(bytes))
            .await?;
    }
    Ok(manifest)
}

/// Writes `manifest.json`, last of a generation's objects: a generation without one is an
/// unfinished build, never read (create-only, so a generation is finished once).
pub async fn write_manifest(storage: &Storage, manifest: &Manifest) -> Result<(), BuildError> {
    manifest.validate().map_err(|error| {
        BuildError::Config(format!("the manifest to write is invalid: {error}"))
    })?;
    storage
        .put_new(
            &generation_path(&manifest.generation, "manifest.json"),
            Bytes::from(manifest.to_json()),
        )
        .await?;
    Ok(())
}

/// Moves `CURRENT` to `generation` if nobody moved it since it was read.
pub async fn publish(storage: &Storage, generation: &str) -> Result<(), BuildError> {
    let current = storage.get_if_exists(CURRENT_OBJECT).await?;
    if let Some(current) = &current {
        // Refuse to build on top of a pointer we cannot read rather than clobber it.
        CurrentPointer::from_json(&current.bytes)?;
    }
    let pointer = CurrentPointer::new(generation);
    storage
        .swap_pointer(
            CURRENT_OBJECT,
            current.as_ref(),
            Bytes::from(pointer.to_json()),
        )
        .await?;
    Ok(())
}

/// Train, write and publish a new generation.
pub async fn build_index(
    storage: &Storage,
    vectors: &VectorSet<'_>,
    config: &BuildConfig,
    progress: &dyn Progress,
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let trained = train(vectors, config, progress)?;
    let (manifest, assign_seconds, encode_seconds) =
        write_generation(storage, vectors, &trained, config, progress).await?;
    publish(storage, &manifest.generation).await?;
    let index_bytes = manifest.routing.bytes
        + manifest.groups.bytes
        + manifest.codebooks.bytes
        + manifest.shards.iter().map(|shard| shard.bytes).sum::<u64>()
        + manifest.catalog.as_ref().map_or(0, |catalog| catalog.bytes)
        + manifest.to_json().len() as u64;
    let n = vectors.len() as u64;
    let report = BuildReport {
        n,
        d: manifest.dim,
        generation: manifest.generation.clone(),
        nlist: manifest.nlist,
        ngroups: manifest.ngroups,
        pq_m: manifest.pq.m,
        pq_bits: manifest.pq.bits,
        rerank: manifest.rerank.as_str().to_string(),
        build_s: started.elapsed().as_secs_f64(),
        train_s: trained.train_seconds,
        assign_s: assign_seconds,
        encode_s: encode_seconds,
        train_size: trained.train_size as u64,
        train_vectors_per_s: trained.train_size as f64 / trained.train_seconds.max(1e-9),
        encode_vectors_per_s: n as f64 / (assign_seconds + encode_seconds).max(1e-9),
        index_bytes,
        files: 4 + manifest.shards.len() as u64 + u64::from(manifest.catalog.is_some()),
    };
    info!(generation = %report.generation, n, build_s = report.build_s, "published index generation");
    Ok(report)
}
