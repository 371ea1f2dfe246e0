//! clip-retrieval's metadata: `metadata/metadata_N.parquet`, row-aligned with
//! `embeddings/img_emb/img_emb_N.npy`. Each row becomes one catalog record (docs/format.md):
//! `caption` and `url` as the result shows them, every other non-null scalar column kept beside
//! them (`key`, `width`, `height`, …) for the API to return. Read in row order, one file at a
//! time, so memory does not grow with the number of rows.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use serde_json::{Map, Value};

use crate::BuildError;

fn metadata_error(path: &Path, problem: impl std::fmt::Display) -> BuildError {
    BuildError::Source(format!("{}: {problem}", path.display()))
}

/// Rows in a parquet file, from its footer alone.
pub(crate) fn parquet_rows(path: &Path) -> Result<u64, BuildError> {
    let file = File::open(path).map_err(|error| metadata_error(path, error))?;
    let reader = SerializedFileReader::new(file).map_err(|error| metadata_error(path, error))?;
    let rows = reader.metadata().file_metadata().num_rows();
    u64::try_from(rows).map_err(|_| metadata_error(path, format!("negative row count {rows}")))
}

/// Reads the records of consecutive rows across the metadata files.
pub struct MetadataReader {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<(PathBuf, RowIter<'static>)>,
}

impl MetadataReader {
    pub(crate) fn new(files: Vec<PathBuf>) -> MetadataReader {
        MetadataReader {
            files,
            next_file: 0,
            current: None,
        }
    }

    /// The JSON of the next `count` records, appended to `out` (one `Vec<u8>` each).
    pub fn next_records(&mut self, count: usize, out: &mut Vec<Vec<u8>>) -> Result<(), BuildError> {
        let mut produced = 0;
        while produced < count {
            if self.current.is_none() {
                let Some(path) = self.files.get(self.next_file).cloned() else {
                    return Err(BuildError::Source(format!(
                        "the metadata files ended {} rows before the embeddings",
                        count - produced
                    )));
                };
                self.next_file += 1;
                let file = File::open(&path).map_err(|error| metadata_error(&path, error))?;
                let reader = SerializedFileReader::new(file)
                    .map_err(|error| metadata_error(&path, error))?;
                self.current = Some((path, reader.into_iter()));
            }
            let (path, rows) = self.current.as_mut().expect("a file is open");
            match rows.next() {
                Some(row) => {
                    let row = row.map_err(|error| metadata_error(path, error))?;
                    out.push(record_json(row.to_json_value()));
                    produced += 1;
                }
                None => self.current = None,
            }
        }
        Ok(())
    }
}

/// A catalog record: `caption` and `url` always (empty when missing), then the other columns
/// that hold a scalar value.
fn record_json(row: Value) -> Vec<u8> {
    let Value::Object(columns) = row else {
        return br#"{"caption":"","url":""}"#.to_vec();
    };
    let text = |name: &str| match columns.get(name) {
        Some(Value::String(text)) => Value::String(text.clone()),
        _ => Value::String(String::new()),
    };
    let mut record = Map::new();
    record.insert("caption".to_string(), text("caption"));
    record.insert("url".to_string(), text("url"));
    for (name, value) in &columns {
        if name == "caption" || name == "url" {
            continue;
        }
        if matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            record.insert(name.clone(), value.clone());
        }
    }
    serde_json::to_vec(&Value::Object(record)).expect("a json map serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_caption_url_and_the_scalar_columns() {
        let row = serde_json::json!({
            "url": "https://example.com/a.jpg",
            "caption": "a dog",
            "key": "000001",
            "width": 640,
            "exif": null,
            "nested": {"a": 1},
        });
        let record: Value = serde_json::from_slice(&record_json(row)).unwrap();
        assert_eq!(
            record,
            serde_json::json!({
                "caption": "a dog",
                "url": "https://example.com/a.jpg",
                "key": "000001",
                "width": 640,
            })
        );
        let bare: Value =
            serde_json::from_slice(&record_json(serde_json::json!({"key": "x"}))).unwrap();
        assert_eq!(
            bare,
            serde_json::json!({"caption": "", "url": "", "key": "x"})
        );
    }
}
