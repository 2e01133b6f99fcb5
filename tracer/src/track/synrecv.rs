//! Request sockets: the SYN_RECV that `ss`/`netstat` show, from the SYN's
//! arrival to the end of the handshake.
//!
//! A request socket (TCP_NEW_SYN_RECV) gets no state event (KERNEL-NOTES.md);
//! its life is read from its timer (`rsk_timer`, callback
//! `reqsk_timer_handler`) and from `tcp_retransmit_synack`:
//!
//! - born: first `timer_start` (armed in `reqsk_queue_hash_req` when the SYN
//!   arrives and the SYN-ACK goes out);
//! - SYN-ACK retransmits: `tcp_retransmit_synack` (timer-driven or in answer to
//!   a duplicate SYN);
//! - completed: `timer_cancel` right after the child socket's
//!   LISTEN -> SYN_RECV with the same tuple (`inet_csk_complete_hashdance`);
//! - dropped: `timer_expire_entry` followed by `timer_expire_exit` without a
//!   re-arm in between (the handler gave up): by timeout (no final ACK), by
//!   TCP_DEFER_ACCEPT expiry (ACK but no data), because the accept queue was
//!   full when the final ACK came, or because the listener closed; or
//!   `timer_cancel` without a child: reset (RST, abort_on_overflow).
//!
//! Handshakes without a request socket (syncookies) show up as a child with
//! no known request and are counted separately.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use serde::Serialize;

use super::rows::BoundedRows;
use crate::{
    event::{Event, Lifecycle, Owner, Tuple},
    stats::{Histo, Precision, human_us},
};

/// A child socket and the cancel of its request happen in the same softirq;
/// remember children this long (event time) to pair them.
const CHILD_MEMORY_NS: u64 = 1_000_000_000;

/// The timer core also "cancels" (detaches) a timer just before it runs it:
/// a cancel without a child waits this long for the expiry that explains it.
const CANCEL_GRACE_NS: u64 = 10_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drop {
    /// No final ACK before `tcp_synack_retries` ran out.
    SynackTimeout,
    /// TCP_DEFER_ACCEPT: the ACK came, no data before the deadline.
    DeferAcceptTimeout,
    /// The final ACK came while the accept queue was full (listen overflow).
    AcceptQueueFull,
    /// The listener was closed.
    ListenerClosed,
    /// Removed without a child: RST from the client, or abort_on_overflow.
    Reset,
}

impl Drop {
    pub const ALL: [Drop; 5] = [
        Self::SynackTimeout,
        Self::DeferAcceptTimeout,
        Self::AcceptQueueFull,
        Self::ListenerClosed,
        Self::Reset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SynackTimeout => "synack_timeout",
            Self::DeferAcceptTimeout => "defer_accept_timeout",
            Self::AcceptQueueFull => "accept_queue_full",
            Self::ListenerClosed => "listener_closed",
            Self::Reset => "reset",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::SynackTimeout => "no final ACK after the SYN-ACK retries (tcp_synack_retries)",
            Self::DeferAcceptTimeout => "ACK but no data before TCP_DEFER_ACCEPT expired",
            Self::AcceptQueueFull => "final ACK came while the accept queue was full (listen overflow)",
            Self::ListenerClosed => "the listener was closed",
            Self::Reset => "reset (RST from the client or tcp_abort_on_overflow)",
        }
    }
}

/// Per listener figures. The key is the listener's kernel address; the row
/// keeps its identity for the report.
#[derive(Clone, Debug)]
pub struct ListenerRow {
    pub netns: u32,
    pub local: std::net::SocketAddr,
    pub owner: Option<Owner>,
    pub completed: u64,
    pub dropped: HashMap<Drop, u64>,
    pub synack_retransmits: u64,
    pub dwell: Histo,
}

impl Default for ListenerRow {
    fn default() -> Self {
        Self {
            netns: 0,
            local: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            owner: None,
            completed: 0,
            dropped: HashMap::new(),
            synack_retransmits: 0,
            dwell: Histo::new(Precision::Coarse),
        }
    }
}

