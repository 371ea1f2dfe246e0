use serde::{Deserialize, Serialize};

use crate::FormatError;

/// Version of the on-storage layout this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Similarity used everywhere in the index. CLIP embeddings are unit-normalized,
/// so inner product equals cosine similarity; higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    InnerProduct,
}

/// How the exact-rerank copy of each vector is stored next to its PQ code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RerankKind {
    /// IEEE half precision, 2 bytes a dimension.
    Fp16,
    /// Symmetric int8 with one f32 scale per vector, 1 byte a dimension + 4.
    Int8,
    /// No rerank copy: scores come from PQ alone.
    None,
}

impl RerankKind {
    /// Bytes one vector's rerank copy takes in a list blob.
    pub fn bytes_per_vector(self, dim: usize) -> usize {
        match self {
            RerankKind::Fp16 => 2 * dim,
            RerankKind::Int8 => dim + 4,
            RerankKind::None => 0,
        }
    }

    pub fn parse(text: &str) -> Option<RerankKind> {
        match text {
            "fp16" => Some(RerankKind::Fp16),
            "int8" => Some(RerankKind::Int8),
            "none" => Some(RerankKind::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RerankKind::Fp16 => "fp16",
            RerankKind::Int8 => "int8",
            RerankKind::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Human-readable model name, e.g. `clip-vit-b32`.
    pub id: String,
    /// Fingerprint of the embedding model; a query encoded by another model must not meet this index.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PqParams {
    /// Number of sub-quantizers.
    pub m: u32,
    /// Bits per sub-quantizer code: 8 (byte codes) or 4 (fast-scan blocks of 32).
    pub bits: u8,
    /// Dimensions per sub-quantizer (`dim / m`).
    pub dsub: u32,
    /// Codes encode `x - fine_centroid(x)` rather than `x`.
    pub by_residual: bool,
}

impl PqParams {
    pub fn ksub(&self) -> usize {
        1usize << self.bits
    }
}

/// A whole-object file of the generation with its size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// A shard object holding list blobs back to back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    pub path: String,
    pub bytes: u64,
    pub lists: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub seed: u64,
    pub train_size: u64,
    pub kmeans_iters: u32,
    pub builder: String,
}

/// How the generation is searched when a request leaves the choice to the server, measured by
/// the builder's recall gate on held-out queries against exact ground truth (optional; added
/// within version 1: a manifest without it is served with the API's fixed defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchDefaults {
    /// Lists probed when a request names no `nprobe`: the smallest the gate tried that met its
    /// recall target (the ladder starts at the API's fixed default unless the operator gives
    /// another start).
    pub nprobe: u32,
    /// The rerank factor the gate measured with.
    pub rerank: u32,
    /// Recall@10 the gate measured at `nprobe` and `rerank`.
    pub recall_at_10: f64,
    /// Queries it was measured on.
    pub queries: u64,
}

/// `manifest.json` of one generation: everything needed to open it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub generation: String,
    pub created_unix_ms: u64,
    pub model: ModelInfo,
    pub dim: u32,
    pub metric: Metric,
    /// Number of vectors in the generation.
    pub count: u64,
    /// Number of fine inverted lists.
    pub nlist: u32,
    /// Number of top-level routing groups; equals `nlist` for a flat IVF.
    pub ngroups: u32,
    pub pq: PqParams,
    pub rerank: RerankKind,
    pub routing: FileRef,
    pub groups: FileRef,
    pub codebooks: FileRef,
    pub shards: Vec<ShardRef>,
    pub build: BuildInfo,
    /// Captions, image URLs and the id table (optional; added within version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<crate::CatalogRef>,
    /// Measured search defaults (optional; added within version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_defaults: Option<SearchDefaults>,
}

impl Manifest {
    /// Lists to probe when a request names none, as the builder measured it for this
    /// generation; `None` for a generation built without the gate.
    pub fn default_nprobe(&self) -> Option<usize> {
        self.search_defaults
            .as_ref()
            .map(|defaults| defaults.nprobe as usize)
    }

    /// What the list `list_id` at `location` must be when read: the header and checksum
    /// checks every reader of a list applies.
    pub fn list_expectation(
        &self,
        list_id: u32,
        location: &crate::ListLocation,
    ) -> crate::ListExpectation {
        crate::ListExpectation {
            list_id,
            count: location.count,
            crc32: location.crc32,
            dim: self.dim as usize,
            m: self.pq.m as usize,
            bits: self.pq.bits,
            rerank: self.rerank,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    pub fn from_json(bytes: &[u8]) -> Result<Manifest, FormatError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|source| FormatError::Json {
                what: "manifest.json".to_string(),
                source,
            })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks the invariants readers rely on, so a hand-edited or foreign manifest fails early.
    pub fn validate(&self) -> Result<(), FormatError> {
        let what = "manifest.json";
        if self.format_version != FORMAT_VERSION {
            return Err(FormatError::Version {
                what: what.to_string(),
                found: self.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if self.dim == 0 || self.nlist == 0 || self.ngroups == 0 {
            return Err(FormatError::invalid(
                what,
                "dim, nlist and ngroups must be positive",
            ));
        }
        if self.ngroups > self.nlist {
            return Err(FormatError::invalid(what, "more groups than lists"));
        }
        if self.pq.bits != 8 && self.pq.bits != 4 {
            return Err(FormatError::invalid(
                what,
                format!("pq bits {} not in {{4, 8}}", self.pq.bits),
            ));
        }
        // Checked: a hostile manifest's m * dsub may overflow u32.
        if self.pq.m == 0 || self.pq.m.checked_mul(self.pq.dsub) != Some(self.dim) {
            return Err(FormatError::invalid(what, "pq.m * pq.dsub must equal dim"));
        }
        if self.pq.bits == 4 && !self.pq.m.is_multiple_of(2) {
            return Err(FormatError::invalid(what, "4-bit codes need an even pq.m"));
        }
        if let Some(defaults) = &self.search_defaults {
            if defaults.nprobe == 0 || defaults.nprobe > self.nlist {
                return Err(FormatError::invalid(
                    what,
                    format!(
                        "search_defaults.nprobe {} must be within 1..={}",
                        defaults.nprobe, self.nlist
                    ),
                ));
            }
        }
        if let Some(catalog) = &self.catalog {
            if catalog.block_items == 0 || catalog.records_offset > catalog.bytes {
                return Err(FormatError::invalid(what, "catalog entry is inconsistent"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/manifest/`): `pq.m * pq.dsub` overflowed u32 in
    /// `validate` (65536 * 65536 wraps to 0), a panic in debug builds.
    #[test]
    fn an_overflowing_pq_shape_is_invalid() {
        let json = include_bytes!("../../../fuzz/regressions/manifest/pq-shape-overflow");
        let error = Manifest::from_json(json).unwrap_err();
        assert!(error.to_string().contains("pq.m * pq.dsub"), "{error}");
    }
}
