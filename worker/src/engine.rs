//! The query path at the edge and what an isolate keeps between requests.
//!
//! Kept per isolate, loaded lazily: the text model (once) and, per served index, the live
//! generation's manifest and routing table (re-checked against `CURRENT` every
//! `CLIPEDGE_CURRENT_TTL_MS`). A request searches one index (the default, or the one it names)
//! and takes one `Rc` of its generation, used throughout: it is pinned even if `CURRENT` moves
//! meanwhile.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use clipedge_api::clip_retrieval::{index_media_base, index_position};
use clipedge_api::{
    generation_error, resolve_url, text_encode_error, ApiError, ErrorCode, HealthResponse, Item,
    Query, QueryStats, SearchResponse, Timings, ValidSearch,
};
use clipedge_index::{current_generation, Generation, GenerationError};
use clipedge_io::{Counted, ObjectSource, Prefixed};
use clipedge_text::{ModelCard, PackageBytes, TextEncoder};

use crate::clock::{monotonic_ms, since, unix_ms};
use crate::config::{IndexConfig, WorkerConfig};
use crate::embed_cache::{cache_key, edge_cache_url, EmbeddingCache};
use crate::metering::FanOutUsage;
use crate::objects::{Objects, SourceError};
use crate::scanners::Scanners;
use crate::shared::LoadSlot;
use clipedge_search::RootAnswer;

/// What a model package may weigh in the isolate (128 MB, shared with the JS heap, the routing
/// table and the requests in flight): the B/32 int8 tower is 63 MB.
pub const MAX_MODEL_BYTES: u64 = 80 * 1024 * 1024;
const MAX_TOKENIZER_BYTES: u64 = 8 * 1024 * 1024;
const MAX_CARD_BYTES: u64 = 64 * 1024;

#[derive(Default)]
struct Isolate {
    encoder: LoadSlot<TextEncoder>,
    /// One live generation per served index, by its `s3://` root (not its name: a root renamed
    /// by a new config never shares a generation with another).
    generations: RefCell<HashMap<String, Rc<LiveGeneration>>>,
    embeddings: EmbeddingCache,
}

impl Isolate {
    /// The generation slot of the index at `root` (made on first use).
    fn live_generation(&self, root: &str) -> Rc<LiveGeneration> {
        self.generations
            .borrow_mut()
            .entry(root.to_string())
            .or_default()
            .clone()
    }
}

/// One index's live generation in the isolate.
#[derive(Default)]
struct LiveGeneration {
    generation: LoadSlot<Generation>,
    /// When a request last read `CURRENT` and found the ready generation live.
    checked_unix_ms: Cell<Option<u64>>,
}

thread_local! {
    static ISOLATE: Rc<Isolate> = Rc::new(Isolate::default());
}

fn isolate() -> Rc<Isolate> {
    ISOLATE.with(Rc::clone)
}

fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{context}: {error}"))
}

/// The wasm linear memory in bytes: the part of the isolate's 128 MB this module holds.
pub fn memory_bytes() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        Some(core::arch::wasm32::memory_size(0) as u64 * 65536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

/// One request's view: configuration, object reads (counted), and what it loaded cold.
pub struct RequestContext<'a> {
    pub config: &'a WorkerConfig,
    /// The index this request reads: the default one unless it named another
    /// ([`RequestContext::select_index`]).
    pub index: &'a IndexConfig,
    /// The request's own reads (counted for `stats` and metering).
    pub objects: Counted<Objects>,
    /// Milliseconds spent loading the model or a generation in this request (cold start).
    pub load_ms: f64,
    /// Of `load_ms`: fetching the model package, and building the encoder from it.
    pub model_fetch_ms: f64,
    pub model_build_ms: f64,
    /// Which cache layer gave the query's embedding (`isolate` or `edge`; no encode), if any.
    pub embedding_cache_hit: Option<&'static str>,
    /// Positions the text tower ran for the query.
    pub encoded_tokens: Option<usize>,
    /// Of the encode stage: the tower itself (tokenize + forward, synchronous), and the edge
    /// Cache API round trips (lookup and store). Reported apart because only the first is
    /// compute: the Cache API is I/O whose cost depends on the runtime, not on the model.
    pub tower_ms: Option<f64>,
    /// Of the tower: the tokenizer alone.
    pub tokenize_ms: Option<f64>,
    pub edge_cache_ms: f64,
    /// When the request must be answered by ([`monotonic_ms`] time; `CLIPEDGE_REQUEST_DEADLINE_MS`
    /// from the context's creation).
    pub deadline_ms: f64,
    /// What the scanner fan-out of the request's search cost (usage metering).
    pub fan_out_usage: FanOutUsage,
}

