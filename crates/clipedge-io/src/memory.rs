use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use crate::{check_limit, check_range, ObjectSource, SourceError};

/// Objects held in memory: for tests, and for fronts that embed a small index.
#[derive(Debug, Default)]
pub struct MemorySource {
    objects: Mutex<HashMap<String, Bytes>>,
}

impl MemorySource {
    pub fn insert(&self, key: &str, bytes: Bytes) {
        self.objects
            .lock()
            .expect("memory source lock")
            .insert(key.to_string(), bytes);
    }

    fn object(&self, key: &str) -> Result<Bytes, SourceError> {
        self.objects
            .lock()
            .expect("memory source lock")
            .get(key)
            .cloned()
            .ok_or_else(|| SourceError::NotFound {
                key: key.to_string(),
            })
    }
}

impl ObjectSource for MemorySource {
    async fn get(&self, key: &str, limit: Option<u64>) -> Result<Bytes, SourceError> {
        let bytes = self.object(key)?;
        check_limit(key, &bytes, limit)?;
        Ok(bytes)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SourceError> {
        let bytes = self.object(key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let end = (range.end as usize).min(bytes.len());
        let start = (range.start as usize).min(end);
        let part = bytes.slice(start..end);
        check_range(key, &range, &part)?;
        Ok(part)
    }
}
