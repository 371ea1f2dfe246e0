//! One generation of an index as every front reads it, written once against
//! [`ObjectSource`]: the `CURRENT` pointer, the manifest and the routing table (verified and
//! checked against each other), and the reads behind an item — its catalog entry, its catalog
//! record, and its stored vector. The edge Worker, `clipedge serve` and [`crate::IndexReader`]
//! all open generations here, so they accept and refuse the same indexes.
//!
//! Keys are relative to the index root (wrap a source in [`clipedge_io::Prefixed`] for a bucket
//! prefix). Pure apart from the source: builds for wasm32.

use clipedge_format::{
    decode_record, generation_path, record_range, CatalogEntry, CatalogRef, CurrentPointer,
    FormatError, GroupBlob, ItemRecord, ListLocation, ListView, Manifest, RerankKind, RoutingTable,
    CURRENT_OBJECT,
};
use clipedge_io::{ObjectSource, SourceError};
use clipedge_linalg::screen::Fp16Screen;
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// Why a generation, or an item in it, could not be read.
#[derive(Debug, Error)]
pub enum GenerationError {
    #[error("no index here: the {object} object is missing")]
    NoIndex { object: String },
    #[error("cannot read the {what}")]
    Source {
        what: &'static str,
        #[source]
        source: SourceError,
    },
    // Not `#[source]`-only: the format error is the message (chains would print it twice).
    #[error("corrupt {what}: {error}")]
    Format {
        what: &'static str,
        error: FormatError,
    },
    #[error("index is inconsistent: {reason}")]
    Inconsistent { reason: String },
    #[error("this index has no catalog, so it cannot look items up by id")]
    NoCatalog,
    #[error("no item with id {id} (ids are 0..{items})")]
    UnknownId { id: u64, items: u64 },
    #[error("the index stores no vector copies (rerank none), so it cannot search by id")]
    NoVectorCopies,
}

impl GenerationError {
    fn source(what: &'static str) -> impl FnOnce(SourceError) -> GenerationError {
        move |source| GenerationError::Source { what, source }
    }

    fn format(what: &'static str) -> impl FnOnce(FormatError) -> GenerationError {
        move |error| GenerationError::Format { what, error }
    }

    fn inconsistent(reason: String) -> GenerationError {
        GenerationError::Inconsistent { reason }
    }
}

/// The generation `CURRENT` names.
pub async fn current_generation<S: ObjectSource>(source: &S) -> Result<String, GenerationError> {
    let pointer_bytes = source
        .get(CURRENT_OBJECT, Some(64 * 1024))
        .await
        .map_err(|error| match error {
            SourceError::NotFound { .. } => GenerationError::NoIndex {
                object: CURRENT_OBJECT.to_string(),
            },
            other => GenerationError::Source {
                what: "index pointer (CURRENT)",
                source: other,
            },
        })?;
    let pointer = CurrentPointer::from_json(&pointer_bytes)
        .map_err(GenerationError::format("index pointer (CURRENT)"))?;
    Ok(pointer.generation)
}

/// Groups from which ranking them reads the fp16 screen of their centroids instead of the
/// f32 table (same groups chosen, half the bytes): below this the table stays in cache.
pub const GROUP_SCREEN_MIN_GROUPS: usize = 512;

/// The manifest and routing table of one generation: what every query starts from.
#[derive(Debug, Clone)]
pub struct Generation {
    pub manifest: Manifest,
    pub routing: RoutingTable,
    /// Built on the first ranking (a scanner opens generations but never ranks groups).
    group_screen: Arc<OnceLock<Option<Fp16Screen>>>,
}

impl Generation {
    /// A generation from its verified parts.
    pub fn new(manifest: Manifest, routing: RoutingTable) -> Generation {
        Generation {
            manifest,
            routing,
            group_screen: Arc::default(),
        }
    }

    /// The routing centroids in fp16 for [`crate::route::rank_groups`], on machines that convert
    /// fp16 in hardware and for tables of [`GROUP_SCREEN_MIN_GROUPS`] groups or more.
    pub fn group_screen(&self) -> Option<&Fp16Screen> {
        self.group_screen
            .get_or_init(|| {
                (self.routing.ngroups() >= GROUP_SCREEN_MIN_GROUPS)
                    .then(|| Fp16Screen::new(&self.routing.centroids, self.routing.dim))
                    .flatten()
            })
            .as_ref()
    }

    /// Opens the generation `CURRENT` names.
    pub async fn open_current<S: ObjectSource>(source: &S) -> Result<Generation, GenerationError> {
        let name = current_generation(source).await?;
        Generation::open(source, &name).await
    }

