use std::sync::{Arc, Mutex};
use std::time::Instant;

use clipedge_format::{
    decode_codebooks, generation_path, GroupBlob, Hit, ListExpectation, Manifest, RoutingTable,
};
use clipedge_linalg::ProductQuantizer;
use clipedge_storage::{ByteLru, ObjectSource, Storage};
use tracing::debug;

use crate::generation::{Generation, GenerationError};
use crate::leaf::{LeafRequest, LeafTargets, ListCache, ReadPlan};
use crate::route::{self, ProbedList};
use crate::IndexError;

/// How an [`IndexReader`] holds the index in memory.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Bytes of verified lists kept across searches.
    pub list_cache_bytes: u64,
    /// `groups.bin` up to this size is read whole at open (one GET); larger ones are read
    /// group by group on demand and cached.
    pub preload_groups_max_bytes: u64,
    /// Bytes of group blobs kept when they are read on demand.
    pub group_cache_bytes: u64,
    /// Open this generation instead of the one `CURRENT` names.
    pub generation: Option<String>,
    /// Open the generation this manifest describes, before its `manifest.json` is written
    /// (the builder's recall gate); overrides `generation`.
    pub manifest: Option<clipedge_format::Manifest>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            list_cache_bytes: 1 << 30,
            preload_groups_max_bytes: 64 << 20,
            group_cache_bytes: 256 << 20,
            generation: None,
            manifest: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchParams {
    pub k: usize,
    /// Fine lists to scan.
    pub nprobe: usize,
    /// Candidates reranked exactly = `k * rerank`; 0 returns PQ scores.
    pub rerank: usize,
    /// Routing groups to open; `None` picks enough for `nprobe` (see [`route::auto_group_probe`]).
    pub group_probe: Option<usize>,
    /// Scan lists on the rayon pool.
    pub parallel: bool,
}

impl SearchParams {
    pub fn new(k: usize, nprobe: usize, rerank: usize) -> Self {
        SearchParams {
            k,
            nprobe,
            rerank,
            group_probe: None,
            parallel: false,
        }
    }
}

/// Where the time and the bytes of one search went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchStats {
    pub groups_probed: usize,
    pub lists_scanned: usize,
    pub codes_scanned: u64,
    pub candidates: usize,
    pub gets: u64,
    pub bytes_read: u64,
    pub list_cache_hits: usize,
    pub route_us: u64,
    pub fetch_us: u64,
    pub scan_us: u64,
    pub rerank_us: u64,
}

#[derive(Debug, Clone)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// Each hit's catalog record (JSON) from its list, aligned with `hits`, when the lists carry
    /// records; empty otherwise.
    pub records: Vec<String>,
    pub stats: SearchStats,
}

enum Groups {
    Preloaded(Vec<Arc<GroupBlob>>),
    OnDemand(Mutex<ByteLru<u32, Arc<GroupBlob>>>),
}

/// One opened generation of an index, ready to search. Cheap to share (`&self` searches).
pub struct IndexReader {
    pub(crate) storage: Storage,
    pub(crate) generation: Generation,
    pub(crate) pq: ProductQuantizer,
    groups: Groups,
    /// Verified lists, this reader's own unless shared with [`IndexReader::with_list_cache`].
    pub(crate) list_cache: ListCache,
    /// This generation's part of the list cache's keys: index root and generation.
    pub(crate) cache_key: Arc<str>,
}

