//! The int8 text transformer (see the crate docs): CLIP text towers and BERT encoders over one
//! `text.int8` file kept exactly as loaded.
//!
//! Numerics, the same for every kernel:
//! - linear weights int8 `[out][in]`, symmetric per output row (f32 scale), f32 bias;
//! - activations quantized per token right before each linear, asymmetric 8-bit:
//!   `x ≈ offset + scale · u` with `u ∈ [0, 254]` spanning the token's `[min, max]`; the dot
//!   `Σ w·u` is exact in i32 on every kernel (see [`kernels`]) and
//!   `Σ w·x ≈ scale · Σ w·u + offset · rowsum(w)` with `rowsum` stored in the file;
//! - embeddings (the token table is int8, dequantized only for the query's rows), LayerNorm,
//!   attention, softmax and GELU in f32, in plain Rust shared by all kernels — so every kernel
//!   gives bit-identical embeddings.
//!
//! Loading validates the header and the tensor table and copies out only the small f32 / i32
//! vectors (scales, row sums, biases, norms, positions); int8 tensors are read in place.

mod format;
mod forward;
mod kernels;
mod synthetic;

pub use format::{
    quantize_row, tensor_specs, Activation, Family, Int8Config, Int8Pooling, Int8Writer,
    TensorKind, TensorSpec, FORMAT_VERSION, MAGIC, TENSOR_ALIGN,
};
pub use kernels::{gemm_u8i8, Kernel, RelaxedDot};
pub use synthetic::synthetic_model;

use format::{load_error, TensorKind as Kind};

use crate::TextError;

/// `y = W x + b` with `W` int8 inside the model's bytes.
struct Linear {
    /// Byte offset of `W` (`rows × cols` int8) in the file.
    offset: usize,
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    row_sums: Vec<i32>,
    bias: Option<Vec<f32>>,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// One transformer block. For CLIP (pre-LN) `norm1`/`norm2` come before attention / the MLP;
/// for BERT (post-LN) after them.
struct Layer {
    norm1: Norm,
    qkv: Linear,
    out: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// A loaded `text.int8`.
pub struct Int8Model {
    bytes: Vec<u8>,
    config: Int8Config,
    token_offset: usize,
    token_scales: Vec<f32>,
    /// `[max_positions][width]`; BERT's token-type-0 row is already added in.
    position: Vec<f32>,
    embedding_norm: Option<Norm>,
    layers: Vec<Layer>,
    final_norm: Option<Norm>,
    projection: Option<Linear>,
}

/// Reads the tensors in file order (the order [`tensor_specs`] gives).
struct TensorCursor<'a> {
    bytes: &'a [u8],
    parsed: &'a format::Parsed,
    index: usize,
}

impl TensorCursor<'_> {
    fn next(&mut self) -> (Kind, usize) {
        let spec = self.parsed.specs[self.index];
        let offset = self.parsed.offsets[self.index];
        self.index += 1;
        (spec.kind, offset)
    }

    fn f32s(&mut self) -> Vec<f32> {
        let (kind, offset) = self.next();
        let Kind::F32(count) = kind else {
            unreachable!("tensor_specs order")
        };
        self.bytes[offset..offset + count * 4]
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect()
    }

