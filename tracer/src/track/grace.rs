//! Grace queues: an entry waits a fixed span of event time for the event
//! that explains it (an RST after a CLOSE, a re-arm or a recycle after a
//! timewait timer's cancel, the expiry or the child after a request's
//! cancel); if none comes, the caller resolves it to its default.

use std::collections::VecDeque;

/// Entries with the event time they were queued at, oldest first.
#[derive(Debug, Clone)]
pub struct GraceQueue<T> {
    grace_ns: u64,
    entries: VecDeque<(u64, T)>,
}

impl<T> GraceQueue<T> {
    pub fn new(grace_ns: u64) -> Self {
        Self { grace_ns, entries: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues `item` at event time `ts_ns`.
    pub fn push(&mut self, ts_ns: u64, item: T) {
        self.entries.push_back((ts_ns, item));
    }

    /// Takes out the oldest entry `pred` matches (its explanation arrived
    /// within the grace), with its time.
    pub fn take_matching(&mut self, mut pred: impl FnMut(&T) -> bool) -> Option<(u64, T)> {
        let i = self.entries.iter().position(|(_, item)| pred(item))?;
        self.entries.remove(i)
    }

    /// Drops every entry `pred` rejects.
    pub fn retain(&mut self, mut pred: impl FnMut(&T) -> bool) {
        self.entries.retain(|(_, item)| pred(item));
    }

    /// Takes out the oldest entry if its grace is over at `now_ns`
    /// (`u64::MAX`: the end of the run, every entry is over), with its time.
    /// Entries are resolved in queue order: one queued later waits behind
    /// an earlier one still in grace. A method to call in a loop rather
    /// than an iterator, because resolving an entry usually needs the
    /// owner of the queue mutably.
    pub fn pop_expired(&mut self, now_ns: u64) -> Option<(u64, T)> {
        let &(ts_ns, _) = self.entries.front()?;
        if now_ns != u64::MAX && now_ns.saturating_sub(ts_ns) < self.grace_ns {
            return None;
        }
        self.entries.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(q: &mut GraceQueue<&'static str>, now_ns: u64) -> Vec<(u64, &'static str)> {
        std::iter::from_fn(|| q.pop_expired(now_ns)).collect()
    }

    #[test]
    fn entries_expire_after_the_grace_in_order() {
        let mut q = GraceQueue::new(10);
        q.push(100, "a");
        q.push(105, "b");
        q.push(103, "c"); // out of order: waits behind "b"
        assert_eq!(q.len(), 3);
        assert_eq!(expired(&mut q, 109), vec![]);
        assert_eq!(expired(&mut q, 110), vec![(100, "a")]);
        assert_eq!(expired(&mut q, 114), vec![]);
        assert_eq!(expired(&mut q, 115), vec![(105, "b"), (103, "c")]);
        assert!(q.is_empty());
        // A clock behind the entries: nothing is over.
        q.push(200, "d");
        assert_eq!(expired(&mut q, 50), vec![]);
    }

    #[test]
    fn the_end_of_the_run_drains_everything() {
        let mut q = GraceQueue::new(10);
        q.push(u64::MAX - 1, "late");
        q.push(5, "early");
        assert_eq!(expired(&mut q, u64::MAX), vec![(u64::MAX - 1, "late"), (5, "early")]);
        assert!(q.is_empty());
    }

    #[test]
    fn explained_entries_are_taken_out() {
        let mut q = GraceQueue::new(10);
        q.push(1, "a");
        q.push(2, "b");
        q.push(3, "a");
        assert_eq!(q.take_matching(|x| *x == "a"), Some((1, "a")), "the oldest match");
        assert_eq!(q.take_matching(|x| *x == "z"), None);
        q.push(4, "b");
        q.retain(|x| *x != "b");
        assert_eq!(expired(&mut q, u64::MAX), vec![(3, "a")]);
    }
}
