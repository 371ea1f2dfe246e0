//! Streamed embedding sources: the vectors of a build read in batches, never all at once.
//!
//! - a clip-retrieval output folder: `embeddings/img_emb/img_emb_N.npy` (or `img_emb/…`, or the
//!   `.npy` files directly in the folder), float16 or float32, concatenated in the order of `N`;
//! - a single `.npy` (`<f2`, `<f4`, `<f8`) or `.fvecs` file.
//!
//! Row `r` of the concatenation is the vector's id. A clip-retrieval folder's
//! `metadata/metadata_N.parquet` files, when present, are paired with the embedding files by `N`
//! and must hold as many rows; they become the generation's catalog. Every file's header is checked when the
//! source opens (shape against file size, one dimension for all), so a truncated or mismatched
//! file stops the run before any work; a NaN or infinity stops it when read, naming the file
//! and row.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clipedge_datagen::{read_npy_layout, NpyDtype};
use rand::Rng;
use rayon::prelude::*;

/// Rows decoded by one parallel task.
const DECODE_ROWS_PER_TASK: usize = 4096;

use crate::BuildError;

#[derive(Debug, Clone)]
enum Encoding {
    Npy(NpyDtype),
    /// Each row is a little-endian i32 dimension, then `dim` f32 values.
    Fvecs,
}

#[derive(Debug, Clone)]
struct SourceFile {
    path: PathBuf,
    /// Opened once: a training sample reads hundreds of thousands of short runs of rows.
    handle: Arc<File>,
    encoding: Encoding,
    rows: u64,
    first_row: u64,
    data_offset: u64,
}

impl SourceFile {
    fn row_bytes(&self, dim: usize) -> u64 {
        match self.encoding {
            Encoding::Npy(dtype) => (dim * dtype.bytes()) as u64,
            Encoding::Fvecs => 4 + 4 * dim as u64,
        }
    }
}

/// The vectors of one build, read in batches.
#[derive(Debug, Clone)]
pub struct EmbeddingSource {
    files: Vec<SourceFile>,
    dim: usize,
    rows: u64,
    /// `metadata_N.parquet` of each file, row-aligned, when the folder has them.
    metadata: Option<Vec<PathBuf>>,
}

fn source_error(path: &Path, problem: impl std::fmt::Display) -> BuildError {
    BuildError::Source(format!("{}: {problem}", path.display()))
}

/// The `N` of `img_emb_N.npy` (any prefix ending in `_N.npy`), for numeric ordering.
fn shard_number(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit('_').next()?.parse().ok()
}

impl EmbeddingSource {
    /// Opens a clip-retrieval folder or a single vector file.
    pub fn open(path: &Path) -> Result<EmbeddingSource, BuildError> {
        if path.is_dir() {
            return EmbeddingSource::open_folder(path);
        }
        EmbeddingSource::from_files(vec![path.to_path_buf()])
    }

    fn open_folder(root: &Path) -> Result<EmbeddingSource, BuildError> {
        let candidates = [
            root.join("embeddings").join("img_emb"),
            root.join("img_emb"),
            root.to_path_buf(),
        ];
        for folder in candidates {
            if !folder.is_dir() {
                continue;
            }
            let entries =
                std::fs::read_dir(&folder).map_err(|error| source_error(&folder, error))?;
            let mut files = Vec::new();
            for entry in entries {
                let path = entry.map_err(|error| source_error(&folder, error))?.path();
                if path.extension().and_then(|ext| ext.to_str()) == Some("npy") {
                    files.push(path);
                }
            }
            if files.is_empty() {
                continue;
            }
            // img_emb_2 before img_emb_10 whether or not N is zero-padded.
            files.sort_by(|a, b| (shard_number(a), a).cmp(&(shard_number(b), b)));
            let mut source = EmbeddingSource::from_files(files)?;
            let metadata_folder = root.join("metadata");
            if metadata_folder.is_dir() {
                source.attach_metadata(&metadata_folder)?;
            }
            return Ok(source);
        }
        Err(source_error(
            root,
            "no .npy embedding files (looked in embeddings/img_emb/, img_emb/ and the folder itself)",
        ))
    }