    fn i32s(&mut self) -> Vec<i32> {
        let (kind, offset) = self.next();
        let Kind::I32(count) = kind else {
            unreachable!("tensor_specs order")
        };
        self.bytes[offset..offset + count * 4]
            .chunks_exact(4)
            .map(|chunk| i32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect()
    }

    fn int8(&mut self) -> (usize, usize, usize) {
        let (kind, offset) = self.next();
        let Kind::Int8 { rows, cols } = kind else {
            unreachable!("tensor_specs order")
        };
        (offset, rows, cols)
    }

    fn norm(&mut self) -> Norm {
        Norm {
            gamma: self.f32s(),
            beta: self.f32s(),
        }
    }

    fn linear(&mut self, bias: bool) -> Linear {
        let (offset, rows, cols) = self.int8();
        Linear {
            offset,
            rows,
            cols,
            scales: self.f32s(),
            row_sums: self.i32s(),
            bias: bias.then(|| self.f32s()),
        }
    }
}

impl Int8Model {
    /// Parses a `text.int8` file, keeping `bytes` as the weight storage.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Int8Model, TextError> {
        let parsed = format::parse(&bytes)?;
        let config = parsed.config;
        let mut cursor = TensorCursor {
            bytes: &bytes,
            parsed: &parsed,
            index: 0,
        };
        let (token_offset, _, _) = cursor.int8();
        let token_scales = cursor.f32s();
        let position = cursor.f32s();
        let embedding_norm = (config.family == Family::Bert).then(|| cursor.norm());
        let layers = (0..config.layers)
            .map(|_| Layer {
                norm1: cursor.norm(),
                qkv: cursor.linear(true),
                out: cursor.linear(true),
                norm2: cursor.norm(),
                fc1: cursor.linear(true),
                fc2: cursor.linear(true),
            })
            .collect();
        let final_norm = (config.family == Family::Clip).then(|| cursor.norm());
        let projection = (config.proj_dim > 0).then(|| cursor.linear(false));
        if cursor.index != parsed.specs.len() {
            return Err(load_error("tensor table and model layout disagree"));
        }
        Ok(Int8Model {
            bytes,
            config,
            token_offset,
            token_scales,
            position,
            embedding_norm,
            layers,
            final_norm,
            projection,
        })
    }

    pub fn config(&self) -> &Int8Config {
        &self.config
    }

    pub fn family(&self) -> Family {
        self.config.family
    }

    pub fn width(&self) -> usize {
        self.config.width as usize
    }

    pub fn vocab(&self) -> usize {
        self.config.vocab as usize
    }

    pub fn max_positions(&self) -> usize {
        self.config.max_positions as usize
    }

    /// Width of the embedding [`Int8Model::forward`] returns.
    pub fn output_dim(&self) -> usize {
        self.config.output_dim()
    }

    /// Size of the file held in memory (int8 weights stay inside it).
    pub fn weight_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The pooled, not yet L2-normalized embedding of `ids` (CLIP: projected last position;
    /// BERT: mean or first position), with the fastest available kernel.
    pub fn forward(&self, ids: &[u32]) -> Result<Vec<f32>, TextError> {
        self.forward_with_kernel(ids, Kernel::best())
    }

    /// [`Int8Model::forward`] with a chosen GEMM kernel; every kernel gives the same bits.
    pub fn forward_with_kernel(&self, ids: &[u32], kernel: Kernel) -> Result<Vec<f32>, TextError> {
        if !kernel.is_available() {
            return Err(TextError::Inference {
                reason: format!("kernel {} is not available here", kernel.name()),
            });
        }
        self.check_ids(ids)?;
        Ok(forward::run(self, ids, forward::Linears::Int8(kernel)))
    }

    /// The same transformer with f32 activations and the dequantized weights: what the int8
    /// path approximates (tests measure the cosine between the two).
    pub fn forward_reference(&self, ids: &[u32]) -> Result<Vec<f32>, TextError> {
        self.check_ids(ids)?;
        Ok(forward::run(self, ids, forward::Linears::Reference))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), TextError> {
        if ids.is_empty() {
            return Err(TextError::NoTokens);
        }
        if ids.len() > self.max_positions() {
            return Err(TextError::Inference {
                reason: format!(
                    "{} tokens, the model takes at most {}",
                    ids.len(),
                    self.max_positions()
                ),
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab()) {
            return Err(TextError::Inference {
                reason: format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.vocab()
                ),
            });
        }
        Ok(())
    }

    fn weights(&self, linear: &Linear) -> &[u8] {
        &self.bytes[linear.offset..linear.offset + linear.rows * linear.cols]
    }

    fn token_row(&self, id: u32) -> &[u8] {
        let width = self.width();
        let start = self.token_offset + id as usize * width;
        &self.bytes[start..start + width]
    }
}
