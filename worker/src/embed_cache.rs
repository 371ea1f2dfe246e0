//! Repeated queries skip the text tower: a small per-isolate LRU of text → embedding, keyed by
//! the model's fingerprint and the text with whitespace runs collapsed (both tokenizer families
//! split on whitespace, so such texts encode alike).

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::rc::Rc;

use lru::LruCache;

/// 512 entries of a 512-d embedding are about 1 MiB.
const CAPACITY: usize = 512;

/// The cache key of `text` under the model `fingerprint`.
pub fn cache_key(fingerprint: &str, text: &str) -> String {
    let collapsed: Vec<&str> = text.split_whitespace().collect();
    format!("{fingerprint}\u{0}{}", collapsed.join(" "))
}

pub struct EmbeddingCache {
    entries: RefCell<LruCache<String, Rc<Vec<f32>>>>,
}

impl Default for EmbeddingCache {
    fn default() -> Self {
        EmbeddingCache {
            entries: RefCell::new(LruCache::new(
                NonZeroUsize::new(CAPACITY).expect("capacity is positive"),
            )),
        }
    }
}

impl EmbeddingCache {
    pub fn get(&self, key: &str) -> Option<Rc<Vec<f32>>> {
        self.entries.borrow_mut().get(key).cloned()
    }

    pub fn put(&self, key: String, embedding: Vec<f32>) {
        self.entries.borrow_mut().put(key, Rc::new(embedding));
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn the_least_recently_used_entry_goes_first() {
        let cache = EmbeddingCache::default();
        for index in 0..CAPACITY + 1 {
            cache.put(format!("k{index}"), vec![index as f32]);
        }
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.get("k0").is_none());
        assert_eq!(cache.get("k1").unwrap()[0], 1.0);
    }
}
