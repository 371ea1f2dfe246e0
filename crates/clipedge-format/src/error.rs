use thiserror::Error;

/// Everything that can be wrong with bytes that claim to be part of an index.
#[derive(Debug, Error)]
pub enum FormatError {
    #[error("checksum mismatch in {what}: expected {expected:#010x}, found {found:#010x}")]
    Checksum {
        what: String,
        expected: u32,
        found: u32,
    },
    #[error("bad magic in {what}: expected {expected:?}")]
    BadMagic { what: String, expected: String },
    #[error("unsupported format version {found} in {what} (this build reads version {supported})")]
    Version {
        what: String,
        found: u32,
        supported: u32,
    },
    #[error("{what} is truncated: need {needed} bytes, have {actual}")]
    Truncated {
        what: String,
        needed: usize,
        actual: usize,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("invalid json in {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl FormatError {
    /// The same error about `what` (a parser names its object only when it fails).
    pub(crate) fn renamed(mut self, name: String) -> Self {
        match &mut self {
            FormatError::Checksum { what, .. }
            | FormatError::BadMagic { what, .. }
            | FormatError::Version { what, .. }
            | FormatError::Truncated { what, .. }
            | FormatError::Invalid { what, .. }
            | FormatError::Json { what, .. } => *what = name,
        }
        self
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn truncated(what: impl Into<String>, needed: usize, actual: usize) -> Self {
        FormatError::Truncated {
            what: what.into(),
            needed,
            actual,
        }
    }

    /// Verifies `bytes` against an expected CRC-32.
    pub fn verify(what: &str, bytes: &[u8], expected: u32) -> Result<(), FormatError> {
        let found = crate::checksum(bytes);
        if found != expected {
            return Err(FormatError::Checksum {
                what: what.to_string(),
                expected,
                found,
            });
        }
        Ok(())
    }
}