    /// Reads and verifies the manifest and routing table of generation `name`.
    pub async fn open<S: ObjectSource>(
        source: &S,
        name: &str,
    ) -> Result<Generation, GenerationError> {
        clipedge_format::validate_generation_name(name)
            .map_err(GenerationError::format("generation name"))?;
        let manifest_key = generation_path(name, "manifest.json");
        let manifest_bytes = source
            .get(&manifest_key, Some(64 << 20))
            .await
            .map_err(|error| match error {
                SourceError::NotFound { .. } => GenerationError::NoIndex {
                    object: manifest_key.clone(),
                },
                other => GenerationError::Source {
                    what: "manifest",
                    source: other,
                },
            })?;
        let manifest =
            Manifest::from_json(&manifest_bytes).map_err(GenerationError::format("manifest"))?;
        if manifest.generation != name {
            return Err(GenerationError::inconsistent(format!(
                "generation {name}'s manifest names generation {}",
                manifest.generation
            )));
        }
        Generation::from_manifest(source, manifest).await
    }

    /// Reads and verifies the routing table of the generation `manifest` describes, with a
    /// manifest that is not (yet) in storage: the builder measures a generation before its
    /// manifest finishes it.
    pub async fn from_manifest<S: ObjectSource>(
        source: &S,
        manifest: Manifest,
    ) -> Result<Generation, GenerationError> {
        manifest
            .validate()
            .map_err(GenerationError::format("manifest"))?;
        let name = manifest.generation.as_str();
        clipedge_format::validate_generation_name(name)
            .map_err(GenerationError::format("generation name"))?;
        let routing_bytes = source
            .get(&generation_path(name, &manifest.routing.path), None)
            .await
            .map_err(GenerationError::source("routing table"))?;
        FormatError::verify("routing.bin", &routing_bytes, manifest.routing.crc32)
            .map_err(GenerationError::format("routing table"))?;
        let routing = RoutingTable::decode(&routing_bytes)
            .map_err(GenerationError::format("routing table"))?;
        if routing.dim != manifest.dim as usize
            || routing.nlist != manifest.nlist
            || routing.ngroups() != manifest.ngroups as usize
        {
            return Err(GenerationError::Format {
                what: "routing table",
                error: FormatError::Invalid {
                    what: "routing.bin".to_string(),
                    reason: "shape disagrees with the manifest".to_string(),
                },
            });
        }
        Ok(Generation::new(manifest, routing))
    }

    /// The key of one of this generation's files.
    pub fn object(&self, file: &str) -> String {
        generation_path(&self.manifest.generation, file)
    }

    fn catalog(&self) -> Result<&CatalogRef, GenerationError> {
        self.manifest
            .catalog
            .as_ref()
            .ok_or(GenerationError::NoCatalog)
    }

    /// The id-table entry of `id`: its list and catalog record (one range GET).
    pub async fn catalog_entry<S: ObjectSource>(
        &self,
        source: &S,
        id: u64,
    ) -> Result<CatalogEntry, GenerationError> {
        let catalog = self.catalog()?;
        let Some((range, index)) = catalog.block_range(id) else {
            return Err(GenerationError::UnknownId {
                id,
                items: catalog.items,
            });
        };
        let block = source
            .get_range(&self.object(&catalog.path), range)
            .await
            .map_err(GenerationError::source("catalog"))?;
        catalog
            .decode_entry(&block, index)
            .map_err(GenerationError::format("catalog"))
    }

    /// The catalog records of `refs`, in order (nearby records share a GET). Without a catalog,
    /// empty records.
    pub async fn records<S: ObjectSource>(
        &self,
        source: &S,
        refs: &[u64],
    ) -> Result<Vec<ItemRecord>, GenerationError> {
        let Some(catalog) = &self.manifest.catalog else {
            return Ok(vec![ItemRecord::default(); refs.len()]);
        };
        let ranges: Vec<_> = refs.iter().map(|r| record_range(*r)).collect();
        let read = source
            .get_ranges(&self.object(&catalog.path), &ranges)
            .await
            .map_err(GenerationError::source("catalog"))?;
        read.parts
            .iter()
            .map(|bytes| decode_record(bytes).map_err(GenerationError::format("catalog")))
            .collect()
    }

    /// The blob of routing group `group` (fine centroids and list locations; one range GET).
    pub async fn group<S: ObjectSource>(
        &self,
        source: &S,
        group: usize,
    ) -> Result<GroupBlob, GenerationError> {
        let Some(entry) = self.routing.groups.get(group) else {
            return Err(GenerationError::inconsistent(format!(
                "group {group} of {}",
                self.routing.ngroups()
            )));
        };
        let bytes = source
            .get_range(
                &self.object(&self.manifest.groups.path),
                entry.offset..entry.offset + entry.length as u64,
            )
            .await
            .map_err(GenerationError::source("group blob"))?;
        GroupBlob::decode(
            &bytes,
            entry.first_list,
            entry.list_count as usize,
            self.routing.dim,
            entry.crc32,
        )
        .map_err(GenerationError::format("group blob"))
    }

