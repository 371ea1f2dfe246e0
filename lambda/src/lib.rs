//! The scanner Lambda: scans PQ lists of a clipedge index on object storage and returns the
//! reranked top candidates (protocol in `docs/protocol.md`).
//!
//! The logic lives here, runtime-free, so it is tested without Lambda: [`Scanner::handle`]
//! takes request headers and body bytes and returns a [`Reply`] (status, content type, body).
//! `main.rs` only wires it to `lambda_http` (a function URL).

pub mod config;
mod reply;
mod scanner;

pub use config::{Auth, ConfigError, ScannerConfig};
pub use reply::Reply;
pub use scanner::Scanner;
