//! The public `/v1` HTTP API: request/response types, validation, merge and de-duplication.
//!
//! No I/O, builds for `wasm32-unknown-unknown`: the embedded server (`clipedge serve`) and the
//! edge Worker share this crate, so both answer the same requests with the same errors.
//!
//! `POST /v1/search` takes exactly one of `text`, `vector` or `id` plus optional `k`, `offset`,
//! `generation`, `nprobe`, `rerank`, `dedup` and `safety`; the limits are the constants below. A bad request gets a 4xx with
//! `{"error": {"code", "message"}}`, the code one of [`ErrorCode`].
//!
//! [`clip_retrieval`] maps clip-retrieval's `POST /knn-service` onto the same search and shapes
//! its answer, plus `GET /indices-list` and `POST /metadata`.

pub mod clip_retrieval;
pub mod keys;
pub mod web;

use std::collections::HashSet;
use std::fmt::Write as _;

use clipedge_format::Hit;
use clipedge_index::GenerationError;
use clipedge_io::{error_chain, SourceError};
use clipedge_text::TextError;
use serde::{Deserialize, Serialize};

/// Longest accepted `text`, in Unicode scalar values (the tower truncates to its token limit).
pub const MAX_TEXT_CHARS: usize = 1000;
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_K: usize = 20;
/// Most results one answer may carry (`k`), and the end of the paged window (`offset + k`).
pub const MAX_K: usize = 10_000;
/// A paged request (one with `offset`) ranks this many results, whatever its page: every page
/// of one query and generation cuts the same ranking, so pages neither repeat nor skip.
pub const PAGE_WINDOW: usize = MAX_K;
/// Candidates one scanner call may return and rerank (`k′ × rerank`, the scanner protocol's
/// `MAX_CANDIDATES`): at most 37 bytes each encoded, the answer stays under the protocol's
/// 4 MiB response limit, itself under the 6 MB Lambda response cap.
pub const MAX_RERANK_CANDIDATES: usize = 100_000;
/// Near-duplicate removal drops a result whose stored vector has at least this cosine with a
/// better-ranked kept result (clip-retrieval's threshold).
pub const NEAR_DUPLICATE_COSINE: f32 = 0.94;
/// Near-duplicate removal compares the best this many results (past them, only exact
/// duplicates are removed): each compared result's stored vector is read.
pub const NEAR_DEDUP_WINDOW: usize = 1_000;
/// A filter on a catalog column (`safety`) reads the record of every result up to the page's
/// end, so `offset + k` may not pass this when the filter applies.
pub const MAX_FILTERED_RESULTS: usize = 1_000;
/// Catalog column the safety filter reads (LAION's `NSFW`); results whose value is not
/// [`SAFE_VALUE`] are dropped.
pub const SAFETY_COLUMN: &str = "NSFW";
pub const SAFE_VALUE: &str = "UNLIKELY";
/// Catalog columns an aesthetic preference reads (LAION-Aesthetics' predicted score, 0–10),
/// the first present wins.
pub const AESTHETIC_COLUMNS: [&str; 3] = ["aesthetic", "AESTHETIC_SCORE", "aesthetic_score"];

/// clip-retrieval's `aesthetic_score` / `aesthetic_weight`, applied where the catalog has an
/// aesthetic column: the first [`MAX_FILTERED_RESULTS`] results are re-ranked by
/// `score − weight × |aesthetic − wanted| / 9` (a result without a value counts as 9 away).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AestheticPreference {
    pub wanted: f32,
    pub weight: f32,
}
/// Response header naming the filters or modes asked for that this answer did not apply
/// (e.g. `safety`: the catalog has no `NSFW` column).
pub const NOT_APPLIED_HEADER: &str = "x-clipedge-not-applied";
pub const DEFAULT_NPROBE: usize = 16;

fn default_nprobe() -> usize {
    DEFAULT_NPROBE
}
pub const MAX_NPROBE: usize = 4096;
/// Candidates reranked exactly = `k * rerank`.
pub const DEFAULT_RERANK: usize = 10;
pub const MAX_RERANK: usize = 50;
/// From this many vectors on, a search that does not name `rerank` reranks
/// [`LARGE_INDEX_RERANK`] × k: the candidates the PQ scores rank above the true 10th neighbour
/// grow with the index. Measured on out-of-distribution (text-like) queries: at 200k, rerank 10
/// reaches 0.95 recall@10; at 1M it takes rerank 50 (`benches/faiss_compare.py`); at 10M,
/// rerank 10 stops at 0.65–0.82 whatever nprobe, rerank 50 gives 0.943 at nprobe 32 for 0.1 ms
/// more (`benches/scale_bench.py`).
pub const LARGE_INDEX_VECTORS: u64 = 1_000_000;
pub const LARGE_INDEX_RERANK: usize = 50;

/// The rerank factor a search of an index of `count` vectors gets when it names none.
pub fn default_rerank(count: u64) -> usize {
    if count >= LARGE_INDEX_VECTORS {
        LARGE_INDEX_RERANK
    } else {
        DEFAULT_RERANK
    }
}

/// What shows on the page next to the results when the index is the caption-embedding demo.
pub const DEMO_LABEL: &str = "demo model: caption embeddings (all-MiniLM-L6-v2); deploy a CLIP export for pixel-based search";

