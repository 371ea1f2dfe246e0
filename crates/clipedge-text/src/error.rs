use thiserror::Error;

#[derive(Debug, Error)]
pub enum TextError {
    #[error("text is empty")]
    EmptyInput,
    #[error("text has no tokens the model knows (only special or control characters)")]
    NoTokens,
    #[error("model card is invalid: {reason}")]
    Card { reason: String },
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load tokenizer: {reason}")]
    Tokenizer { reason: String },
    #[error("cannot tokenize text: {reason}")]
    Tokenize { reason: String },
    #[error("cannot load text model: {reason}")]
    ModelLoad { reason: String },
    #[error("text model failed: {reason}")]
    Inference { reason: String },
    #[error("model fingerprint mismatch: card says {expected}, files hash to {actual}")]
    FingerprintMismatch { expected: String, actual: String },
}
