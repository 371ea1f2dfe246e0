//! The bytes of a clipedge index generation, as specified in `docs/format.md`.
//!
//! This crate does no I/O: it turns typed values into byte buffers and validated
//! byte buffers back into zero-copy views. Every component that touches an index
//! (builder, scanner Lambda, edge Worker, embedded server) goes through it, so the
//! layout lives in exactly one place.

mod catalog;
mod codebook;
mod error;
mod group;
mod hit;
mod le;
mod list;
mod manifest;
mod pointer;
mod routing;

pub use catalog::{
    append_catalog_record, catalog_head, catalog_records_offset, decode_record, pack_metadata_ref,
    record_range, CatalogBuilder, CatalogEntry, CatalogRef, ItemRecord, CATALOG_BLOCK_ITEMS,
    CATALOG_MAGIC,
};
pub use codebook::{decode_codebooks, encode_codebooks, Codebooks};
pub use error::FormatError;
pub use group::{GroupBlob, ListLocation, LIST_LOCATION_BYTES};
pub use hit::Hit;
pub use list::{ListBlobBuilder, ListExpectation, ListView, RerankData, LIST_MAGIC};
pub use manifest::{
    BuildInfo, FileRef, Manifest, Metric, ModelInfo, PqParams, RerankKind, SearchDefaults,
    ShardRef, FORMAT_VERSION,
};
pub use pointer::{validate_generation_name, CurrentPointer, CURRENT_OBJECT};
pub use routing::{GroupEntry, RoutingTable, GROUP_ENTRY_BYTES};

/// CRC-32 (IEEE) of a byte slice: the checksum every region of the format carries.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// [`checksum`] of bytes that arrive in pieces (an object streamed in parts).
#[derive(Debug, Clone, Default)]
pub struct Checksum(crc32fast::Hasher);

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// Object name of a generation's file, relative to the index root.
pub fn generation_path(generation: &str, file: &str) -> String {
    format!("generations/{generation}/{file}")
}

/// Number of bytes of one 4-bit fast-scan block: 32 vectors, `m` sub-quantizers, 4 bits each.
pub fn fastscan_block_bytes(m: usize) -> usize {
    16 * m
}

/// Bytes of the PQ codes of a list with `count` vectors.
pub fn code_bytes(count: usize, m: usize, bits: u8) -> usize {
    match bits {
        4 => count.div_ceil(32) * fastscan_block_bytes(m),
        _ => count * m,
    }
}