/// The page's label for an index embedded with the model named `model_name`: the demo's
/// explanation for MiniLM (captions, not pixels), else the model's name. Both fronts show it
/// (`clipedge serve` directly, the Worker through `CLIPEDGE_LABEL`).
pub fn model_label(model_name: &str) -> String {
    if model_name.to_ascii_lowercase().contains("minilm") {
        return DEMO_LABEL.to_string();
    }
    format!("model: {model_name}")
}

/// The body of `POST /v1/search`, as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nprobe: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<usize>,
    /// `"off"`, `"exact"` (same content hash; `true`), `"near"` (also cosine ≥ 0.94 between
    /// stored vectors) or `false` (off). Default `"exact"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<serde_json::Value>,
    /// Position of the first result in the query's ranking: paging. With it the ranking is
    /// [`PAGE_WINDOW`] deep whatever the page, so consecutive pages tile it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// The generation the previous page named: another one answers 409 `generation_changed`
    /// (the ranking of a new generation is another; restart paging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// Keep only results whose catalog record says `NSFW: UNLIKELY`; when the catalog has no
    /// such column the answer says it was not applied ([`NOT_APPLIED_HEADER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<bool>,
    /// Encode `text` with the front's multilingual text tower (clip-retrieval's `use_mclip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multilingual: Option<bool>,
    /// The served index to search, by name (`GET /indices-list`); absent: the default (first)
    /// index. The front selects with it before validating; an unknown name is 404
    /// `unknown_index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
}

/// What to search with.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Encode this text with the text tower.
    Text(String),
    /// Encode this text with the multilingual text tower (`"multilingual": true`,
    /// clip-retrieval's `use_mclip`): one trained into the index's embedding space (M-CLIP).
    MultilingualText(String),
    /// Search with this embedding as is.
    Vector(Vec<f32>),
    /// "More like this": search with the stored vector of this id.
    Id(u64),
}

/// Which duplicates a search removes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dedup {
    Off,
    /// The same content hash (the same image indexed twice).
    #[default]
    Exact,
    /// Exact duplicates, then results whose stored vector has cosine ≥
    /// [`NEAR_DUPLICATE_COSINE`] with a better-ranked kept one (among the best
    /// [`NEAR_DEDUP_WINDOW`]).
    Near,
}

impl Dedup {
    pub fn as_str(self) -> &'static str {
        match self {
            Dedup::Off => "off",
            Dedup::Exact => "exact",
            Dedup::Near => "near",
        }
    }

    /// `true`/`"exact"`, `false`/`"off"`, `"near"`; anything else is 400 `invalid_dedup`.
    fn parse(value: Option<&serde_json::Value>) -> Result<Dedup, ApiError> {
        use serde_json::Value;
        match value {
            None | Some(Value::Null) => Ok(Dedup::default()),
            Some(Value::Bool(true)) => Ok(Dedup::Exact),
            Some(Value::Bool(false)) => Ok(Dedup::Off),
            Some(Value::String(mode)) if mode == "off" => Ok(Dedup::Off),
            Some(Value::String(mode)) if mode == "exact" => Ok(Dedup::Exact),
            Some(Value::String(mode)) if mode == "near" => Ok(Dedup::Near),
            Some(other) => Err(ApiError::new(
                ErrorCode::InvalidDedup,
                format!("dedup must be \"off\", \"exact\", \"near\" or a boolean, got {other}"),
            )),
        }
    }
}

/// A request that passed validation, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSearch {
    pub query: Query,
    /// Results in the answer (the page size).
    pub k: usize,
    /// Results of the ranking skipped before the answer's first.
    pub offset: usize,
    /// A paged request ranks [`PAGE_WINDOW`] results whatever its page.
    pub paged: bool,
    /// The generation the client pinned (the previous page's).
    pub generation: Option<String>,
    pub nprobe: usize,
    /// `nprobe` was not given: the root widens it until the probed lists hold about twice
    /// the candidates (`clip_retrieval::IndexShape::nprobe_for`), so a large k finds k.
    pub nprobe_default: bool,
    pub rerank: usize,
    /// `rerank` was not given: the root raises it to [`default_rerank`] of the index (within
    /// what the candidates afford, [`ValidSearch::rerank_for`]).
    pub rerank_default: bool,
    pub dedup: Dedup,
    /// Drop results whose catalog record is not `NSFW: UNLIKELY` (when the catalog has it).
    pub safety: bool,
    /// Re-rank toward an aesthetic level (clip-retrieval only; when the catalog has it).
    pub aesthetic: Option<AestheticPreference>,
    /// How many of the first results get their catalog record (caption and URL); the rest
    /// are answered with empty ones. `k` for `/v1`; clip-retrieval's `num_images`.
    pub records: usize,
}

impl ValidSearch {
    /// Where the answer ends in the ranking.
    pub fn end(&self) -> usize {
        self.offset + self.k
    }

    /// How deep the ranking is: the answer's end, or [`PAGE_WINDOW`] when paged.
    pub fn window(&self) -> usize {
        if self.paged {
            PAGE_WINDOW.max(self.end())
        } else {
            self.end()
        }
    }

