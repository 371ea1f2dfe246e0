//! Text in, embedding out: the query side of the model, natively (embedded server, index-time
//! caption embedding) and inside a 128 MB Cloudflare Worker isolate (wasm32).
//!
//! A model package is a directory (or, in the Worker, three fetched objects): `model.toml`
//! ([`ModelCard`]), an ONNX text tower and the HF `tokenizer.json`. The encoder tokenizes with the
//! package's own tokenizer, truncates at `max_tokens`, runs the graph on exactly the positions the
//! text has (no padding) and pools and normalizes as the card says.

mod card;
mod encoder;
mod error;
mod tokenize;

pub use card::{fingerprint, ModelCard, Pooling};
pub use encoder::{Encoding, PackageBytes, TextEncoder};
pub use error::TextError;
pub use tokenize::{TextTokenizer, Tokens};