#[derive(Clone, Debug)]
struct Request {
    born_ns: u64,
    listener: u64,
    netns: u32,
    tuple: Tuple,
    retransmits: u32,
    /// Set between timer expiry and the handler's return.
    expiring: Option<Drop>,
    rearmed: bool,
    /// A cancel without a child, waiting for its explanation.
    cancelled_at: Option<u64>,
}

pub struct SynRecvTracker {
    live: HashMap<u64, Request>,
    /// (sock, born) in creation order, for evicting the oldest at the cap.
    order: VecDeque<(u64, u64)>,
    /// Live requests by (netns, tuple).
    by_tuple: HashMap<(u32, Tuple), u64>,
    /// (sock, ts) of cancels without a child, oldest first.
    pending_cancels: VecDeque<(u64, u64)>,
    /// Children created recently: (netns, tuple) -> (ts, cookie).
    children: HashMap<(u32, Tuple), (u64, u64)>,
    children_order: VecDeque<(u64, u32, Tuple)>,
    /// Request sockets not tracked (evicted, or born before tracing) whose
    /// timer handler is running: a `timer_start` now is their re-arm, not a
    /// new SYN. Holds an entry only between expiry and the handler's return.
    untracked_expiring: HashSet<u64>,
    max_records: usize,
    pub created: u64,
    pub completed: u64,
    pub dropped: HashMap<Drop, u64>,
    pub synack_retransmits: u64,
    /// Children with no request seen: syncookies, or requests older than tracing.
    pub children_without_request: u64,
    /// Requests dropped at the cap (`max_records`).
    pub evicted: u64,
    /// Children forgotten at the cap before their request's cancel paired
    /// with them.
    pub children_evicted: u64,
    /// Re-arms of request sockets not tracked (evicted or older than
    /// tracing): not counted as new requests.
    pub untracked_rearms: u64,
    pub dwell: Histo,
    pub listeners: BoundedRows<u64, ListenerRow>,
    pub emit_lifecycle: bool,
    pub lifecycle: Vec<Lifecycle>,
}

/// What the connection tracker knows about a listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerInfo {
    pub local: std::net::SocketAddr,
    pub owner: Option<Owner>,
}

impl SynRecvTracker {
    pub fn new(max_records: usize, max_rows: usize) -> Self {
        Self {
            live: HashMap::new(),
            order: VecDeque::new(),
            by_tuple: HashMap::new(),
            pending_cancels: VecDeque::new(),
            children: HashMap::new(),
            children_order: VecDeque::new(),
            untracked_expiring: HashSet::new(),
            max_records,
            created: 0,
            completed: 0,
            dropped: HashMap::new(),
            synack_retransmits: 0,
            children_without_request: 0,
            evicted: 0,
            children_evicted: 0,
            untracked_rearms: 0,
            dwell: Histo::new(Precision::Fine),
            listeners: BoundedRows::new(max_rows),
            emit_lifecycle: false,
            lifecycle: Vec::new(),
        }
    }

    /// Request sockets alive now.
    pub fn current(&self) -> usize {
        self.live.len()
    }

    /// The cap on request records (and on children awaiting pairing).
    pub fn max_records(&self) -> usize {
        self.max_records
    }

    /// Children awaiting their request's cancel.
    pub fn children_waiting(&self) -> usize {
        self.children.len()
    }

    /// Request sockets alive now, by listener (the key of `listeners`), with
    /// the namespace and local address of one of them for listeners without
    /// a row yet.
    pub fn current_by_listener(&self) -> HashMap<u64, (u32, std::net::SocketAddr, u64)> {
        let mut by = HashMap::new();
        for r in self.live.values() {
            by.entry(r.listener).or_insert((r.netns, r.tuple.local, 0)).2 += 1;
        }
        by
    }