impl<'a> RequestContext<'a> {
    pub fn new(config: &'a WorkerConfig, objects: Objects) -> Self {
        let deadline_ms = monotonic_ms() + f64::from(config.request_deadline_ms);
        RequestContext {
            config,
            index: config.default_index(),
            objects: Counted::new(objects.with_deadline(deadline_ms)),
            load_ms: 0.0,
            model_fetch_ms: 0.0,
            model_build_ms: 0.0,
            embedding_cache_hit: None,
            encoded_tokens: None,
            tower_ms: None,
            tokenize_ms: None,
            edge_cache_ms: 0.0,
            deadline_ms,
            fan_out_usage: FanOutUsage::default(),
        }
    }

    fn stats(&self) -> QueryStats {
        let reads = self.objects.counts();
        QueryStats {
            gets: reads.gets,
            bytes_read: reads.bytes_read,
            ..QueryStats::default()
        }
    }

    /// Reads the index named `name` from here on (`None`: the default one); 404
    /// `unknown_index` naming the served ones.
    pub fn select_index(&mut self, name: Option<&str>) -> Result<(), ApiError> {
        let Some(name) = name else {
            self.index = self.config.default_index();
            return Ok(());
        };
        let position = index_position(name, &self.config.index_names())?;
        self.index = &self.config.indexes[position];
        Ok(())
    }

    /// The selected index root in the bucket: what the generation reader reads.
    fn index(&self) -> Prefixed<&Counted<Objects>> {
        Prefixed::new(&self.objects, &self.index.prefix)
    }

    /// What the selected index's relative media URLs resolve against: `/media/…` serves the
    /// default index's, `/indexes/NAME/media/…` another's.
    fn media_base(&self) -> String {
        if self.index.name == self.config.default_index().name {
            "/".to_string()
        } else {
            index_media_base(&self.index.name)
        }
    }

    /// The generation `CURRENT` names, from the isolate's cache while it is fresh.
    ///
    /// Every request reads `CURRENT` itself when the cache is stale (a small GET); the manifest
    /// and routing table are loaded by one request per generation (see [`crate::shared`]).
    pub async fn generation(&mut self) -> Result<Rc<Generation>, ApiError> {
        if let Some(fresh) = self.cached_generation() {
            return Ok(fresh);
        }
        let started = monotonic_ms();
        let slot = isolate().live_generation(&self.index.url);
        let live = match current_generation(&self.index()).await {
            Ok(live) => live,
            Err(error) => {
                // A bucket that does not answer: the generation the isolate holds is immutable
                // and still correct, so serve it rather than fail every request meanwhile.
                let held = slot.generation.ready_any();
                if let (GenerationError::Source { .. }, Some(held)) = (&error, held) {
                    worker::console_warn!(
                        "serving generation {} while CURRENT cannot be read: {error}",
                        held.manifest.generation
                    );
                    return Ok(held);
                }
                return Err(generation_error(error));
            }
        };
        let (generation, outcome) = slot
            .generation
            .get_or_load(&live, || async {
                Generation::open(&self.index(), &live)
                    .await
                    .map_err(generation_error)
            })
            .await?;
        slot.checked_unix_ms.set(Some(unix_ms()));
        if outcome.loaded || outcome.waited {
            self.load_ms += since(started);
        }
        Ok(generation)
    }

    fn cached_generation(&self) -> Option<Rc<Generation>> {
        let slot = isolate().live_generation(&self.index.url);
        let checked = slot.checked_unix_ms.get()?;
        if unix_ms().saturating_sub(checked) >= self.config.current_ttl_ms {
            return None;
        }
        slot.generation.ready_any()
    }

    /// The text model, loaded from the bucket on the isolate's first text query (by one request;
    /// concurrent first requests wait for it rather than load a second copy that would not fit).
    pub async fn encoder(&mut self) -> Result<Rc<TextEncoder>, ApiError> {
        let isolate = isolate();
        let model_key = self.config.model_prefix.clone();
        if let Some(encoder) = isolate.encoder.ready(&model_key) {
            return Ok(encoder);
        }
        let started = monotonic_ms();
        let (encoder, _outcome) = isolate
            .encoder
            .get_or_load(&model_key, || self.load_encoder())
            .await?;
        self.load_ms += since(started);
        Ok(encoder)
    }

