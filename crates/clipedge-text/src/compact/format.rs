//! The `tokenizer.bin` layout (docs/format.md, "Model package: tokenizer.bin") and the little
//! reader/writer both sides share. All integers are little-endian u32; every section starts at
//! a multiple of 4. Values are read with `from_le_bytes` on byte slices, so the runtime needs no
//! alignment and no unsafe code, and the large tables (vocabulary, merges) are used in place.

use std::ops::Range;

use crate::TextError;

pub(super) const MAGIC: &[u8; 8] = b"CETOKBIN";
pub(super) const VERSION: u32 = 1;
pub(super) const HEADER_BYTES: usize = 32 + 8 * SECTION_COUNT;
pub(super) const NONE: u32 = u32::MAX;

pub(super) const KIND_CLIP_BPE: u32 = 1;
pub(super) const KIND_WORDPIECE: u32 = 2;

/// Sections in file order; the header holds (offset, length) for each.
pub(super) const SECTION_COUNT: usize = 8;
pub(super) const VOCAB_OFFSETS: usize = 0;
pub(super) const VOCAB_STRINGS: usize = 1;
pub(super) const VOCAB_SORTED: usize = 2;
pub(super) const ADDED_TOKENS: usize = 3;
pub(super) const NORMALIZER: usize = 4;
pub(super) const TEMPLATE: usize = 5;
pub(super) const MODEL: usize = 6;
pub(super) const MERGES: usize = 7;

/// One BPE merge row: left id, right id, rank, merged id.
pub(super) const MERGE_ROW_BYTES: usize = 16;

/// Normalizer op tags.
pub(super) const OP_CHAR_MAP: u32 = 1;
pub(super) const OP_REPLACE: u32 = 2;
pub(super) const OP_WHITESPACE_RUNS: u32 = 3;
pub(super) const OP_NFC: u32 = 4;
pub(super) const OP_STRIP: u32 = 5;
pub(super) const OP_LOWERCASE: u32 = 6;
pub(super) const OP_BERT: u32 = 7;

pub(super) fn invalid(reason: impl Into<String>) -> TextError {
    TextError::Tokenizer {
        reason: reason.into(),
    }
}

/// u32 at byte `offset` of `bytes`; the caller has checked the bounds.
#[inline]
pub(super) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

/// Sequential reader over one section, with bounds checks that turn into load errors.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader {
            bytes,
            position: 0,
            what,
        }
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], TextError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| invalid(format!("tokenizer.bin: {} section is truncated", self.what)))?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    pub(super) fn u32(&mut self) -> Result<u32, TextError> {
        Ok(u32_at(self.take(4)?, 0))
    }

    pub(super) fn flag(&mut self) -> Result<bool, TextError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid(format!(
                "tokenizer.bin: {} section has flag value {other}",
                self.what
            ))),
        }
    }

    pub(super) fn bytes_padded(&mut self) -> Result<&'a [u8], TextError> {
        let length = self.u32()? as usize;
        let value = self.take(length)?;
        self.take(padding(length))?;
        Ok(value)
    }

    pub(super) fn string(&mut self) -> Result<String, TextError> {
        let bytes = self.bytes_padded()?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| {
            invalid(format!(
                "tokenizer.bin: {} section holds invalid utf-8",
                self.what
            ))
        })
    }

    pub(super) fn finish(&self) -> Result<(), TextError> {
        if self.position != self.bytes.len() {
            return Err(invalid(format!(
                "tokenizer.bin: {} section has {} trailing bytes",
                self.what,
                self.bytes.len() - self.position
            )));
        }
        Ok(())
    }
}

fn padding(length: usize) -> usize {
    (4 - length % 4) % 4
}

/// Appends values in the layout `Reader` reads (the packer's side: feature `pack`).
#[cfg(feature = "pack")]
#[derive(Default)]
pub(super) struct Writer {
    pub(super) bytes: Vec<u8>,
}

#[cfg(feature = "pack")]
impl Writer {
    pub(super) fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub(super) fn bytes_padded(&mut self, value: &[u8]) {
        self.u32(value.len() as u32);
        self.bytes.extend_from_slice(value);
        self.pad();
    }

    pub(super) fn pad(&mut self) {
        self.bytes
            .resize(self.bytes.len() + padding(self.bytes.len()), 0);
    }
}

/// The fixed header: kind, sizes and the section table.
pub(super) struct Header {
    pub(super) kind: u32,
    pub(super) vocab_size: u32,
    pub(super) unk_id: u32,
    pub(super) max_input_chars_per_word: u32,
    pub(super) sections: [Range<usize>; SECTION_COUNT],
}

impl Header {
    pub(super) fn read(bytes: &[u8]) -> Result<Header, TextError> {
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err(invalid("not a tokenizer.bin (bad magic)"));
        }
        let version = u32_at(bytes, 8);
        if version != VERSION {
            return Err(invalid(format!(
                "tokenizer.bin version {version} is not supported (this build reads {VERSION})"
            )));
        }
        let section_count = u32_at(bytes, 28) as usize;
        if section_count != SECTION_COUNT {
            return Err(invalid(format!(
                "tokenizer.bin has {section_count} sections, expected {SECTION_COUNT}"
            )));
        }
        let mut sections: [Range<usize>; SECTION_COUNT] = Default::default();
        for (index, section) in sections.iter_mut().enumerate() {
            let offset = u32_at(bytes, 32 + 8 * index) as usize;
            let length = u32_at(bytes, 36 + 8 * index) as usize;
            let end = offset.saturating_add(length);
            if offset < HEADER_BYTES || end > bytes.len() {
                return Err(invalid(format!(
                    "tokenizer.bin section {index} lies outside the file"
                )));
            }
            *section = offset..end;
        }
        Ok(Header {
            kind: u32_at(bytes, 12),
            vocab_size: u32_at(bytes, 16),
            unk_id: u32_at(bytes, 20),
            max_input_chars_per_word: u32_at(bytes, 24),
            sections,
        })
    }

    #[cfg(feature = "pack")]
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        for value in [
            VERSION,
            self.kind,
            self.vocab_size,
            self.unk_id,
            self.max_input_chars_per_word,
            SECTION_COUNT as u32,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for section in &self.sections {
            out.extend_from_slice(&(section.start as u32).to_le_bytes());
            out.extend_from_slice(&(section.len() as u32).to_le_bytes());
        }
    }
}