    fn from_files(paths: Vec<PathBuf>) -> Result<EmbeddingSource, BuildError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut dim = None;
        let mut rows = 0u64;
        for path in paths {
            let is_fvecs = path.extension().and_then(|ext| ext.to_str()) == Some("fvecs");
            let (encoding, file_rows, file_dim, data_offset) = if is_fvecs {
                let (file_rows, file_dim) = fvecs_shape(&path)?;
                (Encoding::Fvecs, file_rows, file_dim, 0)
            } else {
                let layout = read_npy_layout(&path).map_err(|error| source_error(&path, error))?;
                (
                    Encoding::Npy(layout.dtype),
                    layout.rows,
                    layout.dim,
                    layout.data_offset,
                )
            };
            match dim {
                None => dim = Some(file_dim),
                Some(expected) if expected != file_dim => {
                    return Err(source_error(
                        &path,
                        format!("dimension {file_dim} differs from the earlier files' {expected}"),
                    ))
                }
                Some(_) => {}
            }
            let handle = File::open(&path).map_err(|error| source_error(&path, error))?;
            files.push(SourceFile {
                handle: Arc::new(handle),
                path,
                encoding,
                rows: file_rows,
                first_row: rows,
                data_offset,
            });
            rows += file_rows;
        }
        let Some(dim) = dim else {
            return Err(BuildError::Source("no input files".to_string()));
        };
        if rows == 0 {
            return Err(BuildError::Source(
                "the input files hold no vectors".to_string(),
            ));
        }
        Ok(EmbeddingSource {
            files,
            dim,
            rows,
            metadata: None,
        })
    }

    /// Pairs each `…_N.npy` with the `…_N.parquet` of `folder` (same `N`) and checks that they
    /// hold the same number of rows: a mismatch stops the run here, naming both files.
    fn attach_metadata(&mut self, folder: &Path) -> Result<(), BuildError> {
        let entries = std::fs::read_dir(folder).map_err(|error| source_error(folder, error))?;
        let mut parquet_by_number = std::collections::BTreeMap::new();
        for entry in entries {
            let path = entry.map_err(|error| source_error(folder, error))?.path();
            if path.extension().and_then(|ext| ext.to_str()) != Some("parquet") {
                continue;
            }
            if let Some(number) = shard_number(&path) {
                parquet_by_number.insert(number, path);
            }
        }
        let mut paired = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let Some(number) = shard_number(&file.path) else {
                return Err(source_error(
                    &file.path,
                    "cannot pair it with a metadata file: its name does not end in _N.npy",
                ));
            };
            let Some(parquet) = parquet_by_number.get(&number) else {
                return Err(source_error(
                    folder,
                    format!("no metadata_{number}.parquet for {}", file.path.display()),
                ));
            };
            let parquet_rows = crate::metadata::parquet_rows(parquet)?;
            if parquet_rows != file.rows {
                return Err(source_error(
                    parquet,
                    format!(
                        "{parquet_rows} metadata rows for the {} embeddings of {}",
                        file.rows,
                        file.path.display()
                    ),
                ));
            }
            paired.push(parquet.clone());
        }
        self.metadata = Some(paired);
        Ok(())
    }

    /// Whether catalog records come with the vectors (clip-retrieval's `metadata/` folder).
    pub fn has_metadata(&self) -> bool {
        self.metadata.is_some()
    }

    /// A reader of the records of rows `0, 1, …` in order, when the source has metadata.
    pub fn metadata_reader(&self) -> Option<crate::metadata::MetadataReader> {
        self.metadata
            .clone()
            .map(crate::metadata::MetadataReader::new)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Each embedding file with its row count, in build order.
    pub fn files(&self) -> impl Iterator<Item = (&Path, u64)> {
        self.files
            .iter()
            .map(|file| (file.path.as_path(), file.rows))
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Appends rows `start..start + count` to `out` as f32.
    pub fn read_rows(
        &self,
        start: u64,
        count: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), BuildError> {
        let end = start + count as u64;
        if end > self.rows {
            return Err(BuildError::Source(format!(
                "rows {start}..{end} are past the source's {} rows",
                self.rows
            )));
        }
        let first_file = self
            .files
            .partition_point(|file| file.first_row + file.rows <= start);
        let mut row = start;
        let mut bytes = Vec::new();
        for file in &self.files[first_file..] {
            if row >= end {
                break;
            }
            let local_start = row - file.first_row;
            let local_count = (end - row).min(file.rows - local_start);
            let row_bytes = file.row_bytes(self.dim);
            bytes.resize((local_count * row_bytes) as usize, 0);
            file.handle
                .read_exact_at(&mut bytes, file.data_offset + local_start * row_bytes)
                .map_err(|error| source_error(&file.path, error))?;
            let decoded_from = out.len();
            // Rows decode in parallel: a single thread turning float16 into f32 was the
            // slowest step of a GPU build (2.8 s per million 512-d rows).
            let decoded: Vec<Vec<f32>> = bytes
                .par_chunks(row_bytes as usize * DECODE_ROWS_PER_TASK)
                .map(|rows| {
                    let mut values = Vec::with_capacity(rows.len() / row_bytes as usize * self.dim);
                    match file.encoding {
                        Encoding::Npy(dtype) => dtype.decode_into(rows, &mut values),
                        Encoding::Fvecs => {
                            for record in rows.chunks_exact(row_bytes as usize) {
                                NpyDtype::F32.decode_into(&record[4..], &mut values);
                            }
                        }
                    }
                    values
                })
                .collect();
            out.reserve(local_count as usize * self.dim);
            for values in decoded {
                out.extend_from_slice(&values);
            }
            if let Some(position) = out[decoded_from..].iter().position(|x| !x.is_finite()) {
                return Err(source_error(
                    &file.path,
                    format!(
                        "row {} has a non-finite value",
                        local_start + (position / self.dim) as u64
                    ),
                ));
            }
            row += local_count;
        }
        Ok(())
    }

    /// `count` distinct rows drawn uniformly with `seed`, in row order (all rows when `count`
    /// covers them).
    pub fn sample(&self, count: usize, seed: u64) -> Result<Vec<f32>, BuildError> {
        let total = self.rows;
        let mut out = Vec::with_capacity(count.min(total as usize) * self.dim);
        if count as u64 >= total {
            self.read_rows(0, total as usize, &mut out)?;
            return Ok(out);
        }
        let mut rng = clipedge_linalg::kmeans::seeded_rng(seed);
        let mut chosen = std::collections::BTreeSet::new();
        // Floyd's algorithm: exactly `count` distinct rows in `count` draws.
        for upper in (total - count as u64)..total {
            let pick = rng.random_range(0..=upper);
            if !chosen.insert(pick) {
                chosen.insert(upper);
            }
        }
        // Runs of adjacent rows are read together.
        let mut run_start = None;
        let mut run_len = 0usize;
        for row in chosen {
            match run_start {
                Some(start) if start + run_len as u64 == row => run_len += 1,
                _ => {
                    if let Some(start) = run_start {
                        self.read_rows(start, run_len, &mut out)?;
                    }
                    run_start = Some(row);
                    run_len = 1;
                }
            }
        }
        if let Some(start) = run_start {
            self.read_rows(start, run_len, &mut out)?;
        }
        Ok(out)
    }
}

fn fvecs_shape(path: &Path) -> Result<(u64, usize), BuildError> {
    let file = File::open(path).map_err(|error| source_error(path, error))?;
    let size = file
        .metadata()
        .map_err(|error| source_error(path, error))?
        .len();
    let mut header = [0u8; 4];
    file.read_exact_at(&mut header, 0)
        .map_err(|error| source_error(path, format!("no first row: {error}")))?;
    let dim = i32::from_le_bytes(header);
    if dim <= 0 || dim > 65_536 {
        return Err(source_error(path, format!("row 0 has dimension {dim}")));
    }
    let row_bytes = 4 + 4 * dim as u64;
    if size % row_bytes != 0 {
        return Err(source_error(
            path,
            format!("{size} bytes are not whole rows of {row_bytes} bytes (truncated?)"),
        ));
    }
    Ok((size / row_bytes, dim as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_f16_npy(path: &Path, data: &[f32], dim: usize) {
        clipedge_datagen::write_npy_f16(path, data, dim).unwrap();
    }

    fn rows(n: usize, dim: usize, offset: f32) -> Vec<f32> {
        (0..n * dim).map(|i| offset + i as f32 / 8.0).collect()
    }

    #[test]
    fn a_clip_retrieval_folder_reads_as_one_source_in_numeric_order() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("embeddings").join("img_emb");
        std::fs::create_dir_all(&folder).unwrap();
        let dim = 4;
        // File 10 must come after file 2 (not zero-padded on purpose).
        write_f16_npy(&folder.join("img_emb_10.npy"), &rows(3, dim, 100.0), dim);
        write_f16_npy(&folder.join("img_emb_2.npy"), &rows(5, dim, 0.0), dim);
        let source = EmbeddingSource::open(dir.path()).unwrap();
        assert_eq!((source.len(), source.dim(), source.file_count()), (8, 4, 2));
        let mut all = Vec::new();
        source.read_rows(0, 8, &mut all).unwrap();
        assert_eq!(&all[..20], &rows(5, dim, 0.0)[..]);
        assert_eq!(&all[20..], &rows(3, dim, 100.0)[..]);
        // A read across the file boundary.
        let mut middle = Vec::new();
        source.read_rows(4, 2, &mut middle).unwrap();
        assert_eq!(&middle[..], &all[16..24]);
        // Samples are distinct rows of the source, reproducible by seed.
        let sample = source.sample(5, 3).unwrap();
        assert_eq!(sample, source.sample(5, 3).unwrap());
        let mut sampled_rows: Vec<&[f32]> = sample.chunks_exact(dim).collect();
        sampled_rows.dedup();
        assert_eq!(sampled_rows.len(), 5);
        for row in sampled_rows {
            assert!(all.chunks_exact(dim).any(|source_row| source_row == row));
        }
        assert_eq!(source.sample(100, 3).unwrap(), all);
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("img_emb_0.npy");
        write_f16_npy(&good, &rows(4, 4, 0.0), 4);
        let other_dim = dir.path().join("img_emb_1.npy");
        write_f16_npy(&other_dim, &rows(4, 8, 0.0), 8);
        let error = EmbeddingSource::open(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("img_emb_1.npy") && error.contains("dimension 8"),
            "{error}"
        );

        std::fs::remove_file(&other_dim).unwrap();
        let truncated = dir.path().join("img_emb_2.npy");
        write_f16_npy(&truncated, &rows(4, 4, 0.0), 4);
        let bytes = std::fs::read(&truncated).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
        let error = EmbeddingSource::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("img_emb_2.npy"), "{error}");

        std::fs::remove_file(&truncated).unwrap();
        let mut with_nan = rows(4, 4, 0.0);
        with_nan[9] = f32::NAN;
        write_f16_npy(&dir.path().join("img_emb_3.npy"), &with_nan, 4);
        let source = EmbeddingSource::open(dir.path()).unwrap();
        let error = source
            .read_rows(0, 8, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("img_emb_3.npy") && error.contains("row 2"),
            "{error}"
        );

        let empty = tempfile::tempdir().unwrap();
        assert!(EmbeddingSource::open(empty.path()).is_err());
    }
}
