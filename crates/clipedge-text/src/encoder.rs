//! The text encoder: a package's tokenizer and tower behind one `encode`, whichever engine the
//! package ships. A query runs exactly as many positions as it has tokens (no padding: CLIP's
//! causal mask and EOT pooling, and mean pooling without padding, give the padded result).

#[cfg(feature = "onnx")]
use crate::card::Pooling;
use crate::card::{Engine, ModelCard, PackageFiles};
use crate::compact::CompactTokenizer;
use crate::int8::Int8Model;
#[cfg(feature = "onnx")]
use crate::onnx::OnnxTower;
#[cfg(feature = "hf-tokenizer")]
use crate::tokenize::TextTokenizer;
use crate::{TextError, Tokens};

/// One encoded text.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// The embedding, L2-normalized when the card says so.
    pub embedding: Vec<f32>,
    /// Positions the model ran, special tokens included.
    pub tokens: usize,
    /// The text was longer than `max_tokens` and was cut.
    pub truncated: bool,
}

/// A model package's files as bytes (what a Worker fetched): the names come from
/// [`ModelCard::files_for`].
pub struct PackageBytes<'a> {
    pub card_toml: &'a str,
    /// The engine's tokenizer file, moved in: `tokenizer.bin` (int8: kept as the tokenizer's
    /// tables, no copy) or `tokenizer.json` (ONNX: parsed and dropped).
    pub tokenizer: Vec<u8>,
    /// The tower file, moved in: `text.int8` is kept as the weights (no copy); `text.onnx` is
    /// parsed and dropped.
    pub tower: Vec<u8>,
    /// `text.onnx.data` for graphs exported with external weights; consumed (moved into the
    /// graph) so the weights are not held twice.
    pub external_data: Option<Vec<u8>>,
}

// Boxed: one encoder per process or isolate, and the variants differ in size by far.
enum Tower {
    Int8(Box<Int8Model>),
    #[cfg(feature = "onnx")]
    Onnx(OnnxTower),
}

enum Tokenizer {
    Compact(Box<CompactTokenizer>),
    #[cfg(feature = "hf-tokenizer")]
    Hf(Box<TextTokenizer>),
}

pub struct TextEncoder {
    card: ModelCard,
    engine: Engine,
    tokenizer: Tokenizer,
    tower: Tower,
}

#[cfg(not(all(feature = "onnx", feature = "hf-tokenizer")))]
fn engine_not_built(engine: Engine) -> TextError {
    TextError::ModelLoad {
        reason: format!(
            "the package needs the {engine:?} engine, which this build leaves out (features \
             onnx and hf-tokenizer)"
        ),
    }
}

impl TextEncoder {
    /// Loads a model package directory with the engine its card names (int8 when the package
    /// ships `text.int8`). Wherever there is a file system (native, WASI); a Worker has none and
    /// uses [`TextEncoder::from_package`].
    pub fn load(dir: impl AsRef<std::path::Path>) -> Result<TextEncoder, TextError> {
        TextEncoder::load_inner(dir.as_ref(), None)
    }

    /// Loads a package directory with a chosen engine (the parity tests run both).
    pub fn load_with_engine(
        dir: impl AsRef<std::path::Path>,
        engine: Engine,
    ) -> Result<TextEncoder, TextError> {
        TextEncoder::load_inner(dir.as_ref(), Some(engine))
    }

