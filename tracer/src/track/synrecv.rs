//! Request sockets: the SYN_RECV that `ss`/`netstat` show, from the SYN's
//! arrival to the end of the handshake.
//!
//! A request socket (TCP_NEW_SYN_RECV) gets no state event (docs/KERNEL-FACTS.md §2.2);
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

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use serde::Serialize;

use super::{
    CANCEL_GRACE_NS,
    capped::CappedMap,
    grace::GraceQueue,
    lifecycle::{Lifecycle, Step},
    rows::BoundedRows,
};
use crate::{
    event::{Event, EventKind, Owner, Tuple},
    stats::{Histo, Precision},
};

/// A child socket and the cancel of its request happen in the same softirq;
/// remember children this long (event time) to pair them.
const CHILD_MEMORY_NS: u64 = 1_000_000_000;

/// Why a request socket ended without a child (`"dropped"` in the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestDrop {
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

impl RequestDrop {
    pub const ALL: [RequestDrop; 5] = [
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
}

/// Per listener figures. The key is the listener's kernel address; the row
/// keeps its identity for the report.
#[derive(Clone, Debug)]
pub struct ListenerRow {
    pub netns: u32,
    pub local: std::net::SocketAddr,
    pub owner: Option<Owner>,
    pub completed: u64,
    pub dropped: HashMap<RequestDrop, u64>,
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
    /// When its SYN-ACK last went out (first: when the SYN arrived).
    last_sent_ns: u64,
    /// Set between timer expiry and the handler's return.
    expiring: Option<RequestDrop>,
    rearmed: bool,
    /// A cancel without a child, waiting for its explanation.
    cancelled_at: Option<u64>,
    /// The listener's accept queue (depth, limit) at the cancel.
    accept_queue: Option<(u32, u32)>,
}

/// A handshake completed: the child, its request's SYN-ACK retransmits,
/// and what the accept queue tracker needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    pub child: u64,
    pub retransmits: u32,
    pub listener: u64,
    /// When the child joined the accept queue.
    pub at_ns: u64,
    /// The accept queue (depth before the child joined, limit).
    pub accept_queue: Option<(u32, u32)>,
}

pub struct SynRecvTracker {
    /// Request sockets by kernel address, oldest first for eviction.
    live: CappedMap<u64, Request>,
    /// Live requests by (netns, tuple).
    by_tuple: HashMap<(u32, Tuple), u64>,
    /// Cancels without a child (by sock), waiting out [`CANCEL_GRACE_NS`]
    /// for the expiry or the child that explains them.
    pending_cancels: GraceQueue<u64>,
    /// Children created recently: (netns, tuple) -> (ts, cookie), oldest
    /// first (forgotten after [`CHILD_MEMORY_NS`], or evicted at the cap).
    children: CappedMap<(u32, Tuple), (u64, u64)>,
    /// Request sockets not tracked (evicted, or born before tracing) whose
    /// timer handler is running: a `timer_start` now is their re-arm, not a
    /// new SYN. Holds an entry only between expiry and the handler's return.
    untracked_expiring: HashSet<u64>,
    max_records: usize,
    pub created: u64,
    pub completed: u64,
    pub dropped: HashMap<RequestDrop, u64>,
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
            live: CappedMap::new(max_records),
            by_tuple: HashMap::new(),
            pending_cancels: GraceQueue::new(CANCEL_GRACE_NS),
            children: CappedMap::new(max_records),
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

    /// Names the owner of a listener that listened before tracing began
    /// (or whose owner was never seen) by the process that accepts from it.
    pub fn name_listener(&mut self, listener: u64, owner: Option<Owner>) {
        if owner.is_some() && self.listeners.get(&listener).is_some_and(|row| row.owner.is_none()) {
            self.listeners.row(&listener).owner = owner;
        }
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
        let request = Request {
            born_ns: ev.ts_ns,
            listener,
            netns: ev.netns,
            tuple: ev.tuple,
            retransmits: 0,
            last_sent_ns: ev.ts_ns,
            expiring: None,
            rearmed: false,
            cancelled_at: None,
            accept_queue: None,
        };
        // At the cap the oldest goes; request sockets live seconds at most.
        if let Some((sock, oldest)) = self.live.insert(ev.sock, request) {
            self.unindex(sock, &oldest);
            self.evicted += 1;
        }
        self.created += 1;
        self.listener_row(listener, ev.netns, &ev.tuple, info);
        self.by_tuple.insert((ev.netns, ev.tuple), ev.sock);
        self.note_step(ev.ts_ns, ev.netns, ev.tuple, info.and_then(|i| i.owner), Step::SynRecvStart);
    }

    ///
    /// Returns its stall, µs: the time since the request's SYN-ACK last went
    /// out (None for a request not tracked).
    pub fn synack_retransmitted(&mut self, ev: &Event, listener: u64) -> Option<u64> {
        self.synack_retransmits += 1;
        self.listeners.row(&listener).synack_retransmits += 1;
        let req = self.live.get_mut(&ev.sock)?;
        req.retransmits += 1;
        let stall_us = ev.ts_ns.saturating_sub(req.last_sent_ns) / 1000;
        req.last_sent_ns = ev.ts_ns;
        Some(stall_us)
    }

    /// The (netns, tuple) of a live request.
    pub fn request_tuple(&self, sock: u64) -> Option<(u32, Tuple)> {
        self.live.get(&sock).map(|r| (r.netns, r.tuple))
    }

