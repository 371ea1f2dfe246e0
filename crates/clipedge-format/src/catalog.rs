//! `catalog.bin`: what a search result shows (caption, image URL) and where each id's vector
//! lives, readable with range GETs so the edge can fetch just the top k (see `docs/format.md`).
//!
//! Layout: a 32-byte header, an id table of fixed-width entries in CRC-checked blocks, then the
//! records (one JSON object each, followed by its CRC-32). A list entry's `metadata_ref` packs the
//! record's offset and length, so fetching a hit's record needs nothing but the hit.

use serde::{Deserialize, Serialize};

use crate::le::Reader;
use crate::FormatError;

pub const CATALOG_MAGIC: &[u8; 8] = b"CECATLG\0";
pub const CATALOG_HEADER_BYTES: u64 = 32;
/// Bytes of one id-table entry: `list u32, reserved u32, metadata_ref u64`.
pub const CATALOG_ENTRY_BYTES: u64 = 16;
/// Entries per id-table block (each block carries its own CRC-32).
pub const CATALOG_BLOCK_ITEMS: u32 = 256;
/// Bits of a metadata reference that hold the record's length (the rest hold its offset).
const REF_LENGTH_BITS: u32 = 24;
/// Largest record (JSON + CRC) a metadata reference can address.
pub const MAX_RECORD_BYTES: u64 = (1 << REF_LENGTH_BITS) - 1;
/// Largest catalog offset a metadata reference can address (1 TiB).
pub const MAX_RECORD_OFFSET: u64 = (1 << (64 - REF_LENGTH_BITS)) - 1;

/// What a result shows. Readers ignore unknown fields, so fields may be added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Human-readable caption (title, alt text).
    pub caption: String,
    /// Image URL: absolute (`https://…`) or relative to the index root (`media/…`).
    pub url: String,
    /// Any other fields of the record (clip-retrieval's metadata columns: `key`, `width`, …),
    /// kept as stored so the API can return them.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The manifest's `catalog` entry: where the catalog is and how its id table is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRef {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
    /// Entries in the id table: ids `0..items` (the rows of the build input).
    pub items: u64,
    /// Entries per id-table block.
    pub block_items: u32,
    /// Offset of the first record.
    pub records_offset: u64,
}

/// One id-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The list holding the id's vector (and its rerank copy).
    pub list_id: u32,
    /// The id's record, as stored in its list.
    pub metadata_ref: u64,
}

/// Packs a record's byte range into a metadata reference.
pub fn pack_metadata_ref(offset: u64, length: u64) -> Result<u64, FormatError> {
    if length == 0 || length > MAX_RECORD_BYTES || offset > MAX_RECORD_OFFSET {
        return Err(FormatError::invalid(
            "catalog",
            format!("record at {offset} of {length} bytes cannot be addressed"),
        ));
    }
    Ok((offset << REF_LENGTH_BITS) | length)
}

/// The byte range of `catalog.bin` a metadata reference names.
pub fn record_range(metadata_ref: u64) -> std::ops::Range<u64> {
    let offset = metadata_ref >> REF_LENGTH_BITS;
    let length = metadata_ref & MAX_RECORD_BYTES;
    offset..offset + length
}

/// Verifies and decodes one record read at [`record_range`].
pub fn decode_record(bytes: &[u8]) -> Result<ItemRecord, FormatError> {
    let what = "catalog record";
    if bytes.len() < 5 {
        return Err(FormatError::truncated(what, 5, bytes.len()));
    }
    let (json, crc) = bytes.split_at(bytes.len() - 4);
    FormatError::verify(what, json, u32::from_le_bytes(crc.try_into().unwrap()))?;
    serde_json::from_slice(json).map_err(|source| FormatError::Json {
        what: what.to_string(),
        source,
    })
}

impl CatalogRef {
    fn block_stride(&self) -> u64 {
        self.block_items as u64 * CATALOG_ENTRY_BYTES + 4
    }

