//! The bundled demo: `demo/items.jsonl` + `demo/images/` → captions embedded with the text
//! model → an index with a catalog and its images under `media/`, built once and cached.
//! It lives in the CLI, beside `build`, so the embedded server does not depend on the builder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use clipedge_format::{ItemRecord, ModelInfo, RerankKind};
use clipedge_index_builder::{build_index, BuildConfig, NoProgress, VectorSet};
use clipedge_storage::{Storage, StorageError};
use clipedge_text::TextEncoder;
use rayon::prelude::*;
use serde::Deserialize;
use thiserror::Error;
use tracing::info;

/// Bump when the demo build's parameters change, so cached indexes are rebuilt.
const DEMO_BUILD_VERSION: u32 = 1;
/// Names the dataset + model + build parameters an index directory was built from.
const KEY_FILE: &str = "demo-key.txt";

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("cannot read demo dataset {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("demo dataset {path} line {line}: {reason}")]
    Item {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("cannot embed caption of item {id}: {reason}")]
    Embed { id: u64, reason: String },
    #[error("cannot write demo index {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Build(#[from] clipedge_index_builder::BuildError),
}

#[derive(Debug, Deserialize)]
struct DemoItem {
    id: u64,
    caption: String,
    image: String,
}

/// What an [`ensure_demo_index`] call found or built.
#[derive(Debug, Clone)]
pub struct DemoIndex {
    pub dir: PathBuf,
    pub items: usize,
    /// `false`: the cached index matched the dataset and model.
    pub built: bool,
    pub seconds: f64,
}

fn read(path: &Path) -> Result<Vec<u8>, DemoError> {
    std::fs::read(path).map_err(|source| DemoError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn load_items(dataset: &Path) -> Result<(Vec<DemoItem>, Vec<u8>), DemoError> {
    let path = dataset.join("items.jsonl");
    let bytes = read(&path)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut items = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: DemoItem = serde_json::from_str(line).map_err(|error| DemoError::Item {
            path: path.display().to_string(),
            line: line_index + 1,
            reason: error.to_string(),
        })?;
        // Ids are the rows: the catalog's id table is indexed by them.
        if item.id != items.len() as u64 {
            return Err(DemoError::Item {
                path: path.display().to_string(),
                line: line_index + 1,
                reason: format!("id {} out of sequence (expected {})", item.id, items.len()),
            });
        }
        let name_ok = item
            .image
            .strip_prefix("images/")
            .is_some_and(|name| !name.is_empty() && !name.contains('/') && !name.contains(".."));
        if !name_ok {
            return Err(DemoError::Item {
                path: path.display().to_string(),
                line: line_index + 1,
                reason: format!("image {:?} is not images/<file>", item.image),
            });
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(DemoError::Item {
            path: path.display().to_string(),
            line: 0,
            reason: "no items".to_string(),
        });
    }
    Ok((items, bytes))
}

/// The cache key of a demo index: dataset bytes, model fingerprint, build version.
fn demo_key(items_bytes: &[u8], encoder: &TextEncoder) -> String {
    let dataset = xxhash_rust::xxh3::xxh3_64(items_bytes);
    format!(
        "dataset {dataset:016x} model {} build {DEMO_BUILD_VERSION}\n",
        encoder.card().fingerprint
    )
}

/// Returns the demo index in `dir`, building it first unless `dir` already holds one built
/// from the same dataset and model. The build happens in a sibling directory that is renamed
/// into place, so a reader never sees half an index.
pub async fn ensure_demo_index(
    dataset: &Path,
    encoder: &TextEncoder,
    dir: &Path,
) -> Result<DemoIndex, DemoError> {
    let started = Instant::now();
    let (items, items_bytes) = load_items(dataset)?;
    let key = demo_key(&items_bytes, encoder);
    if std::fs::read_to_string(dir.join(KEY_FILE)).ok().as_deref() == Some(key.as_str()) {
        return Ok(DemoIndex {
            dir: dir.to_path_buf(),
            items: items.len(),
            built: false,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let write_error = |path: &Path, source| DemoError::Write {
        path: path.display().to_string(),
        source,
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| write_error(parent, source))?;
    let file_name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "demo-index".to_string());
    let staging = parent.join(format!(".{file_name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|source| write_error(&staging, source))?;

    info!(items = items.len(), "embedding demo captions");
    let embed_started = Instant::now();
    let dim = encoder.card().dim;
    let embeddings: Vec<Vec<f32>> = items
        .par_iter()
        .map(|item| {
            encoder
                .encode(&item.caption)
                .map(|encoding| encoding.embedding)
                .map_err(|error| DemoError::Embed {
                    id: item.id,
                    reason: error.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    info!(
        seconds = embed_started.elapsed().as_secs_f64(),
        "demo captions embedded"
    );
    let mut data = Vec::with_capacity(items.len() * dim);
    for embedding in &embeddings {
        data.extend_from_slice(embedding);
    }

    let storage = Storage::open(&staging.display().to_string())?;
    let mut content_hashes = Vec::with_capacity(items.len());
    let mut records = Vec::with_capacity(items.len());
    let mut stored = std::collections::HashSet::new();
    for item in &items {
        let image = read(&dataset.join(&item.image))?;
        // Duplicates are the same picture: the hash is of the image bytes, not of the vector.
        content_hashes.push(xxhash_rust::xxh3::xxh3_64(&image));
        let name = item.image.trim_start_matches("images/");
        let media = format!("media/{name}");
        if stored.insert(media.clone()) {
            storage.put_new(&media, Bytes::from(image)).await?;
        }
        records.push(ItemRecord {
            caption: item.caption.clone(),
            url: media,
            ..ItemRecord::default()
        });
    }
    let n = items.len();
    // Small on purpose: a few thousand vectors, tens of lists, exact fp16 rerank.
    let nlist = ((n as f64).sqrt() as usize).clamp(1, 256);
    let pq_m = [48, 32, 24, 16, 12, 8, 4, 2, 1]
        .into_iter()
        .find(|m| dim.is_multiple_of(*m))
        .unwrap_or(1);
    let config = BuildConfig {
        rerank: RerankKind::Fp16,
        seed: 42,
        model: ModelInfo {
            id: encoder.card().name.clone(),
            fingerprint: encoder.card().fingerprint.clone(),
        },
        ..BuildConfig::new(nlist, pq_m, 8)
    };
    let vectors = VectorSet {
        content_hashes: Some(&content_hashes),
        records: Some(&records),
        ..VectorSet::new(&data, dim)
    };
    let report = build_index(&storage, &vectors, &config, &NoProgress).await?;
    info!(
        generation = report.generation,
        nlist, pq_m, "demo index built"
    );
    std::fs::write(staging.join(KEY_FILE), &key).map_err(|source| write_error(&staging, source))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|source| write_error(dir, source))?;
    }
    if let Err(source) = std::fs::rename(&staging, dir) {
        // Another process may have finished the same build first: use it if it matches.
        let _ = std::fs::remove_dir_all(&staging);
        if std::fs::read_to_string(dir.join(KEY_FILE)).ok().as_deref() != Some(key.as_str()) {
            return Err(write_error(dir, source));
        }
    }
    Ok(DemoIndex {
        dir: dir.to_path_buf(),
        items: n,
        built: true,
        seconds: started.elapsed().as_secs_f64(),
    })
}
