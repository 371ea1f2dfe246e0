//! Vector files: `.fvecs` / `.ivecs` (the TEXMEX format used by SIFT1M and most ANN
//! benchmarks) and NumPy `.npy`.
//!
//! Readers load the whole file with one read and then parse it, which is the fastest way
//! to get a multi-gigabyte file into memory. They validate everything they read, so a
//! malformed file gives a [`VectorIoError`] naming the file and the problem, never a panic.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Largest row dimension the readers accept; anything larger is almost surely a corrupt
/// header, and refusing it keeps a bad file from turning into a huge allocation.
pub const MAX_DIM: usize = 65536;

const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The spec pads the header so the data starts on a 64-byte boundary.
const NPY_ALIGNMENT: usize = 64;
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// A dense row-major matrix: row `i` is `data[i * dim..(i + 1) * dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix<T> {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<T>,
}

impl<T> Matrix<T> {
    pub fn row(&self, index: usize) -> &[T] {
        &self.data[index * self.dim..(index + 1) * self.dim]
    }
}

#[derive(Debug, Error)]
pub enum VectorIoError {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{format} file {path}: {problem}")]
    Malformed {
        format: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("cannot write {format} file {path}: {problem}")]
    InvalidData {
        format: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("unsupported vector file {path}: expected a .fvecs or .npy extension")]
    UnsupportedExtension { path: PathBuf },
}

