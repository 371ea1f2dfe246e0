//! clip-retrieval compatibility: `POST /knn-service`, `GET /indices-list` and `POST /metadata`
//! in the shapes `clip_back` answers and `ClipClient` sends, mapped onto the `/v1` machinery.
//!
//! A knn request becomes a [`ValidSearch`] (the same validation of text and vectors, the same
//! merge and de-duplication), and its answer is shaped back into clip-retrieval's list of
//! `{"id", "similarity", "url", "caption"}`. Both fronts call this module, so they accept and
//! refuse the same requests. No I/O, builds for wasm32.
//!
//! `ClipClient` POSTs `json.dumps` of all fourteen keys, `null` for unused inputs, without a
//! content-type header: the body is parsed whatever the header says.

use clipedge_format::Manifest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    parse_body, AestheticPreference, ApiError, Dedup, ErrorCode, Item, Query, SearchRequest,
    ValidSearch, DEFAULT_NPROBE, DEFAULT_RERANK, MAX_BODY_BYTES, MAX_NPROBE,
};
pub use crate::{MAX_RERANK_CANDIDATES, NOT_APPLIED_HEADER};

/// Most ids one knn answer may carry (`num_result_ids`, and `num_images`, which `ClipClient`
/// sends as both).
pub const MAX_NUM_RESULT_IDS: usize = 10_000;
/// Most results of one knn answer that carry their catalog record: each costs a catalog read,
/// and the Worker's reads per request are limited. A larger `num_images` is answered with
/// records on the first 1,000 and `num_images` in the [`NOT_APPLIED_HEADER`].
pub const MAX_NUM_IMAGES: usize = 1_000;
/// Most ids one `POST /metadata` may ask for (each is an id-table read and a record read).
pub const MAX_METADATA_IDS: usize = 100;
/// The name an index gets when its location has none to give.
pub const DEFAULT_INDEX_NAME: &str = "default";

/// What the knn validation needs to know of the searched generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexShape {
    pub dim: usize,
    /// Vectors in the generation.
    pub count: u64,
    /// Fine lists in the generation.
    pub nlist: u32,
    /// Lists a search that names no nprobe probes at least: the generation's measured default
    /// (`search_defaults` in its manifest, calibrated by the builder's recall gate), else
    /// [`DEFAULT_NPROBE`].
    pub default_nprobe: usize,
}

impl IndexShape {
    pub fn of(manifest: &Manifest) -> IndexShape {
        IndexShape {
            dim: manifest.dim as usize,
            count: manifest.count,
            nlist: manifest.nlist,
            default_nprobe: manifest
                .default_nprobe()
                .unwrap_or(DEFAULT_NPROBE)
                .clamp(1, MAX_NPROBE),
        }
    }

    /// Lists to probe for `candidates`: the generation's default, widened for large answers
    /// until the probed lists hold about twice the candidates on average (clip_back widens
    /// faiss' nprobe the same way for large `num_result_ids`).
    pub fn nprobe_for(&self, candidates: usize) -> usize {
        let mean_list_len = (self.count / u64::from(self.nlist.max(1))).max(1);
        let wanted_lists = (2 * candidates as u64).div_ceil(mean_list_len);
        let nprobe = usize::try_from(wanted_lists).unwrap_or(MAX_NPROBE);
        nprobe.clamp(self.default_nprobe.min(MAX_NPROBE), MAX_NPROBE)
    }
}

/// The name clip-retrieval clients select an index by (`indice_name`): the last segment of its
/// location (`s3://bucket/laion/` → `laion`, `./demo-index` → `demo-index`).
pub fn index_name(location: &str) -> String {
    let path = location
        .split_once("://")
        .map_or(location, |(_, rest)| rest);
    let segment = path
        .split(['/', '\\'])
        .rev()
        .find(|segment| !segment.is_empty() && *segment != "." && *segment != "..");
    match segment {
        Some(segment) => segment.to_string(),
        None => DEFAULT_INDEX_NAME.to_string(),
    }
}