    /// `timer_expire_entry`: what the handler will decide depends on these flags.
    pub fn expired(&mut self, ev: &Event, acked: bool, listener_gone: bool, defer_accept: u8) {
        if !self.live.contains(&ev.sock) {
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
                RequestDrop::ListenerClosed
            } else if acked && defer_accept > 0 {
                RequestDrop::DeferAcceptTimeout
            } else if acked {
                RequestDrop::AcceptQueueFull
            } else {
                RequestDrop::SynackTimeout
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
    /// request now, and says so as [`Self::cancelled`] does.
    pub fn child_created(&mut self, ev: &Event) -> Option<Completed> {
        self.forget_old_children(ev.ts_ns);
        // At the cap the oldest goes.
        if self.children.insert((ev.netns, ev.tuple), (ev.ts_ns, ev.cookie)).is_some() {
            self.children_evicted += 1;
        }
        // A child with no live request: syncookies (or a request from before tracing).
        if !self.by_tuple.contains_key(&(ev.netns, ev.tuple)) {
            self.children_without_request += 1;
        }
        // The cancel came first: it ran on another CPU (the handler of a
        // SYN-ACK retransmit racing the final ACK it provoked), or the
        // kernel orders them so. Without this the request would pass for
        // reset when its grace period ends.
        let sock = *self.by_tuple.get(&(ev.netns, ev.tuple))?;
        self.live.get(&sock)?.cancelled_at?;
        self.children.remove(&(ev.netns, ev.tuple));
        let req = self.remove(sock)?;
        Some(self.finish_completed(req, ev.cookie, ev.ts_ns))
    }

    fn forget_old_children(&mut self, now_ns: u64) {
        while let Some((_, &(ts, _))) = self.children.oldest() {
            if now_ns.saturating_sub(ts) < CHILD_MEMORY_NS {
                break;
            }
            self.children.pop_oldest();
        }
    }

    /// `timer_cancel`: completed if its child was just created; otherwise a
    /// reset, unless the timer's expiry follows (the timer core detaches a
    /// timer before running it, which looks like a cancel). Returns the
    /// completion (the child and its accept queue).
    pub fn cancelled(&mut self, ev: &Event) -> Option<Completed> {
        let req = self.live.get_mut(&ev.sock)?;
        if let EventKind::RequestCancelled { accept_queue, .. } = ev.kind {
            req.accept_queue = accept_queue;
        }
        if let Some((child_ns, child_cookie)) = self.children.remove(&(req.netns, req.tuple)) {
            let req = self.remove(ev.sock)?;
            return Some(self.finish_completed(req, child_cookie, child_ns));
        }
        req.cancelled_at = Some(ev.ts_ns);
        self.pending_cancels.push(ev.ts_ns, ev.sock);
        None
    }

    /// Resolves cancels older than the grace period: the request was reset.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some((ts, sock)) = self.pending_cancels.pop_expired(now_ns) {
            if self.live.get(&sock).is_some_and(|r| r.cancelled_at == Some(ts))
                && let Some(req) = self.remove(sock)
            {
                self.finish_dropped(req, ts, RequestDrop::Reset);
            }
        }
    }

    fn remove(&mut self, sock: u64) -> Option<Request> {
        let req = self.live.remove(&sock)?;
        self.unindex(sock, &req);
        Some(req)
    }

    /// Forgets the tuple of a request taken out of `live`.
    fn unindex(&mut self, sock: u64, req: &Request) {
        if self.by_tuple.get(&(req.netns, req.tuple)) == Some(&sock) {
            self.by_tuple.remove(&(req.netns, req.tuple));
        }
    }

    fn finish_completed(&mut self, req: Request, child: u64, at_ns: u64) -> Completed {
        let dwell = at_ns.saturating_sub(req.born_ns);
        self.completed += 1;
        self.dwell.record_ns(dwell);
        let row = self.listeners.row(&req.listener);
        row.completed += 1;
        row.dwell.record_ns(dwell);
        let owner = row.owner;
        let step = Step::SynRecvEstablished { dwell_ns: dwell, synack_retransmits: req.retransmits };
        self.note_step(at_ns, req.netns, req.tuple, owner, step);
        Completed {
            child,
            retransmits: req.retransmits,
            listener: req.listener,
            at_ns,
            accept_queue: req.accept_queue,
        }
    }

    fn finish_dropped(&mut self, req: Request, at_ns: u64, reason: RequestDrop) {
        let age = at_ns.saturating_sub(req.born_ns);
        *self.dropped.entry(reason).or_default() += 1;
        let row = self.listeners.row(&req.listener);
        *row.dropped.entry(reason).or_default() += 1;
        let owner = row.owner;
        let step = Step::SynRecvDropped { reason, age_ns: age, synack_retransmits: req.retransmits };
        self.note_step(at_ns, req.netns, req.tuple, owner, step);
    }

    /// A step in the life of a request socket, for the event stream when
    /// it is shown.
    fn note_step(&mut self, ts_ns: u64, netns: u32, tuple: Tuple, owner: Option<Owner>, step: Step) {
        if self.emit_lifecycle {
            self.lifecycle.push(Lifecycle { ts_ns, netns, tuple, owner, step });
        }
    }

    /// Retransmits of a request still alive (for tests and the live view).
    pub fn retransmits_of(&self, sock: u64) -> Option<u32> {
        self.live.get(&sock).map(|r| r.retransmits)
    }
}

#[cfg(test)]
mod tests;