    fn load_inner(dir: &std::path::Path, engine: Option<Engine>) -> Result<TextEncoder, TextError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TextError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let card_bytes = read("model.toml")?;
        let card_text = String::from_utf8(card_bytes).map_err(|_| TextError::Card {
            reason: "model.toml is not UTF-8".to_string(),
        })?;
        let card = ModelCard::from_toml(&card_text)?;
        let engine = engine.unwrap_or_else(|| card.engine());
        let files = card.files_for(engine)?;
        let tokenizer_bytes = read(&files.tokenizer)?;
        match engine {
            Engine::Int8 => {
                let weights = read(&files.tower)?;
                TextEncoder::from_int8(card, tokenizer_bytes, weights)
            }
            #[cfg(all(feature = "onnx", feature = "hf-tokenizer"))]
            Engine::Onnx => {
                // From a path tract memory-maps the graph and resolves external weights beside it.
                let tower = OnnxTower::load(&card, &dir.join(&files.tower))?;
                TextEncoder::from_onnx(card, &tokenizer_bytes, tower)
            }
            #[cfg(not(all(feature = "onnx", feature = "hf-tokenizer")))]
            Engine::Onnx => Err(engine_not_built(engine)),
        }
    }

    /// Builds an encoder from a package already in memory (the Worker fetches its objects):
    /// the files of the card's engine ([`ModelCard::engine`], [`ModelCard::files_for`]).
    pub fn from_package(package: PackageBytes<'_>) -> Result<TextEncoder, TextError> {
        let card = ModelCard::from_toml(package.card_toml)?;
        match card.engine() {
            Engine::Int8 => TextEncoder::from_int8(card, package.tokenizer, package.tower),
            #[cfg(all(feature = "onnx", feature = "hf-tokenizer"))]
            Engine::Onnx => {
                let tower = OnnxTower::from_bytes(&card, &package.tower, package.external_data)?;
                TextEncoder::from_onnx(card, &package.tokenizer, tower)
            }
            #[cfg(not(all(feature = "onnx", feature = "hf-tokenizer")))]
            Engine::Onnx => Err(engine_not_built(Engine::Onnx)),
        }
    }

    #[cfg(all(feature = "onnx", feature = "hf-tokenizer"))]
    fn from_onnx(
        card: ModelCard,
        tokenizer_json: &[u8],
        tower: OnnxTower,
    ) -> Result<TextEncoder, TextError> {
        let tokenizer = TextTokenizer::from_bytes(tokenizer_json, card.max_tokens)?;
        Ok(TextEncoder {
            card,
            engine: Engine::Onnx,
            tokenizer: Tokenizer::Hf(Box::new(tokenizer)),
            tower: Tower::Onnx(tower),
        })
    }

    fn from_int8(
        card: ModelCard,
        compact_tokenizer: Vec<u8>,
        weights: Vec<u8>,
    ) -> Result<TextEncoder, TextError> {
        let tokenizer = CompactTokenizer::from_bytes(compact_tokenizer, card.max_tokens)?;
        let model = Int8Model::from_bytes(weights)?;
        if model.output_dim() != card.dim {
            return Err(TextError::ModelLoad {
                reason: format!(
                    "text.int8 gives {}-dimensional embeddings, the card says dim {}",
                    model.output_dim(),
                    card.dim
                ),
            });
        }
        if card.max_tokens > model.max_positions() {
            return Err(TextError::ModelLoad {
                reason: format!(
                    "the card's max_tokens {} exceeds the model's {} positions",
                    card.max_tokens,
                    model.max_positions()
                ),
            });
        }
        Ok(TextEncoder {
            card,
            engine: Engine::Int8,
            tokenizer: Tokenizer::Compact(Box::new(tokenizer)),
            tower: Tower::Int8(Box::new(model)),
        })
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The files this encoder was built from (what a Worker fetches for this package).
    pub fn files(&self) -> Result<PackageFiles, TextError> {
        self.card.files_for(self.engine)
    }

    pub fn tokenize(&self, text: &str) -> Result<Tokens, TextError> {
        match &self.tokenizer {
            Tokenizer::Compact(tokenizer) => tokenizer.tokenize(text),
            #[cfg(feature = "hf-tokenizer")]
            Tokenizer::Hf(tokenizer) => tokenizer.tokenize(text),
        }
    }

    pub fn encode(&self, text: &str) -> Result<Encoding, TextError> {
        let tokens = self.tokenize(text)?;
        self.encode_tokens(&tokens)
    }

    /// Runs the tower on token ids as given (tests feed padded ids through here too).
    pub fn encode_tokens(&self, tokens: &Tokens) -> Result<Encoding, TextError> {
        let positions = tokens.ids.len();
        let mut embedding = match &self.tower {
            Tower::Int8(model) => {
                let ids = tokens
                    .ids
                    .iter()
                    .map(|&id| {
                        u32::try_from(id).map_err(|_| TextError::Inference {
                            reason: format!("token id {id} is out of range"),
                        })
                    })
                    .collect::<Result<Vec<u32>, TextError>>()?;
                model.forward(&ids)?
            }
            #[cfg(feature = "onnx")]
            Tower::Onnx(tower) => {
                let (values, shape) = tower.run(tokens)?;
                pool(&self.card, &values, &shape)?
            }
        };
        if self.card.normalize {
            normalize(&mut embedding);
        }
        Ok(Encoding {
            embedding,
            tokens: positions,
            truncated: tokens.truncated,
        })
    }
}

#[cfg(feature = "onnx")]
fn pool(card: &ModelCard, values: &[f32], shape: &[usize]) -> Result<Vec<f32>, TextError> {
    let dim = card.dim;
    let bad_shape = || TextError::Inference {
        reason: format!(
            "output {:?} has shape {shape:?}, expected a last axis of {dim}",
            card.output
        ),
    };
    if shape.last() != Some(&dim) || !values.len().is_multiple_of(dim) || values.is_empty() {
        return Err(bad_shape());
    }
    let rows = values.len() / dim;
    match card.pooling {
        Pooling::Pooled if rows == 1 => Ok(values.to_vec()),
        Pooling::Pooled => Err(bad_shape()),
        Pooling::Cls => Ok(values[..dim].to_vec()),
        Pooling::Mean => {
            let mut sum = vec![0f32; dim];
            for row in values.chunks_exact(dim) {
                for (total, value) in sum.iter_mut().zip(row) {
                    *total += value;
                }
            }
            let scale = 1.0 / rows as f32;
            sum.iter_mut().for_each(|total| *total *= scale);
            Ok(sum)
        }
    }
}

fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|value| *value /= norm);
    }
}
