use crate::le::{check_magic, check_version, Reader};
use crate::{code_bytes, FormatError, RerankKind};

/// First four bytes of every list blob.
pub const LIST_MAGIC: &[u8; 4] = b"CELS";
const HEADER_BYTES: usize = 32;

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
        out.extend_from_slice(&[0u8; 6]);
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
        let what = format!("list {}", expected.list_id);
        let mut reader = Reader::new(&what, bytes);
        check_magic(&what, reader.take(4)?, LIST_MAGIC)?;
        check_version(&what, reader.u32()?)?;
        let list_id = reader.u32()?;
        let count = reader.u32()? as usize;
        let dim = reader.u32()? as usize;
        let m = reader.u32()? as usize;
        let tags = reader.take(8)?;
        let (bits, rerank_byte) = (tags[0], tags[1]);
        let header_matches = list_id == expected.list_id
            && count == expected.count as usize
            && dim == expected.dim
            && m == expected.m
            && bits == expected.bits
            && rerank_byte == rerank_tag(expected.rerank);
        if !header_matches {
            return Err(FormatError::invalid(
                &what,
                "header disagrees with the manifest",
            ));
        }
        // Checked: on wasm32 (the Worker) usize is 32 bits, where a corrupt count or dimension
        // would wrap these products into short slices that the accessors then overrun. A length
        // past usize is more than any buffer holds: truncated, as on 64-bit targets.
        let overflows = || FormatError::truncated(&what, usize::MAX, bytes.len());
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
        if reader.position() != bytes.len() {
            return Err(FormatError::invalid(&what, "trailing bytes"));
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
        })
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
        let row = (0..self.count).find(|row| self.id(*row) == id)?;
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
}
