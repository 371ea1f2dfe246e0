use clipedge_format::FormatError;
use clipedge_storage::StorageError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("corrupt index: {0}")]
    Format(#[from] FormatError),
    #[error("no index at {location}: the {object} object is missing")]
    NoIndex { location: String, object: String },
    #[error("invalid query: {reason}")]
    InvalidQuery { reason: String },
    #[error("invalid search parameters: {reason}")]
    InvalidParams { reason: String },
    #[error("index codebooks do not match the manifest: {reason}")]
    Codebooks { reason: String },
}
