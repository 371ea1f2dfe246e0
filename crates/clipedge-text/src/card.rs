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
    /// First 16 hex digits of SHA-256 over `text.onnx`, `text.onnx.data` (if present), then
    /// `tokenizer.json`; see [`fingerprint`].
    pub fingerprint: String,
    #[serde(default)]
    pub source: Option<String>,
    /// File names inside the package; defaults are the documented ones.
    #[serde(default = "default_onnx_file")]
    pub onnx_file: String,
    #[serde(default = "default_tokenizer_file")]
    pub tokenizer_file: String,
    /// The ONNX external-data file holding the weights (`text.onnx.data`), when the graph was
    /// exported with `--external-data`: a Worker fetches it separately (see `PackageBytes`).
    #[serde(default)]
    pub external_data: Option<String>,
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
    let digest = hasher.finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
