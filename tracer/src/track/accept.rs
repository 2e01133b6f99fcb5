//! The accept queue: how long each handshake-complete child waits for the
//! application's `accept()`, and how full its listener's queue is.
//!
//! A child joins its listener's queue when its handshake completes (its
//! request's `timer_cancel`, which also samples the listener's
//! `sk_ack_backlog`/`sk_max_ack_backlog`, the `Recv-Q`/`Send-Q` of `ss
//! -lnt`); it leaves when `accept()` returns it (`sys_exit_accept4` /
//! `sys_exit_accept`, which name the child's socket through the returned
//! descriptor). A slow acceptor shows as long waits and a queue near its
//! limit long before the queue overflows and handshakes are dropped.

use super::{capped::CappedMap, rows::BoundedRows, synrecv::Completed};
use crate::{
    event::Owner,
    stats::{Histo, Precision},
};

/// accept()s remembered for a handshake not seen yet (see
/// [`AcceptTracker::accepted`]).
const EARLY_ACCEPTS: usize = 4096;

/// Per listener (keyed as the SYN_RECV rows are, by the listener's kernel
/// address).
#[derive(Clone, Debug)]
pub struct AcceptRow {
    pub accepted: u64,
    /// Handshake complete to accept() returned, ns recorded as µs.
    pub wait: Histo,
    /// Queue depth each child found, itself included.
    pub depth: Histo,
    pub depth_max: u32,
    /// The listener's limit (`listen()` backlog capped by somaxconn), last seen.
    pub limit: Option<u32>,
}

impl Default for AcceptRow {
    fn default() -> Self {
        Self {
            accepted: 0,
            wait: Histo::new(Precision::Coarse),
            depth: Histo::new(Precision::Coarse),
            depth_max: 0,
            limit: None,
        }
    }
}

pub struct AcceptTracker {
    /// Children in an accept queue: cookie -> (listener, joined at), oldest
    /// first (at the cap the oldest is forgotten: a child never accepted).
    waiting: CappedMap<u64, (u64, u64)>,
    /// accept()s whose child's handshake had not been seen yet: cookie ->
    /// (when, by whom). An accept() on another CPU can take the child off
    /// the queue before the softirq that queued it reaches the child's
    /// next transition, which sends the held child's events (Linux 6.1,
    /// 6.12) or, on a slow machine, before its events are read: they
    /// complete when the handshake shows up.
    early: CappedMap<u64, (u64, Option<Owner>)>,
    pub listeners: BoundedRows<u64, AcceptRow>,
    pub wait: Histo,
    pub accepted: u64,
    /// accept() returned a socket whose handshake was not seen (older than
    /// tracing, syncookies, or forgotten at the cap).
    pub unmatched: u64,
    /// Children forgotten at the cap while still waiting.
    pub evicted: u64,
}

impl AcceptTracker {
    pub fn new(max_records: usize, max_rows: usize) -> Self {
        Self {
            waiting: CappedMap::new(max_records),
            early: CappedMap::new(EARLY_ACCEPTS),
            listeners: BoundedRows::new(max_rows),
            wait: Histo::new(Precision::Fine),
            accepted: 0,
            unmatched: 0,
            evicted: 0,
        }
    }

    /// Children waiting for accept() now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A handshake completed: its child joins the queue. Returns the
    /// owner of an accept() that came first (the child is accepted now).
    pub fn joined(&mut self, done: &Completed) -> Option<Option<Owner>> {
        if let Some((depth, limit)) = done.accept_queue {
            let row = self.listeners.row(&done.listener);
            // The sample is taken just before the child is added.
            let depth = depth.saturating_add(1);
            row.depth.record_value(u64::from(depth));
            row.depth_max = row.depth_max.max(depth);
            row.limit = Some(limit);
        }
        if let Some((accepted_ns, owner)) = self.early.remove(&done.child) {
            self.unmatched = self.unmatched.saturating_sub(1);
            self.waiting.insert(done.child, (done.listener, done.at_ns));
            self.accepted(done.child, accepted_ns.max(done.at_ns), None);
            return Some(owner);
        }
        if self.waiting.insert(done.child, (done.listener, done.at_ns)).is_some() {
            self.evicted += 1;
        }
        None
    }

