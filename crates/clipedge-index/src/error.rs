use clipedge_format::FormatError;
use clipedge_storage::{SourceError, StorageError};

use crate::GenerationError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Generation(GenerationError),
    // Not `#[from]`: that would make the format error both the message and the source, and
    // error chains would print it twice.
    #[error("corrupt index: {0}")]
    Format(FormatError),
    #[error("no index at {location}: the {object} object is missing")]
    NoIndex { location: String, object: String },
    #[error("invalid query: {reason}")]
    InvalidQuery { reason: String },
    #[error("invalid search parameters: {reason}")]
    InvalidParams { reason: String },
    #[error("index codebooks do not match the manifest: {reason}")]
    Codebooks { reason: String },
}

impl From<FormatError> for IndexError {
    fn from(error: FormatError) -> Self {
        IndexError::Format(error)
    }
}
