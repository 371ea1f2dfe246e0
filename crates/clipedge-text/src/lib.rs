//! Text in, embedding out: the query side of the model, natively (embedded server, index-time
//! caption embedding) and inside a 128 MB Cloudflare Worker isolate (wasm32).
//!
//! A model package is a directory (or, in the Worker, fetched objects): `model.toml`
//! ([`ModelCard`]), the text tower and its tokenizer. Two engines run the tower:
//!
//! - [`int8`]: a purpose-built int8 transformer (CLIP text and BERT families) over one flat
//!   weight file kept as loaded, with GEMM kernels for relaxed SIMD, simd128, AVX2 and a scalar
//!   reference; what the Worker runs.
//! - the ONNX graph on tract (feature `onnx`): the native reference and packages without an
//!   int8 file.
//!
//! Tokenizers: [`compact`], a small CLIP BPE / WordPiece implementation over a packed vocabulary
//! (what the Worker runs), and the HF `tokenizer.json` through `tokenizers` (feature
//! `hf-tokenizer`), which the compact one must equal token for token.

mod card;
pub mod compact;
mod encoder;
mod error;
pub mod int8;
#[cfg(feature = "onnx")]
mod onnx;
#[cfg(feature = "hf-tokenizer")]
mod tokenize;
mod tokens;

pub use card::{fingerprint, int8_fingerprint, Engine, ModelCard, PackageFiles, Pooling};
pub use encoder::{Encoding, PackageBytes, TextEncoder};
pub use error::TextError;
#[cfg(feature = "hf-tokenizer")]
pub use tokenize::TextTokenizer;
pub use tokens::Tokens;