    /// Candidates to ask each leaf for: de-duplication and filters drop some, so ask for more
    /// than the window (at most [`MAX_RERANK_CANDIDATES`]).
    pub fn candidates(&self) -> usize {
        let window = self.window();
        let mut candidates = if self.dedup == Dedup::Off {
            window
        } else {
            (2 * window).max(window + 10)
        };
        if self.safety {
            candidates *= 2;
        }
        if self.aesthetic.is_some() {
            // Re-ranked toward an aesthetic level: results from below the window move up.
            candidates = candidates.max((4 * window).min(MAX_FILTERED_RESULTS));
        }
        candidates.min(MAX_RERANK_CANDIDATES)
    }

    /// The rerank factor that fits [`MAX_RERANK_CANDIDATES`] for `candidates` per call.
    pub fn rerank_for(&self, candidates: usize) -> usize {
        self.rerank.min(MAX_RERANK_CANDIDATES / candidates.max(1))
    }
}

/// Machine-readable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not JSON of the expected shape.
    InvalidJson,
    /// None, or more than one, of `text`, `vector`, `id`.
    InvalidQuery,
    EmptyText,
    TextTooLong,
    KOutOfRange,
    /// `offset` past the paged window.
    OffsetOutOfRange,
    NprobeOutOfRange,
    RerankOutOfRange,
    /// `dedup` is not one of its modes.
    InvalidDedup,
    /// The request pinned a generation (`generation`, from the previous page) that is no
    /// longer served: the ranking changed, page again from the start.
    GenerationChanged,
    /// `use_mclip`: no multilingual text tower is configured.
    MultilingualUnsupported,
    /// `vector` has the wrong number of values for the index.
    VectorDimension,
    VectorNotFinite,
    /// `id` names no item of the index.
    UnknownId,
    /// The index cannot search by id (no catalog or no stored vectors).
    IdSearchUnsupported,
    /// Search by image: the model package has no image tower.
    ImageSearchUnsupported,
    /// clip-retrieval's `indice_name` names no served index.
    UnknownIndex,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    /// The index, the model or the scanners failed; the message says which.
    Internal,
    /// Every scanner call failed.
    ScannersFailed,
    /// The index's object storage did not answer (after retries); worth retrying later.
    StorageUnavailable,
    /// The API wants a key (`Authorization: Bearer KEY`) and none was sent.
    MissingApiKey,
    /// The key sent is not one of the API's keys (or is revoked).
    InvalidApiKey,
    /// Over a rate limit; `Retry-After` says when to try again.
    RateLimited,
    /// The server is at its concurrency and queue limits; `Retry-After` says when to try again.
    Overloaded,
    /// The request ran past the server's deadline.
    Timeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::KOutOfRange => "k_out_of_range",
            ErrorCode::OffsetOutOfRange => "offset_out_of_range",
            ErrorCode::InvalidDedup => "invalid_dedup",
            ErrorCode::GenerationChanged => "generation_changed",
            ErrorCode::MultilingualUnsupported => "multilingual_unsupported",
            ErrorCode::NprobeOutOfRange => "nprobe_out_of_range",
            ErrorCode::RerankOutOfRange => "rerank_out_of_range",
            ErrorCode::VectorDimension => "vector_dimension",
            ErrorCode::VectorNotFinite => "vector_not_finite",
            ErrorCode::UnknownId => "unknown_id",
            ErrorCode::IdSearchUnsupported => "id_search_unsupported",
            ErrorCode::ImageSearchUnsupported => "image_search_unsupported",
            ErrorCode::UnknownIndex => "unknown_index",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Internal => "internal",
            ErrorCode::ScannersFailed => "scanners_failed",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::MissingApiKey => "missing_api_key",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// The HTTP status the code is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::UnknownId | ErrorCode::UnknownIndex | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::GenerationChanged => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::IdSearchUnsupported
            | ErrorCode::ImageSearchUnsupported
            | ErrorCode::MultilingualUnsupported => 422,
            ErrorCode::Internal => 500,
            ErrorCode::ScannersFailed => 502,
            ErrorCode::MissingApiKey => 401,
            ErrorCode::InvalidApiKey => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded | ErrorCode::StorageUnavailable => 503,
            ErrorCode::Timeout => 504,
            _ => 400,
        }
    }
}

/// An error answer: status from the code, message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"error not serializable"}}"#.to_string()
        })
    }
}

/// `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// Parses a request body (size-checked first).
pub fn parse_search_request(body: &[u8]) -> Result<SearchRequest, ApiError> {
    parse_body(body, "search request")
}

/// Parses a JSON body of any content type, refusing bodies over [`MAX_BODY_BYTES`]; `what`
/// names the expected shape in the error.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "request body has {} bytes, the limit is {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("request body is not a valid {what}: {error}"),
        )
    })
}

fn check_range(
    value: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
    name: &str,
    code: ErrorCode,
) -> Result<usize, ApiError> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(ApiError::new(
            code,
            format!("{name} must be in {min}..={max}, got {value}"),
        ));
    }
    Ok(value)
}