/// The body of `POST /knn-service` as clip-retrieval sends it. Unknown keys are ignored, as
/// `clip_back` ignores them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KnnRequest {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub embedding_input: Option<Vec<f32>>,
    #[serde(default)]
    pub modality: Option<String>,
    #[serde(default)]
    pub num_images: Option<usize>,
    #[serde(default)]
    pub num_result_ids: Option<usize>,
    #[serde(default)]
    pub indice_name: Option<String>,
    #[serde(default)]
    pub use_mclip: Option<bool>,
    #[serde(default)]
    pub deduplicate: Option<bool>,
    #[serde(default)]
    pub use_safety_model: Option<bool>,
    #[serde(default)]
    pub use_violence_detector: Option<bool>,
    /// `""` or 0–9 (a number or a numeric string, as `clip_back`'s `int()` accepts).
    #[serde(default)]
    pub aesthetic_score: Option<Value>,
    /// `""` or a float (a number or a numeric string).
    #[serde(default)]
    pub aesthetic_weight: Option<Value>,
}

/// A knn request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnSearch {
    /// The search to run: `k` is `num_result_ids`, `records` is `num_images`.
    pub search: ValidSearch,
    /// The `indice_name` asked for (checked against the served names).
    pub index_name: String,
    /// Flags the request turned on that this engine does not apply (for [`NOT_APPLIED_HEADER`]).
    pub not_applied: Vec<&'static str>,
}

/// `{"ids", "indice_name"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataRequest {
    #[serde(default)]
    pub ids: Option<Vec<u64>>,
    #[serde(default)]
    pub indice_name: Option<String>,
}

/// One knn result: `url` and `caption` only on the first `num_images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnResult {
    pub id: u64,
    pub similarity: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// The record's other catalog columns, beside `url` and `caption` as clip_back answers them.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The catalog columns of one item, as `POST /metadata` answers them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemMetadata {
    pub url: String,
    pub caption: String,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// One entry of the `POST /metadata` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataEntry {
    pub id: u64,
    pub metadata: ItemMetadata,
}

/// Parses a `POST /knn-service` body (size-checked first; any content type).
pub fn parse_knn_request(body: &[u8]) -> Result<KnnRequest, ApiError> {
    parse_body(body, "knn request")
}

/// Parses a `POST /metadata` body (size-checked first; any content type).
pub fn parse_metadata_request(body: &[u8]) -> Result<MetadataRequest, ApiError> {
    parse_body(body, "metadata request")
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message)
}

/// `""`/`null` → not given; a number or a numeric string → its value.
fn optional_number(value: Option<&Value>, name: &str) -> Result<Option<f64>, ApiError> {
    let number = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(None),
        Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
        Some(Value::Number(number)) => number.as_f64(),
        Some(_) => None,
    };
    match number {
        Some(number) if number.is_finite() => Ok(Some(number)),
        _ => Err(invalid(format!(
            "{name} must be \"\" or a number, got {}",
            value.map(Value::to_string).unwrap_or_default()
        ))),
    }
}

/// Checks that `name` is one of the served indexes: 400 when missing, 404 naming the known ones.
pub fn check_index_name(name: Option<&str>, known: &[String]) -> Result<String, ApiError> {
    let Some(name) = name else {
        return Err(invalid(format!(
            "indice_name is required (this server has {})",
            known.join(", ")
        )));
    };
    index_position(name, known)?;
    Ok(name.to_string())
}

/// Where `name` is among the served indexes (in `GET /indices-list` order), or 404
/// `unknown_index` naming the known ones.
pub fn index_position(name: &str, known: &[String]) -> Result<usize, ApiError> {
    known
        .iter()
        .position(|known_name| known_name == name)
        .ok_or_else(|| unknown_index(name, known))
}

