use serde::{Deserialize, Serialize};

use crate::FormatError;

/// Name of the object, at the index root, that names the live generation.
pub const CURRENT_OBJECT: &str = "CURRENT";

/// Content of the `CURRENT` object. Readers resolve it once and pin the generation
/// for the rest of a request; writers replace it with a conditional put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentPointer {
    pub format_version: u32,
    pub generation: String,
}

impl CurrentPointer {
    pub fn new(generation: impl Into<String>) -> Self {
        CurrentPointer {
            format_version: crate::FORMAT_VERSION,
            generation: generation.into(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("pointer serializes");
        bytes.push(b'\n');
        bytes
    }

    pub fn from_json(bytes: &[u8]) -> Result<CurrentPointer, FormatError> {
        let pointer: CurrentPointer =
            serde_json::from_slice(bytes).map_err(|source| FormatError::Json {
                what: CURRENT_OBJECT.to_string(),
                source,
            })?;
        crate::le::check_version(CURRENT_OBJECT, pointer.format_version)?;
        validate_generation_name(&pointer.generation)?;
        Ok(pointer)
    }
}

/// Generation names are `[A-Za-z0-9_-]+`: they become object path segments, so nothing else
/// (no `/`, no `..`) may reach storage.
pub fn validate_generation_name(name: &str) -> Result<(), FormatError> {
    let is_safe_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !is_safe_name {
        return Err(FormatError::invalid(
            "generation name",
            format!("{name:?} is not [A-Za-z0-9_-]+"),
        ));
    }
    Ok(())
}