impl SearchRequest {
    /// Checks the request against the documented limits and the index's dimension.
    pub fn validate(self, dim: usize) -> Result<ValidSearch, ApiError> {
        let k = check_range(self.k, DEFAULT_K, 1, MAX_K, "k", ErrorCode::KOutOfRange)?;
        let offset = self.offset.unwrap_or(0);
        // Checked: a client may send any usize (the fuzzer sent one that overflowed).
        if offset.checked_add(k).is_none_or(|end| end > MAX_K) {
            return Err(ApiError::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "offset + k must be at most {MAX_K} (the paged window), got {offset} + {k}"
                ),
            ));
        }
        let dedup = Dedup::parse(self.dedup.as_ref())?;
        let nprobe = check_range(
            self.nprobe,
            DEFAULT_NPROBE,
            1,
            MAX_NPROBE,
            "nprobe",
            ErrorCode::NprobeOutOfRange,
        )?;
        let requested_rerank = check_range(
            self.rerank,
            DEFAULT_RERANK,
            0,
            MAX_RERANK,
            "rerank",
            ErrorCode::RerankOutOfRange,
        )?;
        let given = [
            self.text.is_some(),
            self.vector.is_some(),
            self.id.is_some(),
        ]
        .iter()
        .filter(|given| **given)
        .count();
        if given != 1 {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("give exactly one of text, vector or id (got {given})"),
            ));
        }
        let query = if let Some(text) = self.text {
            if text.trim().is_empty() {
                return Err(ApiError::new(ErrorCode::EmptyText, "text is empty"));
            }
            let chars = text.chars().count();
            if chars > MAX_TEXT_CHARS {
                return Err(ApiError::new(
                    ErrorCode::TextTooLong,
                    format!("text has {chars} characters, the limit is {MAX_TEXT_CHARS}"),
                ));
            }
            if self.multilingual == Some(true) {
                Query::MultilingualText(text)
            } else {
                Query::Text(text)
            }
        } else if let Some(vector) = self.vector {
            if vector.len() != dim {
                return Err(ApiError::new(
                    ErrorCode::VectorDimension,
                    format!(
                        "vector has {} values, the index has dimension {dim}",
                        vector.len()
                    ),
                ));
            }
            if let Some(position) = vector.iter().position(|x| !x.is_finite()) {
                return Err(ApiError::new(
                    ErrorCode::VectorNotFinite,
                    format!("vector value {position} is not finite"),
                ));
            }
            Query::Vector(vector)
        } else {
            Query::Id(self.id.unwrap_or_default())
        };
        let mut search = ValidSearch {
            query,
            k,
            offset,
            paged: self.offset.is_some(),
            generation: self.generation,
            nprobe,
            nprobe_default: self.nprobe.is_none(),
            rerank: requested_rerank,
            rerank_default: self.rerank.is_none(),
            dedup,
            safety: self.safety.unwrap_or(false),
            aesthetic: None,
            records: k,
        };
        // Large answers rerank fewer candidates per result: a scanner call reranks at most
        // MAX_RERANK_CANDIDATES. A rerank asked for explicitly is refused rather than lowered.
        let candidates = search.candidates();
        let fitted = search.rerank_for(candidates);
        if fitted < requested_rerank && self.rerank.is_some() {
            return Err(ApiError::new(
                ErrorCode::RerankOutOfRange,
                format!(
                    "rerank {requested_rerank} with {candidates} candidates per scanner call \
                     passes the limit of {MAX_RERANK_CANDIDATES} reranked candidates; use \
                     rerank <= {fitted} or a smaller k"
                ),
            ));
        }
        search.rerank = if requested_rerank == 0 {
            0
        } else {
            fitted.max(1)
        };
        Ok(search)
    }
}

/// Merges hit lists (one per scanner call, or one in-process scan) into the best `k`: by score,
/// ties by id then list id, so the order in which answers arrived does not matter; NaN scores
/// rank last; the same id from two lists counts once; with `dedup`, only the best hit of each
/// content hash is kept (the same image indexed twice shows once). The one merge of the query
/// path: the Worker and `clipedge serve` both call it.
pub fn merge(hit_lists: &[Vec<Hit>], k: usize, dedup: bool) -> Vec<Hit> {
    let mut all: Vec<Hit> = hit_lists.iter().flatten().copied().collect();
    all.sort_by(rank_order);
    let mut seen_ids = HashSet::new();
    let mut seen_hashes = HashSet::new();
    let mut merged = Vec::with_capacity(k.min(all.len()));
    for hit in all {
        if merged.len() == k {
            break;
        }
        if !seen_ids.insert(hit.id) {
            continue;
        }
        if dedup && !seen_hashes.insert(hit.content_hash) {
            continue;
        }
        merged.push(hit);
    }
    merged
}

/// Which of `vectors` (ranked best first) are near-duplicates to drop: those with cosine ≥
/// `threshold` to a better-ranked vector that is kept. A missing vector is never dropped and
/// never drops another. Greedy, as clip-retrieval removes them.
pub fn near_duplicates(vectors: &[Option<Vec<f32>>], threshold: f32) -> Vec<bool> {
    let unit = |vector: &Vec<f32>| {
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        vector.iter().map(|x| x * scale).collect::<Vec<f32>>()
    };
    let mut kept: Vec<Vec<f32>> = Vec::new();
    let mut dropped = vec![false; vectors.len()];
    for (position, vector) in vectors.iter().enumerate() {
        let Some(vector) = vector else {
            continue;
        };
        let vector = unit(vector);
        let is_near = kept.iter().any(|other| {
            let cosine: f32 = other.iter().zip(&vector).map(|(a, b)| a * b).sum();
            cosine >= threshold
        });
        if is_near {
            dropped[position] = true;
        } else {
            kept.push(vector);
        }
    }
    dropped
}

