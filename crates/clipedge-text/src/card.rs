//! The model card (`model.toml`): everything the encoder needs to know that the ONNX graph does
//! not say, and the fingerprint an index manifest records.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::TextError;

/// How the per-token outputs of the graph become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The graph already pools (CLIP's `text_embeds`: the EOT position, projected).
    Pooled,
    /// Mean over all positions (sentence-transformers); we never pad, so every position counts.
    Mean,
    /// The first position (BERT's `[CLS]`).
    Cls,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelCard {
    /// Model id recorded in index manifests.
    pub name: String,
    #[serde(default)]
    pub family: Option<String>,
    /// Embedding dimension.
    pub dim: usize,
    /// Most positions the graph accepts, special tokens included (CLIP: 77).
    pub max_tokens: usize,
    pub pooling: Pooling,
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Graph inputs by name; each is int64 `[1, sequence]`.
    pub inputs: Vec<String>,
    /// The graph output that carries the embedding (or the per-token states to pool).
    pub output: String,
    #[serde(default)]
    pub quantization: Option<String>,
    /// First 16 hex digits of SHA-256 over the files the card's engine runs: `text.int8` then
    /// `tokenizer.bin` for an int8 package ([`int8_fingerprint`]), else `text.onnx`,
    /// `text.onnx.data` (if present), then `tokenizer.json` ([`fingerprint`]).
    pub fingerprint: String,
    #[serde(default)]
    pub source: Option<String>,
    /// Fingerprint of the text tower whose embedding space this one was trained into (M-CLIP's
    /// XLM-R tower: CLIP's text tower). Such a tower may encode queries for an index built with
    /// that fingerprint, as a front's multilingual tower.
    #[serde(default)]
    pub aligned_to: Option<String>,
    /// File names inside the package; defaults are the documented ones.
    #[serde(default = "default_onnx_file")]
    pub onnx_file: String,
    #[serde(default = "default_tokenizer_file")]
    pub tokenizer_file: String,
    /// The ONNX external-data file holding the weights (`text.onnx.data`), when the graph was
    /// exported with `--external-data`: a Worker fetches it separately (see `PackageBytes`).
    #[serde(default)]
    pub external_data: Option<String>,
    /// The int8 engine's weight file (`text.int8`, docs/format.md). When the package has it (and
    /// its compact tokenizer), every front runs the int8 engine and the fingerprint covers these
    /// two files; the ONNX graph stays as the native reference.
    #[serde(default)]
    pub int8_file: Option<String>,
    /// The compact tokenizer (`tokenizer.bin`, docs/format.md) that goes with `int8_file`.
    #[serde(default)]
    pub compact_tokenizer_file: Option<String>,
    /// Lowest cosine this (quantized) graph must reach against the fp32 `reference.json`.
    #[serde(default)]
    pub reference_tolerance: Option<f32>,
}

fn default_true() -> bool {
    true
}

fn default_onnx_file() -> String {
    "text.onnx".to_string()
}

fn default_tokenizer_file() -> String {
    "tokenizer.json".to_string()
}

/// Which engine runs a package's text tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The int8 transformer over `text.int8`, with the compact tokenizer (what the Worker runs).
    Int8,
    /// The ONNX graph on tract, with the HF `tokenizer.json` (feature `onnx`).
    Onnx,
}

/// The files an engine needs from a package, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFiles {
    pub tokenizer: String,
    pub tower: String,
    pub external_data: Option<String>,
}

/// The graph inputs the encoder knows how to fill.
pub(crate) const KNOWN_INPUTS: [&str; 4] = [
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
];

impl ModelCard {
    pub fn from_toml(text: &str) -> Result<ModelCard, TextError> {
        let card: ModelCard = toml::from_str(text).map_err(|error| TextError::Card {
            reason: error.to_string().trim().to_string(),
        })?;
        card.validate()?;
        Ok(card)
    }

    /// The engine every front runs for this package: int8 when it ships `text.int8`.
    pub fn engine(&self) -> Engine {
        if self.int8_file.is_some() && self.compact_tokenizer_file.is_some() {
            Engine::Int8
        } else {
            Engine::Onnx
        }
    }

    /// What `engine` needs from the package.
    pub fn files_for(&self, engine: Engine) -> Result<PackageFiles, TextError> {
        match engine {
            Engine::Int8 => match (&self.int8_file, &self.compact_tokenizer_file) {
                (Some(tower), Some(tokenizer)) => Ok(PackageFiles {
                    tokenizer: tokenizer.clone(),
                    tower: tower.clone(),
                    external_data: None,
                }),
                _ => Err(TextError::Card {
                    reason: format!(
                        "package {} has no int8 engine (int8_file and compact_tokenizer_file)",
                        self.name
                    ),
                }),
            },
            Engine::Onnx => Ok(PackageFiles {
                tokenizer: self.tokenizer_file.clone(),
                tower: self.onnx_file.clone(),
                external_data: self.external_data.clone(),
            }),
        }
    }

    /// The fingerprint of the files this card's engine runs, read from the package directory
    /// `dir` (what the `fingerprint` field must say).
    pub fn package_fingerprint(&self, dir: &std::path::Path) -> Result<String, TextError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TextError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let files = self.files_for(self.engine())?;
        let tower = read(&files.tower)?;
        let tokenizer = read(&files.tokenizer)?;
        Ok(match self.engine() {
            Engine::Int8 => int8_fingerprint(&tower, &tokenizer),
            Engine::Onnx => {
                let external = files.external_data.as_deref().map(read).transpose()?;
                fingerprint(&tower, external.as_deref(), &tokenizer)
            }
        })
    }

    fn validate(&self) -> Result<(), TextError> {
        let invalid = |reason: String| Err(TextError::Card { reason });
        if self.name.trim().is_empty() {
            return invalid("name is empty".to_string());
        }
        if self.dim == 0 {
            return invalid("dim must be positive".to_string());
        }
        // Two special tokens (BOS/CLS and EOS/SEP) and at least one real one.
        if self.max_tokens < 3 {
            return invalid(format!("max_tokens {} is below 3", self.max_tokens));
        }
        if !self.inputs.iter().any(|input| input == "input_ids") {
            return invalid("inputs must include input_ids".to_string());
        }
        if let Some(unknown) = self
            .inputs
            .iter()
            .find(|input| !KNOWN_INPUTS.contains(&input.as_str()))
        {
            return invalid(format!(
                "unknown graph input {unknown:?}; known inputs are {KNOWN_INPUTS:?}"
            ));
        }
        if self.fingerprint.len() != 16 || !self.fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return invalid(format!(
                "fingerprint {:?} is not 16 hex digits",
                self.fingerprint
            ));
        }
        Ok(())
    }
}

/// The fingerprint of an int8 package: SHA-256 over `text.int8`, then `tokenizer.bin`.
pub fn int8_fingerprint(weights: &[u8], compact_tokenizer: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(weights);
    hasher.update(compact_tokenizer);
    first_16_hex_digits(hasher)
}

fn first_16_hex_digits(hasher: Sha256) -> String {
    let digest = hasher.finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The fingerprint a model card records: SHA-256 over the graph, its external weight file if it
/// has one, and the tokenizer, so it changes whenever weights or vocabulary change.
pub fn fingerprint(
    onnx_bytes: &[u8],
    external_data: Option<&[u8]>,
    tokenizer_bytes: &[u8],
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(onnx_bytes);
    if let Some(data) = external_data {
        hasher.update(data);
    }
    hasher.update(tokenizer_bytes);
    first_16_hex_digits(hasher)
}