    /// The stored (rerank) copy of `id`, decoded to f32: what "more like this" searches with.
    /// Catalog entry → its group's blob → the list, each verified (three GETs).
    pub async fn stored_vector<S: ObjectSource>(
        &self,
        source: &S,
        id: u64,
    ) -> Result<Vec<f32>, GenerationError> {
        if self.manifest.rerank == RerankKind::None {
            return Err(GenerationError::NoVectorCopies);
        }
        let entry = self.catalog_entry(source, id).await?;
        let list_id = entry.list_id;
        let (location, list_bytes) = self.list_bytes(source, list_id).await?;
        let view = self.list_view(list_id, &location, list_bytes.as_ref())?;
        view.stored_vector(id).ok_or_else(|| {
            GenerationError::inconsistent(format!("list {list_id} does not hold id {id}"))
        })
    }

    /// The stored (rerank) copies of `hits` (`(id, list_id)` pairs, as the scanners answer
    /// them), in order, decoded to f32: what near-duplicate removal compares. Hits of one list
    /// share its read, so a batch costs one GET per distinct list and one per routing group they
    /// are in, not three per id.
    /// `None` for a hit its list does not hold.
    pub async fn stored_vectors<S: ObjectSource>(
        &self,
        source: &S,
        hits: &[(u64, u32)],
    ) -> Result<Vec<Option<Vec<f32>>>, GenerationError> {
        if self.manifest.rerank == RerankKind::None {
            return Err(GenerationError::NoVectorCopies);
        }
        let mut list_ids: Vec<u32> = hits.iter().map(|(_, list_id)| *list_id).collect();
        list_ids.sort_unstable();
        list_ids.dedup();
        let mut vectors = vec![None; hits.len()];
        // Lists are sorted, and a group holds consecutive lists: one blob read per group.
        let mut current_group: Option<(usize, GroupBlob)> = None;
        for list_id in list_ids {
            let group = self.group_of_list(list_id)?;
            let blob = match current_group.take() {
                Some((read_group, blob)) if read_group == group => blob,
                _ => self.group(source, group).await?,
            };
            let location = list_location(&blob, group, list_id)?;
            current_group = Some((group, blob));
            let list_bytes = self.read_list(source, list_id, &location).await?;
            let view = self.list_view(list_id, &location, list_bytes.as_ref())?;
            for (position, (id, hit_list)) in hits.iter().enumerate() {
                if *hit_list == list_id {
                    vectors[position] = view.stored_vector(*id);
                }
            }
        }
        Ok(vectors)
    }

    /// Fine list `list_id` as stored, and where: its group's blob for the location, then the
    /// list (two GETs).
    async fn list_bytes<S: ObjectSource>(
        &self,
        source: &S,
        list_id: u32,
    ) -> Result<(ListLocation, impl AsRef<[u8]>), GenerationError> {
        let group = self.group_of_list(list_id)?;
        let blob = self.group(source, group).await?;
        let location = list_location(&blob, group, list_id)?;
        let bytes = self.read_list(source, list_id, &location).await?;
        Ok((location, bytes))
    }

    fn group_of_list(&self, list_id: u32) -> Result<usize, GenerationError> {
        self.routing.group_of_list(list_id).ok_or_else(|| {
            GenerationError::inconsistent(format!("list {list_id} of {}", self.manifest.nlist))
        })
    }

    /// The bytes of list `list_id` at `location` (one GET).
    async fn read_list<S: ObjectSource>(
        &self,
        source: &S,
        list_id: u32,
        location: &ListLocation,
    ) -> Result<impl AsRef<[u8]>, GenerationError> {
        let Some(shard) = self.manifest.shards.get(location.shard as usize) else {
            return Err(GenerationError::inconsistent(format!(
                "list {list_id} is in shard {} of {}",
                location.shard,
                self.manifest.shards.len()
            )));
        };
        source
            .get_range(
                &self.object(&shard.path),
                location.offset..location.offset + location.length as u64,
            )
            .await
            .map_err(GenerationError::source("list"))
    }

    /// Checks `bytes` (checksum and header) against what the manifest says the list at
    /// `location` is.
    fn list_view<'a>(
        &self,
        list_id: u32,
        location: &ListLocation,
        bytes: &'a [u8],
    ) -> Result<ListView<'a>, GenerationError> {
        let expectation = self.manifest.list_expectation(list_id, location);
        ListView::parse(bytes, &expectation).map_err(GenerationError::format("list"))
    }
}

/// Where list `list_id` is, from the blob of its group `group`.
fn list_location(
    blob: &GroupBlob,
    group: usize,
    list_id: u32,
) -> Result<ListLocation, GenerationError> {
    list_id
        .checked_sub(blob.first_list)
        .and_then(|index| blob.lists.get(index as usize).copied())
        .ok_or_else(|| {
            GenerationError::inconsistent(format!("list {list_id} is not in group {group}"))
        })
}