/// Best first: a NaN score (`total_cmp` would put it above every number) after every number,
/// then higher score, then smaller id, then smaller list id.
fn rank_order(a: &Hit, b: &Hit) -> std::cmp::Ordering {
    a.score
        .is_nan()
        .cmp(&b.score.is_nan())
        .then_with(|| b.score.total_cmp(&a.score))
        .then(a.id.cmp(&b.id))
        .then(a.list_id.cmp(&b.list_id))
}

/// The API's answer to a text the tower could not encode: a text with nothing the model can
/// read is the client's mistake (400 `empty_text`), anything else is ours. Both fronts map
/// encoder errors through here, so they answer the same.
pub fn text_encode_error(error: TextError) -> ApiError {
    match error {
        TextError::EmptyInput => ApiError::new(ErrorCode::EmptyText, "text is empty"),
        TextError::NoTokens => {
            ApiError::new(ErrorCode::EmptyText, "text has nothing the model can read")
        }
        other => ApiError::new(
            ErrorCode::Internal,
            format!("text encoding failed: {other}"),
        ),
    }
}

/// One item as the client sees it: a search result, or the answer of `GET /v1/items/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: u64,
    pub score: f32,
    pub url: String,
    pub caption: String,
    /// The catalog record's other fields (e.g. clip-retrieval's `key`, `width`, `height`);
    /// absent when the record has none.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The merged hits as items: the first ones with their catalog `records` (URLs resolved
/// against `root_base`, see [`resolve_url`]), the rest (past `records.len()`) with an empty
/// caption and URL.
pub fn items_with_records(
    merged: &[Hit],
    records: Vec<clipedge_format::ItemRecord>,
    root_base: &str,
) -> Vec<Item> {
    debug_assert!(records.len() <= merged.len());
    let mut records = records.into_iter();
    let mut items = Vec::with_capacity(merged.len());
    for hit in merged {
        let (url, caption, fields) = match records.next() {
            Some(record) if record.url.is_empty() => (String::new(), record.caption, record.extra),
            Some(record) => (
                resolve_url(root_base, &record.url),
                record.caption,
                record.extra,
            ),
            None => Default::default(),
        };
        items.push(Item {
            id: hit.id,
            score: hit.score,
            url,
            caption,
            fields,
        });
    }
    items
}

/// Milliseconds per stage of one query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Tokenize + text tower (or the stored-vector lookup of an `id` query).
    pub encode: f64,
    /// Routing: groups and lists chosen.
    pub probe: f64,
    /// List reads, scans and exact rerank.
    pub scan: f64,
    /// Merge, de-duplication and the caption/URL lookup.
    pub merge: f64,
}

/// What one query cost in billed units: object-storage traffic, and at the edge the scanner
/// invocations and their compute (the figures `benches/cost.py` prices).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryStats {
    pub gets: u64,
    /// Named `bytes_read` like every other I/O counter; `bytes` on the wire, as documented.
    #[serde(rename = "bytes")]
    pub bytes_read: u64,
    /// Scanner Lambda invocations, answered or not (0 in-process).
    #[serde(default)]
    pub scanner_calls: u32,
    /// The scanners' own reported milliseconds, summed over calls (0 in-process).
    #[serde(default)]
    pub scanner_ms: f64,
    /// Fine lists scanned, and how many of them a scanner's list cache held: the warm-hit ratio
    /// (cache affinity, `benches/affinity_bench.py`) is their quotient.
    #[serde(default)]
    pub lists_scanned: u32,
    #[serde(default)]
    pub list_cache_hits: u32,
}

/// The body of a successful `POST /v1/search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub results: Vec<Item>,
    /// The generation that answered: send it back as `generation` with the next page.
    #[serde(default)]
    pub generation: String,
    /// Position of the first result in the ranking.
    #[serde(default)]
    pub offset: usize,
    /// The `offset` of the next page, when the request was paged and the ranking goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// What the request asked for that this answer did not apply (also the
    /// [`NOT_APPLIED_HEADER`]): `safety` without an `NSFW` catalog column, `dedup_near` without
    /// stored vectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
    /// Some lists could not be scanned (named in `failed_lists`); the results are the rest.
    pub partial: bool,
    pub failed_lists: Vec<u32>,
    pub timings: Timings,
    pub stats: QueryStats,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub generation: String,
    pub count: u64,
    pub dim: u32,
    pub model: String,
    /// Shown on the demo page (e.g. what the demo model embeds).
    pub label: String,
    /// Items searchable by id ("more like this").
    pub id_search: bool,
    /// Lists a search that names no `nprobe` probes at least: the generation's measured default
    /// (the builder's recall gate), else [`DEFAULT_NPROBE`].
    #[serde(default = "default_nprobe")]
    pub default_nprobe: usize,
    /// Where the answering process runs: `"embedded"` (`clipedge serve`) or `"edge"` (the Worker).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub front: String,
    /// The edge Worker's wasm linear memory, in bytes (its share of the isolate's 128 MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Whether the text model is loaded in this process or isolate (it loads on the first text
    /// query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_loaded: Option<bool>,
    /// The edge Worker's int8 GEMM kernel, e.g. `relaxed-simd, one dot` (where the engine's
    /// relaxed dot is exact on u8) or `relaxed-simd, two dots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_kernel: Option<String>,
}

