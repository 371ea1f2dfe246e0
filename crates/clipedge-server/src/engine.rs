//! The embedded front's query path: encode (in process), then the shared root
//! (`clipedge_search`) over the in-process leaf: probe → scan/rerank → merge/dedup → caption
//! and URL.

use std::sync::Arc;
use std::time::Instant;

use clipedge_api::{
    generation_error, resolve_url, text_encode_error, ApiError, ErrorCode, HealthResponse, Item,
    Query, SearchResponse, ValidSearch,
};
use clipedge_index::{
    GenerationError, IndexError, IndexReader, LeafRequest, LeafTargets, OpenOptions, ReadPlan,
};
use clipedge_search::{Call, FanOut, FanOutPolicy, LeafJob, Leaves};
use clipedge_storage::{Counted, ObjectSource, Storage};
use clipedge_text::{TextEncoder, TextError};
use thiserror::Error;
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot open index {location}")]
    Index {
        location: String,
        #[source]
        source: IndexError,
    },
    #[error("cannot load text model {dir}")]
    Model {
        dir: String,
        #[source]
        source: TextError,
    },
    #[error(
        "index {location} was built with model {index_model} (fingerprint {index_fingerprint}), \
         but the text encoder is {encoder_model} (fingerprint {encoder_fingerprint}): queries would \
         be meaningless; serve it with the model it was built with, or rebuild the index"
    )]
    ModelMismatch {
        location: String,
        index_model: String,
        index_fingerprint: String,
        encoder_model: String,
        encoder_fingerprint: String,
    },
    #[error("text model {model} makes {model_dim}-dimensional vectors, index {location} holds {index_dim}")]
    DimensionMismatch {
        location: String,
        model: String,
        model_dim: usize,
        index_dim: u32,
    },
    #[error(
        "multilingual text model {model} is aligned to {aligned_to}, but the index was built \
         with {index_model} (fingerprint {index_fingerprint}): its card's aligned_to must name \
         that fingerprint"
    )]
    MultilingualNotAligned {
        model: String,
        aligned_to: String,
        index_model: String,
        index_fingerprint: String,
    },
    #[error(transparent)]
    Storage(#[from] clipedge_storage::StorageError),
}

/// Everything one query needs, opened once and shared by every request.
pub struct Engine {
    reader: IndexReader,
    encoder: Option<Arc<TextEncoder>>,
    /// The tower `use_mclip` / `"multilingual": true` queries are encoded with.
    multilingual: Option<Arc<TextEncoder>>,
    root_base: String,
    label: String,
    /// The name clip-retrieval clients select this index by (`indice_name`).
    name: String,
}

fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{context}: {error}"))
}