    /// The listener's row; its identity is the listener's bound address when
    /// the tracker knows the listener, else the request's local address.
    fn listener_row(
        &mut self,
        listener: u64,
        netns: u32,
        tuple: &Tuple,
        info: Option<ListenerInfo>,
    ) -> &mut ListenerRow {
        let row = self.listeners.row(&listener);
        if row.netns == 0 {
            row.netns = netns;
            row.local = info.map_or(tuple.local, |i| i.local);
        }
        if row.owner.is_none() {
            row.owner = info.and_then(|i| i.owner);
        }
        row
    }

    /// `timer_start` on a request timer: the SYN arrived, or a re-arm.
    pub fn armed(&mut self, ev: &Event, listener: u64, info: Option<ListenerInfo>) {
        if let Some(req) = self.live.get_mut(&ev.sock) {
            if req.tuple == ev.tuple {
                req.rearmed = true;
                return;
            }
            // Address reused by a new request: the old one's end was missed.
            self.remove(ev.sock);
            self.evicted += 1;
        } else if self.untracked_expiring.contains(&ev.sock) {
            // Re-armed by its own timer handler: an old request we do not
            // track, not a new SYN.
            self.untracked_rearms += 1;
            return;
        }
        while self.live.len() >= self.max_records {
            // Oldest first; request sockets live seconds at most.
            let Some((sock, born)) = self.order.pop_front() else { break };
            if self.live.get(&sock).is_some_and(|r| r.born_ns == born) {
                self.remove(sock);
                self.evicted += 1;
            }
        }
        self.order.push_back((ev.sock, ev.ts_ns));
        if self.order.len() > 2 * self.live.len() + 1024 {
            let live = &self.live;
            self.order.retain(|(sock, born)| live.get(sock).is_some_and(|r| r.born_ns == *born));
        }
        self.created += 1;
        self.listener_row(listener, ev.netns, &ev.tuple, info);
        self.by_tuple.insert((ev.netns, ev.tuple), ev.sock);
        self.live.insert(
            ev.sock,
            Request {
                born_ns: ev.ts_ns,
                listener,
                netns: ev.netns,
                tuple: ev.tuple,
                retransmits: 0,
                expiring: None,
                rearmed: false,
                cancelled_at: None,
            },
        );
        if self.emit_lifecycle {
            self.lifecycle.push(Lifecycle {
                ts_ns: ev.ts_ns,
                event: "syn_recv_start",
                netns: ev.netns,
                tuple: ev.tuple,
                owner: info.and_then(|i| i.owner),
                outcome: None,
                duration_ns: None,
                detail: "SYN received: request socket in SYN_RECV, SYN-ACK sent".to_string(),
            });
        }
    }

    pub fn synack_retransmitted(&mut self, ev: &Event, listener: u64) {
        self.synack_retransmits += 1;
        self.listeners.row(&listener).synack_retransmits += 1;
        if let Some(req) = self.live.get_mut(&ev.sock) {
            req.retransmits += 1;
        }
    }

    /// `timer_expire_entry`: what the handler will decide depends on these flags.
    pub fn expired(&mut self, ev: &Event, acked: bool, listener_gone: bool, defer_accept: u8) {
        if !self.live.contains_key(&ev.sock) {
            // Timer handlers do not nest on a CPU and each ends with
            // `expire_done`: this set holds a few entries at most. Bounded
            // anyway, should an `expire_done` be lost.
            if self.untracked_expiring.len() >= 1024 {
                self.untracked_expiring.clear();
            }
            self.untracked_expiring.insert(ev.sock);
        }
        if let Some(req) = self.live.get_mut(&ev.sock) {
            // The cancel just before was the timer core detaching it to run it.
            req.cancelled_at = None;
            req.rearmed = false;
            req.expiring = Some(if listener_gone {
                Drop::ListenerClosed
            } else if acked && defer_accept > 0 {
                Drop::DeferAcceptTimeout
            } else if acked {
                Drop::AcceptQueueFull
            } else {
                Drop::SynackTimeout
            });
        }
    }