    /// The byte range of the id-table block holding `id`, and the entry's index inside it;
    /// `None` when the id is not in the table (or, with a corrupt `items`, lies past any
    /// addressable offset).
    pub fn block_range(&self, id: u64) -> Option<(std::ops::Range<u64>, usize)> {
        if id >= self.items || self.block_items == 0 {
            return None;
        }
        let block = id / self.block_items as u64;
        let first = block * self.block_items as u64;
        let entries = (self.items - first).min(self.block_items as u64);
        let start = block
            .checked_mul(self.block_stride())?
            .checked_add(CATALOG_HEADER_BYTES)?;
        let end = start.checked_add(entries * CATALOG_ENTRY_BYTES + 4)?;
        Some((start..end, (id - first) as usize))
    }

    /// Verifies an id-table block read at [`CatalogRef::block_range`] and returns one entry.
    pub fn decode_entry(&self, block: &[u8], index: usize) -> Result<CatalogEntry, FormatError> {
        let what = "catalog id table";
        if block.len() < 4 || !((block.len() - 4) as u64).is_multiple_of(CATALOG_ENTRY_BYTES) {
            return Err(FormatError::invalid(
                what,
                "block length is not whole entries",
            ));
        }
        let (entries, crc) = block.split_at(block.len() - 4);
        FormatError::verify(what, entries, u32::from_le_bytes(crc.try_into().unwrap()))?;
        let start = index.saturating_mul(CATALOG_ENTRY_BYTES as usize);
        let end = start.saturating_add(CATALOG_ENTRY_BYTES as usize);
        let Some(entry) = entries.get(start..end) else {
            return Err(FormatError::truncated(what, end, entries.len()));
        };
        let mut reader = Reader::new(what, entry);
        let list_id = reader.u32()?;
        reader.u32()?;
        let metadata_ref = reader.u64()?;
        Ok(CatalogEntry {
            list_id,
            metadata_ref,
        })
    }

    /// Checks a whole catalog file's header against this entry.
    pub fn verify_header(&self, header: &[u8]) -> Result<(), FormatError> {
        let what = "catalog.bin";
        let mut reader = Reader::new(what, header);
        if reader.take(8)? != CATALOG_MAGIC {
            return Err(FormatError::BadMagic {
                what: what.to_string(),
                expected: "CECATLG".to_string(),
            });
        }
        let version = reader.u32()?;
        if version != crate::FORMAT_VERSION {
            return Err(FormatError::Version {
                what: what.to_string(),
                found: version,
                supported: crate::FORMAT_VERSION,
            });
        }
        let block_items = reader.u32()?;
        let items = reader.u64()?;
        let records_offset = reader.u64()?;
        if block_items != self.block_items
            || items != self.items
            || records_offset != self.records_offset
        {
            return Err(FormatError::invalid(
                what,
                "header disagrees with the manifest",
            ));
        }
        Ok(())
    }
}

/// Lays out the records of a catalog before the lists are written (their references go into
/// the lists), then the id table once every id's list is known.
pub struct CatalogBuilder {
    records: Vec<u8>,
    refs: Vec<u64>,
    records_offset: u64,
}

/// Where the records of a catalog of `items` ids start: after the header and the id table.
pub fn catalog_records_offset(items: u64) -> u64 {
    let blocks = items.div_ceil(CATALOG_BLOCK_ITEMS as u64);
    CATALOG_HEADER_BYTES + items * CATALOG_ENTRY_BYTES + blocks * 4
}

/// Appends one stored record — a JSON object, then its CRC-32 — to `out`, and returns its
/// metadata reference given where `out`'s records region starts in the catalog. Writers that
/// stream records to disk (the nightly job) and [`CatalogBuilder`] store records alike.
pub fn append_catalog_record(
    json: &[u8],
    records_offset: u64,
    out: &mut Vec<u8>,
    written_before: u64,
) -> Result<u64, FormatError> {
    let metadata_ref = pack_metadata_ref(records_offset + written_before, json.len() as u64 + 4)?;
    out.extend_from_slice(json);
    out.extend_from_slice(&crate::checksum(json).to_le_bytes());
    Ok(metadata_ref)
}

