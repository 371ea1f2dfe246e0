//! Little-endian cursor helpers. All multi-byte integers and floats in the format are little-endian.

use crate::FormatError;

pub(crate) struct Reader<'w, 'a> {
    what: &'w str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'w, 'a> Reader<'w, 'a> {
    pub(crate) fn new(what: &'w str, bytes: &'a [u8]) -> Self {
        Reader {
            what,
            bytes,
            pos: 0,
        }
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(FormatError::truncated(
                self.what,
                self.pos.saturating_add(len),
                self.bytes.len(),
            ));
        };
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    pub(crate) fn f32s(&mut self, count: usize) -> Result<Vec<f32>, FormatError> {
        let bytes = self.take(
            count
                .checked_mul(4)
                .ok_or_else(|| FormatError::invalid(self.what, "element count overflows"))?,
        )?;
        Ok(f32s_from_le(bytes))
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }
}

pub(crate) fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect()
}

pub(crate) fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    out.reserve(values.len() * 4);
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

pub(crate) fn check_magic(what: &str, found: &[u8], expected: &[u8]) -> Result<(), FormatError> {
    if found != expected {
        return Err(FormatError::BadMagic {
            what: what.to_string(),
            expected: String::from_utf8_lossy(expected).into_owned(),
        });
    }
    Ok(())
}

pub(crate) fn check_version(what: &str, found: u32) -> Result<(), FormatError> {
    if found != crate::FORMAT_VERSION {
        return Err(FormatError::Version {
            what: what.to_string(),
            found,
            supported: crate::FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Splits off a trailing CRC-32 and verifies it over the rest.
pub(crate) fn verify_trailer<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], FormatError> {
    if bytes.len() < 4 {
        return Err(FormatError::truncated(what, 4, bytes.len()));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let expected = u32::from_le_bytes(trailer.try_into().unwrap());
    FormatError::verify(what, body, expected)?;
    Ok(body)
}

pub(crate) fn push_trailer(out: &mut Vec<u8>) {
    let crc = crate::checksum(out);
    out.extend_from_slice(&crc.to_le_bytes());
}
