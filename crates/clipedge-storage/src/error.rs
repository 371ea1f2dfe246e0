use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("invalid storage location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("object not found: {path}")]
    NotFound { path: String },
    #[error("object already exists and will not be overwritten: {path}")]
    AlreadyExists { path: String },
    #[error("object {path} changed since it was read (conditional write refused)")]
    Precondition { path: String },
    #[error("range {start}..{end} is outside object {path}")]
    Range { path: String, start: u64, end: u64 },
    #[error("reading the data of {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage error on {path} after {attempts} attempt(s)")]
    Backend {
        path: String,
        attempts: u32,
        #[source]
        source: object_store::Error,
    },
}

impl StorageError {
    pub(crate) fn from_backend(path: &str, attempts: u32, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                path: path.to_string(),
            },
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists {
                path: path.to_string(),
            },
            object_store::Error::Precondition { .. } => StorageError::Precondition {
                path: path.to_string(),
            },
            source => StorageError::Backend {
                path: path.to_string(),
                attempts,
                source,
            },
        }
    }

    /// Failures that another attempt cannot fix.
    pub(crate) fn is_permanent(source: &object_store::Error) -> bool {
        matches!(
            source,
            object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. }
                | object_store::Error::InvalidPath { .. }
                | object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented
                | object_store::Error::UnknownConfigurationKey { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        )
    }
}