/// The header and id table of a catalog (everything before the records), from each id's list
/// and metadata reference.
pub fn catalog_head(list_ids: &[u32], refs: &[u64]) -> Result<Vec<u8>, FormatError> {
    if list_ids.len() != refs.len() {
        return Err(FormatError::invalid(
            "catalog",
            format!("{} list ids for {} records", list_ids.len(), refs.len()),
        ));
    }
    let items = refs.len() as u64;
    let records_offset = catalog_records_offset(items);
    let mut bytes = Vec::with_capacity(records_offset as usize);
    bytes.extend_from_slice(CATALOG_MAGIC);
    bytes.extend_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&CATALOG_BLOCK_ITEMS.to_le_bytes());
    bytes.extend_from_slice(&items.to_le_bytes());
    bytes.extend_from_slice(&records_offset.to_le_bytes());
    for (lists, refs) in list_ids
        .chunks(CATALOG_BLOCK_ITEMS as usize)
        .zip(refs.chunks(CATALOG_BLOCK_ITEMS as usize))
    {
        let block_start = bytes.len();
        for (list_id, metadata_ref) in lists.iter().zip(refs) {
            bytes.extend_from_slice(&list_id.to_le_bytes());
            bytes.extend_from_slice(&0u32.to_le_bytes());
            bytes.extend_from_slice(&metadata_ref.to_le_bytes());
        }
        let crc = crate::checksum(&bytes[block_start..]);
        bytes.extend_from_slice(&crc.to_le_bytes());
    }
    debug_assert_eq!(bytes.len() as u64, records_offset);
    Ok(bytes)
}

impl CatalogBuilder {
    /// Serializes the records of ids `0..records.len()`.
    pub fn new(records: &[ItemRecord]) -> Result<CatalogBuilder, FormatError> {
        let records_offset = catalog_records_offset(records.len() as u64);
        let mut bytes = Vec::new();
        let mut refs = Vec::with_capacity(records.len());
        for record in records {
            let json = serde_json::to_vec(record).map_err(|source| FormatError::Json {
                what: "catalog record".to_string(),
                source,
            })?;
            let written = bytes.len() as u64;
            refs.push(append_catalog_record(
                &json,
                records_offset,
                &mut bytes,
                written,
            )?);
        }
        Ok(CatalogBuilder {
            records: bytes,
            refs,
            records_offset,
        })
    }

    /// The metadata reference of each id, to store in its list entry.
    pub fn metadata_refs(&self) -> &[u64] {
        &self.refs
    }

    /// The stored bytes (JSON, then CRC-32) of id `row`'s record: what a list blob's records
    /// column holds for it.
    pub fn stored_record(&self, row: usize) -> &[u8] {
        let range = record_range(self.refs[row]);
        let start = (range.start - self.records_offset) as usize;
        &self.records[start..start + (range.end - range.start) as usize]
    }