fn malformed(format: &'static str, path: &Path, problem: impl Into<String>) -> VectorIoError {
    VectorIoError::Malformed {
        format,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn invalid_data(format: &'static str, path: &Path, problem: impl Into<String>) -> VectorIoError {
    VectorIoError::InvalidData {
        format,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> VectorIoError {
    VectorIoError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>, VectorIoError> {
    std::fs::read(path).map_err(|source| io_error("read", path, source))
}

fn create_writer(path: &Path) -> Result<BufWriter<File>, VectorIoError> {
    let file = File::create(path).map_err(|source| io_error("create", path, source))?;
    Ok(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file))
}

fn finish_writer(mut writer: BufWriter<File>, path: &Path) -> Result<(), VectorIoError> {
    writer
        .flush()
        .map_err(|source| io_error("write", path, source))
}

/// Reads a `.fvecs` file: each row is a little-endian `i32` dimension followed by that many
/// little-endian `f32` values.
pub fn read_fvecs(path: &Path) -> Result<Matrix<f32>, VectorIoError> {
    let bytes = read_all(path)?;
    parse_vecs(&bytes, path, "fvecs", f32::from_le_bytes)
}

/// Reads a `.ivecs` file (the same layout as `.fvecs` with `i32` values), the usual format
/// of ground-truth neighbor ids.
pub fn read_ivecs(path: &Path) -> Result<Matrix<i32>, VectorIoError> {
    let bytes = read_all(path)?;
    parse_vecs(&bytes, path, "ivecs", i32::from_le_bytes)
}

/// Writes `data` (row-major, `dim` wide) as `.fvecs`.
pub fn write_fvecs(path: &Path, data: &[f32], dim: usize) -> Result<(), VectorIoError> {
    write_vecs(path, "fvecs", data, dim, |value| value.to_le_bytes())
}

/// Writes `data` (row-major, `dim` wide) as `.ivecs`.
pub fn write_ivecs(path: &Path, data: &[i32], dim: usize) -> Result<(), VectorIoError> {
    write_vecs(path, "ivecs", data, dim, |value| value.to_le_bytes())
}

fn parse_vecs<T>(
    bytes: &[u8],
    path: &Path,
    format: &'static str,
    decode: fn([u8; 4]) -> T,
) -> Result<Matrix<T>, VectorIoError> {
    if bytes.is_empty() {
        return Err(malformed(format, path, "file is empty"));
    }
    let dim = read_row_dim(bytes, 0, 0, format, path)?;
    let row_bytes = 4 + 4 * dim;
    let mut data = Vec::with_capacity(bytes.len() / row_bytes * dim);
    let mut rows = 0;
    let mut offset = 0;
    while offset < bytes.len() {
        let row_dim = read_row_dim(bytes, offset, rows, format, path)?;
        if row_dim != dim {
            return Err(malformed(
                format,
                path,
                format!("row {rows} has dimension {row_dim}, expected {dim}"),
            ));
        }
        let available = bytes.len() - offset;
        if available < row_bytes {
            return Err(malformed(
                format,
                path,
                format!("row {rows} is truncated: needs {row_bytes} bytes, only {available} left"),
            ));
        }
        let values = &bytes[offset + 4..offset + row_bytes];
        data.extend(
            values
                .chunks_exact(4)
                .map(|value| decode([value[0], value[1], value[2], value[3]])),
        );
        offset += row_bytes;
        rows += 1;
    }
    Ok(Matrix { rows, dim, data })
}

/// Reads and validates the dimension header of the row starting at `offset`.
fn read_row_dim(
    bytes: &[u8],
    offset: usize,
    row: usize,
    format: &'static str,
    path: &Path,
) -> Result<usize, VectorIoError> {
    let Some(header) = bytes.get(offset..offset + 4) else {
        let available = bytes.len() - offset;
        return Err(malformed(
            format,
            path,
            format!(
                "row {row} is truncated: needs a 4-byte dimension, only {available} bytes left"
            ),
        ));
    };
    let dim = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if dim <= 0 || dim as usize > MAX_DIM {
        return Err(malformed(
            format,
            path,
            format!("row {row} has dimension {dim}, expected between 1 and {MAX_DIM}"),
        ));
    }
    Ok(dim as usize)
}

fn write_vecs<T: Copy>(
    path: &Path,
    format: &'static str,
    data: &[T],
    dim: usize,
    encode: impl Fn(T) -> [u8; 4],
) -> Result<(), VectorIoError> {
    validate_shape(path, format, data.len(), dim)?;
    if data.is_empty() {
        // An empty file is not a valid vecs file, so refuse to write one.
        return Err(invalid_data(format, path, "no rows to write"));
    }
    let mut writer = create_writer(path)?;
    let dim_header = (dim as i32).to_le_bytes();
    let mut row_buffer = Vec::with_capacity(4 + 4 * dim);
    for row in data.chunks_exact(dim) {
        row_buffer.clear();
        row_buffer.extend_from_slice(&dim_header);
        for &value in row {
            row_buffer.extend_from_slice(&encode(value));
        }
        writer
            .write_all(&row_buffer)
            .map_err(|source| io_error("write", path, source))?;
    }
    finish_writer(writer, path)
}

fn validate_shape(
    path: &Path,
    format: &'static str,
    len: usize,
    dim: usize,
) -> Result<(), VectorIoError> {
    if dim == 0 || dim > MAX_DIM {
        return Err(invalid_data(
            format,
            path,
            format!("dimension {dim} is not between 1 and {MAX_DIM}"),
        ));
    }
    if !len.is_multiple_of(dim) {
        return Err(invalid_data(
            format,
            path,
            format!("{len} values do not split into rows of dimension {dim}"),
        ));
    }
    Ok(())
}

/// Reads a 2-D, C-order NumPy array of `<f4` (or `<f8`, converted to `f32`), format
/// version 1, 2 or 3.
pub fn read_npy(path: &Path) -> Result<Matrix<f32>, VectorIoError> {
    let bytes = read_all(path)?;
    parse_npy(&bytes, path)
}

/// Element type of an `.npy` file this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f2`: what clip-retrieval writes its embeddings as.
    F16,
    F32,
    F64,
}

impl NpyDtype {
    pub fn bytes(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }

    /// Decodes `bytes` (a whole number of little-endian values) into `out`.
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            NpyDtype::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|value| half::f16::from_le_bytes([value[0], value[1]]).to_f32()),
            ),
            NpyDtype::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|value| f32::from_le_bytes([value[0], value[1], value[2], value[3]])),
            ),
            NpyDtype::F64 => out.extend(bytes.chunks_exact(8).map(|value| {
                let mut value_bytes = [0u8; 8];
                value_bytes.copy_from_slice(value);
                f64::from_le_bytes(value_bytes) as f32
            })),
        }
    }
}

