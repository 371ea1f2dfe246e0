use std::hash::Hash;

use lru::LruCache;

/// A least-recently-used map bounded by the total byte size of its values rather than by count:
/// lists range from a few KiB to many MiB, so a count bound would be meaningless for memory.
pub struct ByteLru<K: Hash + Eq, V: Clone> {
    capacity_bytes: u64,
    used_bytes: u64,
    entries: LruCache<K, (V, u64)>,
    hits: u64,
    misses: u64,
}

impl<K: Hash + Eq, V: Clone> ByteLru<K, V> {
    pub fn new(capacity_bytes: u64) -> Self {
        ByteLru {
            capacity_bytes,
            used_bytes: 0,
            entries: LruCache::unbounded(),
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<V> {
        match self.entries.get(key) {
            Some((value, _)) => {
                self.hits += 1;
                Some(value.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Inserts and evicts the least recently used entries until the bound holds.
    /// A value larger than the whole capacity is not kept.
    pub fn insert(&mut self, key: K, value: V, bytes: u64) {
        if bytes > self.capacity_bytes {
            return;
        }
        if let Some((_, old_bytes)) = self.entries.put(key, (value, bytes)) {
            self.used_bytes -= old_bytes;
        }
        self.used_bytes += bytes;
        while self.used_bytes > self.capacity_bytes {
            let Some((_, (_, evicted_bytes))) = self.entries.pop_lru() else {
                break;
            };
            self.used_bytes -= evicted_bytes;
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn hits(&self) -> u64 {
        self.hits
    }

    pub fn misses(&self) -> u64 {
        self.misses
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.used_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let mut cache = ByteLru::new(100);
        cache.insert(1, "a", 40);
        cache.insert(2, "b", 40);
        assert_eq!(cache.get(&1), Some("a"));
        cache.insert(3, "c", 40);
        assert_eq!(cache.get(&2), None, "2 was least recently used");
        assert_eq!(cache.get(&1), Some("a"));
        assert_eq!(cache.get(&3), Some("c"));
        assert_eq!(cache.used_bytes(), 80);
    }

    #[test]
    fn oversized_values_are_not_kept() {
        let mut cache = ByteLru::new(10);
        cache.insert(1, "big", 11);
        assert!(cache.is_empty());
        assert_eq!(cache.used_bytes(), 0);
    }

    #[test]
    fn replacing_a_key_updates_the_byte_count() {
        let mut cache = ByteLru::new(100);
        cache.insert(1, "a", 60);
        cache.insert(1, "b", 30);
        assert_eq!(cache.used_bytes(), 30);
        assert_eq!(cache.len(), 1);
    }
}
