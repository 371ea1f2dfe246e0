//! Repeated queries skip the text tower, in two layers keyed by the model's fingerprint and the
//! text with whitespace runs collapsed (both tokenizer families split on whitespace, so such
//! texts encode alike):
//!
//! - a small per-isolate LRU of text → embedding;
//! - the Cache API of the data centre ([`edge`]), shared by every isolate there: a hit spares a
//!   cold isolate the model fetch and build altogether. Its URL carries a SHA-256 of the key, so
//!   the query text is not stored in the clear.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;

use lru::LruCache;

/// 512 entries of a 512-d embedding are about 1 MiB.
pub const DEFAULT_CAPACITY: usize = 512;

/// The cache key of `text` under the model `fingerprint`.
pub fn cache_key(fingerprint: &str, text: &str) -> String {
    let collapsed: Vec<&str> = text.split_whitespace().collect();
    format!("{fingerprint}\u{0}{}", collapsed.join(" "))
}

/// The edge cache's URL for `key`: never fetched, only a Cache API key. The fingerprint stays
/// readable (a purge by model is a prefix), the text does not.
pub fn edge_cache_url(fingerprint: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    let fingerprint: String = fingerprint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("https://embedding-cache.clipedge.invalid/v1/{fingerprint}/{hex}")
}

/// An embedding as the edge cache stores it: little-endian f32s.
pub fn embedding_to_bytes(embedding: &[f32]) -> Vec<u8> {
    embedding
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// The stored bytes back, or `None` for anything but `dim` finite f32s: a damaged or foreign
/// entry is a miss, never a wrong query vector.
pub fn embedding_from_bytes(bytes: &[u8], dim: usize) -> Option<Vec<f32>> {
    if bytes.len() != dim * 4 {
        return None;
    }
    let embedding: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    embedding
        .iter()
        .all(|value| value.is_finite())
        .then_some(embedding)
}

pub struct EmbeddingCache {
    /// `None` when the per-isolate layer is turned off (`CLIPEDGE_EMBED_CACHE_ENTRIES=0`).
    entries: RefCell<Option<LruCache<String, Rc<Vec<f32>>>>>,
}

impl Default for EmbeddingCache {
    fn default() -> Self {
        EmbeddingCache::with_capacity(DEFAULT_CAPACITY)
    }
}

impl EmbeddingCache {
    pub fn with_capacity(capacity: usize) -> Self {
        EmbeddingCache {
            entries: RefCell::new(NonZeroUsize::new(capacity).map(LruCache::new)),
        }
    }

    /// Resizes the cache to `capacity` entries (0 turns it off), keeping the newest entries.
    pub fn set_capacity(&self, capacity: usize) {
        let mut entries = self.entries.borrow_mut();
        match (NonZeroUsize::new(capacity), entries.as_mut()) {
            (None, _) => *entries = None,
            (Some(capacity), Some(cache)) if cache.cap() != capacity => cache.resize(capacity),
            (Some(_), Some(_)) => {}
            (Some(capacity), None) => *entries = Some(LruCache::new(capacity)),
        }
    }

    pub fn get(&self, key: &str) -> Option<Rc<Vec<f32>>> {
        self.entries.borrow_mut().as_mut()?.get(key).cloned()
    }

    pub fn put(&self, key: String, embedding: Vec<f32>) {
        if let Some(cache) = self.entries.borrow_mut().as_mut() {
            cache.put(key, Rc::new(embedding));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().as_ref().map_or(0, LruCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The data centre's Cache API (`caches.default`). On a `workers.dev` route it stores nothing
/// and every get misses; on a custom domain it is shared by the location's isolates. Errors are
/// misses: the cache may only ever save work.
#[cfg(target_arch = "wasm32")]
pub mod edge {
    use worker::{Cache, Headers, Response};

    use super::{embedding_from_bytes, embedding_to_bytes};

    pub async fn get(url: &str, dim: usize) -> Option<Vec<f32>> {
        let mut response = Cache::default().get(url, true).await.ok()??;
        if response.status_code() != 200 {
            return None;
        }
        let bytes = response.bytes().await.ok()?;
        embedding_from_bytes(&bytes, dim)
    }

    pub async fn put(url: &str, embedding: &[f32], ttl_s: u64) {
        let headers = Headers::new();
        let stored = headers
            .set("cache-control", &format!("public, max-age={ttl_s}"))
            .and_then(|_| headers.set("content-type", "application/octet-stream"));
        if stored.is_err() {
            return;
        }
        let Ok(response) = Response::from_bytes(embedding_to_bytes(embedding)) else {
            return;
        };
        let _ = Cache::default()
            .put(url, response.with_headers(headers))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_variants_share_a_key_and_models_do_not() {
        assert_eq!(
            cache_key("abc", "  a dog\trunning \n"),
            cache_key("abc", "a dog running")
        );
        assert_ne!(cache_key("abc", "a dog"), cache_key("def", "a dog"));
        assert_ne!(cache_key("abc", "a dog"), cache_key("abc", "A dog"));
    }

    #[test]
    fn edge_urls_hide_the_text_and_differ_by_model_and_text() {
        let url = edge_cache_url("int8-ab12", &cache_key("int8-ab12", "a dog"));
        assert!(url.starts_with("https://embedding-cache.clipedge.invalid/v1/int8-ab12/"));
        assert!(!url.contains("dog"));
        assert_eq!(url.len(), url.rfind('/').unwrap() + 1 + 64);
        assert_ne!(
            url,
            edge_cache_url("int8-ab12", &cache_key("int8-ab12", "a cat"))
        );
        assert_ne!(
            url,
            edge_cache_url("int8-cd34", &cache_key("int8-ab12", "a dog"))
        );
        // A fingerprint cannot smuggle path or query characters into the key.
        assert!(!edge_cache_url("x/../y?z", "k").contains(".."));
    }

    #[test]
    fn stored_embeddings_round_trip_and_damaged_ones_are_misses() {
        let embedding = vec![0.5f32, -1.25, 3.0e-8, 0.0];
        let bytes = embedding_to_bytes(&embedding);
        assert_eq!(embedding_from_bytes(&bytes, 4), Some(embedding));
        assert_eq!(embedding_from_bytes(&bytes, 3), None);
        assert_eq!(embedding_from_bytes(&bytes[..15], 4), None);
        let nan = embedding_to_bytes(&[0.0, f32::NAN]);
        assert_eq!(embedding_from_bytes(&nan, 2), None);
    }

    #[test]
    fn a_zero_capacity_turns_the_isolate_layer_off() {
        let cache = EmbeddingCache::with_capacity(0);
        cache.put("k".into(), vec![1.0]);
        assert!(cache.get("k").is_none());
        cache.set_capacity(2);
        cache.put("k".into(), vec![1.0]);
        assert_eq!(cache.get("k").unwrap()[0], 1.0);
        cache.set_capacity(0);
        assert!(cache.get("k").is_none() && cache.is_empty());
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let cache = EmbeddingCache::default();
        for index in 0..DEFAULT_CAPACITY + 1 {
            cache.put(format!("k{index}"), vec![index as f32]);
        }
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
        assert!(cache.get("k0").is_none());
        assert_eq!(cache.get("k1").unwrap()[0], 1.0);
    }
}
