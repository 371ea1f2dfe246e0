//! Cross-crate integration tests of clipedge (the tests live in `tests/`); this library holds
//! the helpers they share: small seeded CLIP-like data sets, fast build configurations,
//! storage roots in temporary directories, and searching a whole query set into an id matrix
//! for recall against brute force.

pub mod api_cases;
pub mod lambda_harness;

use std::collections::BTreeMap;
use std::sync::Arc;

use clipedge_datagen::{ground_truth, recall_at_k, ClipLikeConfig, ClipLikeGenerator, QueryKind};
use clipedge_format::{generation_path, GroupBlob, ListLocation, RerankKind};
use clipedge_index::{route, IndexError, IndexReader, OpenOptions, SearchParams};
use clipedge_index_builder::{build_index, BuildConfig, BuildReport, NoProgress, VectorSet};
use clipedge_storage::Storage;
use tempfile::TempDir;

/// Id written for a missing result (fewer hits than `k`); never a valid row.
pub const NO_HIT: u32 = u32::MAX;

/// Base vectors and both kinds of queries from one seeded CLIP-like world.
pub struct Dataset {
    pub dim: usize,
    pub base: Vec<f32>,
    /// Image-like queries, drawn like the base.
    pub in_distribution: Vec<f32>,
    /// Text-like queries across the modality gap.
    pub out_of_distribution: Vec<f32>,
}

impl Dataset {
    pub fn new(n: usize, dim: usize, queries: usize, seed: u64) -> Dataset {
        let generator = ClipLikeGenerator::new(ClipLikeConfig::new(dim, seed));
        Dataset {
            dim,
            base: generator.base(n),
            in_distribution: generator.queries(queries, QueryKind::InDistribution),
            out_of_distribution: generator.queries(queries, QueryKind::OutOfDistribution),
        }
    }

    pub fn len(&self) -> usize {
        self.base.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.base.is_empty()
    }

    pub fn queries(&self, kind: QueryKind) -> &[f32] {
        match kind {
            QueryKind::InDistribution => &self.in_distribution,
            QueryKind::OutOfDistribution => &self.out_of_distribution,
        }
    }

    pub fn row(&self, row: usize) -> &[f32] {
        &self.base[row * self.dim..(row + 1) * self.dim]
    }

    /// Exact top-`k` rows for each query of `kind`.
    pub fn truth(&self, kind: QueryKind, k: usize) -> Vec<u32> {
        ground_truth(&self.base, self.queries(kind), self.dim, k)
    }

    pub fn vectors(&self) -> VectorSet<'_> {
        VectorSet::new(&self.base, self.dim)
    }
}

/// A build configuration with few k-means iterations: the debug-profile test budget matters
/// more than the last fraction of recall.
pub fn quick_config(nlist: usize, pq_m: usize, pq_bits: u8, rerank: RerankKind) -> BuildConfig {
    BuildConfig {
        rerank,
        kmeans_iterations: 8,
        pq_iterations: 6,
        seed: 7,
        ..BuildConfig::new(nlist, pq_m, pq_bits)
    }
}

/// A storage root in a fresh temporary directory (deleted when the `TempDir` drops).
pub fn temp_storage() -> (TempDir, Storage) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let storage = Storage::open(dir.path().to_str().expect("utf-8 temp path")).expect("open");
    (dir, storage)
}

/// Builds and publishes an index of `vectors`.
pub async fn build(
    storage: &Storage,
    vectors: &VectorSet<'_>,
    config: &BuildConfig,
) -> BuildReport {
    build_index(storage, vectors, config, &NoProgress)
        .await
        .expect("build the index")
}

/// Opens the generation `CURRENT` names.
pub async fn open(storage: &Storage) -> IndexReader {
    IndexReader::open(storage.clone(), OpenOptions::default())
        .await
        .expect("open the index")
}

/// Searches every `dim`-wide query of `queries` and returns `k` ids per query, row-major,
/// padded with [`NO_HIT`].
pub async fn search_ids(
    reader: &IndexReader,
    queries: &[f32],
    params: &SearchParams,
) -> Result<Vec<u32>, IndexError> {
    let dim = reader.manifest().dim as usize;
    let mut ids = Vec::with_capacity(queries.len() / dim * params.k);
    for query in queries.chunks_exact(dim) {
        let result = reader.search(query, params).await?;
        ids.extend(
            (0..params.k).map(|rank| result.hits.get(rank).map_or(NO_HIT, |hit| hit.id as u32)),
        );
    }
    Ok(ids)
}

/// Recall@`k` of `ids` (k per query) against `truth` (`truth_k` per query).
pub fn recall(ids: &[u32], truth: &[u32], truth_k: usize, k: usize) -> f64 {
    recall_at_k(ids, k, truth, truth_k, k)
}

/// The group blobs of the open generation, read from `groups.bin`, indexed by group.
pub async fn group_blobs(reader: &IndexReader) -> Vec<Arc<GroupBlob>> {
    let manifest = reader.manifest();
    let groups_bytes = reader
        .storage()
        .get(&generation_path(
            &manifest.generation,
            &manifest.groups.path,
        ))
        .await
        .expect("read groups.bin");
    reader
        .routing()
        .groups
        .iter()
        .map(|entry| {
            let start = entry.offset as usize;
            let blob = GroupBlob::decode(
                &groups_bytes[start..start + entry.length as usize],
                entry.first_list,
                entry.list_count as usize,
                manifest.dim as usize,
                entry.crc32,
            )
            .expect("decode a group blob");
            Arc::new(blob)
        })
        .collect()
}

/// Where every list of the open generation lives, indexed by list id.
pub async fn list_locations(reader: &IndexReader) -> Vec<ListLocation> {
    group_blobs(reader)
        .await
        .iter()
        .flat_map(|blob| blob.lists.iter().copied())
        .collect()
}

/// The list ids a search with `nprobe` (and the automatic group probe) scans for `query`,
/// computed with the public routing functions.
pub fn probed_lists(
    reader: &IndexReader,
    blobs: &[Arc<GroupBlob>],
    query: &[f32],
    nprobe: usize,
) -> Vec<u32> {
    let groups: Vec<Arc<GroupBlob>> =
        route::auto_group_probe(reader.routing(), None, query, nprobe)
            .into_iter()
            .map(|group| blobs[group as usize].clone())
            .collect();
    route::rank_lists(query, &groups, nprobe)
        .into_iter()
        .map(|probe| probe.list_id)
        .collect()
}

/// Every object of a generation, by name relative to the generation directory.
pub async fn generation_objects(storage: &Storage, generation: &str) -> BTreeMap<String, Vec<u8>> {
    let prefix = generation_path(generation, "");
    let mut objects = BTreeMap::new();
    for name in storage
        .list(&format!("generations/{generation}"))
        .await
        .expect("list")
    {
        let bytes = storage.get(&name).await.expect("read an object");
        let relative = name
            .strip_prefix(&prefix)
            .expect("under the generation")
            .to_string();
        objects.insert(relative, bytes.to_vec());
    }
    objects
}