    /// accept() returned the child `cookie` (by `owner`): its listener
    /// and its wait in ns, when its handshake was seen; otherwise it is
    /// remembered for the handshake, and counted as unmatched until then.
    pub fn accepted(&mut self, cookie: u64, ts_ns: u64, owner: Option<Owner>) -> Option<(u64, u64)> {
        let Some((listener, since)) = self.waiting.remove(&cookie) else {
            self.unmatched += 1;
            self.early.insert(cookie, (ts_ns, owner));
            return None;
        };
        let wait = ts_ns.saturating_sub(since);
        self.accepted += 1;
        self.wait.record_ns(wait);
        let row = self.listeners.row(&listener);
        row.accepted += 1;
        row.wait.record_ns(wait);
        Some((listener, wait))
    }

    /// A child closed: it no longer waits (closed before accept(): reset
    /// by the client, or its listener closed).
    pub fn closed(&mut self, cookie: u64) {
        self.waiting.remove(&cookie);
        self.early.remove(&cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn done(child: u64, at_ms: u64, queue: Option<(u32, u32)>) -> Completed {
        Completed { child, retransmits: 0, listener: 0xabc, at_ns: at_ms * MS, accept_queue: queue }
    }

    #[test]
    fn the_wait_runs_from_handshake_to_accept_per_listener() {
        let mut t = AcceptTracker::new(16, 16);
        t.joined(&done(1, 100, Some((0, 128))));
        t.joined(&done(2, 110, Some((1, 128))));
        t.joined(&done(3, 120, Some((2, 128))));
        assert_eq!(t.waiting(), 3);
        assert_eq!(t.accepted(1, 600 * MS, None), Some((0xabc, 500 * MS)));
        assert_eq!(t.accepted(2, 610 * MS, None), Some((0xabc, 500 * MS)));
        assert_eq!(t.accepted(9, 610 * MS, None), None, "never seen joining");
        assert_eq!((t.accepted, t.unmatched, t.waiting()), (2, 1, 1));
        let row = t.listeners.iter().next().expect("one listener").1;
        assert_eq!(row.accepted, 2);
        assert_eq!(row.depth_max, 3, "the third child found two ahead of it");
        assert_eq!(row.limit, Some(128));
        assert_eq!(row.depth.summary().count, 3);
        assert!(row.wait.summary().p50 >= 499_000, "{:?}", row.wait.summary());
    }

    /// accept() read before the handshake that queued the child: the wait
    /// completes when the handshake shows up, and it is not unmatched.
    #[test]
    fn an_accept_before_its_handshake_completes_when_the_handshake_shows_up() {
        let mut t = AcceptTracker::new(16, 16);
        assert_eq!(t.accepted(7, 400 * MS, None), None);
        assert_eq!(t.unmatched, 1);
        assert_eq!(t.joined(&done(7, 100, Some((0, 8)))), Some(None));
        assert_eq!((t.accepted, t.unmatched, t.waiting()), (1, 0, 0));
        let row = t.listeners.iter().next().expect("the listener").1;
        assert!(
            (298_000..=302_000).contains(&row.wait.summary().p50),
            "2 significant digits: {:?}",
            row.wait.summary()
        );
    }

    #[test]
    fn closed_children_stop_waiting_and_the_cap_holds() {
        let mut t = AcceptTracker::new(2, 16);
        t.joined(&done(1, 1, None));
        t.closed(1);
        assert_eq!(t.accepted(1, 5 * MS, None), None);
        for child in 10..15 {
            t.joined(&done(child, 2, None));
        }
        assert_eq!(t.waiting(), 2);
        assert_eq!(t.evicted, 3);
        assert!(t.listeners.iter().next().is_none(), "no queue sample, no row");
    }
}
