use crate::le::{check_magic, check_version, push_trailer, put_f32s, verify_trailer, Reader};
use crate::FormatError;

const MAGIC: &[u8; 8] = b"CEPQCB\0\0";

/// PQ codebooks: `m` sub-quantizers of `ksub` centroids of `dsub` floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebooks {
    pub m: usize,
    pub ksub: usize,
    pub dsub: usize,
    /// `m * ksub * dsub` floats, sub-quantizer major.
    pub centroids: Vec<f32>,
}

pub fn encode_codebooks(codebooks: &Codebooks) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + codebooks.centroids.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(codebooks.m as u32).to_le_bytes());
    out.extend_from_slice(&(codebooks.ksub as u32).to_le_bytes());
    out.extend_from_slice(&(codebooks.dsub as u32).to_le_bytes());
    put_f32s(&mut out, &codebooks.centroids);
    push_trailer(&mut out);
    out
}

pub fn decode_codebooks(bytes: &[u8]) -> Result<Codebooks, FormatError> {
    let what = "codebooks.bin";
    let body = verify_trailer(what, bytes)?;
    let mut reader = Reader::new(what, body);
    check_magic(what, reader.take(8)?, MAGIC)?;
    check_version(what, reader.u32()?)?;
    let m = reader.u32()? as usize;
    let ksub = reader.u32()? as usize;
    let dsub = reader.u32()? as usize;
    if ksub != 16 && ksub != 256 {
        return Err(FormatError::invalid(
            what,
            format!("ksub {ksub} not in {{16, 256}}"),
        ));
    }
    let floats = m
        .checked_mul(ksub)
        .and_then(|count| count.checked_mul(dsub))
        .ok_or_else(|| FormatError::invalid(what, "codebook shape overflows"))?;
    let centroids = reader.f32s(floats)?;
    if reader.position() != body.len() {
        return Err(FormatError::invalid(what, "trailing bytes"));
    }
    Ok(Codebooks {
        m,
        ksub,
        dsub,
        centroids,
    })
}
