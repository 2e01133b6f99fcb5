//! Report rows keyed by something unbounded (processes, peers, listeners):
//! capped, with an overflow row, so memory stays bounded however many
//! distinct keys a long run sees.

use std::{collections::HashMap, hash::Hash};

#[derive(Debug, Clone)]
pub struct BoundedRows<K, V> {
    rows: HashMap<K, V>,
    cap: usize,
    /// Where values for keys beyond the cap go.
    overflow: V,
    /// Distinct keys that did not get a row of their own.
    overflowed_keys: u64,
}

impl<K: Hash + Eq + Clone, V: Default> BoundedRows<K, V> {
    pub fn new(cap: usize) -> Self {
        Self { rows: HashMap::new(), cap, overflow: V::default(), overflowed_keys: 0 }
    }

    /// The row for `key`, or the overflow row once `cap` rows exist.
    pub fn row(&mut self, key: &K) -> &mut V {
        if !self.rows.contains_key(key) {
            if self.rows.len() >= self.cap {
                self.overflowed_keys += 1;
                return &mut self.overflow;
            }
            self.rows.insert(key.clone(), V::default());
        }
        // Present by now.
        self.rows.get_mut(key).unwrap_or(&mut self.overflow)
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

    pub fn overflow(&self) -> &V {
        &self.overflow
    }

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
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.get(&1), Some(&2));
        assert_eq!(*rows.overflow(), 12);
        assert_eq!(rows.overflowed_keys(), 2);
    }
}