/// The embedding of `text`; the tower is CPU work, kept off the async workers.
async fn encode(encoder: Arc<TextEncoder>, text: String) -> Result<Vec<f32>, ApiError> {
    let encoding = tokio::task::spawn_blocking(move || encoder.encode(&text))
        .await
        .map_err(|error| internal("text encoder task failed", error))?;
    encoding
        .map(|encoding| encoding.embedding)
        .map_err(text_encode_error)
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Engine {
    /// Opens the index at `location` and checks that `encoder` is the model it was built with.
    /// Without an encoder only `vector` and `id` queries are answered. Relative media URLs of
    /// its catalog resolve against `root_base` (`/` for the default index, whose media the
    /// server serves at `/media/…`).
    pub async fn open(
        location: &str,
        encoder: Option<Arc<TextEncoder>>,
        root_base: &str,
        label: &str,
    ) -> Result<Engine, EngineError> {
        let storage = Storage::open(location)?;
        let reader = IndexReader::open(storage, OpenOptions::default())
            .await
            .map_err(|source| EngineError::Index {
                location: location.to_string(),
                source,
            })?;
        let manifest = reader.manifest();
        if let Some(encoder) = &encoder {
            let card = encoder.card();
            if card.fingerprint != manifest.model.fingerprint {
                return Err(EngineError::ModelMismatch {
                    location: location.to_string(),
                    index_model: manifest.model.id.clone(),
                    index_fingerprint: manifest.model.fingerprint.clone(),
                    encoder_model: card.name.clone(),
                    encoder_fingerprint: card.fingerprint.clone(),
                });
            }
            if card.dim != manifest.dim as usize {
                return Err(EngineError::DimensionMismatch {
                    location: location.to_string(),
                    model: card.name.clone(),
                    model_dim: card.dim,
                    index_dim: manifest.dim,
                });
            }
        }
        info!(
            location,
            generation = manifest.generation,
            count = manifest.count,
            catalog = manifest.catalog.is_some(),
            "index opened"
        );
        Ok(Engine {
            reader,
            encoder,
            multilingual: None,
            root_base: root_base.to_string(),
            label: label.to_string(),
            name: clipedge_api::clip_retrieval::index_name(location),
        })
    }

    /// Serves the index under `name` for clip-retrieval clients (default: the last segment of
    /// its location).
    pub fn with_name(mut self, name: &str) -> Engine {
        self.name = name.to_string();
        self
    }

    /// The name clip-retrieval clients select this index by (`indice_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Caption and URL of each of `ids`, in order (clip-retrieval's `POST /metadata`).
    pub async fn items(&self, ids: &[u64]) -> Result<Vec<Item>, ApiError> {
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            items.push(self.item(*id).await?);
        }
        Ok(items)
    }

    /// The served generation's manifest.
    pub fn manifest(&self) -> &clipedge_format::Manifest {
        self.reader.manifest()
    }

    pub fn dim(&self) -> usize {
        self.reader.manifest().dim as usize
    }

    pub fn storage(&self) -> &Storage {
        self.reader.storage()
    }

    pub fn health(&self) -> HealthResponse {
        let manifest = self.reader.manifest();
        HealthResponse {
            status: "ok".to_string(),
            generation: manifest.generation.clone(),
            count: manifest.count,
            dim: manifest.dim,
            model: manifest.model.id.clone(),
            label: self.label.clone(),
            id_search: manifest.catalog.is_some(),
            default_nprobe: clipedge_api::clip_retrieval::IndexShape::of(manifest).default_nprobe,
            front: "embedded".to_string(),
            memory_bytes: None,
            model_loaded: Some(self.encoder.is_some()),
            text_kernel: None,
        }
    }

    /// Caption and URL of one item, for the page's "more like this" header.
    pub async fn item(&self, id: u64) -> Result<Item, ApiError> {
        let source = self.storage();
        let generation = self.reader.generation();
        let entry = generation
            .catalog_entry(source, id)
            .await
            .map_err(generation_error)?;
        let record = generation
            .records(source, &[entry.metadata_ref])
            .await
            .map_err(generation_error)?
            .pop()
            .unwrap_or_default();
        Ok(Item {
            id,
            score: 1.0,
            url: resolve_url(&self.root_base, &record.url),
            caption: record.caption,
            fields: record.extra,
        })
    }

    /// Adds the multilingual text tower: one trained into the embedding space of the tower
    /// the index was built with (its card's `aligned_to` names that fingerprint), of the
    /// index's dimension.
    pub fn with_multilingual(
        mut self,
        encoder: Arc<TextEncoder>,
    ) -> Result<Engine, Box<EngineError>> {
        let manifest = self.reader.manifest();
        let card = encoder.card();
        let index_fingerprint = &manifest.model.fingerprint;
        let aligned = card.fingerprint == *index_fingerprint
            || card.aligned_to.as_deref() == Some(index_fingerprint.as_str());
        if !aligned {
            return Err(Box::new(EngineError::MultilingualNotAligned {
                model: card.name.clone(),
                aligned_to: card
                    .aligned_to
                    .clone()
                    .unwrap_or_else(|| "nothing".to_string()),
                index_model: manifest.model.id.clone(),
                index_fingerprint: index_fingerprint.clone(),
            }));
        }
        if card.dim != manifest.dim as usize {
            return Err(Box::new(EngineError::DimensionMismatch {
                location: self.name.clone(),
                model: card.name.clone(),
                model_dim: card.dim,
                index_dim: manifest.dim,
            }));
        }
        self.multilingual = Some(encoder);
        Ok(self)
    }

    async fn query_vector<S: ObjectSource>(
        &self,
        query: Query,
        source: &S,
    ) -> Result<Vec<f32>, ApiError> {
        match query {
            Query::Vector(vector) => Ok(vector),
            Query::MultilingualText(text) => {
                let Some(encoder) = self.multilingual.clone() else {
                    return Err(ApiError::new(
                        ErrorCode::MultilingualUnsupported,
                        "no multilingual text tower is configured for this index: search with \
                         use_mclip false, or start clipedge serve with --multilingual-model",
                    ));
                };
                encode(encoder, text).await
            }
            Query::Text(text) => {
                let Some(encoder) = self.encoder.clone() else {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        "this server has no text model: search by vector or id",
                    ));
                };
                encode(encoder, text).await
            }
            Query::Id(id) => self
                .reader
                .generation()
                .stored_vector(source, id)
                .await
                .map_err(|error| {
                    if matches!(error, GenerationError::Inconsistent { .. }) {
                        warn!(id, %error, "index is inconsistent");
                    }
                    generation_error(error)
                }),
        }
    }

    /// Answers one validated search: the shared root (`clipedge_search`) over the in-process
    /// leaf, so the answer, a partial answer and the errors are the edge Worker's.
    pub async fn search(&self, search: ValidSearch) -> Result<SearchResponse, ApiError> {
        let source = Counted::new(self.storage());
        let started = Instant::now();
        let query = self.query_vector(search.query.clone(), &source).await?;
        let encode_ms = elapsed_ms(started);
        let leaves = InProcessLeaf {
            reader: &self.reader,
        };
        let answer = clipedge_search::search(
            self.reader.generation(),
            &source,
            &leaves,
            &query,
            &search,
            &self.root_base,
            || elapsed_ms(started),
        )
        .await;
        let mut response = answer.result?;
        response.timings.encode = encode_ms;
        let own_reads = source.counts();
        response.stats.gets += own_reads.gets;
        response.stats.bytes_read += own_reads.bytes_read;
        Ok(response)
    }
}