impl IndexReader {
    /// Resolves `CURRENT` (unless a generation is given), then reads the manifest, the routing
    /// table and the codebooks, each verified against its checksum.
    pub async fn open(storage: Storage, options: OpenOptions) -> Result<IndexReader, IndexError> {
        let opened = match (&options.manifest, &options.generation) {
            (Some(manifest), _) => Generation::from_manifest(&storage, manifest.clone()).await,
            (None, Some(name)) => Generation::open(&storage, name).await,
            (None, None) => Generation::open_current(&storage).await,
        };
        let opened = opened.map_err(|error| match error {
            GenerationError::NoIndex { object } => IndexError::NoIndex {
                location: storage.location().to_string(),
                object,
            },
            // A corrupt object is the index's format error, wherever it was read.
            GenerationError::Format { error, .. } => IndexError::Format(error),
            GenerationError::Source { source, .. } => IndexError::Source(source),
            other => IndexError::Generation(other),
        })?;
        let Generation {
            manifest, routing, ..
        } = &opened;
        let generation = manifest.generation.clone();
        let codebooks_name = generation_path(&generation, &manifest.codebooks.path);
        let codebook_bytes = storage.get(&codebooks_name).await?;
        let codebooks = decode_codebooks(&codebook_bytes)?;
        let pq = ProductQuantizer::from_centroids(
            manifest.dim as usize,
            manifest.pq.m as usize,
            manifest.pq.bits,
            codebooks.centroids,
        )
        .map_err(|error| IndexError::Codebooks {
            reason: error.to_string(),
        })?;
        let groups = if manifest.groups.bytes <= options.preload_groups_max_bytes {
            let groups_name = generation_path(&generation, &manifest.groups.path);
            let groups_bytes = Storage::get(&storage, &groups_name).await?;
            clipedge_format::FormatError::verify(
                "groups.bin",
                &groups_bytes,
                manifest.groups.crc32,
            )?;
            let mut blobs = Vec::with_capacity(routing.ngroups());
            for entry in &routing.groups {
                let start = entry.offset as usize;
                let end = start + entry.length as usize;
                let Some(blob_bytes) = groups_bytes.get(start..end) else {
                    return Err(IndexError::Format(clipedge_format::FormatError::Invalid {
                        what: "routing.bin".to_string(),
                        reason: format!("group range {start}..{end} outside groups.bin"),
                    }));
                };
                let blob = GroupBlob::decode(
                    blob_bytes,
                    entry.first_list,
                    entry.list_count as usize,
                    routing.dim,
                    entry.crc32,
                )?;
                blobs.push(Arc::new(blob));
            }
            Groups::Preloaded(blobs)
        } else {
            Groups::OnDemand(Mutex::new(ByteLru::new(options.group_cache_bytes)))
        };
        debug!(
            generation,
            count = manifest.count,
            nlist = manifest.nlist,
            "opened index generation"
        );
        let cache_key: Arc<str> = format!("{}\n{generation}", storage.location()).into();
        Ok(IndexReader {
            storage,
            generation: opened,
            pq,
            groups,
            list_cache: ListCache::new(options.list_cache_bytes),
            cache_key,
        })
    }

    /// Keeps verified lists in `cache` instead of this reader's own: several readers (the
    /// generations a scanner holds open) then share one byte budget. Entries are keyed by index
    /// root and generation, so readers of different generations never see each other's lists.
    pub fn with_list_cache(self, cache: ListCache) -> IndexReader {
        IndexReader {
            list_cache: cache,
            ..self
        }
    }

    /// The opened generation, for the item reads of [`Generation`] (catalog, stored vectors).
    pub fn generation(&self) -> &Generation {
        &self.generation
    }

    pub fn manifest(&self) -> &Manifest {
        &self.generation.manifest
    }