/// Where the rows of a 2-D `.npy` file are, read from its header alone (for streaming).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyLayout {
    pub rows: u64,
    pub dim: usize,
    pub dtype: NpyDtype,
    /// Byte offset of the first row.
    pub data_offset: u64,
}

/// Reads and checks the header of a 2-D, C-order `.npy` of `<f2`, `<f4` or `<f8` without
/// reading its data; a file shorter than its shape declares is refused (truncated copy).
pub fn read_npy_layout(path: &Path) -> Result<NpyLayout, VectorIoError> {
    use std::io::Read;
    const FORMAT: &str = "npy";
    let mut file = std::fs::File::open(path).map_err(|source| io_error("open", path, source))?;
    let file_bytes = file
        .metadata()
        .map_err(|source| io_error("stat", path, source))?
        .len();
    let mut head = Vec::new();
    Read::by_ref(&mut file)
        .take(1 << 16)
        .read_to_end(&mut head)
        .map_err(|source| io_error("read", path, source))?;
    let (header, data_start) = npy_header(&head, path)?;
    let dtype = match header.descr.as_str() {
        "<f2" => NpyDtype::F16,
        "<f4" => NpyDtype::F32,
        "<f8" => NpyDtype::F64,
        other => {
            return Err(malformed(
                FORMAT,
                path,
                format!("unsupported dtype '{other}', expected '<f2', '<f4' or '<f8'"),
            ))
        }
    };
    let (rows, dim) = npy_shape(&header, path)?;
    let expected = rows
        .checked_mul(dim)
        .and_then(|count| count.checked_mul(dtype.bytes() as u64));
    let found = file_bytes.saturating_sub(data_start as u64);
    if expected != Some(found) {
        return Err(malformed(
            FORMAT,
            path,
            format!(
                "shape ({rows}, {dim}) of {} needs {} data bytes, found {found}",
                header.descr,
                expected.map_or_else(|| "too many".to_string(), |count| count.to_string()),
            ),
        ));
    }
    Ok(NpyLayout {
        rows,
        dim: dim as usize,
        dtype,
        data_offset: data_start as u64,
    })
}

fn npy_shape(header: &NpyHeader, path: &Path) -> Result<(u64, u64), VectorIoError> {
    const FORMAT: &str = "npy";
    if header.fortran_order {
        return Err(malformed(
            FORMAT,
            path,
            "fortran-order arrays are not supported, save a C-order array (np.ascontiguousarray)",
        ));
    }
    let [rows, dim] = header.shape[..] else {
        return Err(malformed(
            FORMAT,
            path,
            format!(
                "expected a 2-d array, found shape {}",
                format_shape(&header.shape)
            ),
        ));
    };
    if dim == 0 || dim > MAX_DIM as u64 {
        return Err(malformed(
            FORMAT,
            path,
            format!("dimension {dim} is not between 1 and {MAX_DIM}"),
        ));
    }
    Ok((rows, dim))
}

/// The parsed header dictionary and the offset of the data.
fn npy_header(bytes: &[u8], path: &Path) -> Result<(NpyHeader, usize), VectorIoError> {
    const FORMAT: &str = "npy";
    if bytes.is_empty() {
        return Err(malformed(FORMAT, path, "file is empty"));
    }
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(malformed(FORMAT, path, "missing the \\x93NUMPY magic"));
    }
    let major_version = bytes[6];
    let (header_len, header_start) = match major_version {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let Some(len_bytes) = bytes.get(8..12) else {
                return Err(malformed(FORMAT, path, "header length is truncated"));
            };
            let header_len =
                u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
            (header_len as usize, 12)
        }
        _ => {
            return Err(malformed(
                FORMAT,
                path,
                format!("unsupported format version {major_version}, expected 1, 2 or 3"),
            ))
        }
    };
    let data_start = header_start + header_len;
    let Some(header_bytes) = bytes.get(header_start..data_start) else {
        return Err(malformed(
            FORMAT,
            path,
            format!(
                "header is truncated: declares {header_len} bytes, only {} left",
                bytes.len() - header_start
            ),
        ));
    };
    let header_text = std::str::from_utf8(header_bytes)
        .map_err(|_| malformed(FORMAT, path, "header is not valid utf-8"))?;
    let header = NpyHeader::parse(header_text)
        .map_err(|problem| malformed(FORMAT, path, format!("invalid header: {problem}")))?;
    Ok((header, data_start))
}