    async fn load_encoder(&mut self) -> Result<TextEncoder, ApiError> {
        let fetch_started = monotonic_ms();
        let model_error = |error: SourceError| match error {
            SourceError::TooLarge { .. } => internal("text model refused", error),
            other => internal("cannot read the text model", other),
        };
        let card_bytes = self
            .objects
            .get(&self.config.model_key("model.toml"), Some(MAX_CARD_BYTES))
            .await
            .map_err(model_error)?;
        let card_toml = String::from_utf8(card_bytes.into())
            .map_err(|_| internal("bad text model", "model.toml is not UTF-8"))?;
        let card =
            ModelCard::from_toml(&card_toml).map_err(|error| internal("bad text model", error))?;
        let files = card
            .files_for(card.engine())
            .map_err(|error| internal("bad text model", error))?;
        let tokenizer_key = self.config.model_key(&files.tokenizer);
        let tower_key = self.config.model_key(&files.tower);
        // Sizes are checked before a body is read: a package too large for the isolate is
        // refused with its limit named, instead of an out-of-memory crash mid-fetch.
        let (tokenizer, tower, external_data) = futures::try_join!(
            self.objects.get(&tokenizer_key, Some(MAX_TOKENIZER_BYTES)),
            self.objects.get(&tower_key, Some(MAX_MODEL_BYTES)),
            async {
                match &files.external_data {
                    Some(file) => self
                        .objects
                        .get(&self.config.model_key(file), Some(MAX_MODEL_BYTES))
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            }
        )
        .map_err(model_error)?;
        self.model_fetch_ms = since(fetch_started);
        let build_started = monotonic_ms();
        let encoder = TextEncoder::from_package(PackageBytes {
            card_toml: &card_toml,
            // Moved: the int8 engine keeps these bytes as its tables and weights (no copies).
            tokenizer: tokenizer.into(),
            tower: tower.into(),
            external_data: external_data.map(Vec::from),
        })
        .map_err(|error| internal("cannot load the text model", error));
        self.model_build_ms = since(build_started);
        encoder
    }

    /// `GET /v1/health`.
    pub async fn health(&mut self) -> Result<HealthResponse, ApiError> {
        let generation = self.generation().await?;
        let manifest = &generation.manifest;
        Ok(HealthResponse {
            status: "ok".to_string(),
            generation: manifest.generation.clone(),
            count: manifest.count,
            dim: manifest.dim,
            model: manifest.model.id.clone(),
            label: self.config.label.clone(),
            id_search: manifest.catalog.is_some(),
            default_nprobe: clipedge_api::clip_retrieval::IndexShape::of(manifest).default_nprobe,
            front: "edge".to_string(),
            memory_bytes: memory_bytes(),
            model_loaded: Some(isolate().encoder.is_ready()),
            text_kernel: Some(clipedge_text::int8::Kernel::best().describe()),
        })
    }

    /// `GET /v1/items/{id}`: caption and URL of one item.
    pub async fn item(&mut self, id: u64) -> Result<Item, ApiError> {
        let generation = self.generation().await?;
        let index = self.index();
        let entry = generation
            .catalog_entry(&index, id)
            .await
            .map_err(generation_error)?;
        let record = generation
            .records(&index, &[entry.metadata_ref])
            .await
            .map_err(generation_error)?
            .pop()
            .unwrap_or_default();
        Ok(Item {
            id,
            score: 1.0,
            url: resolve_url(&self.media_base(), &record.url),
            caption: record.caption,
            fields: record.extra,
        })
    }

    async fn query_vector(
        &mut self,
        generation: &Generation,
        query: Query,
    ) -> Result<Vec<f32>, ApiError> {
        match query {
            Query::Vector(vector) => Ok(vector),
            Query::MultilingualText(_) => Err(ApiError::new(
                ErrorCode::MultilingualUnsupported,
                "the edge front runs no multilingual text tower (an XLM-R-sized tower does not \
                 fit an isolate's 128 MB beside the CLIP one): search with use_mclip false, or \
                 through clipedge serve --multilingual-model",
            )),
            Query::Id(id) => generation
                .stored_vector(&self.index(), id)
                .await
                .map_err(generation_error),
            Query::Text(text) => {
                // Keyed by the index's model: only an encoder that matches it fills the caches.
                let fingerprint = &generation.manifest.model.fingerprint;
                let key = cache_key(fingerprint, &text);
                let embeddings = &isolate().embeddings;
                embeddings.set_capacity(self.config.embed_cache_entries);
                if let Some(embedding) = embeddings.get(&key) {
                    self.embedding_cache_hit = Some("isolate");
                    return Ok(embedding.as_ref().clone());
                }
                let edge_url =
                    (self.config.embed_cache_ttl_s > 0).then(|| edge_cache_url(fingerprint, &key));
                #[cfg(target_arch = "wasm32")]
                if let Some(url) = &edge_url {
                    let dim = generation.manifest.dim as usize;
                    let lookup_started = monotonic_ms();
                    let hit = crate::embed_cache::edge::get(url, dim).await;
                    self.edge_cache_ms += since(lookup_started);
                    if let Some(embedding) = hit {
                        self.embedding_cache_hit = Some("edge");
                        embeddings.put(key, embedding.clone());
                        return Ok(embedding);
                    }
                }
                let encoder = self.encoder().await?;
                let card = encoder.card();
                if card.fingerprint != generation.manifest.model.fingerprint {
                    return Err(internal(
                        "model mismatch",
                        format!(
                            "index generation {} was built with model {} (fingerprint {}), but \
                             the Worker's model package {} is {} (fingerprint {}): publish the \
                             matching package or point CLIPEDGE_MODEL_PREFIX at it",
                            generation.manifest.generation,
                            generation.manifest.model.id,
                            generation.manifest.model.fingerprint,
                            self.config.model_prefix,
                            card.name,
                            card.fingerprint
                        ),
                    ));
                }
                let tower_started = monotonic_ms();
                let encoded = encoder.tokenize(&text).and_then(|tokens| {
                    self.tokenize_ms = Some(since(tower_started));
                    encoder.encode_tokens(&tokens)
                });
                self.tower_ms = Some(since(tower_started));
                match encoded {
                    Ok(encoding) => {
                        self.encoded_tokens = Some(encoding.tokens);
                        embeddings.put(key, encoding.embedding.clone());
                        #[cfg(target_arch = "wasm32")]
                        if let Some(url) = &edge_url {
                            let store_started = monotonic_ms();
                            crate::embed_cache::edge::put(
                                url,
                                &encoding.embedding,
                                self.config.embed_cache_ttl_s,
                            )
                            .await;
                            self.edge_cache_ms += since(store_started);
                        }
                        #[cfg(not(target_arch = "wasm32"))]
                        let _ = edge_url;
                        Ok(encoding.embedding)
                    }
                    Err(error) => Err(text_encode_error(error)),
                }
            }
        }
    }

    /// `POST /v1/search`, validated against the pinned generation.
    pub async fn search(
        &mut self,
        generation: &Generation,
        search: ValidSearch,
        request_id: &str,
    ) -> Result<SearchResponse, ApiError> {
        let mut timings = Timings::default();
        let started = monotonic_ms();
        let load_before = self.load_ms;
        let query = self.query_vector(generation, search.query.clone()).await?;
        // The encode stage is the tower itself; a cold model load and the edge Cache API round
        // trips (I/O: 4–10 ms each query in `wrangler dev`, 2026-11-27) are reported apart.
        timings.encode = since(started) - (self.load_ms - load_before) - self.edge_cache_ms;

        let scanners = Scanners {
            config: self.config,
            index: &self.index.url,
            request_id,
            deadline_ms: self.deadline_ms,
        };
        let media_base = self.media_base();
        let RootAnswer { result, fan_out } = clipedge_search::search(
            generation,
            &self.index(),
            &scanners,
            &query,
            &search,
            &media_base,
            monotonic_ms,
        )
        .await;
        self.fan_out_usage = FanOutUsage {
            calls: fan_out.calls,
            gets: fan_out.gets,
            bytes_read: fan_out.bytes_read,
            scanner_ms: fan_out.scanner_ms,
            partial: result.as_ref().is_ok_and(|response| response.partial),
        };
        let mut response = result?;
        response.timings.encode = timings.encode;
        let own = self.stats();
        response.stats.gets += own.gets;
        response.stats.bytes_read += own.bytes_read;
        Ok(response)
    }

    /// An object under the selected index root (`media/…`, from
    /// `clipedge_api::web::media_object`).
    pub async fn media(&self, object: &str) -> Result<Vec<u8>, SourceError> {
        Ok(self.index().get(object, None).await?.into())
    }
}
