//! What the scanner answers over HTTP: a reply, and the failures that end a whole request.

use clipedge_index::leaf::error_chain;
use clipedge_index::{GenerationError, IndexError};
use clipedge_storage::{SourceError, StorageError};
use thiserror::Error;

/// An HTTP answer: status, content type and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON error body: `{"error": "...", "status": N}`.
    pub fn error(status: u16, message: &str) -> Reply {
        let body = serde_json::json!({ "error": message, "status": status });
        Reply {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        }
    }

    /// The error message of an error reply.
    pub fn error_message(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        value.get("error")?.as_str().map(str::to_string)
    }
}

/// Failures that end a whole request (per-list failures are statuses in the response).
#[derive(Debug, Error)]
pub(crate) enum RequestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Unavailable(String),
}

impl RequestError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::NotFound(_) => 404,
            RequestError::Corrupt(_) => 500,
            RequestError::Unavailable(_) => 503,
        }
    }

    pub(crate) fn from_index(error: IndexError) -> RequestError {
        let message = error_chain(&error);
        match error {
            // The leaf's refusals of a request (dimension, ids): the reason is the message.
            IndexError::InvalidQuery { reason } | IndexError::InvalidParams { reason } => {
                RequestError::BadRequest(reason)
            }
            IndexError::NoIndex { .. } | IndexError::Storage(StorageError::NotFound { .. }) => {
                RequestError::NotFound(message)
            }
            IndexError::Storage(StorageError::InvalidLocation { .. }) => {
                RequestError::BadRequest(message)
            }
            IndexError::Storage(StorageError::Range { .. })
            | IndexError::Format(_)
            | IndexError::Codebooks { .. } => RequestError::Corrupt(message),
            IndexError::Storage(_) => RequestError::Unavailable(message),
            IndexError::Source(source) => source_request_error(&source, message),
            IndexError::Generation(generation) => match generation {
                GenerationError::NoIndex { .. } => RequestError::NotFound(message),
                GenerationError::Source { source, .. } => source_request_error(&source, message),
                GenerationError::Format { .. } | GenerationError::Inconsistent { .. } => {
                    RequestError::Corrupt(message)
                }
                GenerationError::NoCatalog
                | GenerationError::UnknownId { .. }
                | GenerationError::NoVectorCopies => RequestError::BadRequest(message),
            },
        }
    }
}

/// A failed object read as the scanner's answer: missing, corrupt (a short range), or a
/// backend that may answer on a retry.
fn source_request_error(error: &SourceError, message: String) -> RequestError {
    match error {
        SourceError::NotFound { .. } => RequestError::NotFound(message),
        SourceError::Range { .. } => RequestError::Corrupt(message),
        SourceError::TooLarge { .. } | SourceError::Failed { .. } => {
            RequestError::Unavailable(message)
        }
    }
}