fn parse_npy(bytes: &[u8], path: &Path) -> Result<Matrix<f32>, VectorIoError> {
    const FORMAT: &str = "npy";
    let (header, data_start) = npy_header(bytes, path)?;
    let item_bytes = match header.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(malformed(
                FORMAT,
                path,
                format!("unsupported dtype '{other}', expected '<f4' or '<f8'"),
            ))
        }
    };
    let (rows, dim) = npy_shape(&header, path)?;
    let data_bytes = &bytes[data_start..];
    let expected_bytes = rows
        .checked_mul(dim)
        .and_then(|count| count.checked_mul(item_bytes));
    if expected_bytes != Some(data_bytes.len() as u64) {
        return Err(malformed(
            FORMAT,
            path,
            format!(
                "shape ({rows}, {dim}) of {} needs {} data bytes, found {}",
                header.descr,
                expected_bytes.map_or_else(|| "too many".to_string(), |count| count.to_string()),
                data_bytes.len()
            ),
        ));
    }
    let data: Vec<f32> = if item_bytes == 4 {
        data_bytes
            .chunks_exact(4)
            .map(|value| f32::from_le_bytes([value[0], value[1], value[2], value[3]]))
            .collect()
    } else {
        data_bytes
            .chunks_exact(8)
            .map(|value| {
                let mut value_bytes = [0u8; 8];
                value_bytes.copy_from_slice(value);
                f64::from_le_bytes(value_bytes) as f32
            })
            .collect()
    };
    Ok(Matrix {
        rows: rows as usize,
        dim: dim as usize,
        data,
    })
}