/// The 404 for an index name that is not served.
pub fn unknown_index(name: &str, known: &[String]) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownIndex,
        format!(
            "no index named {name:?}; known: {}",
            known
                .iter()
                .map(|known_name| format!("{known_name:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// Whether `name` can name an index: 1 to 64 ASCII letters, digits, `.`, `_` or `-`, not `.`
/// or `..` (it appears in media paths, `/indexes/NAME/media/…`, and in config lists).
pub fn is_valid_index_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Splits an index spec, `NAME=LOCATION` or a bare `LOCATION`, into its name (if it has one)
/// and its location. A location never starts with a valid name followed by `=`, so
/// `demo=./index` is named and `./a=b` or `s3://bucket/x=y` are plain locations.
pub fn split_named_index(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once('=') {
        Some((name, location)) if is_valid_index_name(name) => (Some(name), location),
        _ => (None, spec),
    }
}

/// The URL base a non-default index's relative media URLs resolve against: its media are
/// served at `/indexes/NAME/media/…` (the default index's at `/media/…`).
pub fn index_media_base(name: &str) -> String {
    format!("/indexes/{name}/")
}

impl KnnRequest {
    /// Checks the request against the limits, the served index names and the index's
    /// dimension, and turns it into a `/v1` search.
    ///
    /// Text (non-empty) wins over `image`/`image_url`, which win over `embedding_input`;
    /// image inputs are refused (422 `image_search_unsupported`): there is no image tower.
    pub fn validate(
        self,
        index: IndexShape,
        known_indexes: &[String],
    ) -> Result<KnnSearch, ApiError> {
        let index_name = check_index_name(self.indice_name.as_deref(), known_indexes)?;
        let Some(num_images) = self.num_images else {
            return Err(invalid("num_images is required"));
        };
        if num_images == 0 || num_images > MAX_NUM_RESULT_IDS {
            return Err(ApiError::new(
                ErrorCode::KOutOfRange,
                format!("num_images must be in 1..={MAX_NUM_RESULT_IDS}, got {num_images}"),
            ));
        }
        let num_result_ids = self.num_result_ids.unwrap_or(num_images);
        if num_result_ids == 0 || num_result_ids > MAX_NUM_RESULT_IDS {
            return Err(ApiError::new(
                ErrorCode::KOutOfRange,
                format!("num_result_ids must be in 1..={MAX_NUM_RESULT_IDS}, got {num_result_ids}"),
            ));
        }
        let aesthetic_score = optional_number(self.aesthetic_score.as_ref(), "aesthetic_score")?;
        if let Some(score) = aesthetic_score {
            if !(0.0..=9.0).contains(&score) || score.fract() != 0.0 {
                return Err(invalid(format!(
                    "aesthetic_score must be \"\" or an integer in 0..=9, got {score}"
                )));
            }
        }
        let aesthetic_weight = optional_number(self.aesthetic_weight.as_ref(), "aesthetic_weight")?;
        if let Some(modality) = &self.modality {
            if modality != "image" && modality != "text" {
                return Err(invalid(format!(
                    "modality must be \"image\" or \"text\", got {modality:?}"
                )));
            }
        }

        let text = self.text.filter(|text| !text.is_empty());
        let has_image = self.image.is_some() || self.image_url.is_some();
        let query_request = if let Some(text) = text {
            SearchRequest {
                text: Some(text),
                ..SearchRequest::default()
            }
        } else if has_image {
            return Err(ApiError::new(
                ErrorCode::ImageSearchUnsupported,
                "search by image (image, image_url) needs an image tower, and this index has \
                 only a text tower: search by text or embedding_input",
            ));
        } else if let Some(vector) = self.embedding_input {
            SearchRequest {
                vector: Some(vector),
                ..SearchRequest::default()
            }
        } else {
            return Err(invalid(
                "give one of text, image, image_url or embedding_input",
            ));
        };
        // clip_back's `deduplicate` removes near-duplicates by embedding.
        let dedup = if self.deduplicate.unwrap_or(false) {
            Dedup::Near
        } else {
            Dedup::Off
        };
        let one_result = query_request.validate(index.dim)?;
        // A front without a multilingual tower answers 422 rather than encode with the
        // monolingual one, which would look like a working multilingual search.
        let query: Query = match one_result.query {
            Query::Text(text) if self.use_mclip == Some(true) => Query::MultilingualText(text),
            query => query,
        };

        let mut search = ValidSearch {
            query,
            k: num_result_ids,
            offset: 0,
            paged: false,
            generation: None,
            nprobe: DEFAULT_NPROBE,
            // Widened below, for this index.
            nprobe_default: false,
            rerank: DEFAULT_RERANK,
            // clip-retrieval has no rerank parameter: the index's default.
            rerank_default: true,
            dedup,
            safety: self.use_safety_model.unwrap_or(false),
            aesthetic: match (aesthetic_score, aesthetic_weight) {
                (Some(wanted), Some(weight)) if weight != 0.0 => Some(AestheticPreference {
                    wanted: wanted as f32,
                    weight: weight as f32,
                }),
                _ => None,
            },
            records: num_images.min(num_result_ids).min(MAX_NUM_IMAGES),
        };
        let candidates = search.candidates();
        search.nprobe = index.nprobe_for(candidates);
        search.rerank = search.rerank_for(candidates).max(1);
        debug_assert!(search.candidates() * search.rerank <= MAX_RERANK_CANDIDATES);

        // Whether `use_safety_model` applied depends on the catalog: the answer says.
        let mut not_applied = Vec::new();
        if num_images > MAX_NUM_IMAGES {
            not_applied.push("num_images");
        }
        if self.use_violence_detector == Some(true) {
            not_applied.push("use_violence_detector");
        }
        Ok(KnnSearch {
            search,
            index_name,
            not_applied,
        })
    }
}

impl MetadataRequest {
    /// The ids to look up, checked against the limit and the served index names.
    pub fn validate(self, known_indexes: &[String]) -> Result<Vec<u64>, ApiError> {
        check_index_name(self.indice_name.as_deref(), known_indexes)?;
        let Some(ids) = self.ids else {
            return Err(invalid("ids is required"));
        };
        if ids.len() > MAX_METADATA_IDS {
            return Err(ApiError::new(
                ErrorCode::KOutOfRange,
                format!(
                    "ids has {} entries, the limit is {MAX_METADATA_IDS}",
                    ids.len()
                ),
            ));
        }
        Ok(ids)
    }
}

/// Shapes `/v1` results as clip-retrieval's answer: every result has `id` and `similarity`,
/// the first `records` also `url` and `caption`.
pub fn knn_results(items: &[Item], records: usize) -> Vec<KnnResult> {
    let mut results = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let with_record = position < records;
        results.push(KnnResult {
            id: item.id,
            similarity: item.score,
            url: with_record.then(|| item.url.clone()),
            caption: with_record.then(|| item.caption.clone()),
            fields: if with_record {
                catalog_columns(&item.fields)
            } else {
                serde_json::Map::new()
            },
        });
    }
    results
}

/// A record's extra columns without those named like the answer's own keys (a metadata column
/// called `similarity` must not turn into a second `similarity`).
fn catalog_columns(
    fields: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    fields
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "id" | "similarity" | "url" | "caption"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Shapes looked-up items as the `POST /metadata` answer.
pub fn metadata_entries(items: Vec<Item>) -> Vec<MetadataEntry> {
    items
        .into_iter()
        .map(|item| MetadataEntry {
            id: item.id,
            metadata: ItemMetadata {
                fields: catalog_columns(&item.fields),
                url: item.url,
                caption: item.caption,
            },
        })
        .collect()
}

/// The [`NOT_APPLIED_HEADER`] value, `None` when every flag asked for was applied.
pub fn not_applied_header<T: AsRef<str>>(not_applied: &[T]) -> Option<String> {
    if not_applied.is_empty() {
        return None;
    }
    let names: Vec<&str> = not_applied.iter().map(AsRef::as_ref).collect();
    Some(names.join(", "))
}

/// The flags of a knn request that were not applied, in clip-retrieval's names: those known
/// before the search (`asked`) and those the search reported (`/v1` names: `safety` →
/// `use_safety_model`, `dedup_near` → `deduplicate`).
pub fn knn_not_applied(asked: &[&str], answered: &[String]) -> Vec<String> {
    let mut names: Vec<String> = answered
        .iter()
        .map(|name| match name.as_str() {
            "safety" => "use_safety_model".to_string(),
            "dedup_near" => "deduplicate".to_string(),
            "aesthetic" => "aesthetic_score".to_string(),
            other => other.to_string(),
        })
        .collect();
    names.extend(asked.iter().map(|name| name.to_string()));
    names
}

/// Largest body accepted by the clip-retrieval endpoints (the `/v1` limit).
pub const MAX_KNN_BODY_BYTES: usize = MAX_BODY_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        vec!["laion".to_string()]
    }

    const SHAPE: IndexShape = IndexShape {
        dim: 4,
        count: 1_000_000,
        nlist: 1_000,
        default_nprobe: DEFAULT_NPROBE,
    };

    fn validate(json: &str) -> Result<KnnSearch, ApiError> {
        parse_knn_request(json.as_bytes())?.validate(SHAPE, &known())
    }

    fn code(json: &str) -> ErrorCode {
        validate(json).unwrap_err().code
    }

    /// What `ClipClient.query(text=…)` sends with its defaults.
    const CLIENT_TEXT: &str = r#"{"text": "a dog", "image": null, "image_url": null,
        "embedding_input": null, "deduplicate": true, "use_safety_model": true,
        "use_violence_detector": true, "indice_name": "laion", "use_mclip": false,
        "aesthetic_score": 9, "aesthetic_weight": 0.5, "modality": "image", "num_images": 40,
        "num_result_ids": 40}"#;

    #[test]
    fn the_clients_defaults_are_a_text_search() {
        let knn = validate(CLIENT_TEXT).unwrap();
        assert_eq!(knn.search.query, Query::Text("a dog".to_string()));
        assert_eq!((knn.search.k, knn.search.records), (40, 40));
        assert_eq!(
            knn.search.dedup,
            Dedup::Near,
            "clip_back's deduplicate is by embedding"
        );
        assert!(
            knn.search.safety,
            "applied when the catalog has an NSFW column"
        );
        assert_eq!(knn.index_name, "laion");
        // Whether the aesthetic preference applies depends on the catalog: the root says.
        assert_eq!(knn.not_applied, vec!["use_violence_detector"]);
        assert_eq!(
            knn.search.aesthetic,
            Some(AestheticPreference {
                wanted: 9.0,
                weight: 0.5
            })
        );
    }

    #[test]
    fn defaults_and_precedence() {
        let knn = validate(r#"{"indice_name":"laion","num_images":3,"embedding_input":[1,0,0,0]}"#)
            .unwrap();
        assert_eq!(knn.search.query, Query::Vector(vec![1.0, 0.0, 0.0, 0.0]));
        assert_eq!((knn.search.k, knn.search.records), (3, 3));
        assert_eq!(
            knn.search.dedup,
            Dedup::Off,
            "clip_back's default is no dedup"
        );
        assert!(!knn.search.safety);
        assert!(knn.not_applied.is_empty());
        // Text wins over the embedding; an empty text does not count.
        let knn = validate(
            r#"{"indice_name":"laion","num_images":3,"text":"x","embedding_input":[1,0,0,0]}"#,
        )
        .unwrap();
        assert_eq!(knn.search.query, Query::Text("x".to_string()));
        let knn = validate(
            r#"{"indice_name":"laion","num_images":3,"text":"","embedding_input":[1,0,0,0]}"#,
        )
        .unwrap();
        assert!(matches!(knn.search.query, Query::Vector(_)));
        // Text wins over an image; an image wins over the embedding, and is refused.
        let knn = validate(r#"{"indice_name":"laion","num_images":3,"text":"x","image":"AAAA"}"#)
            .unwrap();
        assert_eq!(knn.search.query, Query::Text("x".to_string()));
        assert_eq!(
            code(
                r#"{"indice_name":"laion","num_images":3,"image_url":"http://x/a.png","embedding_input":[1,0,0,0]}"#
            ),
            ErrorCode::ImageSearchUnsupported
        );
        assert_eq!(ErrorCode::ImageSearchUnsupported.status(), 422);
        // More ids than images: only the first carry records.
        let knn =
            validate(r#"{"indice_name":"laion","num_images":5,"num_result_ids":10000,"text":"x"}"#)
                .unwrap();
        assert_eq!((knn.search.k, knn.search.records), (10_000, 5));
        assert!(knn.search.candidates() * knn.search.rerank <= MAX_RERANK_CANDIDATES);
        let knn = validate(
            r#"{"indice_name":"laion","num_images":5,"num_result_ids":10000,"text":"x","deduplicate":true}"#,
        )
        .unwrap();
        assert!(knn.search.candidates() * knn.search.rerank <= MAX_RERANK_CANDIDATES);
        assert!(knn.search.rerank >= 1);
        // Aesthetic inputs as strings, as clip-front sends them.
        let knn = validate(
            r#"{"indice_name":"laion","num_images":1,"text":"x","aesthetic_score":"","aesthetic_weight":""}"#,
        )
        .unwrap();
        assert!(knn.not_applied.is_empty());
        assert_eq!(knn.search.aesthetic, None);
        let knn = validate(
            r#"{"indice_name":"laion","num_images":1,"text":"x","aesthetic_score":"5","aesthetic_weight":"0.5","use_mclip":false}"#,
        )
        .unwrap();
        assert_eq!(
            knn.search.aesthetic,
            Some(AestheticPreference {
                wanted: 5.0,
                weight: 0.5
            })
        );
        // The front decides whether it has a multilingual tower (422 if not).
        let knn = validate(r#"{"indice_name":"laion","num_images":1,"text":"x","use_mclip":true}"#)
            .unwrap();
        assert_eq!(knn.search.query, Query::MultilingualText("x".to_string()));
    }

    #[test]
    fn bad_requests_are_400s_not_tracebacks() {
        let base = |extra: &str| format!(r#"{{"indice_name":"laion","num_images":3,{extra}}}"#);
        assert_eq!(
            code(r#"{"num_images":3,"text":"x"}"#),
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            code(r#"{"indice_name":"laion","text":"x"}"#),
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            code(r#"{"indice_name":"other","num_images":3,"text":"x"}"#),
            ErrorCode::UnknownIndex
        );
        let unknown = validate(r#"{"indice_name":"other","num_images":3,"text":"x"}"#).unwrap_err();
        assert_eq!(unknown.status(), 404);
        assert!(unknown.message.contains("\"laion\""), "{}", unknown.message);
        assert_eq!(code(&base(r#""text":null"#)), ErrorCode::InvalidQuery);
        assert_eq!(code(&base(r#""text":"  ""#)), ErrorCode::EmptyText);
        assert_eq!(
            code(&base(r#""embedding_input":[1,2]"#)),
            ErrorCode::VectorDimension
        );
        assert_eq!(
            code(&base(r#""embedding_input":"abc""#)),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            code(&base(r#""text":"x","num_result_ids":10001"#)),
            ErrorCode::KOutOfRange
        );
        assert_eq!(
            code(r#"{"indice_name":"laion","num_images":10001,"text":"x"}"#),
            ErrorCode::KOutOfRange
        );
        // ClipClient sends num_images as num_result_ids too: 5,000 ids, records on 1,000.
        let knn = validate(r#"{"indice_name":"laion","num_images":5000,"text":"x"}"#).unwrap();
        assert_eq!((knn.search.k, knn.search.records), (5_000, MAX_NUM_IMAGES));
        assert_eq!(knn.not_applied, vec!["num_images"]);
        assert_eq!(
            code(r#"{"indice_name":"laion","num_images":0,"text":"x"}"#),
            ErrorCode::KOutOfRange
        );
        assert_eq!(
            code(r#"{"indice_name":"laion","num_images":-1,"text":"x"}"#),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            code(&base(r#""text":"x","aesthetic_score":10"#)),
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            code(&base(r#""text":"x","aesthetic_score":"high""#)),
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            code(&base(r#""text":"x","aesthetic_weight":[1]"#)),
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            code(&base(r#""text":"x","modality":"audio""#)),
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            code(&base(r#""text":"x","deduplicate":"yes""#)),
            ErrorCode::InvalidJson
        );
        assert_eq!(code("[1, 2]"), ErrorCode::InvalidJson);
        assert_eq!(code(""), ErrorCode::InvalidJson);
        let huge = vec![b' '; MAX_KNN_BODY_BYTES + 1];
        assert_eq!(
            parse_knn_request(&huge).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
    }

    #[test]
    fn metadata_requests() {
        let parse = |json: &str| parse_metadata_request(json.as_bytes())?.validate(&known());
        assert_eq!(
            parse(r#"{"ids":[3,1],"indice_name":"laion"}"#).unwrap(),
            vec![3, 1]
        );
        assert_eq!(
            parse(r#"{"ids":[3]}"#).unwrap_err().code,
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            parse(r#"{"indice_name":"laion"}"#).unwrap_err().code,
            ErrorCode::InvalidQuery
        );
        assert_eq!(
            parse(r#"{"ids":["a"],"indice_name":"laion"}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidJson
        );
        let many = format!(
            r#"{{"ids":{:?},"indice_name":"laion"}}"#,
            (0..=MAX_METADATA_IDS as u64).collect::<Vec<_>>()
        );
        assert_eq!(parse(&many).unwrap_err().code, ErrorCode::KOutOfRange);
    }

    #[test]
    fn answers_have_clip_retrievals_shape() {
        let items: Vec<Item> = (0..3)
            .map(|id| Item {
                id,
                score: 0.5,
                url: format!("/media/{id}.webp"),
                caption: format!("item {id}"),
                fields: serde_json::Map::from_iter([
                    ("key".to_string(), serde_json::json!(format!("{id:09}"))),
                    // A column named like a key of the answer never overrides it.
                    ("similarity".to_string(), serde_json::json!(0.99)),
                ]),
            })
            .collect();
        let json = serde_json::to_value(knn_results(&items, 2)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"id": 0, "similarity": 0.5, "url": "/media/0.webp", "caption": "item 0", "key": "000000000"},
                {"id": 1, "similarity": 0.5, "url": "/media/1.webp", "caption": "item 1", "key": "000000001"},
                {"id": 2, "similarity": 0.5},
            ])
        );
        let json = serde_json::to_value(metadata_entries(items[..1].to_vec())).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"id": 0, "metadata": {"url": "/media/0.webp", "caption": "item 0", "key": "000000000"}}])
        );
        assert_eq!(not_applied_header::<&str>(&[]), None);
        assert_eq!(
            knn_not_applied(&["use_violence_detector"], &["safety".to_string()]),
            vec!["use_safety_model", "use_violence_detector"]
        );
        assert_eq!(
            not_applied_header(&["use_mclip", "use_safety_model"]).as_deref(),
            Some("use_mclip, use_safety_model")
        );
    }

    #[test]
    fn large_answers_probe_more_lists() {
        assert_eq!(SHAPE.nprobe_for(40), DEFAULT_NPROBE);
        assert_eq!(
            SHAPE.nprobe_for(20_000),
            40,
            "lists of 1,000 hold 2 × 20,000"
        );
        let tiny_lists = IndexShape {
            dim: 4,
            count: 10,
            nlist: 10,
            default_nprobe: DEFAULT_NPROBE,
        };
        assert_eq!(tiny_lists.nprobe_for(10_000), MAX_NPROBE);
        let no_lists = IndexShape {
            dim: 4,
            count: 10,
            nlist: 0,
            default_nprobe: DEFAULT_NPROBE,
        };
        assert_eq!(no_lists.nprobe_for(10_000), 2_000, "counted as one list");
        let calibrated = IndexShape {
            default_nprobe: 96,
            ..SHAPE
        };
        assert_eq!(
            calibrated.nprobe_for(40),
            96,
            "the generation's measured default"
        );
        assert_eq!(calibrated.nprobe_for(100_000), 200, "widened beyond it");
        let knn =
            validate(r#"{"indice_name":"laion","num_images":3,"num_result_ids":10000,"text":"x"}"#)
                .unwrap();
        assert_eq!(knn.search.nprobe, 20);
    }

    #[test]
    fn index_specs_split_into_name_and_location() {
        assert_eq!(split_named_index("demo=./index"), (Some("demo"), "./index"));
        assert_eq!(
            split_named_index("laion-5b=s3://bucket/indexes/laion"),
            (Some("laion-5b"), "s3://bucket/indexes/laion")
        );
        assert_eq!(split_named_index("./index"), (None, "./index"));
        assert_eq!(split_named_index("./a=b"), (None, "./a=b"));
        assert_eq!(
            split_named_index("s3://bucket/x=y"),
            (None, "s3://bucket/x=y")
        );
        assert!(is_valid_index_name("v2.1_b-32"));
        assert!(!is_valid_index_name(".."));
        assert!(!is_valid_index_name(""));
        assert!(!is_valid_index_name("a/b"));
    }

    #[test]
    fn an_unknown_index_is_a_404_naming_the_known_ones() {
        let known = vec!["laion".to_string(), "coyo".to_string()];
        assert_eq!(index_position("coyo", &known).unwrap(), 1);
        let error = index_position("cc12m", &known).unwrap_err();
        assert_eq!(error.code, ErrorCode::UnknownIndex);
        assert_eq!(error.status(), 404);
        assert!(
            error.message.contains("\"laion\", \"coyo\""),
            "{}",
            error.message
        );
    }

    #[test]
    fn index_names_come_from_locations() {
        assert_eq!(index_name("s3://bucket/laion/"), "laion");
        assert_eq!(index_name("s3://bucket"), "bucket");
        assert_eq!(index_name("./demo-index"), "demo-index");
        assert_eq!(index_name("/tmp/x/idx/."), "idx");
        assert_eq!(index_name(""), DEFAULT_INDEX_NAME);
        assert_eq!(index_name("/"), DEFAULT_INDEX_NAME);
    }
}