    /// `timer_expire_exit`: no re-arm since the expiry means the request is gone.
    pub fn expire_done(&mut self, ev: &Event) {
        self.untracked_expiring.remove(&ev.sock);
        let Some(req) = self.live.get_mut(&ev.sock) else { return };
        let Some(reason) = req.expiring.take() else { return };
        if req.rearmed {
            return;
        }
        if let Some(req) = self.remove(ev.sock) {
            self.finish_dropped(req, ev.ts_ns, reason);
        }
    }

    /// A child socket was created (LISTEN -> SYN_RECV): remember it for the
    /// cancel of its request, which normally follows. If the cancel came
    /// first and is still within its grace period, this child completes the
    /// request now; returns the child's cookie and the request's SYN-ACK
    /// retransmits then, as [`Self::cancelled`] does.
    pub fn child_created(&mut self, ev: &Event) -> Option<(u64, u32)> {
        self.forget_old_children(ev.ts_ns);
        while self.children.len() >= self.max_records {
            // Oldest first.
            let Some((ts, netns, tuple)) = self.children_order.pop_front() else { break };
            if self.children.get(&(netns, tuple)).is_some_and(|(t, _)| *t == ts) {
                self.children.remove(&(netns, tuple));
                self.children_evicted += 1;
            }
        }
        self.children.insert((ev.netns, ev.tuple), (ev.ts_ns, ev.cookie));
        self.children_order.push_back((ev.ts_ns, ev.netns, ev.tuple));
        // A child with no live request: syncookies (or a request from before tracing).
        if !self.by_tuple.contains_key(&(ev.netns, ev.tuple)) {
            self.children_without_request += 1;
        }
        if self.children_order.len() > 2 * self.children.len() + 1024 {
            // Entries of children already paired: drop them.
            let children = &self.children;
            self.children_order
                .retain(|(ts, netns, tuple)| children.get(&(*netns, *tuple)).is_some_and(|(t, _)| t == ts));
        }
        // The cancel came first: it ran on another CPU (the handler of a
        // SYN-ACK retransmit racing the final ACK it provoked), or the
        // kernel orders them so. Without this the request would pass for
        // reset when its grace period ends.
        let sock = *self.by_tuple.get(&(ev.netns, ev.tuple))?;
        self.live.get(&sock)?.cancelled_at?;
        self.children.remove(&(ev.netns, ev.tuple));
        let req = self.remove(sock)?;
        let retransmits = req.retransmits;
        self.finish_completed(req, ev.ts_ns);
        Some((ev.cookie, retransmits))
    }

    fn forget_old_children(&mut self, now_ns: u64) {
        while let Some(&(ts, netns, tuple)) = self.children_order.front() {
            if now_ns.saturating_sub(ts) < CHILD_MEMORY_NS {
                break;
            }
            self.children_order.pop_front();
            if self.children.get(&(netns, tuple)).is_some_and(|(t, _)| *t == ts) {
                self.children.remove(&(netns, tuple));
            }
        }
    }

    /// `timer_cancel`: completed if its child was just created; otherwise a
    /// reset, unless the timer's expiry follows (the timer core detaches a
    /// timer before running it, which looks like a cancel). Returns the
    /// child's cookie and the request's SYN-ACK retransmits on completion.
    pub fn cancelled(&mut self, ev: &Event) -> Option<(u64, u32)> {
        let req = self.live.get_mut(&ev.sock)?;
        if let Some((child_ns, child_cookie)) = self.children.remove(&(req.netns, req.tuple)) {
            let req = self.remove(ev.sock)?;
            let retransmits = req.retransmits;
            self.finish_completed(req, child_ns);
            return Some((child_cookie, retransmits));
        }
        req.cancelled_at = Some(ev.ts_ns);
        self.pending_cancels.push_back((ev.sock, ev.ts_ns));
        None
    }

