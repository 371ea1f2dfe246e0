use crate::le::{check_magic, check_version, Reader};
use crate::{code_bytes, FormatError, RerankKind};

/// First four bytes of every list blob.
pub const LIST_MAGIC: &[u8; 4] = b"CELS";
const HEADER_BYTES: usize = 32;
/// Header byte 26: flags. Bit 0: the list ends with its vectors' catalog records.
const FLAGS_OFFSET: usize = 26;
const FLAG_RECORDS: u8 = 1;

fn pad8(len: usize) -> usize {
    len.next_multiple_of(8)
}

fn rerank_tag(kind: RerankKind) -> u8 {
    match kind {
        RerankKind::None => 0,
        RerankKind::Fp16 => 1,
        RerankKind::Int8 => 2,
    }
}

/// Rerank copies of a list's vectors, in list order.
#[derive(Debug, Clone, PartialEq)]
pub enum RerankData {
    None,
    /// `count * dim` IEEE half bit patterns.
    Fp16(Vec<u16>),
    /// One scale per vector, then `count * dim` values; `x ≈ scale * value`.
    Int8 {
        scales: Vec<f32>,
        values: Vec<i8>,
    },
}

impl RerankData {
    fn kind(&self) -> RerankKind {
        match self {
            RerankData::None => RerankKind::None,
            RerankData::Fp16(_) => RerankKind::Fp16,
            RerankData::Int8 { .. } => RerankKind::Int8,
        }
    }
}

/// Everything a list blob holds, ready to be laid out by [`ListBlobBuilder::encode`].
#[derive(Debug, Clone)]
pub struct ListBlobBuilder<'a> {
    pub list_id: u32,
    pub dim: usize,
    pub m: usize,
    pub bits: u8,
    pub ids: &'a [u64],
    pub content_hashes: &'a [u64],
    pub metadata_refs: &'a [u64],
    /// Codes already in their storage layout (row-major bytes for 8-bit, fast-scan blocks for 4-bit).
    pub codes: &'a [u8],
    pub rerank: &'a RerankData,
    /// Each vector's catalog record (the JSON the catalog holds), so a scanner can return the
    /// records of its candidates and the front reads no catalog; `None`: no records column.
    pub records: Option<&'a [&'a [u8]]>,
}

