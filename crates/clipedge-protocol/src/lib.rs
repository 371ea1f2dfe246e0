//! The scanner wire protocol, shared by the edge Worker, the scanner Lambda and the embedded
//! server (specified in `docs/protocol.md`).
//!
//! A caller sends one [`ScanRequest`] per scanner invocation: a batch of routing groups (the
//! scanner ranks their fine lists itself) or of list ids, and gets back one [`ScanResponse`]
//! with a status per group and per list, so it retries only what failed, plus the top `k`
//! reranked candidates ([`clipedge_format::Hit`]) and where the time and bytes went.
//!
//! - [`codec`]: the versioned binary frame (bincode 2 behind a magic and a version, size-guarded
//!   below the 6 MB Lambda payload cap) and JSON for debugging.
//! - [`auth`]: HMAC-SHA256 request signing over timestamp and body.
//! - [`client`]: what a caller needs: sign a request (merging the answers of several scanners
//!   is the API's one merge, `clipedge_api::merge`).
//!
//! No I/O and no clock: functions that need the time take it as an argument, because
//! `wasm32-unknown-unknown` has no `SystemTime`.

pub mod auth;
pub mod client;
pub mod codec;
mod message;

pub use auth::{
    sign, verify, verify_any, AuthError, SignedHeaders, DEFAULT_MAX_SKEW_MS, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
pub use client::SignedRequest;
pub use codec::{
    decode_request, decode_response, encode_request, encode_response, Encoding, ProtocolError,
    MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, PROTOCOL_VERSION,
};
pub use message::{
    GroupResult, ListResult, ScanRequest, ScanResponse, ScanStats, ScanStatus, ScanTargets,
    MAX_CANDIDATES, MAX_DIM, MAX_TARGETS,
};