/// The root's leaf in `clipedge serve`: the same leaf search a scanner Lambda runs, in
/// process, over the one call the root plans for it.
struct InProcessLeaf<'a> {
    reader: &'a IndexReader,
}

impl Leaves for InProcessLeaf<'_> {
    fn policy(&self) -> FanOutPolicy<'_> {
        FanOutPolicy {
            max_calls: 1,
            min_lists_per_call: 1,
            scanners: &[],
        }
    }

    async fn scan(&self, job: &LeafJob<'_>, calls: &[Call]) -> FanOut {
        let mut fan_out = FanOut::default();
        for call in calls {
            let targets = call.batch.targets();
            let request = LeafRequest {
                query: job.query,
                targets: LeafTargets::from_scan(&targets),
                k: job.k as usize,
                rerank: job.rerank as usize,
                deadline: None,
                reads: ReadPlan::Coalesced,
                parallel: false,
            };
            match self.reader.leaf_search(&request).await {
                Ok(leaf) => fan_out.add_response(
                    &leaf.into_scan_response(String::new(), job.generation.to_string()),
                ),
                Err(error) => {
                    warn!(%error, "in-process leaf search failed");
                    fan_out.add_failed_call(&call.batch.lists, error.to_string());
                }
            }
        }
        // No scanner was invoked: nothing to meter as calls or scanner time.
        fan_out.calls = 0;
        fan_out.scanner_ms = 0.0;
        fan_out
    }
}