    /// Resolves cancels older than the grace period: the request was reset.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some(&(sock, ts)) = self.pending_cancels.front() {
            if now_ns != u64::MAX && now_ns.saturating_sub(ts) < CANCEL_GRACE_NS {
                return;
            }
            self.pending_cancels.pop_front();
            if self.live.get(&sock).is_some_and(|r| r.cancelled_at == Some(ts))
                && let Some(req) = self.remove(sock)
            {
                self.finish_dropped(req, ts, Drop::Reset);
            }
        }
    }

    fn remove(&mut self, sock: u64) -> Option<Request> {
        let req = self.live.remove(&sock)?;
        if self.by_tuple.get(&(req.netns, req.tuple)) == Some(&sock) {
            self.by_tuple.remove(&(req.netns, req.tuple));
        }
        Some(req)
    }

    fn finish_completed(&mut self, req: Request, at_ns: u64) {
        let dwell = at_ns.saturating_sub(req.born_ns);
        self.completed += 1;
        self.dwell.record_ns(dwell);
        let row = self.listeners.row(&req.listener);
        row.completed += 1;
        row.dwell.record_ns(dwell);
        let owner = row.owner;
        if self.emit_lifecycle {
            self.lifecycle.push(Lifecycle {
                ts_ns: at_ns,
                event: "syn_recv_end",
                netns: req.netns,
                tuple: req.tuple,
                owner,
                outcome: Some("established"),
                duration_ns: Some(dwell),
                detail: format!(
                    "handshake complete: request socket was in SYN_RECV for {} ({} SYN-ACK retransmits)",
                    human_us(dwell / 1000),
                    req.retransmits
                ),
            });
        }
    }

    fn finish_dropped(&mut self, req: Request, at_ns: u64, reason: Drop) {
        let age = at_ns.saturating_sub(req.born_ns);
        *self.dropped.entry(reason).or_default() += 1;
        let row = self.listeners.row(&req.listener);
        *row.dropped.entry(reason).or_default() += 1;
        let owner = row.owner;
        if self.emit_lifecycle {
            self.lifecycle.push(Lifecycle {
                ts_ns: at_ns,
                event: "syn_recv_end",
                netns: req.netns,
                tuple: req.tuple,
                owner,
                outcome: Some(reason.name()),
                duration_ns: Some(age),
                detail: format!(
                    "request dropped after {} in SYN_RECV, {} SYN-ACK retransmits: {}",
                    human_us(age / 1000),
                    req.retransmits,
                    reason.describe()
                ),
            });
        }
    }

    /// Retransmits of a request still alive (for tests and the live view).
    pub fn retransmits_of(&self, sock: u64) -> Option<u32> {
        self.live.get(&sock).map(|r| r.retransmits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::EventKind,
        track::tests::{Sock, softirq},
    };

    const LISTENER: u64 = 0xaaaa;

    fn req(cookie: u64) -> Sock {
        Sock::new(cookie, "198.18.0.2:8080", &format!("198.18.0.1:{}", 40000 + cookie))
    }

    fn info() -> Option<ListenerInfo> {
        Some(ListenerInfo {
            local: "0.0.0.0:8080".parse().expect("addr"),
            owner: Some(Owner::of(&crate::track::tests::task(20, "ttserver"))),
        })
    }

    fn armed(s: &Sock, ms: u64) -> Event {
        s.event(ms, EventKind::RequestArmed { listener: LISTENER, retransmits: 0 }, softirq(), false)
    }

    fn child(s: &Sock, ms: u64) -> Event {
        let mut c = Sock::new(s.cookie + 1000, &s.tuple.local.to_string(), &s.tuple.remote.to_string());
        c.netns = s.netns;
        c.irq(ms, crate::event::TcpState::Listen, crate::event::TcpState::SynRecv)
    }

    fn tracker() -> SynRecvTracker {
        let mut t = SynRecvTracker::new(1000, 100);
        t.emit_lifecycle = true;
        t
    }

    #[test]
    fn completed_handshake_measures_syn_to_child() {
        let mut t = tracker();
        let r = req(1);
        t.armed(&armed(&r, 100), LISTENER, info());
        t.child_created(&child(&r, 350));
        t.cancelled(&r.event(
            350,
            EventKind::RequestCancelled { listener: LISTENER, retransmits: 0 },
            softirq(),
            false,
        ));
        assert_eq!((t.created, t.completed, t.current()), (1, 1, 0));
        assert!(t.dwell.summary().p50.abs_diff(250_000) <= 250);
        let row = t.listeners.get(&LISTENER).expect("row");
        assert_eq!(row.completed, 1);
        assert_eq!(row.owner.map(|o| o.pid), Some(20));
        assert_eq!(t.children_without_request, 0);
        let end = t.lifecycle.last().expect("line");
        assert_eq!((end.event, end.outcome), ("syn_recv_end", Some("established")));
    }

    #[test]
    fn synack_retransmit_then_completion() {
        let mut t = tracker();
        let r = req(1);
        t.armed(&armed(&r, 0), LISTENER, info());
        t.expired(&r.event(1000, EventKind::RequestExpireDone, softirq(), false), false, false, 0);
        t.synack_retransmitted(
            &r.event(
                1000,
                EventKind::SynAckRetransmit { listener: LISTENER, retransmits: 1 },
                softirq(),
                false,
            ),
            LISTENER,
        );
        t.armed(&armed(&r, 1000), LISTENER, info()); // re-arm in the handler
        t.expire_done(&r.event(1000, EventKind::RequestExpireDone, softirq(), false));
        assert_eq!(t.current(), 1, "re-armed: still alive");
        assert_eq!(t.retransmits_of(r.sock), Some(1));
        t.child_created(&child(&r, 1002));
        t.cancelled(&r.event(
            1002,
            EventKind::RequestCancelled { listener: LISTENER, retransmits: 1 },
            softirq(),
            false,
        ));
        assert_eq!((t.created, t.completed, t.synack_retransmits), (1, 1, 1));
        assert!(t.dwell.summary().p50.abs_diff(1_002_000) <= 1_100);
    }

    #[test]
    fn drops_are_classified_by_what_the_handler_saw() {
        let cases = [
            ((false, false, 0), Drop::SynackTimeout),
            ((true, false, 5), Drop::DeferAcceptTimeout),
            ((true, false, 0), Drop::AcceptQueueFull),
            ((false, true, 0), Drop::ListenerClosed),
        ];
        for ((acked, gone, defer), expected) in cases {
            let mut t = tracker();
            let r = req(1);
            t.armed(&armed(&r, 0), LISTENER, info());
            t.expired(&r.event(3000, EventKind::RequestExpireDone, softirq(), false), acked, gone, defer);
            t.expire_done(&r.event(3000, EventKind::RequestExpireDone, softirq(), false));
            assert_eq!(t.dropped.get(&expected), Some(&1), "{expected:?}");
            assert_eq!(t.current(), 0);
            let end = t.lifecycle.last().expect("line");
            assert_eq!(end.duration_ns, Some(3_000_000_000));
        }
    }

    #[test]
    fn cancel_without_a_child_is_a_reset() {
        let mut t = tracker();
        let r = req(1);
        t.armed(&armed(&r, 0), LISTENER, info());
        t.cancelled(&r.event(
            5,
            EventKind::RequestCancelled { listener: LISTENER, retransmits: 0 },
            softirq(),
            false,
        ));
        t.tick(5 * crate::track::tests::MS + CANCEL_GRACE_NS - 1);
        assert_eq!(t.dropped.get(&Drop::Reset), None, "within the grace period");
        t.tick(5 * crate::track::tests::MS + CANCEL_GRACE_NS);
        assert_eq!(t.dropped.get(&Drop::Reset), Some(&1));
    }

    #[test]
    fn a_cancel_before_its_child_is_a_completion() {
        let mut t = tracker();
        let r = req(1);
        t.armed(&armed(&r, 0), LISTENER, info());
        t.cancelled(&r.event(
            1000,
            EventKind::RequestCancelled { listener: LISTENER, retransmits: 1 },
            softirq(),
            false,
        ));
        let done = t.child_created(&child(&r, 1001));
        assert!(done.is_some(), "completed by the child");
        t.tick(5000 * crate::track::tests::MS);
        assert_eq!(t.completed, 1);
        assert!(t.dropped.is_empty(), "{:?}", t.dropped);
        assert_eq!(t.current(), 0);
    }

    #[test]
    fn the_detach_before_an_expiry_is_not_a_cancel() {
        let mut t = tracker();
        let r = req(1);
        t.armed(&armed(&r, 0), LISTENER, info());
        // expire_timers(): timer_cancel, then timer_expire_entry, then re-arm.
        t.cancelled(&r.event(
            1000,
            EventKind::RequestCancelled { listener: LISTENER, retransmits: 0 },
            softirq(),
            false,
        ));
        t.expired(&r.event(1000, EventKind::RequestExpireDone, softirq(), false), false, false, 0);
        t.armed(&armed(&r, 1000), LISTENER, info());
        t.expire_done(&r.event(1000, EventKind::RequestExpireDone, softirq(), false));
        t.tick(2000 * crate::track::tests::MS);
        assert_eq!((t.created, t.current()), (1, 1));
        assert!(t.dropped.is_empty());
    }

    #[test]
    fn child_without_request_is_counted_and_duplicates_do_not_confuse() {
        let mut t = tracker();
        let r = req(1);
        // Syncookie: child, no request.
        t.child_created(&child(&r, 10));
        assert_eq!(t.children_without_request, 1);
        // Same tuple reused later by a real request: its own child pairs with it.
        t.armed(&armed(&r, 2_000), LISTENER, info());
        t.armed(&armed(&r, 2_000), LISTENER, info()); // duplicate arm = re-arm
        assert_eq!(t.created, 1);
        t.child_created(&child(&r, 2_100));
        t.cancelled(&r.event(
            2_100,
            EventKind::RequestCancelled { listener: LISTENER, retransmits: 0 },
            softirq(),
            false,
        ));
        assert_eq!(t.completed, 1);
        assert!(t.dwell.summary().p50.abs_diff(100_000) <= 100);
    }

    #[test]
    fn requests_beyond_the_cap_are_evicted_and_their_rearms_are_not_new_requests() {
        let mut t = SynRecvTracker::new(2, 100);
        let reqs: Vec<Sock> = (1..=5).map(req).collect();
        for (i, r) in reqs.iter().enumerate() {
            t.armed(&armed(r, i as u64), LISTENER, info());
        }
        assert_eq!((t.created, t.current(), t.evicted), (5, 2, 3));
        // The SYN-ACK timer of an evicted request fires and re-arms.
        let old = &reqs[0];
        t.expired(&old.event(1000, EventKind::RequestExpireDone, softirq(), false), false, false, 0);
        t.armed(&armed(old, 1000), LISTENER, info());
        t.expire_done(&old.event(1000, EventKind::RequestExpireDone, softirq(), false));
        assert_eq!((t.created, t.current(), t.evicted, t.untracked_rearms), (5, 2, 3, 1));
        // A fresh SYN reusing that address later is a new request again.
        t.armed(&armed(old, 2000), LISTENER, info());
        assert_eq!((t.created, t.evicted), (6, 4));
    }

    #[test]
    fn children_waiting_for_their_request_are_capped() {
        let mut t = SynRecvTracker::new(2, 100);
        for i in 1..=5 {
            t.child_created(&child(&req(i), 10));
        }
        assert_eq!((t.children_waiting(), t.children_evicted), (2, 3));
    }

    #[test]
    fn reused_request_address_starts_a_new_request() {
        let mut t = tracker();
        let a = req(1);
        let mut b = req(2);
        b.sock = a.sock;
        t.armed(&armed(&a, 0), LISTENER, info());
        t.armed(&armed(&b, 10), LISTENER, info());
        assert_eq!((t.created, t.evicted, t.current()), (2, 1, 1));
    }
}
