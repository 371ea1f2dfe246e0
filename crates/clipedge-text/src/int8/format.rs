//! The `text.int8` file: header, tensor table, and the writer (tests, the synthetic model).
//!
//! Layout (little-endian; prose in `docs/format.md`, "Model package: text.int8"):
//! a 64-byte header, a table of `tensor_count` entries `(offset u64, byte_len u64)`, then the
//! tensors, each at a 64-byte-aligned offset, in the order [`tensor_specs`] lists them. The order
//! and every length follow from the header, so the table only says where each tensor lies and
//! the loader checks each entry against what the header implies.

use crate::TextError;

pub const MAGIC: &[u8; 4] = b"CEI8";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 64;
pub const TENSOR_ALIGN: usize = 64;
const TABLE_ENTRY_BYTES: usize = 16;

// Bounds that keep every size computation small and reject nonsense headers before any
// allocation sized by them.
const MAX_VOCAB: u32 = 1 << 20;
const MAX_WIDTH: u32 = 8192;
const MAX_LAYERS: u32 = 256;
const MAX_MLP: u32 = 65536;
const MAX_POSITIONS: u32 = 8192;

/// Which transformer the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// CLIP text tower: pre-LN, causal attention, final LN, EOT pooling, projection.
    Clip = 1,
    /// BERT encoder: embedding LN, post-LN, bidirectional attention, mean or CLS pooling.
    Bert = 2,
}

/// How `forward` turns the per-token outputs into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Pooling {
    /// The last position (CLIP: the ids always end with EOT).
    LastToken = 1,
    /// Mean over all positions (sentence-transformers; we never pad).
    Mean = 2,
    /// The first position (`[CLS]`).
    Cls = 3,
}

/// The MLP's activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu = 1,
    /// `x * Φ(x)` with the exact erf (BERT).
    GeluErf = 2,
}

/// The architecture a `text.int8` header describes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int8Config {
    pub family: Family,
    pub pooling: Int8Pooling,
    pub activation: Activation,
    pub vocab: u32,
    pub width: u32,
    pub layers: u32,
    pub heads: u32,
    pub mlp: u32,
    pub max_positions: u32,
    /// Output projection rows; 0 = no projection (the output is `width` wide).
    pub proj_dim: u32,
    pub ln_eps: f32,
}

impl Int8Config {
    /// The OpenAI CLIP ViT-B/32 text tower.
    pub fn clip_b32() -> Self {
        Int8Config {
            family: Family::Clip,
            pooling: Int8Pooling::LastToken,
            activation: Activation::QuickGelu,
            vocab: 49408,
            width: 512,
            layers: 12,
            heads: 8,
            mlp: 2048,
            max_positions: 77,
            proj_dim: 512,
            ln_eps: 1e-5,
        }
    }

    /// sentence-transformers all-MiniLM-L6-v2.
    pub fn minilm_l6() -> Self {
        Int8Config {
            family: Family::Bert,
            pooling: Int8Pooling::Mean,
            activation: Activation::GeluErf,
            vocab: 30522,
            width: 384,
            layers: 6,
            heads: 12,
            mlp: 1536,
            max_positions: 512,
            proj_dim: 0,
            ln_eps: 1e-12,
        }
    }

    /// Width of `forward`'s output.
    pub fn output_dim(&self) -> usize {
        if self.proj_dim > 0 {
            self.proj_dim as usize
        } else {
            self.width as usize
        }
    }

    pub fn head_dim(&self) -> usize {
        (self.width / self.heads) as usize
    }

    fn validate(&self) -> Result<(), TextError> {
        let checks: [(bool, &str); 9] = [
            (self.vocab >= 1 && self.vocab <= MAX_VOCAB, "vocab"),
            (self.width >= 1 && self.width <= MAX_WIDTH, "width"),
            (self.layers <= MAX_LAYERS, "layers"),
            (self.heads >= 1 && self.heads <= self.width, "heads"),
            (self.mlp >= 1 && self.mlp <= MAX_MLP, "mlp"),
            (
                self.max_positions >= 1 && self.max_positions <= MAX_POSITIONS,
                "max_positions",
            ),
            (self.proj_dim <= MAX_WIDTH, "proj_dim"),
            (self.ln_eps.is_finite() && self.ln_eps > 0.0, "ln_eps"),
            (
                self.family == Family::Clip || self.proj_dim == 0,
                "proj_dim (bert has no projection)",
            ),
        ];
        if let Some((_, field)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(load_error(format!("header field {field} is out of range")));
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(load_error(format!(
                "width {} is not a multiple of heads {}",
                self.width, self.heads
            )));
        }
        let pooling_fits = match self.family {
            Family::Clip => self.pooling == Int8Pooling::LastToken,
            Family::Bert => self.pooling != Int8Pooling::LastToken,
        };
        if !pooling_fits {
            return Err(load_error(format!(
                "pooling {:?} does not fit family {:?}",
                self.pooling, self.family
            )));
        }
        Ok(())
    }
}