/// A failed generation or item read as the API answers it: an index that cannot answer id
/// queries, or an unknown id, is the client's 4xx; storage that did not answer is 503
/// `storage_unavailable` (retry later); a missing or corrupt index is `internal`. The message
/// is the reason chain.
pub fn generation_error(error: GenerationError) -> ApiError {
    match error {
        GenerationError::NoCatalog | GenerationError::NoVectorCopies => {
            ApiError::new(ErrorCode::IdSearchUnsupported, error.to_string())
        }
        GenerationError::UnknownId { .. } => ApiError::new(ErrorCode::UnknownId, error.to_string()),
        GenerationError::Source {
            source: SourceError::Failed { .. },
            ..
        } => ApiError::new(ErrorCode::StorageUnavailable, error_chain(&error)),
        other => ApiError::new(ErrorCode::Internal, error_chain(&other)),
    }
}

/// The `Server-Timing` header value for the stages, e.g.
/// `encode;dur=3.10, probe;dur=0.05, scan;dur=0.41, merge;dur=0.02`.
pub fn server_timing(timings: &Timings) -> String {
    let mut header = String::new();
    for (name, ms) in [
        ("encode", timings.encode),
        ("probe", timings.probe),
        ("scan", timings.scan),
        ("merge", timings.merge),
    ] {
        if !header.is_empty() {
            header.push_str(", ");
        }
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        let _ = write!(header, "{name};dur={ms:.2}");
    }
    header
}

