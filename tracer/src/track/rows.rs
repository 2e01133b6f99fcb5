//! Report rows keyed by something unbounded (processes, peers, listeners):
//! capped, with an overflow row, so memory stays bounded however many
//! distinct keys a long run sees.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

#[derive(Debug, Clone)]
pub struct BoundedRows<K, V> {
    rows: HashMap<K, V>,
    cap: usize,
    /// Where values for keys beyond the cap go.
    overflow: V,
    /// Hashes of the keys sent to the overflow row, to count them once each.
    /// Bounded too (`cap` entries, at least [`MIN_OVERFLOW_MEMORY`]).
    overflowed: HashSet<u64>,
    /// Distinct keys that did not get a row of their own (exact while
    /// `overflowed` has room, a lower bound after that).
    overflowed_keys: u64,
    /// More distinct keys overflowed than `overflowed` can remember.
    saturated: bool,
}

/// Overflowed keys remembered (8 bytes each) even for a small row cap.
pub const MIN_OVERFLOW_MEMORY: usize = 16_384;

fn key_hash<K: Hash>(key: &K) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl<K: Hash + Eq + Clone, V: Default> BoundedRows<K, V> {
    pub fn new(cap: usize) -> Self {
        Self {
            rows: HashMap::new(),
            cap,
            overflow: V::default(),
            overflowed: HashSet::new(),
            overflowed_keys: 0,
            saturated: false,
        }
    }

    /// The row for `key`, or the overflow row once `cap` rows exist.
    pub fn row(&mut self, key: &K) -> &mut V {
        if !self.rows.contains_key(key) {
            if self.rows.len() >= self.cap {
                self.note_overflow(key);
                return &mut self.overflow;
            }
            self.rows.insert(key.clone(), V::default());
        }
        // Present by now.
        self.rows.get_mut(key).unwrap_or(&mut self.overflow)
    }

    fn note_overflow(&mut self, key: &K) {
        let hash = key_hash(key);
        if self.overflowed.contains(&hash) {
            return;
        }
        if self.overflowed.len() < self.cap.max(MIN_OVERFLOW_MEMORY) {
            self.overflowed.insert(hash);
            self.overflowed_keys += 1;
        } else {
            // Memory for exact counting is full: keys not remembered are not
            // counted (they may be repeats), so the count is a lower bound.
            self.saturated = true;
        }
    }

    /// Whether `overflowed_keys` stopped being exact and is a lower bound.
    pub fn overflow_count_saturated(&self) -> bool {
        self.saturated
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.rows.get(key)
    }

    /// The row for `key` if it has one (never the overflow row).
    pub fn row_if_present(&mut self, key: &K) -> Option<&mut V> {
        self.rows.get_mut(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.rows.remove(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.rows.iter()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn overflow(&self) -> &V {
        &self.overflow
    }

    /// Distinct keys that went to the overflow row (see `overflowed_keys`).
    pub fn overflowed_keys(&self) -> u64 {
        self.overflowed_keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_beyond_the_cap_share_the_overflow_row() {
        let mut rows: BoundedRows<u32, u64> = BoundedRows::new(2);
        *rows.row(&1) += 1;
        *rows.row(&2) += 1;
        *rows.row(&3) += 5;
        *rows.row(&4) += 7;
        *rows.row(&1) += 1;
        *rows.row(&3) += 1;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.get(&1), Some(&2));
        assert_eq!(*rows.overflow(), 13);
        assert_eq!(rows.overflowed_keys(), 2, "distinct keys, not updates");
        assert!(!rows.overflow_count_saturated());
    }

    #[test]
    fn overflow_memory_is_bounded_and_the_count_becomes_a_lower_bound() {
        let mut rows: BoundedRows<u32, u64> = BoundedRows::new(1);
        for key in 0..(MIN_OVERFLOW_MEMORY as u32 + 11) {
            *rows.row(&key) += 1;
        }
        assert_eq!(rows.overflowed.len(), MIN_OVERFLOW_MEMORY);
        assert_eq!(rows.overflowed_keys(), MIN_OVERFLOW_MEMORY as u64, "a lower bound from here on");
        assert!(rows.overflow_count_saturated());
        *rows.row(&1) += 1;
        assert_eq!(rows.overflowed_keys(), MIN_OVERFLOW_MEMORY as u64);
        assert_eq!(*rows.overflow(), MIN_OVERFLOW_MEMORY as u64 + 11, "values are never lost");
    }
}
