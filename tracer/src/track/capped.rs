//! A capped map that evicts its oldest entry: the shape of every table of
//! records the tracker keeps (socket records, TIME_WAIT records, request
//! sockets, children awaiting their request). Memory is bounded by the cap;
//! what an eviction means (counted, accounted as closed, a destination row
//! decremented) is the caller's business, so the evicted entry is returned.

use std::{collections::VecDeque, hash::Hash};

// foldhash, as the rest of the tracker: keys are cookies, kernel addresses
// and tuples from our own kernel programs, not attacker-chosen strings.
use foldhash::{HashMap, HashMapExt as _};

/// A `HashMap` with a cap, that remembers insertion order to evict the
/// oldest live entry.
#[derive(Debug, Clone)]
pub struct CappedMap<K, V> {
    /// Each value with the insertion sequence number of its entry.
    map: HashMap<K, (u64, V)>,
    /// (key, seq) in insertion order. Entries whose key was removed since,
    /// or re-inserted (a newer seq), are stale: skipped when met, and
    /// compacted away so that the queue stays within `2 * len + 1024`.
    order: VecDeque<(K, u64)>,
    cap: usize,
    next_seq: u64,
}

impl<K: Hash + Eq + Clone, V> CappedMap<K, V> {
    /// A cap of 0 behaves as 1 (the newest entry is always kept), as the
    /// tables did before they shared this type.
    pub fn new(cap: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), cap: cap.max(1), next_seq: 0 }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|(_, v)| v)
    }

    /// Removes an entry (its order entry goes stale).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(_, v)| v)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(_, v)| v)
    }

    /// Inserts `value` as the newest entry. At the cap, the oldest entry is
    /// evicted first and returned, for the caller to count and account. The
    /// cap is enforced before the insert, also when `key` is present (its
    /// value is then replaced, and it becomes the newest).
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let evicted = if self.map.len() >= self.cap { self.pop_oldest() } else { None };
        self.push(key, value);
        evicted
    }

    /// Inserts `value` as the newest entry without enforcing the cap, for
    /// callers that enforce it later (a socket record is inserted before its
    /// class is known) or over several tables; returns the replaced value.
    pub fn push(&mut self, key: K, value: V) -> Option<V> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key.clone(), seq));
        let replaced = self.map.insert(key, (seq, value)).map(|(_, v)| v);
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order.retain(|(key, seq)| map.get(key).is_some_and(|(s, _)| s == seq));
        }
        replaced
    }

    /// The oldest live entry, after dropping the stale order entries ahead
    /// of it.
    pub fn oldest(&mut self) -> Option<(&K, &V)> {
        while let Some((key, seq)) = self.order.front() {
            if let Some((k, (s, v))) = self.map.get_key_value(key)
                && s == seq
            {
                return Some((k, v));
            }
            self.order.pop_front();
        }
        None
    }

    /// Takes out the oldest live entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|(s, _)| *s == seq) {
                return self.map.remove(&key).map(|(_, v)| (key, v));
            }
        }
        None
    }

    /// Order entries held (live and stale), for the compaction test.
    #[cfg(test)]
    fn order_len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(m: &mut CappedMap<u32, u32>) -> Vec<u32> {
        std::iter::from_fn(|| m.pop_oldest().map(|(k, _)| k)).collect()
    }

    #[test]
    fn evicts_the_oldest_at_the_cap_and_returns_it() {
        let mut m = CappedMap::new(3);
        for k in 1..=3 {
            assert_eq!(m.insert(k, k * 10), None);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.insert(4, 40), Some((1, 10)));
        assert_eq!(m.insert(5, 50), Some((2, 20)));
        assert_eq!((m.len(), m.get(&3), m.contains(&1)), (3, Some(&30), false));
        assert_eq!(m.oldest(), Some((&3, &30)));
        assert_eq!(keys(&mut m), vec![3, 4, 5]);
        assert!(m.is_empty());
        assert_eq!(m.pop_oldest(), None);
        assert_eq!(m.oldest(), None);
    }

    #[test]
    fn removed_entries_are_skipped_and_free_room() {
        let mut m = CappedMap::new(3);
        for k in 1..=3 {
            m.insert(k, k);
        }
        assert_eq!(m.remove(&1), Some(1));
        assert_eq!(m.remove(&1), None);
        // Room for one more without eviction; then 2 is the oldest.
        assert_eq!(m.insert(4, 4), None);
        assert_eq!(m.insert(5, 5), Some((2, 2)));
        *m.get_mut(&3).expect("live") += 100;
        assert_eq!(m.insert(6, 6), Some((3, 103)));
    }

    #[test]
    fn a_key_removed_and_inserted_again_is_the_newest() {
        let mut m = CappedMap::new(3);
        for k in 1..=3 {
            m.insert(k, k);
        }
        // 1 goes and comes back: its first order entry is stale, and must
        // not evict it as if it were still the oldest.
        m.remove(&1);
        m.insert(1, 11);
        assert_eq!(m.insert(4, 4), Some((2, 2)));
        assert_eq!(m.insert(5, 5), Some((3, 3)));
        assert_eq!(m.insert(6, 6), Some((1, 11)));
        // Replacing a present key at the cap: the oldest goes first, the
        // replaced key becomes the newest.
        assert_eq!(m.insert(5, 55), Some((4, 4)));
        assert_eq!(m.len(), 2);
        assert_eq!(keys(&mut m), vec![6, 5]);
    }

    #[test]
    fn push_ignores_the_cap_until_the_caller_evicts() {
        let mut m = CappedMap::new(2);
        for k in 1..=4 {
            assert_eq!(m.push(k, k), None);
        }
        assert_eq!(m.push(4, 44), Some(4));
        assert_eq!(m.len(), 4);
        while m.len() > m.cap() {
            m.pop_oldest();
        }
        assert_eq!(keys(&mut m), vec![3, 4]);
    }

    #[test]
    fn a_cap_of_one_keeps_the_newest() {
        let mut m = CappedMap::new(1);
        assert_eq!(m.insert(1, 1), None);
        assert_eq!(m.insert(2, 2), Some((1, 1)));
        assert_eq!(m.insert(2, 3), Some((2, 2)), "replacing at the cap of 1 evicts the old value");
        assert_eq!((m.len(), m.get(&2)), (1, Some(&3)));
        assert_eq!(CappedMap::<u32, u32>::new(0).cap(), 1);
    }

    #[test]
    fn the_order_queue_stays_bounded() {
        let mut m = CappedMap::new(100);
        for i in 0..100_000u32 {
            // Churn: inserts and removals, and re-inserts of live keys at
            // the cap.
            m.insert(i, i);
            if i % 3 != 0 {
                m.remove(&i);
            } else {
                m.insert(i, i + 1);
            }
            // Compaction happens at a push; a removal after it may shrink
            // `len` by one.
            assert!(m.order_len() <= 2 * (m.len() + 1) + 1024, "{} for {}", m.order_len(), m.len());
        }
        assert!(m.len() <= 100);
        // Still the oldest first after all that.
        let survivors = keys(&mut m);
        assert!(survivors.len() >= 99);
        assert!(survivors.iter().all(|k| k % 3 == 0));
        assert!(survivors.windows(2).all(|w| w[0] < w[1]), "{survivors:?}");
    }
}