/// A record's URL as the client should load it: absolute URLs and root-relative paths pass
/// through; paths relative to the index root (`media/…`) are put under `root_base`, the URL
/// the index root's public objects are served from (`/` for `clipedge serve`).
pub fn resolve_url(root_base: &str, url: &str) -> String {
    if url.starts_with("http://")
        || url.starts_with("https://")
        || url.starts_with("data:")
        || url.starts_with('/')
    {
        return url.to_string();
    }
    if root_base.ends_with('/') {
        format!("{root_base}{url}")
    } else {
        format!("{root_base}/{url}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<ValidSearch, ApiError> {
        parse_search_request(json.as_bytes())?.validate(4)
    }

    fn code(json: &str) -> ErrorCode {
        request(json).unwrap_err().code
    }

    #[test]
    fn defaults_fill_in() {
        let search = request(r#"{"text":"a dog"}"#).unwrap();
        assert_eq!(search.query, Query::Text("a dog".to_string()));
        assert_eq!(
            (search.k, search.nprobe, search.rerank, search.dedup),
            (DEFAULT_K, DEFAULT_NPROBE, DEFAULT_RERANK, Dedup::Exact)
        );
        assert_eq!(
            (search.offset, search.paged, search.safety),
            (0, false, false)
        );
        let search = request(r#"{"id":7,"k":5,"dedup":false,"rerank":0}"#).unwrap();
        assert_eq!(search.query, Query::Id(7));
        assert_eq!((search.k, search.rerank, search.dedup), (5, 0, Dedup::Off));
        assert_eq!(search.candidates(), 5);
        let search = request(r#"{"vector":[0,1,0.5,-1],"k":100,"nprobe":4096}"#).unwrap();
        assert_eq!(search.query, Query::Vector(vec![0.0, 1.0, 0.5, -1.0]));
        assert!(search.candidates() >= 100);
    }

    #[test]
    fn bad_requests_name_their_problem() {
        assert_eq!(code(r#"{"text":""}"#), ErrorCode::EmptyText);
        assert_eq!(code(r#"{"text":"  \n "}"#), ErrorCode::EmptyText);
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(code(&long), ErrorCode::TextTooLong);
        let limit = format!(r#"{{"text":"{}"}}"#, "é".repeat(MAX_TEXT_CHARS));
        assert!(request(&limit).is_ok());
        assert_eq!(code(r#"{"text":"x","k":0}"#), ErrorCode::KOutOfRange);
        assert_eq!(code(r#"{"text":"x","k":10001}"#), ErrorCode::KOutOfRange);
        assert_eq!(
            code(r#"{"text":"x","k":100,"offset":9901}"#),
            ErrorCode::OffsetOutOfRange
        );
        assert_eq!(
            code(r#"{"text":"x","k":100,"offset":18446744073709551615}"#),
            ErrorCode::OffsetOutOfRange
        );
        assert_eq!(
            code(r#"{"text":"x","dedup":"fuzzy"}"#),
            ErrorCode::InvalidDedup
        );
        assert_eq!(code(r#"{"text":"x","dedup":3}"#), ErrorCode::InvalidDedup);
        assert_eq!(
            code(r#"{"text":"x","k":10000,"rerank":10}"#),
            ErrorCode::RerankOutOfRange
        );
        assert_eq!(
            code(r#"{"text":"x","nprobe":0}"#),
            ErrorCode::NprobeOutOfRange
        );
        assert_eq!(
            code(r#"{"text":"x","rerank":51}"#),
            ErrorCode::RerankOutOfRange
        );
        assert_eq!(code(r#"{"vector":[1,2]}"#), ErrorCode::VectorDimension);
        assert_eq!(code(r#"{}"#), ErrorCode::InvalidQuery);
        assert_eq!(code(r#"{"text":"x","id":3}"#), ErrorCode::InvalidQuery);
        assert_eq!(code(r#"{"text":"x","kk":3}"#), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"text":"x","k":-1}"#), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"id":"seven"}"#), ErrorCode::InvalidJson);
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            parse_search_request(&huge).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
        let error = request(r#"{"text":"x","k":0}"#).unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(
            error.to_json(),
            r#"{"error":{"code":"k_out_of_range","message":"k must be in 1..=10000, got 0"}}"#
        );
        assert_eq!(ErrorCode::UnknownId.status(), 404);
        assert_eq!(ErrorCode::GenerationChanged.status(), 409);
        assert_eq!(ErrorCode::MultilingualUnsupported.status(), 422);
    }

    #[test]
    fn large_answers_fit_the_scanner_limits_and_pages_share_one_ranking() {
        // k = 10,000 with the default rerank: rerank is lowered to fit a scanner call.
        let search = request(r#"{"text":"x","k":10000}"#).unwrap();
        assert_eq!(search.candidates(), 20_000);
        assert_eq!(search.rerank, 5);
        assert!(search.candidates() * search.rerank <= MAX_RERANK_CANDIDATES);
        // Any offset (0 included) pages: every page ranks the same window.
        let first = request(r#"{"text":"x","k":50,"offset":0}"#).unwrap();
        let later = request(r#"{"text":"x","k":50,"offset":9950}"#).unwrap();
        assert!(first.paged && later.paged);
        assert_eq!((first.window(), later.window()), (PAGE_WINDOW, PAGE_WINDOW));
        assert_eq!(first.candidates(), later.candidates());
        assert_eq!(first.rerank, later.rerank);
        assert_eq!(later.end(), 10_000);
        // Unpaged answers rank only what they return.
        let unpaged = request(r#"{"text":"x","k":50,"dedup":"off"}"#).unwrap();
        assert_eq!((unpaged.window(), unpaged.candidates()), (50, 50));
        // The safety filter over-fetches too.
        let safe = request(r#"{"text":"x","k":50,"dedup":"near","safety":true}"#).unwrap();
        assert_eq!((safe.dedup, safe.safety), (Dedup::Near, true));
        assert_eq!(safe.candidates(), 200);
        let pinned = request(r#"{"text":"x","offset":20,"generation":"g1"}"#).unwrap();
        assert_eq!(pinned.generation.as_deref(), Some("g1"));
    }

    #[test]
    fn near_duplicates_are_dropped_greedily_in_rank_order() {
        let vectors = vec![
            Some(vec![1.0, 0.0, 0.0]),
            // cos 0.995 with the first: dropped.
            Some(vec![10.0, 1.0, 0.0]),
            None,
            // cos 0.707 with the first: kept.
            Some(vec![1.0, 1.0, 0.0]),
            // cos ≈ 0.943 with the one before it (≥ 0.94), 0.707 with the first: dropped.
            Some(vec![1.0, 1.0, 0.5]),
            Some(vec![0.0, 0.0, 1.0]),
        ];
        assert_eq!(
            near_duplicates(&vectors, NEAR_DUPLICATE_COSINE),
            vec![false, true, false, false, true, false]
        );
        // A dropped vector does not drop others: only kept ones count.
        let chain = vec![
            Some(vec![1.0, 0.0]),
            Some(vec![0.95, 0.312]),
            Some(vec![0.81, 0.586]),
        ];
        assert_eq!(near_duplicates(&chain, 0.94), vec![false, true, false]);
    }

    #[test]
    fn every_code_serializes_as_its_name() {
        for (code, status) in [
            (ErrorCode::MissingApiKey, 401),
            (ErrorCode::InvalidApiKey, 403),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::Overloaded, 503),
            (ErrorCode::Timeout, 504),
            (ErrorCode::ScannersFailed, 502),
            (ErrorCode::StorageUnavailable, 503),
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
            assert_eq!(code.status(), status, "{}", code.as_str());
        }
    }

    #[test]
    fn storage_that_does_not_answer_is_retryable_and_a_corrupt_index_is_internal() {
        let unavailable = generation_error(GenerationError::Source {
            what: "catalog",
            source: SourceError::failed("gen/catalog.bin", "connection refused"),
        });
        assert_eq!(unavailable.code, ErrorCode::StorageUnavailable);
        assert!(
            unavailable.message.contains("connection refused"),
            "{unavailable:?}"
        );
        let missing = generation_error(GenerationError::Source {
            what: "list",
            source: SourceError::NotFound {
                key: "gen/shard-00000.bin".to_string(),
            },
        });
        assert_eq!(missing.code, ErrorCode::Internal);
        let unknown = generation_error(GenerationError::UnknownId { id: 9, items: 3 });
        assert_eq!(
            (unknown.code, unknown.status()),
            (ErrorCode::UnknownId, 404)
        );
    }

    #[test]
    fn any_unicode_text_is_accepted() {
        let search = request(r#"{"text":"해변을 달리는 개 🐕"}"#).unwrap();
        assert_eq!(search.query, Query::Text("해변을 달리는 개 🐕".to_string()));
    }

    fn candidate(id: u64, score: f32, content_hash: u64) -> Hit {
        Hit {
            id,
            score,
            content_hash,
            metadata_ref: id * 10,
            list_id: (id % 7) as u32,
        }
    }

    #[test]
    fn merge_orders_dedups_and_truncates() {
        let lists = vec![
            vec![candidate(1, 0.9, 100), candidate(2, 0.5, 200)],
            vec![
                candidate(3, 0.8, 100),
                candidate(4, 0.7, 400),
                candidate(1, 0.9, 100),
            ],
            vec![],
        ];
        let ids = |merged: Vec<Hit>| merged.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(merge(&lists, 10, true)), vec![1, 4, 2]);
        assert_eq!(ids(merge(&lists, 10, false)), vec![1, 3, 4, 2]);
        assert_eq!(ids(merge(&lists, 2, false)), vec![1, 3]);
        assert!(merge(&[], 3, true).is_empty());
        // Equal scores: lower id first, whatever the input order.
        let ties = vec![vec![candidate(9, 0.5, 1)], vec![candidate(3, 0.5, 2)]];
        assert_eq!(ids(merge(&ties, 2, true)), vec![3, 9]);
        // The order in which answers arrive does not matter.
        let reversed: Vec<Vec<Hit>> = lists.iter().rev().cloned().collect();
        assert_eq!(merge(&lists, 10, true), merge(&reversed, 10, true));
    }

    #[test]
    fn nan_scores_rank_last() {
        let lists = vec![
            vec![candidate(1, f32::NAN, 100), candidate(2, -0.5, 200)],
            vec![candidate(3, 0.25, 300), candidate(4, -f32::NAN, 400)],
        ];
        let ids: Vec<u64> = merge(&lists, 10, true).iter().map(|c| c.id).collect();
        assert_eq!(&ids[..2], &[3, 2], "{ids:?}");
        assert_eq!(ids.len(), 4);
        let top: Vec<u64> = merge(&lists, 2, false).iter().map(|c| c.id).collect();
        assert_eq!(top, vec![3, 2]);
    }

    #[test]
    fn texts_the_tower_cannot_read_are_the_clients_mistake() {
        for error in [TextError::EmptyInput, TextError::NoTokens] {
            let answer = text_encode_error(error);
            assert_eq!((answer.code, answer.status()), (ErrorCode::EmptyText, 400));
        }
        let failure = text_encode_error(TextError::Inference {
            reason: "out of memory".to_string(),
        });
        assert_eq!(failure.code, ErrorCode::Internal);
        assert!(
            failure.message.contains("out of memory"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn server_timing_lists_every_stage() {
        let timings = Timings {
            encode: 3.1234,
            probe: 0.05,
            scan: f64::NAN,
            merge: -1.0,
        };
        assert_eq!(
            server_timing(&timings),
            "encode;dur=3.12, probe;dur=0.05, scan;dur=0.00, merge;dur=0.00"
        );
    }

    #[test]
    fn urls_resolve_against_the_media_base() {
        assert_eq!(resolve_url("/", "media/ab.webp"), "/media/ab.webp");
        assert_eq!(
            resolve_url("https://cdn.example/idx", "media/ab.webp"),
            "https://cdn.example/idx/media/ab.webp"
        );
        assert_eq!(
            resolve_url("/", "https://x.example/a.png"),
            "https://x.example/a.png"
        );
        assert_eq!(resolve_url("/", "/static/a.png"), "/static/a.png");
    }

    #[test]
    fn responses_serialize_with_the_documented_fields() {
        let response = SearchResponse {
            results: vec![Item {
                id: 1,
                score: 0.5,
                url: "/media/a.webp".to_string(),
                caption: "a cat".to_string(),
                fields: Default::default(),
            }],
            generation: "g1".to_string(),
            offset: 0,
            next_offset: Some(1),
            not_applied: vec![],
            partial: false,
            failed_lists: vec![],
            timings: Timings::default(),
            stats: QueryStats {
                gets: 2,
                bytes_read: 100,
                scanner_calls: 3,
                scanner_ms: 1.5,
                lists_scanned: 8,
                list_cache_hits: 6,
            },
        };
        let json: serde_json::Value = serde_json::to_value(&response).unwrap();
        for field in ["results", "partial", "failed_lists", "timings", "stats"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(
            json["stats"],
            serde_json::json!({"gets": 2, "bytes": 100, "scanner_calls": 3, "scanner_ms": 1.5,
                "lists_scanned": 8, "list_cache_hits": 6})
        );
        for field in ["encode", "probe", "scan", "merge"] {
            assert!(json["timings"].get(field).is_some(), "{field}");
        }
        assert_eq!(json["results"][0]["caption"], "a cat");
        assert_eq!(json["stats"]["gets"], 2);
        assert_eq!(json["stats"]["bytes"], 100, "the wire name stays bytes");
    }
}