fn format_shape(shape: &[u64]) -> String {
    match shape {
        [single] => format!("({single},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|value| value.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// Writes `data` (row-major, `dim` wide) as a version 1.0 `.npy` of `<f4` in C order.
pub fn write_npy(path: &Path, data: &[f32], dim: usize) -> Result<(), VectorIoError> {
    write_npy_as(path, data, dim, NpyDtype::F32)
}

/// Writes `data` as a version 1.0 `.npy` of `<f2` (float16, rounded to nearest): the layout
/// clip-retrieval writes its embeddings in.
pub fn write_npy_f16(path: &Path, data: &[f32], dim: usize) -> Result<(), VectorIoError> {
    write_npy_as(path, data, dim, NpyDtype::F16)
}

fn write_npy_as(
    path: &Path,
    data: &[f32],
    dim: usize,
    dtype: NpyDtype,
) -> Result<(), VectorIoError> {
    validate_shape(path, "npy", data.len(), dim)?;
    let rows = data.len() / dim;
    let descr = match dtype {
        NpyDtype::F16 => "<f2",
        NpyDtype::F32 => "<f4",
        NpyDtype::F64 => "<f8",
    };
    let dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // Magic (6) + version (2) + header length (2), then the dict padded with spaces and
    // ended by a newline so the data starts on a 64-byte boundary.
    let unpadded_len = 10 + dict.len() + 1;
    let padding = (NPY_ALIGNMENT - unpadded_len % NPY_ALIGNMENT) % NPY_ALIGNMENT;
    let header_len = dict.len() + padding + 1;
    let mut header = Vec::with_capacity(10 + header_len);
    header.extend_from_slice(NPY_MAGIC);
    header.extend_from_slice(&[1, 0]);
    header.extend_from_slice(&(header_len as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(header.len() + padding, b' ');
    header.push(b'\n');

    let mut writer = create_writer(path)?;
    writer
        .write_all(&header)
        .map_err(|source| io_error("write", path, source))?;
    let mut block_buffer = Vec::with_capacity(WRITE_BUFFER_BYTES);
    for block in data.chunks(WRITE_BUFFER_BYTES / 4) {
        block_buffer.clear();
        for value in block {
            match dtype {
                NpyDtype::F16 => {
                    block_buffer.extend_from_slice(&half::f16::from_f32(*value).to_le_bytes())
                }
                NpyDtype::F32 => block_buffer.extend_from_slice(&value.to_le_bytes()),
                NpyDtype::F64 => block_buffer.extend_from_slice(&f64::from(*value).to_le_bytes()),
            }
        }
        writer
            .write_all(&block_buffer)
            .map_err(|source| io_error("write", path, source))?;
    }
    finish_writer(writer, path)
}

/// Reads float vectors, choosing the format from the extension (`.fvecs` or `.npy`).
pub fn read_vectors(path: &Path) -> Result<Matrix<f32>, VectorIoError> {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(|extension| extension.to_ascii_lowercase());
    match extension.as_deref() {
        Some("fvecs") => read_fvecs(path),
        Some("npy") => read_npy(path),
        _ => Err(VectorIoError::UnsupportedExtension {
            path: path.to_path_buf(),
        }),
    }
}

/// The three keys of a `.npy` header dict.
#[derive(Debug)]
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

#[derive(Debug)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
}

impl NpyHeader {
    /// Parses the Python dict literal numpy writes, e.g.
    /// `{'descr': '<f4', 'fortran_order': False, 'shape': (10, 4), }`.
    fn parse(text: &str) -> Result<NpyHeader, String> {
        let mut parser = PyLiteralParser {
            bytes: text.as_bytes(),
            position: 0,
        };
        let entries = parser.parse_dict()?;
        let mut descr = None;
        let mut fortran_order = None;
        let mut shape = None;
        for (key, value) in entries {
            match (key.as_str(), value) {
                ("descr", PyValue::Str(value)) => descr = Some(value),
                ("fortran_order", PyValue::Bool(value)) => fortran_order = Some(value),
                ("shape", PyValue::Tuple(value)) => shape = Some(value),
                ("descr" | "fortran_order" | "shape", value) => {
                    return Err(format!("unexpected value {value:?} for '{key}'"));
                }
                _ => return Err(format!("unexpected key '{key}'")),
            }
        }
        Ok(NpyHeader {
            descr: descr.ok_or("missing 'descr'")?,
            fortran_order: fortran_order.ok_or("missing 'fortran_order'")?,
            shape: shape.ok_or("missing 'shape'")?,
        })
    }
}

/// Just enough of a Python literal parser for `.npy` headers: a flat dict of strings,
/// booleans and tuples of non-negative integers.
struct PyLiteralParser<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl PyLiteralParser<'_> {
    fn skip_whitespace(&mut self) {
        while self
            .bytes
            .get(self.position)
            .is_some_and(|byte| byte.is_ascii_whitespace())
        {
            self.position += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.position).copied()
    }

    fn expect(&mut self, expected: u8) -> Result<(), String> {
        match self.peek() {
            Some(byte) if byte == expected => {
                self.position += 1;
                Ok(())
            }
            Some(byte) => Err(format!(
                "expected '{}' at byte {}, found '{}'",
                expected as char,
                self.position,
                byte.escape_ascii()
            )),
            None => Err(format!(
                "expected '{}', found end of header",
                expected as char
            )),
        }
    }

    fn parse_dict(&mut self) -> Result<Vec<(String, PyValue)>, String> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.position += 1;
                break;
            }
            let key = self.parse_string()?;
            self.expect(b':')?;
            let value = self.parse_value()?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.position += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.position)),
            }
        }
        if self.peek().is_some() {
            return Err(format!(
                "unexpected text after the dict at byte {}",
                self.position
            ));
        }
        Ok(entries)
    }

    fn parse_value(&mut self) -> Result<PyValue, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(PyValue::Str(self.parse_string()?)),
            Some(b'(') => Ok(PyValue::Tuple(self.parse_tuple()?)),
            Some(b'T' | b'F') => Ok(PyValue::Bool(self.parse_bool()?)),
            _ => Err(format!("unsupported value at byte {}", self.position)),
        }
    }

    fn parse_string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(quote @ (b'\'' | b'"')) => quote,
            _ => return Err(format!("expected a string at byte {}", self.position)),
        };
        let start = self.position + 1;
        let Some(length) = self.bytes[start..].iter().position(|&byte| byte == quote) else {
            return Err("unterminated string".to_string());
        };
        self.position = start + length + 1;
        Ok(String::from_utf8_lossy(&self.bytes[start..start + length]).into_owned())
    }

    fn parse_bool(&mut self) -> Result<bool, String> {
        self.skip_whitespace();
        let rest = &self.bytes[self.position..];
        if rest.starts_with(b"True") {
            self.position += 4;
            return Ok(true);
        }
        if rest.starts_with(b"False") {
            self.position += 5;
            return Ok(false);
        }
        Err(format!("expected True or False at byte {}", self.position))
    }

    fn parse_tuple(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut values = Vec::new();
        loop {
            match self.peek() {
                Some(b')') => {
                    self.position += 1;
                    return Ok(values);
                }
                Some(byte) if byte.is_ascii_digit() => {
                    values.push(self.parse_integer()?);
                    match self.peek() {
                        Some(b',') => self.position += 1,
                        Some(b')') => {}
                        _ => return Err(format!("expected ',' or ')' at byte {}", self.position)),
                    }
                }
                _ => {
                    return Err(format!(
                        "expected a non-negative integer at byte {}",
                        self.position
                    ))
                }
            }
        }
    }

    fn parse_integer(&mut self) -> Result<u64, String> {
        let start = self.position;
        while self
            .bytes
            .get(self.position)
            .is_some_and(|byte| byte.is_ascii_digit())
        {
            self.position += 1;
        }
        // Python 2 era files may write long integers as `10L`.
        let digits = std::str::from_utf8(&self.bytes[start..self.position]).unwrap_or_default();
        if self.bytes.get(self.position) == Some(&b'L') {
            self.position += 1;
        }
        digits
            .parse::<u64>()
            .map_err(|_| format!("integer '{digits}' is out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        dir.path().join(name)
    }

    fn sample_data(rows: usize, dim: usize) -> Vec<f32> {
        (0..rows * dim)
            .map(|index| (index as f32) * 0.25 - 3.5)
            .collect()
    }

    fn error_message(result: Result<Matrix<f32>, VectorIoError>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn fvecs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_path(&dir, "data.fvecs");
        let data = sample_data(7, 5);
        write_fvecs(&path, &data, 5).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 7 * (4 + 5 * 4));
        let matrix = read_fvecs(&path).unwrap();
        assert_eq!(matrix.rows, 7);
        assert_eq!(matrix.dim, 5);
        assert_eq!(matrix.data, data);
        assert_eq!(matrix.row(2), &data[10..15]);
        assert_eq!(read_vectors(&path).unwrap(), matrix);
    }

    #[test]
    fn ivecs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_path(&dir, "truth.ivecs");
        let data: Vec<i32> = (0..30).map(|value| value * 7 - 100).collect();
        write_ivecs(&path, &data, 10).unwrap();
        let matrix = read_ivecs(&path).unwrap();
        assert_eq!((matrix.rows, matrix.dim), (3, 10));
        assert_eq!(matrix.data, data);
    }

    #[test]
    fn fvecs_layout_matches_the_texmex_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_path(&dir, "hand.fvecs");
        let mut bytes = Vec::new();
        for row in [[1.0f32, 2.0], [3.0, -4.5]] {
            bytes.extend_from_slice(&2i32.to_le_bytes());
            for value in row {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let matrix = read_fvecs(&path).unwrap();
        assert_eq!(matrix.data, vec![1.0, 2.0, 3.0, -4.5]);
        let rewritten = temp_path(&dir, "rewritten.fvecs");
        write_fvecs(&rewritten, &matrix.data, 2).unwrap();
        assert_eq!(std::fs::read(&rewritten).unwrap(), bytes);
    }

    #[test]
    fn npy_round_trip_and_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_path(&dir, "data.npy");
        let data = sample_data(9, 3);
        write_npy(&path, &data, 3).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert!((10 + header_len).is_multiple_of(64));
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        assert_eq!(bytes.len(), 10 + header_len + 9 * 3 * 4);
        let matrix = read_npy(&path).unwrap();
        assert_eq!((matrix.rows, matrix.dim), (9, 3));
        assert_eq!(matrix.data, data);
        assert_eq!(read_vectors(&path).unwrap(), matrix);
    }

    fn npy_bytes(major_version: u8, header: &str, payload: &[u8]) -> Vec<u8> {
        let mut bytes = NPY_MAGIC.to_vec();
        bytes.extend_from_slice(&[major_version, 0]);
        if major_version == 1 {
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn f32_payload(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect()
    }

    #[test]
    fn npy_written_by_hand_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let values = [1.5f32, -2.0, 0.0, 4.25, 8.0, -0.5];
        // Exactly what numpy 1.x writes for np.save on a (2, 3) float32 array.
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let path = temp_path(&dir, "hand.npy");
        std::fs::write(&path, npy_bytes(1, &header, &f32_payload(&values))).unwrap();
        let matrix = read_npy(&path).unwrap();
        assert_eq!((matrix.rows, matrix.dim), (2, 3));
        assert_eq!(matrix.data, values);

        // What write_npy produces is byte-identical to numpy's output.
        let rewritten = temp_path(&dir, "rewritten.npy");
        write_npy(&rewritten, &values, 3).unwrap();
        assert_eq!(
            std::fs::read(&rewritten).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }

    #[test]
    fn npy_v2_and_f8_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let values = [1.0f64, 2.5, -3.0, 1e-3];
        let payload: Vec<u8> = values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let header = "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (2L, 2L)}\n";
        let path = temp_path(&dir, "v2.npy");
        std::fs::write(&path, npy_bytes(2, header, &payload)).unwrap();
        let matrix = read_npy(&path).unwrap();
        assert_eq!((matrix.rows, matrix.dim), (2, 2));
        assert_eq!(matrix.data, vec![1.0f32, 2.5, -3.0, 1e-3]);
    }

    #[test]
    fn npy_bad_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let payload = f32_payload(&[0.0; 6]);
        let cases = [
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }\n",
                payload.clone(),
                "unsupported dtype '<i4'",
            ),
            (
                "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }\n",
                payload.clone(),
                "unsupported dtype '>f4'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
                payload.clone(),
                "fortran-order",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }\n",
                payload.clone(),
                "expected a 2-d array, found shape (6,)",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }\n",
                payload.clone(),
                "found shape (1, 2, 3)",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }\n",
                payload.clone(),
                "needs 36 data bytes, found 24",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0), }\n",
                Vec::new(),
                "dimension 0",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 100000), }\n",
                payload.clone(),
                "dimension 100000",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3), }\n",
                payload.clone(),
                "out of range",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }\n",
                payload.clone(),
                "needs too many data bytes",
            ),
            (
                "{'descr': '<f4', 'shape': (2, 3), }\n",
                payload.clone(),
                "missing 'fortran_order'",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3), }\n",
                payload.clone(),
                "invalid header",
            ),
            ("{'descr': '<f4", payload.clone(), "invalid header"),
        ];
        for (index, (header, payload, expected)) in cases.into_iter().enumerate() {
            let path = temp_path(&dir, &format!("bad{index}.npy"));
            std::fs::write(&path, npy_bytes(1, header, &payload)).unwrap();
            let message = error_message(read_npy(&path));
            assert!(
                message.contains(expected),
                "case {index}: {message:?} does not mention {expected:?}"
            );
            assert!(message.starts_with("npy file "), "{message}");
        }
    }

    #[test]
    fn npy_truncated_header_and_bad_magic_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }\n";
        let full = npy_bytes(1, header, &f32_payload(&[1.0]));
        for cut in [0, 3, 9, 20, full.len() - 1] {
            let path = temp_path(&dir, &format!("cut{cut}.npy"));
            std::fs::write(&path, &full[..cut]).unwrap();
            assert!(
                read_npy(&path).is_err(),
                "prefix of {cut} bytes was accepted"
            );
        }
        let path = temp_path(&dir, "magic.npy");
        std::fs::write(&path, b"PK\x03\x04 this is a zip file, not an npy").unwrap();
        assert!(error_message(read_npy(&path)).contains("magic"));
        let path = temp_path(&dir, "version.npy");
        let mut wrong_version = full.clone();
        wrong_version[6] = 9;
        std::fs::write(&path, wrong_version).unwrap();
        assert!(error_message(read_npy(&path)).contains("unsupported format version 9"));
    }

    #[test]
    fn fvecs_bad_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_path(&dir, "empty.fvecs");
        std::fs::write(&path, b"").unwrap();
        assert!(error_message(read_fvecs(&path)).contains("file is empty"));

        let good_path = temp_path(&dir, "good.fvecs");
        write_fvecs(&good_path, &sample_data(4, 128), 128).unwrap();
        let good = std::fs::read(&good_path).unwrap();

        let path = temp_path(&dir, "truncated.fvecs");
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        let message = error_message(read_fvecs(&path));
        assert!(message.contains("row 3 is truncated"), "{message}");
        assert!(message.contains("truncated.fvecs"), "{message}");

        let path = temp_path(&dir, "short_header.fvecs");
        std::fs::write(&path, &good[..516 + 2]).unwrap();
        assert!(error_message(read_fvecs(&path)).contains("row 1 is truncated"));

        let mut inconsistent = good.clone();
        inconsistent[3 * 516..3 * 516 + 4].copy_from_slice(&7i32.to_le_bytes());
        let path = temp_path(&dir, "inconsistent.fvecs");
        std::fs::write(&path, &inconsistent).unwrap();
        let message = error_message(read_fvecs(&path));
        assert!(
            message.ends_with("row 3 has dimension 7, expected 128"),
            "{message}"
        );
        assert!(message.starts_with("fvecs file "), "{message}");

        for bad_dim in [0i32, -5, 70000, i32::MAX] {
            let mut bytes = bad_dim.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 64]);
            let path = temp_path(&dir, "bad_dim.fvecs");
            std::fs::write(&path, &bytes).unwrap();
            let message = error_message(read_fvecs(&path));
            assert!(
                message.contains(&format!("row 0 has dimension {bad_dim}")),
                "{message}"
            );
        }

        let missing = temp_path(&dir, "missing.fvecs");
        let error = read_fvecs(&missing).unwrap_err();
        assert!(matches!(error, VectorIoError::Io { .. }));
        assert!(std::error::Error::source(&error).is_some());
        assert!(error.to_string().contains("missing.fvecs"));
    }

    #[test]
    fn ivecs_truncated_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_path(&dir, "truth.ivecs");
        write_ivecs(&path, &[1, 2, 3, 4], 2).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let message = read_ivecs(&path).unwrap_err().to_string();
        assert!(message.starts_with("ivecs file "), "{message}");
        assert!(message.contains("row 1 is truncated"), "{message}");
    }

    #[test]
    fn writers_reject_bad_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_path(&dir, "out.fvecs");
        assert!(write_fvecs(&path, &[1.0, 2.0, 3.0], 2).is_err());
        assert!(write_fvecs(&path, &[1.0, 2.0], 0).is_err());
        assert!(write_fvecs(&path, &[], 4).is_err());
        assert!(write_ivecs(&path, &[1, 2, 3], 2).is_err());
        assert!(write_npy(&temp_path(&dir, "out.npy"), &[1.0, 2.0, 3.0], 2).is_err());
        assert!(!path.exists(), "a rejected write must not create the file");
    }

    #[test]
    fn read_vectors_rejects_unknown_extensions() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["data.bin", "data"] {
            let path = temp_path(&dir, name);
            std::fs::write(&path, b"whatever").unwrap();
            let message = error_message(read_vectors(&path));
            assert!(message.contains(".fvecs or .npy"), "{message}");
        }
        let path = temp_path(&dir, "DATA.NPY");
        write_npy(&path, &[1.0, 2.0], 2).unwrap();
        assert_eq!(read_vectors(&path).unwrap().rows, 1);
    }
}