impl ListBlobBuilder<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let count = self.ids.len();
        assert_eq!(
            self.content_hashes.len(),
            count,
            "one content hash per vector"
        );
        assert_eq!(
            self.metadata_refs.len(),
            count,
            "one metadata ref per vector"
        );
        assert_eq!(
            self.codes.len(),
            code_bytes(count, self.m, self.bits),
            "code bytes"
        );
        let kind = self.rerank.kind();
        let mut out = Vec::with_capacity(
            HEADER_BYTES
                + 24 * count
                + pad8(self.codes.len())
                + kind.bytes_per_vector(self.dim) * count
                + 8,
        );
        out.extend_from_slice(LIST_MAGIC);
        out.extend_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.list_id.to_le_bytes());
        out.extend_from_slice(&(count as u32).to_le_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&(self.m as u32).to_le_bytes());
        out.push(self.bits);
        out.push(rerank_tag(kind));
        out.push(if self.records.is_some() {
            FLAG_RECORDS
        } else {
            0
        });
        out.extend_from_slice(&[0u8; 5]);
        for column in [self.ids, self.content_hashes, self.metadata_refs] {
            for value in column {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        out.extend_from_slice(self.codes);
        out.resize(pad8(out.len()), 0);
        match self.rerank {
            RerankData::None => {}
            RerankData::Fp16(values) => {
                assert_eq!(values.len(), count * self.dim, "fp16 rerank values");
                for value in values {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
            RerankData::Int8 { scales, values } => {
                assert_eq!(scales.len(), count, "int8 rerank scales");
                assert_eq!(values.len(), count * self.dim, "int8 rerank values");
                for scale in scales {
                    out.extend_from_slice(&scale.to_le_bytes());
                }
                out.extend(values.iter().map(|value| *value as u8));
            }
        }
        if let Some(records) = self.records {
            assert_eq!(records.len(), count, "one record per vector");
            // `count + 1` u32 end offsets from the start of the record bytes (the first is 0).
            let mut end = 0u32;
            out.extend_from_slice(&end.to_le_bytes());
            for record in records {
                end = end
                    .checked_add(u32::try_from(record.len()).expect("a record under 4 GiB"))
                    .expect("a list's records under 4 GiB");
                out.extend_from_slice(&end.to_le_bytes());
            }
            for record in records {
                out.extend_from_slice(record);
            }
        }
        out
    }
}

/// A validated, zero-copy view of one list blob.
#[derive(Debug, Clone, Copy)]
pub struct ListView<'a> {
    pub list_id: u32,
    pub count: usize,
    pub dim: usize,
    pub m: usize,
    pub bits: u8,
    pub rerank: RerankKind,
    ids: &'a [u8],
    hashes: &'a [u8],
    metas: &'a [u8],
    codes: &'a [u8],
    rerank_scales: &'a [u8],
    rerank_values: &'a [u8],
    /// `count + 1` little-endian u32 offsets, then the record bytes (both empty: no records).
    record_offsets: &'a [u8],
    record_bytes: &'a [u8],
}

/// What the reader expects of a list, from the manifest and the group blob.
#[derive(Debug, Clone, Copy)]
pub struct ListExpectation {
    pub list_id: u32,
    pub count: u32,
    pub crc32: u32,
    pub dim: usize,
    pub m: usize,
    pub bits: u8,
    pub rerank: RerankKind,
}

impl<'a> ListView<'a> {
    /// Verifies the checksum and header of `bytes` against what the index says the list is.
    pub fn parse(bytes: &'a [u8], expected: &ListExpectation) -> Result<ListView<'a>, FormatError> {
        let what = format!("list {}", expected.list_id);
        FormatError::verify(&what, bytes, expected.crc32)?;
        Self::parse_verified(bytes, expected)
    }

    /// Like [`ListView::parse`] without the checksum pass, for bytes that already passed
    /// `parse` once (a cache of verified lists). Structure is still checked.
    pub fn parse_verified(
        bytes: &'a [u8],
        expected: &ListExpectation,
    ) -> Result<ListView<'a>, FormatError> {
        // Named only on failure: every query re-parses every cached list it scans, and a
        // formatted name per list was a fixed cost per list.
        Self::parse_checked(bytes, expected)
            .map_err(|error| error.renamed(format!("list {}", expected.list_id)))
    }

    fn parse_checked(
        bytes: &'a [u8],
        expected: &ListExpectation,
    ) -> Result<ListView<'a>, FormatError> {
        let what = "list";
        let mut reader = Reader::new(what, bytes);
        check_magic(what, reader.take(4)?, LIST_MAGIC)?;
        check_version(what, reader.u32()?)?;
        let list_id = reader.u32()?;
        let count = reader.u32()? as usize;
        let dim = reader.u32()? as usize;
        let m = reader.u32()? as usize;
        let tags = reader.take(8)?;
        let (bits, rerank_byte, flags) = (tags[0], tags[1], tags[FLAGS_OFFSET - 24]);
        if flags & !FLAG_RECORDS != 0 {
            return Err(FormatError::invalid(what, "unknown header flags"));
        }
        let header_matches = list_id == expected.list_id
            && count == expected.count as usize
            && dim == expected.dim
            && m == expected.m
            && bits == expected.bits
            && rerank_byte == rerank_tag(expected.rerank);
        if !header_matches {
            return Err(FormatError::invalid(
                what,
                "header disagrees with the manifest",
            ));
        }
        // Checked: on wasm32 (the Worker) usize is 32 bits, where a corrupt count or dimension
        // would wrap these products into short slices that the accessors then overrun. A length
        // past usize is more than any buffer holds: truncated, as on 64-bit targets.
        let overflows = || FormatError::truncated(what, usize::MAX, bytes.len());
        let column_len = count.checked_mul(8).ok_or_else(overflows)?;
        let ids = reader.take(column_len)?;
        let hashes = reader.take(column_len)?;
        let metas = reader.take(column_len)?;
        let code_len = match bits {
            4 => count
                .div_ceil(32)
                .checked_mul(crate::fastscan_block_bytes(1)),
            _ => Some(count),
        }
        .and_then(|len| len.checked_mul(m))
        .ok_or_else(overflows)?;
        debug_assert_eq!(code_len, code_bytes(count, m, bits));
        let codes = reader.take(code_len)?;
        reader.take(pad8(code_len) - code_len)?;
        let values = count.checked_mul(dim).ok_or_else(overflows)?;
        let (rerank_scales, rerank_values) = match expected.rerank {
            RerankKind::None => (&[][..], &[][..]),
            RerankKind::Fp16 => (
                &[][..],
                reader.take(values.checked_mul(2).ok_or_else(overflows)?)?,
            ),
            RerankKind::Int8 => (
                reader.take(count.checked_mul(4).ok_or_else(overflows)?)?,
                reader.take(values)?,
            ),
        };
        let (record_offsets, record_bytes) = if flags & FLAG_RECORDS != 0 {
            let offsets_len = count
                .checked_add(1)
                .and_then(|entries| entries.checked_mul(4))
                .ok_or_else(overflows)?;
            let offsets = reader.take(offsets_len)?;
            let record_bytes = &bytes[reader.position()..];
            // Monotonic from 0 to the end of the blob: every record() slice is then in bounds.
            let mut previous = 0u32;
            for (index, chunk) in offsets.chunks_exact(4).enumerate() {
                let offset = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                let in_order = if index == 0 {
                    offset == 0
                } else {
                    offset >= previous
                };
                if !in_order {
                    return Err(FormatError::invalid(what, "record offsets out of order"));
                }
                previous = offset;
            }
            if previous as usize != record_bytes.len() {
                return Err(FormatError::invalid(
                    what,
                    "record offsets disagree with the blob's length",
                ));
            }
            reader.take(record_bytes.len())?;
            (offsets, record_bytes)
        } else {
            (&[][..], &[][..])
        };
        if reader.position() != bytes.len() {
            return Err(FormatError::invalid(what, "trailing bytes"));
        }
        Ok(ListView {
            list_id,
            count,
            dim,
            m,
            bits,
            rerank: expected.rerank,
            ids,
            hashes,
            metas,
            codes,
            rerank_scales,
            rerank_values,
            record_offsets,
            record_bytes,
        })
    }

    /// Whether the list carries its vectors' catalog records.
    pub fn has_records(&self) -> bool {
        !self.record_offsets.is_empty()
    }

    /// The catalog record (JSON bytes) of the vector in `row`, when the list carries records.
    pub fn record(&self, row: usize) -> Option<&'a [u8]> {
        if !self.has_records() || row >= self.count {
            return None;
        }
        let offset = |index: usize| {
            u32::from_le_bytes(
                self.record_offsets[index * 4..index * 4 + 4]
                    .try_into()
                    .expect("4 bytes"),
            ) as usize
        };
        Some(&self.record_bytes[offset(row)..offset(row + 1)])
    }

    /// The row holding `id`, if any (a linear pass over the ids column).
    pub fn row_of(&self, id: u64) -> Option<usize> {
        (0..self.count).find(|row| self.id(*row) == id)
    }

    pub fn id(&self, row: usize) -> u64 {
        read_u64(self.ids, row)
    }

    pub fn content_hash(&self, row: usize) -> u64 {
        read_u64(self.hashes, row)
    }

    pub fn metadata_ref(&self, row: usize) -> u64 {
        read_u64(self.metas, row)
    }

    /// Codes in their storage layout (see [`ListBlobBuilder::codes`]).
    pub fn codes(&self) -> &'a [u8] {
        self.codes
    }

    /// Little-endian fp16 bytes of one vector (`2 * dim`), if the list stores fp16.
    pub fn rerank_fp16(&self, row: usize) -> &'a [u8] {
        &self.rerank_values[row * 2 * self.dim..(row + 1) * 2 * self.dim]
    }

    /// The stored (rerank) copy of the vector with `id`, decoded to f32: what "more like this"
    /// searches with. `None` when the list does not hold the id or stores no copies.
    pub fn stored_vector(&self, id: u64) -> Option<Vec<f32>> {
        let row = self.row_of(id)?;
        match self.rerank {
            RerankKind::Fp16 => Some(
                self.rerank_fp16(row)
                    .chunks_exact(2)
                    .map(|pair| half::f16::from_le_bytes([pair[0], pair[1]]).to_f32())
                    .collect(),
            ),
            RerankKind::Int8 => {
                let (scale, values) = self.rerank_int8(row);
                Some(values.iter().map(|v| scale * (*v as i8) as f32).collect())
            }
            RerankKind::None => None,
        }
    }

    /// Scale and int8 values of one vector, if the list stores int8.
    pub fn rerank_int8(&self, row: usize) -> (f32, &'a [u8]) {
        let scale =
            f32::from_le_bytes(self.rerank_scales[row * 4..row * 4 + 4].try_into().unwrap());
        (
            scale,
            &self.rerank_values[row * self.dim..(row + 1) * self.dim],
        )
    }
}