/// What one table entry holds; the loader checks `byte_len` against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// int8 row-major `[rows][cols]`.
    Int8 {
        rows: usize,
        cols: usize,
    },
    F32(usize),
    I32(usize),
}

impl TensorKind {
    pub fn byte_len(self) -> usize {
        match self {
            TensorKind::Int8 { rows, cols } => rows * cols,
            TensorKind::F32(count) | TensorKind::I32(count) => count * 4,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TensorSpec {
    pub name: &'static str,
    pub layer: Option<usize>,
    pub kind: TensorKind,
}

/// Every tensor of a file in file order. A quantized linear is four entries (int8 weights
/// `[out][in]`, f32 per-row scales, i32 per-row sums of the int8 weights, f32 bias); the
/// projection has no bias; the token table is int8 rows and their scales.
pub fn tensor_specs(config: &Int8Config) -> Vec<TensorSpec> {
    let width = config.width as usize;
    let mlp = config.mlp as usize;
    let mut specs = Vec::new();
    let mut push = |name: &'static str, layer: Option<usize>, kind: TensorKind| {
        specs.push(TensorSpec { name, layer, kind })
    };
    let vocab = config.vocab as usize;
    push(
        "token_embedding",
        None,
        TensorKind::Int8 {
            rows: vocab,
            cols: width,
        },
    );
    push("token_embedding.scales", None, TensorKind::F32(vocab));
    push(
        "position_embedding",
        None,
        TensorKind::F32(config.max_positions as usize * width),
    );
    if config.family == Family::Bert {
        push("embedding_norm.gamma", None, TensorKind::F32(width));
        push("embedding_norm.beta", None, TensorKind::F32(width));
    }
    let linear = |push: &mut dyn FnMut(&'static str, Option<usize>, TensorKind),
                  names: [&'static str; 4],
                  layer: Option<usize>,
                  rows: usize,
                  cols: usize,
                  bias: bool| {
        push(names[0], layer, TensorKind::Int8 { rows, cols });
        push(names[1], layer, TensorKind::F32(rows));
        push(names[2], layer, TensorKind::I32(rows));
        if bias {
            push(names[3], layer, TensorKind::F32(rows));
        }
    };
    for layer in 0..config.layers as usize {
        let at = Some(layer);
        push("norm1.gamma", at, TensorKind::F32(width));
        push("norm1.beta", at, TensorKind::F32(width));
        linear(
            &mut push,
            ["qkv", "qkv.scales", "qkv.row_sums", "qkv.bias"],
            at,
            3 * width,
            width,
            true,
        );
        linear(
            &mut push,
            ["out", "out.scales", "out.row_sums", "out.bias"],
            at,
            width,
            width,
            true,
        );
        push("norm2.gamma", at, TensorKind::F32(width));
        push("norm2.beta", at, TensorKind::F32(width));
        linear(
            &mut push,
            ["fc1", "fc1.scales", "fc1.row_sums", "fc1.bias"],
            at,
            mlp,
            width,
            true,
        );
        linear(
            &mut push,
            ["fc2", "fc2.scales", "fc2.row_sums", "fc2.bias"],
            at,
            width,
            mlp,
            true,
        );
    }
    if config.family == Family::Clip {
        push("final_norm.gamma", None, TensorKind::F32(width));
        push("final_norm.beta", None, TensorKind::F32(width));
    }
    if config.proj_dim > 0 {
        linear(
            &mut push,
            ["projection", "projection.scales", "projection.row_sums", ""],
            None,
            config.proj_dim as usize,
            width,
            false,
        );
    }
    specs
}

pub fn load_error(reason: impl Into<String>) -> TextError {
    TextError::ModelLoad {
        reason: reason.into(),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Where each tensor lies, checked against the file size and the header.
pub struct Parsed {
    pub config: Int8Config,
    pub specs: Vec<TensorSpec>,
    /// Byte offset of each tensor, in `specs` order.
    pub offsets: Vec<usize>,
}

/// Validates the header and the tensor table. Reads no tensor data.
pub fn parse(bytes: &[u8]) -> Result<Parsed, TextError> {
    if bytes.len() < HEADER_BYTES {
        return Err(load_error(format!(
            "text.int8 is {} bytes, shorter than its {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    if &bytes[0..4] != MAGIC {
        return Err(load_error("not a text.int8 file (magic is not CEI8)"));
    }
    let version = read_u32(bytes, 4);
    if version != FORMAT_VERSION {
        return Err(load_error(format!(
            "text.int8 format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )));
    }
    let family = match read_u32(bytes, 8) {
        1 => Family::Clip,
        2 => Family::Bert,
        other => return Err(load_error(format!("unknown model family {other}"))),
    };
    let pooling = match read_u32(bytes, 12) {
        1 => Int8Pooling::LastToken,
        2 => Int8Pooling::Mean,
        3 => Int8Pooling::Cls,
        other => return Err(load_error(format!("unknown pooling {other}"))),
    };
    let activation = match read_u32(bytes, 16) {
        1 => Activation::QuickGelu,
        2 => Activation::GeluErf,
        other => return Err(load_error(format!("unknown activation {other}"))),
    };
    let config = Int8Config {
        family,
        pooling,
        activation,
        vocab: read_u32(bytes, 20),
        width: read_u32(bytes, 24),
        layers: read_u32(bytes, 28),
        heads: read_u32(bytes, 32),
        mlp: read_u32(bytes, 36),
        max_positions: read_u32(bytes, 40),
        proj_dim: read_u32(bytes, 44),
        ln_eps: f32::from_bits(read_u32(bytes, 48)),
    };
    config.validate()?;
    let specs = tensor_specs(&config);
    let tensor_count = read_u32(bytes, 52) as usize;
    if tensor_count != specs.len() {
        return Err(load_error(format!(
            "tensor table has {tensor_count} entries, the header implies {}",
            specs.len()
        )));
    }
    let table_end = HEADER_BYTES + tensor_count * TABLE_ENTRY_BYTES;
    if bytes.len() < table_end {
        return Err(load_error(format!(
            "text.int8 is truncated: {} bytes, its tensor table ends at {table_end}",
            bytes.len()
        )));
    }
    let mut offsets = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let entry = HEADER_BYTES + index * TABLE_ENTRY_BYTES;
        let offset = read_u64(bytes, entry);
        let byte_len = read_u64(bytes, entry + 8);
        let describe = || match spec.layer {
            Some(layer) => format!("layer {layer} {}", spec.name),
            None => spec.name.to_string(),
        };
        if byte_len != spec.kind.byte_len() as u64 {
            return Err(load_error(format!(
                "tensor {} is {byte_len} bytes, the header implies {}",
                describe(),
                spec.kind.byte_len()
            )));
        }
        if !offset.is_multiple_of(TENSOR_ALIGN as u64) || offset < table_end as u64 {
            return Err(load_error(format!(
                "tensor {} has a bad offset {offset}",
                describe()
            )));
        }
        let end = offset.checked_add(byte_len);
        if end.is_none_or(|end| end > bytes.len() as u64) {
            return Err(load_error(format!(
                "tensor {} (offset {offset}, {byte_len} bytes) runs past the end of the {}-byte file",
                describe(),
                bytes.len()
            )));
        }
        offsets.push(offset as usize);
    }
    Ok(Parsed {
        config,
        specs,
        offsets,
    })
}

/// Symmetric per-row int8 quantization: `scale = max|row| / 127`, values in [-127, 127].
pub fn quantize_row(row: &[f32], out: &mut [u8]) -> f32 {
    let max_abs = row.iter().fold(0.0f32, |max, value| max.max(value.abs()));
    if max_abs == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let scale = max_abs / 127.0;
    for (slot, &value) in out.iter_mut().zip(row) {
        *slot = ((value / scale).round().clamp(-127.0, 127.0) as i8) as u8;
    }
    scale
}

/// Writes a `text.int8` tensor by tensor, in [`tensor_specs`] order. Used by the tests'
/// fixtures and [`super::synthetic_model`]; the Python packer (`models/pack_int8.py`) writes the
/// same bytes for real models. Calling the methods out of order is a programming error and
/// panics with the expected tensor's name.
pub struct Int8Writer {
    specs: Vec<TensorSpec>,
    next: usize,
    bytes: Vec<u8>,
}

impl Int8Writer {
    pub fn new(config: &Int8Config) -> Self {
        let specs = tensor_specs(config);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        for value in [
            FORMAT_VERSION,
            config.family as u32,
            config.pooling as u32,
            config.activation as u32,
            config.vocab,
            config.width,
            config.layers,
            config.heads,
            config.mlp,
            config.max_positions,
            config.proj_dim,
            config.ln_eps.to_bits(),
            specs.len() as u32,
        ] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.resize(HEADER_BYTES + specs.len() * TABLE_ENTRY_BYTES, 0);
        Int8Writer {
            specs,
            next: 0,
            bytes,
        }
    }

    /// Starts the next tensor: checks it is the expected one, aligns, records the table entry.
    fn begin(&mut self, kind: TensorKind) {
        let spec = self
            .specs
            .get(self.next)
            .unwrap_or_else(|| panic!("text.int8 writer: tensor {kind:?} past the last one"));
        assert_eq!(
            spec.kind, kind,
            "text.int8 writer: tensor {} (layer {:?}) has the wrong shape",
            spec.name, spec.layer
        );
        let offset = self.bytes.len().next_multiple_of(TENSOR_ALIGN);
        self.bytes.resize(offset, 0);
        let entry = HEADER_BYTES + self.next * TABLE_ENTRY_BYTES;
        self.bytes[entry..entry + 8].copy_from_slice(&(offset as u64).to_le_bytes());
        self.bytes[entry + 8..entry + 16].copy_from_slice(&(kind.byte_len() as u64).to_le_bytes());
        self.next += 1;
    }

    pub fn f32s(&mut self, values: &[f32]) {
        self.begin(TensorKind::F32(values.len()));
        for value in values {
            self.bytes.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn i32s(&mut self, values: &[i32]) {
        self.begin(TensorKind::I32(values.len()));
        for value in values {
            self.bytes.extend_from_slice(&value.to_le_bytes());
        }
    }

    /// Quantizes `rows` rows of `cols` f32 (each produced by `fill`) to int8 and writes them,
    /// then their scales; returns the row sums (what a linear needs next).
    fn int8_rows(
        &mut self,
        rows: usize,
        cols: usize,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> (Vec<f32>, Vec<i32>) {
        self.begin(TensorKind::Int8 { rows, cols });
        let mut row_values = vec![0.0f32; cols];
        let mut quantized = vec![0u8; cols];
        let mut scales = Vec::with_capacity(rows);
        let mut sums = Vec::with_capacity(rows);
        for row in 0..rows {
            fill(row, &mut row_values);
            scales.push(quantize_row(&row_values, &mut quantized));
            sums.push(quantized.iter().map(|&q| q as i8 as i32).sum());
            self.bytes.extend_from_slice(&quantized);
        }
        (scales, sums)
    }

    /// The token table: `vocab` rows of `width`.
    pub fn token_table(&mut self, rows: usize, cols: usize, fill: impl FnMut(usize, &mut [f32])) {
        let (scales, _) = self.int8_rows(rows, cols, fill);
        self.f32s(&scales);
    }

    /// A linear layer `y = W x + b` with `W` given row by row as `[out][in]`.
    pub fn linear(
        &mut self,
        rows: usize,
        cols: usize,
        fill: impl FnMut(usize, &mut [f32]),
        bias: Option<&[f32]>,
    ) {
        let (scales, sums) = self.int8_rows(rows, cols, fill);
        self.f32s(&scales);
        self.i32s(&sums);
        if let Some(bias) = bias {
            self.f32s(bias);
        }
    }

    /// The finished file; panics if a tensor is missing.
    pub fn finish(self) -> Vec<u8> {
        assert_eq!(
            self.next,
            self.specs.len(),
            "text.int8 writer: {} of {} tensors written",
            self.next,
            self.specs.len()
        );
        self.bytes
    }
}