    /// The whole `catalog.bin`, given the list each id was filed into.
    pub fn finish(
        &self,
        list_ids: &[u32],
        path: &str,
    ) -> Result<(Vec<u8>, CatalogRef), FormatError> {
        if list_ids.len() != self.refs.len() {
            return Err(FormatError::invalid(
                "catalog",
                format!(
                    "{} list ids for {} records",
                    list_ids.len(),
                    self.refs.len()
                ),
            ));
        }
        let items = self.refs.len() as u64;
        let mut bytes = catalog_head(list_ids, &self.refs)?;
        bytes.extend_from_slice(&self.records);
        let catalog = CatalogRef {
            path: path.to_string(),
            bytes: bytes.len() as u64,
            crc32: crate::checksum(&bytes),
            items,
            block_items: CATALOG_BLOCK_ITEMS,
            records_offset: self.records_offset,
        };
        Ok((bytes, catalog))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<ItemRecord> {
        (0..n)
            .map(|i| ItemRecord {
                caption: format!("caption {i} ü"),
                url: format!("media/{i}.webp"),
                // Every third record carries extra columns, as clip-retrieval metadata does.
                extra: if i % 3 == 0 {
                    serde_json::Map::from_iter([("key".to_string(), serde_json::json!(i))])
                } else {
                    serde_json::Map::new()
                },
            })
            .collect()
    }

    #[test]
    fn every_record_and_entry_reads_back_through_its_ranges() {
        let n = 600;
        let builder = CatalogBuilder::new(&records(n)).unwrap();
        let lists: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
        let (bytes, catalog) = builder.finish(&lists, "catalog.bin").unwrap();
        catalog.verify_header(&bytes[..32]).unwrap();
        assert_eq!(catalog.bytes, bytes.len() as u64);
        for id in [0u64, 1, 255, 256, 511, 599] {
            let (range, index) = catalog.block_range(id).unwrap();
            let entry = catalog
                .decode_entry(&bytes[range.start as usize..range.end as usize], index)
                .unwrap();
            assert_eq!(entry.list_id, id as u32 % 7);
            assert_eq!(entry.metadata_ref, builder.metadata_refs()[id as usize]);
            let range = record_range(entry.metadata_ref);
            let record = decode_record(&bytes[range.start as usize..range.end as usize]).unwrap();
            assert_eq!(record, records(n)[id as usize]);
        }
        assert!(catalog.block_range(600).is_none());
    }

    #[test]
    fn corrupt_records_and_blocks_are_errors() {
        let builder = CatalogBuilder::new(&records(3)).unwrap();
        let (mut bytes, catalog) = builder.finish(&[0, 1, 2], "catalog.bin").unwrap();
        let range = record_range(builder.metadata_refs()[1]);
        bytes[range.start as usize + 2] ^= 1;
        let error = decode_record(&bytes[range.start as usize..range.end as usize]).unwrap_err();
        assert!(matches!(error, FormatError::Checksum { .. }), "{error}");
        let (block, index) = catalog.block_range(2).unwrap();
        bytes[block.start as usize] ^= 1;
        let error = catalog
            .decode_entry(&bytes[block.start as usize..block.end as usize], index)
            .unwrap_err();
        assert!(matches!(error, FormatError::Checksum { .. }), "{error}");
        assert!(decode_record(&[1, 2]).is_err());
    }

    /// Found by fuzzing (`fuzz/regressions/catalog/`): a catalog entry claiming 2^63 items made
    /// the id-table offset of a large id overflow.
    #[test]
    fn ids_past_any_addressable_block_have_no_range() {
        let catalog = CatalogRef {
            path: "catalog.bin".to_string(),
            bytes: 128,
            crc32: 0,
            items: u64::MAX,
            block_items: 1,
            records_offset: 0,
        };
        assert!(catalog.block_range(u64::MAX / 2).is_none());
        assert_eq!(catalog.block_range(1).unwrap(), (52..72, 0));
        let mut block = vec![0u8; 16];
        block.extend_from_slice(&crate::checksum(&block).to_le_bytes());
        assert!(catalog.decode_entry(&block, 0).is_ok());
        let error = catalog.decode_entry(&block, usize::MAX).unwrap_err();
        assert!(matches!(error, FormatError::Truncated { .. }), "{error}");
    }

    #[test]
    fn references_pack_offset_and_length() {
        let packed = pack_metadata_ref(123_456_789, 321).unwrap();
        assert_eq!(record_range(packed), 123_456_789..123_457_110);
        assert!(pack_metadata_ref(0, 0).is_err());
        assert!(pack_metadata_ref(0, MAX_RECORD_BYTES + 1).is_err());
        assert!(pack_metadata_ref(MAX_RECORD_OFFSET + 1, 1).is_err());
    }
}