    pub fn routing(&self) -> &RoutingTable {
        &self.generation.routing
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The product quantizer of the generation (for [`QueryTables::new`]).
    pub fn pq(&self) -> &ProductQuantizer {
        &self.pq
    }

    pub(crate) fn object(&self, file: &str) -> String {
        generation_path(&self.generation.manifest.generation, file)
    }

    fn validate(&self, query: &[f32], params: &SearchParams) -> Result<(), IndexError> {
        let dim = self.generation.manifest.dim as usize;
        if query.len() != dim {
            return Err(IndexError::InvalidQuery {
                reason: format!("query has dimension {}, index has {dim}", query.len()),
            });
        }
        if query.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::InvalidQuery {
                reason: "query has a non-finite value".to_string(),
            });
        }
        if params.k == 0 || params.nprobe == 0 {
            return Err(IndexError::InvalidParams {
                reason: format!(
                    "k ({}) and nprobe ({}) must be at least 1",
                    params.k, params.nprobe
                ),
            });
        }
        if params.group_probe == Some(0) {
            return Err(IndexError::InvalidParams {
                reason: "group probe must be at least 1".to_string(),
            });
        }
        Ok(())
    }

    /// The `k` nearest vectors to `query` by inner product.
    pub async fn search(
        &self,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<SearchResult, IndexError> {
        self.validate(query, params)?;
        // k and nprobe may come straight from a request: nothing is gained past the index's size.
        let vector_count = usize::try_from(self.generation.manifest.count)
            .unwrap_or(usize::MAX)
            .max(1);
        let params = &SearchParams {
            k: params.k.min(vector_count),
            nprobe: params.nprobe.min(self.generation.manifest.nlist as usize),
            rerank: params.rerank.min(vector_count),
            group_probe: params
                .group_probe
                .map(|groups| groups.min(self.generation.routing.ngroups())),
            parallel: params.parallel,
        };
        let started = Instant::now();
        let routing = &self.generation.routing;
        let screen = self.generation.group_screen();
        let group_ids = match params.group_probe {
            Some(count) => route::rank_groups(routing, screen, query, count),
            None => route::auto_group_probe(routing, screen, query, params.nprobe),
        };
        let routed = Instant::now();
        let leaf_request = LeafRequest {
            query,
            targets: LeafTargets::Groups {
                group_ids: &group_ids,
                nprobe: params.nprobe,
            },
            k: params.k,
            rerank: params.rerank,
            deadline: None,
            reads: ReadPlan::Coalesced,
            parallel: params.parallel,
        };
        let leaf = self.leaf_search(&leaf_request).await?;
        // Without a deadline every list is read or failed: one failure fails the search.
        if let Some(error) = leaf.first_error {
            return Err(error);
        }
        let mut stats = leaf.stats;
        stats.groups_probed = group_ids.len();
        stats.route_us += (routed - started).as_micros() as u64;
        Ok(SearchResult {
            hits: leaf.hits,
            records: leaf.records,
            stats,
        })
    }

    /// What the manifest and the group blob say the probed list's bytes must be.
    pub fn expectation(&self, probe: &ProbedList) -> ListExpectation {
        self.generation
            .manifest
            .list_expectation(probe.list_id, &probe.location)
    }

    /// The blobs of `group_ids` (fine centroids and list locations), in the given order: from
    /// memory when `groups.bin` was preloaded, else from the group cache or with range GETs
    /// (counted in `stats`).
    pub(crate) async fn load_groups(
        &self,
        group_ids: &[u32],
        stats: &mut SearchStats,
    ) -> Result<Vec<Arc<GroupBlob>>, IndexError> {
        let cache = match &self.groups {
            Groups::Preloaded(blobs) => {
                return Ok(group_ids
                    .iter()
                    .map(|g| blobs[*g as usize].clone())
                    .collect())
            }
            Groups::OnDemand(cache) => cache,
        };
        let mut found: Vec<Option<Arc<GroupBlob>>> = {
            let mut cache = cache.lock().expect("group cache lock");
            group_ids.iter().map(|group| cache.get(group)).collect()
        };
        let missing: Vec<usize> = (0..group_ids.len())
            .filter(|i| found[*i].is_none())
            .collect();
        if missing.is_empty() {
            return Ok(found.into_iter().map(Option::unwrap).collect());
        }
        let ranges: Vec<_> = missing
            .iter()
            .map(|i| {
                let entry = &self.generation.routing.groups[group_ids[*i] as usize];
                entry.offset..entry.offset + entry.length as u64
            })
            .collect();
        let read = self
            .storage
            .get_ranges(&self.object(&self.generation.manifest.groups.path), &ranges)
            .await?;
        stats.gets += read.requests as u64;
        stats.bytes_read += read.bytes;
        let mut cache = cache.lock().expect("group cache lock");
        for (slot, bytes) in missing.into_iter().zip(read.parts) {
            let group = group_ids[slot];
            let entry = &self.generation.routing.groups[group as usize];
            let blob = Arc::new(GroupBlob::decode(
                &bytes,
                entry.first_list,
                entry.list_count as usize,
                self.generation.routing.dim,
                entry.crc32,
            )?);
            cache.insert(group, blob.clone(), bytes.len() as u64);
            found[slot] = Some(blob);
        }
        Ok(found.into_iter().map(Option::unwrap).collect())
    }
}