fn read_u64(column: &[u8], row: usize) -> u64 {
    u64::from_le_bytes(column[row * 8..row * 8 + 8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count whose columns (`8 * count` bytes) overflow a 32-bit usize: on wasm32 (the
    /// Worker) the product wrapped to 8 and the view claimed 2^29 + 1 rows of an 8-byte column.
    /// Refused on every target (run under wasm32-wasip1 by `scripts/test.sh`).
    #[test]
    fn a_count_overflowing_32_bit_lengths_is_refused() {
        let count = 0x2000_0001u32;
        let mut bytes = Vec::from(*LIST_MAGIC);
        for value in [crate::FORMAT_VERSION, 0, count, 4, 2] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&[8, rerank_tag(RerankKind::Fp16), 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0u8; 64]);
        let expected = ListExpectation {
            list_id: 0,
            count,
            crc32: crate::checksum(&bytes),
            dim: 4,
            m: 2,
            bits: 8,
            rerank: RerankKind::Fp16,
        };
        let error = ListView::parse(&bytes, &expected).unwrap_err();
        assert!(matches!(error, FormatError::Truncated { .. }), "{error}");
    }

    fn list_with_records(records: Option<&[&[u8]]>) -> (Vec<u8>, ListExpectation) {
        let rerank = RerankData::Fp16(vec![0x3c00; 3 * 4]);
        let bytes = ListBlobBuilder {
            list_id: 7,
            dim: 4,
            m: 2,
            bits: 8,
            ids: &[10, 11, 12],
            content_hashes: &[1, 2, 3],
            metadata_refs: &[0, 1, 2],
            codes: &[0u8; 6],
            rerank: &rerank,
            records,
        }
        .encode();
        let expected = ListExpectation {
            list_id: 7,
            count: 3,
            crc32: crate::checksum(&bytes),
            dim: 4,
            m: 2,
            bits: 8,
            rerank: RerankKind::Fp16,
        };
        (bytes, expected)
    }

    #[test]
    fn records_ride_at_the_end_of_a_list_and_are_found_by_row_and_id() {
        let records: [&[u8]; 3] = [br#"{"caption":"a"}"#, b"", br#"{"url":"u"}"#];
        let (bytes, expected) = list_with_records(Some(&records));
        let view = ListView::parse(&bytes, &expected).unwrap();
        assert!(view.has_records());
        for (row, record) in records.iter().enumerate() {
            assert_eq!(view.record(row), Some(*record));
        }
        assert_eq!(view.record(3), None);
        assert_eq!(view.row_of(12), Some(2));
        assert_eq!(view.row_of(99), None);

        let (plain, expected) = list_with_records(None);
        let view = ListView::parse(&plain, &expected).unwrap();
        assert!(!view.has_records());
        assert_eq!(view.record(0), None);
        // The records column is all a list with records adds.
        assert_eq!(bytes.len() - plain.len(), 4 * 4 + 26);
    }

    #[test]
    fn bad_record_offsets_and_unknown_flags_are_refused() {
        let records: [&[u8]; 3] = [b"ab", b"cd", b"ef"];
        let (bytes, expected) = list_with_records(Some(&records));
        let offsets_start = bytes.len() - 6 - 16;
        let reparse = |bytes: &[u8]| {
            let expected = ListExpectation {
                crc32: crate::checksum(bytes),
                ..expected
            };
            ListView::parse(bytes, &expected).map(|_| ())
        };
        // Second offset (end of record 0) past the third: out of order.
        let mut out_of_order = bytes.clone();
        out_of_order[offsets_start + 4..offsets_start + 8].copy_from_slice(&5u32.to_le_bytes());
        let error = reparse(&out_of_order).unwrap_err().to_string();
        assert!(error.contains("out of order"), "{error}");
        // A last offset short of the blob's end.
        let mut short = bytes.clone();
        short[offsets_start + 12..offsets_start + 16].copy_from_slice(&5u32.to_le_bytes());
        let error = reparse(&short).unwrap_err().to_string();
        assert!(error.contains("disagree"), "{error}");
        // A flag this reader does not know.
        let mut flagged = bytes.clone();
        flagged[FLAGS_OFFSET] |= 0x80;
        let error = reparse(&flagged).unwrap_err().to_string();
        assert!(error.contains("flags"), "{error}");
        // Truncated inside the offsets.
        assert!(reparse(&bytes[..offsets_start + 6]).is_err());
    }
}
