//! The connection tracker: turns the event stream into per-connection
//! records, dwell-time histograms, close analysis and process attribution.
//!
//! Pure logic, no I/O: it is fed events in ring-buffer order (one socket's
//! events are in order: the socket lock serialises its transitions) and is
//! unit-tested on synthetic sequences (tests.rs, and each part's own tests).
//!
//! Attribution rule (docs/ARCHITECTURE.md): a socket's owner is taken only
//! from events whose task held the socket lock (`owned_by_task`): connect,
//! listen, close, shutdown, sendmsg. Accepted sockets inherit their
//! listener's owner until such an event names the real one. Otherwise the
//! owner is unknown, and reported as such.

pub mod accept;
pub mod capped;
pub mod compact;
pub mod conn;
mod counters;
pub mod drops;
pub mod end;
pub mod grace;
pub mod lifecycle;
mod limits;
pub mod retrans;
pub mod rows;
mod sockets;
pub mod stuck;
pub mod synrecv;
pub mod timewait;
mod transitions;

// foldhash: keys are socket cookies and tuples from our own kernel programs,
// not attacker-chosen strings; SipHash cost ~23% of the pipeline (perf).
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use self::{
    accept::AcceptTracker,
    compact::Owners,
    drops::DropTracker,
    grace::GraceQueue,
    lifecycle::Lifecycle,
    retrans::{ConnRow, RetransStats, SegmentKind, Stall, StallCause},
    rows::BoundedRows,
    sockets::{Class, SocketTable},
    synrecv::{ListenerInfo, SynRecvTracker},
    timewait::{TimeWaitTracker, dest::DestKey},
};
pub use self::{
    conn::{CloseKind, Conn, Mark, Role},
    counters::{
        Anomalies, CloserKey, CloserRow, ConnCounters, ConnectErrorKey, DWELL_STATES, EndCounts, EndKey,
        endpoint,
    },
    limits::{LIMITS_ENV, Limits},
};
use crate::{
    event::{Event, EventKind, Owner, TcpState},
    pipeline::filter::OwnerFilter,
    stats::{Histo, Precision},
};

/// A closed record stays this long (in event time) before it is counted, so
/// that an RST sent right after the CLOSE transition (tcp_disconnect, close
/// with unread data: the kernel sets CLOSE first) is still attributed to it.
pub const CLOSE_GRACE_NS: u64 = 100_000_000;

/// A timer cancel (timewait or request socket) waits this long in event time
/// for what explains it: the timer core also "cancels" (detaches) a timer
/// just before it runs it, so the expiry may follow; a timewait socket's
/// re-arm, or the request socket of the peer's new SYN that recycles it,
/// follows in the same softirq, microseconds apart.
pub const CANCEL_GRACE_NS: u64 = 10_000_000;

pub struct Tracker {
    limits: Limits,
    /// Socket records, wanted and (with an owner filter) excluded ones;
    /// each class has its own cap and eviction order.
    conns: SocketTable,
    /// The owners the records hold, one shared copy per process.
    owners: Owners,
    /// Excluded records dropped at their cap.
    excluded_evicted: u64,
    /// (cookie, seq) of records at CLOSE waiting out [`CLOSE_GRACE_NS`].
    closing: GraceQueue<(u64, u64)>,
    /// Listening sockets by (netns, port): whose owner accepted children inherit.
    listeners: HashMap<(u32, u16), Vec<u64>>,
    /// Listening sockets by kernel address (request sockets name their
    /// listener by address) -> cookie.
    listener_socks: HashMap<u64, u64>,
    /// TIME_WAIT is known from the timewait timer; without timer hooks it is
    /// inferred from FIN_WAIT2/CLOSING -> CLOSE.
    timers_available: bool,
    pub dwell: Vec<Histo>,
    pub lifetime: Histo,
    pub counters: ConnCounters,
    pub anomalies: Anomalies,
    pub closers: BoundedRows<CloserKey, CloserRow>,
    /// Closed connections by why they ended.
    pub ends: EndCounts,
    /// ... by process, peer and why.
    pub end_rows: BoundedRows<EndKey, u64>,
    /// `--events`: a lifecycle line for each connection's end.
    pub emit_lifecycle: bool,
    /// `--stuck-after`: from this long in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK
    /// a socket is stuck (track/stuck.rs).
    pub stuck_after_ns: u64,
    /// Summary mode: sockets whose latest transitions still wait in the
    /// kernel, as last read (see [`stuck::PendingSocket`]).
    pending: HashMap<u64, stuck::PendingSocket>,
    lifecycle: Vec<Lifecycle>,
    pub timewait: TimeWaitTracker,
    pub synrecv: SynRecvTracker,
    /// Handshake-complete children waiting for accept(), per listener.
    pub accepts: AcceptTracker,
    /// TCP segments the kernel dropped (no owner: counted whatever the
    /// owner filter says).
    pub drops: DropTracker,
    pub retrans: RetransStats,
    /// The stall of the retransmission the last `handle` saw (for `--events`).
    pub last_stall: Option<Stall>,
    /// connect() failures by process, destination and errno.
    pub connect_errors: BoundedRows<ConnectErrorKey, u64>,
    /// Newest event timestamp seen.
    pub now_ns: u64,
    /// First event timestamp (or the start of tracing).
    pub started_ns: u64,
    /// `--pid`, `--comm`, `--cgroup`: sockets whose owner does not match
    /// are tracked (attribution needs their events) but not reported.
    pub owner_filter: OwnerFilter,
    /// Timewait and request sockets left out by the owner filter.
    ignored: HashSet<u64>,
    /// Entries of `ignored` dropped at its cap.
    ignored_evicted: u64,
    /// Full sockets are named by masked address, not by cookie (kernels
    /// before 5.12, `KernelConfig::cookie_mask`): seen in their events, whose
    /// names then have the top bit set, which a kernel cookie (a counter)
    /// never has.
    cookies_are_addresses: bool,
}

impl Tracker {
    pub fn new(limits: Limits, timers_available: bool) -> Self {
        Self {
            limits,
            conns: SocketTable::new(limits.max_sockets),
            owners: Owners::new(),
            excluded_evicted: 0,
            closing: GraceQueue::new(CLOSE_GRACE_NS),
            listeners: HashMap::new(),
            listener_socks: HashMap::new(),
            timers_available,
            dwell: DWELL_STATES.iter().map(|_| Histo::new(Precision::Fine)).collect(),
            lifetime: Histo::new(Precision::Fine),
            counters: ConnCounters::default(),
            anomalies: Anomalies::default(),
            closers: BoundedRows::new(limits.max_rows),
            ends: EndCounts::default(),
            end_rows: BoundedRows::new(limits.max_rows),
            emit_lifecycle: false,
            lifecycle: Vec::new(),
            stuck_after_ns: stuck::DEFAULT_STUCK_AFTER.as_nanos() as u64,
            pending: HashMap::new(),
            timewait: TimeWaitTracker::new(limits.max_time_wait, limits.max_rows),
            synrecv: SynRecvTracker::new(limits.max_requests, limits.max_rows),
            accepts: AcceptTracker::new(limits.max_requests, limits.max_rows),
            drops: DropTracker::new(limits.max_rows),
            retrans: RetransStats::default(),
            last_stall: None,
            connect_errors: BoundedRows::new(limits.max_rows),
            now_ns: 0,
            started_ns: 0,
            owner_filter: OwnerFilter::default(),
            ignored: HashSet::new(),
            ignored_evicted: 0,
            cookies_are_addresses: false,
        }
    }

    /// The record of the full socket that a timewait socket being armed takes
    /// over: the one with the timewait socket's cookie (the kernel copies the
    /// full socket's), or, where full sockets are named by address, the open
    /// one with its namespace and tuple (the timer is armed inside
    /// `tcp_time_wait()`, before the full socket's -> CLOSE).
    fn timewait_origin(&self, ev: &Event) -> u64 {
        if !self.cookies_are_addresses || self.conns.contains(&ev.cookie) {
            return ev.cookie;
        }
        self.conns.open_by_tuple(ev.netns, &ev.tuple).unwrap_or(ev.cookie)
    }

    /// Remembers a timewait/request socket the owner filter leaves out.
    fn ignore(&mut self, sock: u64) {
        if self.ignored.len() >= self.limits.max_time_wait + self.limits.max_requests {
            // Bounded: entries of sockets long gone go first (all of them);
            // the end of a forgotten one counts as of unknown birth.
            self.ignored_evicted += self.ignored.len() as u64;
            self.ignored.clear();
        }
        self.ignored.insert(sock);
    }

    /// The caps in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sockets left out by the owner filter (full sockets whose owner and
    /// closer do not match, timewait and request sockets of such owners),
    /// their cap, and how many were forgotten at the cap.
    pub fn excluded_usage(&self) -> (usize, usize, u64) {
        let cap = self.limits.max_time_wait + self.limits.max_requests + self.limits.max_sockets;
        (
            self.ignored.len() + self.conns.len(Class::Excluded),
            cap,
            self.ignored_evicted + self.excluded_evicted,
        )
    }

    /// Marks the start of tracing (rates are computed from here).
    pub fn start(&mut self, now_ns: u64) {
        self.started_ns = now_ns;
        self.now_ns = self.now_ns.max(now_ns);
        self.timewait.started_ns = now_ns;
    }

    /// Live socket records the filters want (including listeners and
    /// records in grace).
    pub fn live(&self) -> usize {
        self.conns.len(Class::Wanted) + self.pending_only().count()
    }

    pub fn conn(&self, cookie: u64) -> Option<&Conn> {
        self.conns.get(&cookie)
    }

    /// Puts the record of `cookie` in the class its owner and closer say
    /// (wanted unless an owner filter leaves both out), counts what the
    /// class change makes countable, and enforces each class's cap.
    fn classify(&mut self, cookie: u64) {
        // Without an owner filter every record is wanted: no lookup on the
        // per-event path, only the cap.
        let to = if self.owner_filter.is_empty() {
            Class::Wanted
        } else {
            let Some((owner, closer)) = self.conns.get(&cookie).map(|c| (c.owner(), c.closer())) else {
                return;
            };
            let wanted =
                self.owner_filter.matches(owner.as_ref()) || self.owner_filter.matches(closer.as_ref());
            let to = if wanted { Class::Wanted } else { Class::Excluded };
            self.conns.set_class(cookie, to);
            to
        };
        // A new record is inserted first and classified here: the cap of
        // the class it belongs to is enforced only now.
        while self.conns.over_cap(to) {
            if !self.evict_oldest(to) {
                break;
            }
        }
    }

    /// Applies one event. Returns the socket's owner as known after it (for
    /// the event stream), or None when unknown.
    pub fn handle(&mut self, ev: &Event) -> Option<Owner> {
        if self.started_ns == 0 {
            self.start(ev.ts_ns);
        }
        self.now_ns = self.now_ns.max(ev.ts_ns);
        self.last_stall = None;
        self.expire_closing(ev.ts_ns);
        self.timewait.tick(ev.ts_ns);
        self.synrecv.tick(ev.ts_ns);
        match ev.kind {
            EventKind::State { old, new } => {
                self.cookies_are_addresses |= ev.cookie >> 63 == 1;
                self.pending_overtaken(ev);
                let owner = self.on_state(ev, old, new);
                if new == TcpState::Close {
                    self.count_unseen_at_close(ev);
                    self.accepts.closed(ev.cookie);
                }
                owner
            }
            // Resets and errors never name the owner: in a process's system
            // call they are a kill's (`tcp_abort()` reports ECONNABORTED,
            // then resets, in the killer's `ss -K`), and the owner's own
            // resets come with its state transitions.
            EventKind::ResetSent { in_reply } => self.touch_conn(ev, |c| {
                c.mark(Mark::ResetSent);
                if in_reply {
                    c.note_reset_in_reply();
                }
            }),
            EventKind::ResetReceived => self.with_conn(ev, |c| c.mark(Mark::ResetReceived)),
            EventKind::Owner => self.with_conn(ev, |_| {}),
            EventKind::TimeWaitArmed { .. } => {
                let origin = self.timewait_origin(ev);
                let conn = self.conns.get_mut(&origin);
                let (closer, role) = match conn {
                    Some(c) => {
                        c.mark(Mark::TimeWait);
                        (c.closer().or(c.owner()), Some(c.role))
                    }
                    None => (None, None),
                };
                if self.owner_filter.matches(closer.as_ref()) {
                    self.timewait.armed(ev, closer, role);
                } else {
                    self.ignore(ev.sock);
                }
                closer
            }
            EventKind::TimeWaitExpired { .. } if self.ignored.remove(&ev.sock) => None,
            EventKind::TimeWaitCancelled { .. } if self.ignored.contains(&ev.sock) => None,
            EventKind::TimeWaitExpired { .. } => {
                self.timewait.expired(ev);
                None
            }
            EventKind::TimeWaitCancelled { in_connect, netns_dying, .. } => {
                self.timewait.cancelled(ev, in_connect, netns_dying);
                None
            }
            EventKind::RequestArmed { listener, .. } => {
                self.timewait.request_armed(ev);
                let info = self.listener_info(listener);
                let owner = info.and_then(|i| i.owner);
                if self.owner_filter.matches(owner.as_ref()) {
                    self.synrecv.armed(ev, listener, info);
                } else {
                    self.ignore(ev.sock);
                }
                owner
            }
            EventKind::SynAckRetransmit { .. }
            | EventKind::RequestExpired { .. }
            | EventKind::RequestExpireDone
            | EventKind::RequestCancelled { .. }
                if self.ignored.contains(&ev.sock) =>
            {
                None
            }
            EventKind::SynAckRetransmit { listener, .. } => {
                let stall_us = self.synrecv.synack_retransmitted(ev, listener);
                self.retrans.synack();
                let owner = self.listener_info(listener).and_then(|i| i.owner);
                if let Some(us) = stall_us
                    && self.owner_filter.matches(owner.as_ref())
                {
                    let stall = Stall { cause: StallCause::SynAck, us, rto_us: None, backoff: None };
                    let dest = DestKey::new(ev.netns, &ev.tuple, Some(Role::Passive));
                    self.retrans.stall(&stall, dest, owner);
                    self.last_stall = Some(stall);
                }
                owner
            }
            EventKind::RequestExpired { acked, listener_gone, defer_accept, .. } => {
                self.synrecv.expired(ev, acked, listener_gone, defer_accept);
                None
            }
            EventKind::RequestExpireDone => {
                self.synrecv.expire_done(ev);
                None
            }
            EventKind::RequestCancelled { .. } => {
                // The accepted socket carries its request's SYN-ACK retransmits,
                // as the kernel's total_retrans does.
                if let Some(done) = self.synrecv.cancelled(ev) {
                    self.completed_handshake(&done);
                }
                None
            }
            EventKind::Retransmit { state, segs, syn, fin, ca_state, timing } => {
                let cause = StallCause::of(SegmentKind::of(state, syn, fin), ca_state);
                let (mut measured, mut unseen) = (None, 0);
                let owner = self.with_conn(ev, |c| {
                    unseen = c.catch_up_retransmits(ev.kernel_total_retrans, segs);
                    c.retransmits += segs;
                    c.retransmit_state = Some(state);
                    let syn_sent = c.state_since.get().filter(|_| c.state == TcpState::SynSent);
                    let stall = Stall::measure(ev.ts_ns, cause, timing, state, c.stalls.last_ns(), syn_sent);
                    c.stalls.add(ev.ts_ns, stall.as_ref());
                    measured = stall.map(|s| (s, DestKey::new(c.netns, &c.tuple(), Some(c.role))));
                });
                if self.owner_filter.matches(owner.as_ref()) {
                    self.retrans.unseen += u64::from(unseen);
                    self.retrans.segment(state, segs, syn, fin, ca_state);
                    // A socket opened before tracing: only the kernel's time since the last ACK.
                    let measured = measured.or_else(|| {
                        Stall::measure(ev.ts_ns, cause, timing, state, None, None)
                            .map(|s| (s, DestKey::new(ev.netns, &ev.tuple, None)))
                    });
                    if let Some((stall, dest)) = measured {
                        self.retrans.stall(&stall, dest, owner);
                        self.last_stall = Some(stall);
                    }
                }
                owner
            }
            EventKind::SockError { errno } => self.touch_conn(ev, |c| {
                if errno == libc::ETIMEDOUT as u32 {
                    c.mark(Mark::TimedOut);
                }
            }),
            EventKind::Accepted => {
                let acceptor = ev.owned_by_task.then(|| Owner::of(&ev.task));
                let owner = self.with_conn(ev, |_| {}).or(acceptor);
                if let Some((listener, _)) = self.accepts.accepted(ev.cookie, ev.ts_ns, acceptor) {
                    self.synrecv.name_listener(listener, owner);
                }
                owner
            }
            EventKind::Drop { reason, tcp_flags } => {
                self.drops.dropped(ev.netns, &ev.tuple, reason, tcp_flags);
                None
            }
            EventKind::ConnectError { errno } => {
                let owner = ev.owned_by_task.then(|| Owner::of(&ev.task));
                if self.owner_filter.matches(owner.as_ref()) {
                    let key = ConnectErrorKey { owner, netns: ev.netns, remote: ev.tuple.remote, errno };
                    *self.connect_errors.row(&key) += 1;
                }
                owner
            }
        }
    }

    /// A handshake completed: the accepted socket carries its request's
    /// SYN-ACK retransmits, as the kernel's total_retrans does, and joins
    /// its listener's accept queue.
    fn completed_handshake(&mut self, done: &synrecv::Completed) {
        if let Some(conn) = self.conns.get_mut(&done.child) {
            conn.retransmits += done.retransmits;
        }
        // An accept() read before this handshake: it names the owner now.
        if let Some(acceptor) = self.accepts.joined(done) {
            if let Some(owner) = acceptor {
                let shared = self.owners.intern(owner);
                if let Some(conn) = self.conns.get_mut(&done.child) {
                    conn.set_owner(shared, false);
                }
                self.classify(done.child);
            }
            self.synrecv.name_listener(done.listener, acceptor);
        }
    }

    /// Advances time without an event (idle periods): ends grace periods.
    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        self.expire_closing(now_ns);
        self.timewait.tick(now_ns);
        self.synrecv.tick(now_ns);
    }

    /// Counts every record still waiting out its grace (end of run).
    pub fn finish(&mut self) {
        self.expire_closing(u64::MAX);
        self.timewait.tick(u64::MAX);
        self.synrecv.tick(u64::MAX);
    }

    /// At a full socket's close: retransmissions the kernel counted after
    /// the last event showed one ([`Conn::catch_up_retransmits`]).
    fn count_unseen_at_close(&mut self, ev: &Event) {
        let Some(conn) = self.conns.get_mut(&ev.cookie) else { return };
        let unseen = conn.catch_up_retransmits(ev.kernel_total_retrans, 0);
        if unseen > 0 && !conn.has(Mark::Excluded) && self.owner_filter.matches(conn.owner().as_ref()) {
            self.retrans.unseen += u64::from(unseen);
        }
    }

    /// Updates an existing record for a non-state event; a process-context
    /// event also names the owner.
    /// Updates the record of `ev`'s socket without taking `ev`'s task for
    /// its owner; returns the owner as known.
    fn touch_conn(&mut self, ev: &Event, update: impl FnOnce(&mut Conn)) -> Option<Owner> {
        let conn = self.conns.get_mut(&ev.cookie)?;
        update(conn);
        conn.owner()
    }

    fn with_conn(&mut self, ev: &Event, update: impl FnOnce(&mut Conn)) -> Option<Owner> {
        let conn = self.conns.get_mut(&ev.cookie)?;
        update(conn);
        let owner_changed = ev.owned_by_task;
        if owner_changed {
            conn.set_owner(self.owners.intern(Owner::of(&ev.task)), false);
        }
        let owner = conn.owner();
        if owner_changed {
            self.classify(ev.cookie);
        }
        owner
    }

    /// Makes room for one record of `class`: its oldest goes. A wanted
    /// record already at CLOSE (waiting out its grace) is counted as closed
    /// now rather than lost; any other is dropped and counted as `evicted`
    /// (excluded ones as `excluded_evicted`). False if the class is empty.
    fn evict_oldest(&mut self, class: Class) -> bool {
        let Some((cookie, conn)) = self.conns.pop_oldest(class) else { return false };
        if conn.role == Role::Listener {
            self.forget_listener(cookie, conn.netns, conn.local_port());
        }
        if class == Class::Excluded {
            self.excluded_evicted += 1;
        } else if conn.closed_at.is_some() {
            self.account_closed(&conn);
        } else {
            self.counters.evicted += 1;
        }
        true
    }

    /// Live connections with retransmits, as `top` rows (for the report).
    pub fn live_retransmitters(&self) -> Vec<ConnRow> {
        self.conns
            .values()
            .filter(|c| c.retransmits > 0 && c.is_connection() && !c.has(Mark::Excluded))
            .map(|c| {
                let tuple = c.tuple();
                ConnRow::new(
                    c.owner(),
                    c.netns,
                    tuple.local,
                    tuple.remote,
                    c.retransmits,
                    c.retransmit_state.unwrap_or(c.state),
                )
                .with_stalls(c.stalls)
            })
            .collect()
    }

    /// Lifecycle lines produced since the last call, in order of production.
    pub fn drain_lifecycle(&mut self) -> Vec<Lifecycle> {
        let mut lines: Vec<_> = self.synrecv.lifecycle.drain(..).collect();
        lines.append(&mut self.timewait.lifecycle);
        lines.append(&mut self.lifecycle);
        lines
    }

    /// Connections open now (handshake done, not yet at CLOSE) that the
    /// filters want (the owner filter's verdict is the `Excluded` mark).
    pub fn still_open(&self) -> u64 {
        self.conns
            .values()
            .filter(|c| {
                c.is_connection()
                    && c.closed_at.is_none()
                    && !c.has(Mark::Excluded)
                    && (c.role != Role::Passive || c.has(Mark::PastHandshake))
            })
            .count() as u64
    }

    /// Namespaces in which a listener was seen.
    pub fn listener_namespaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.listeners.keys().map(|(netns, _)| *netns)
    }

    /// What is known of the listener at kernel address `sock`.
    fn listener_info(&self, sock: u64) -> Option<ListenerInfo> {
        let conn = self.conns.get(self.listener_socks.get(&sock)?)?;
        Some(ListenerInfo { local: conn.tuple().local, owner: conn.owner() })
    }

    fn forget_listener(&mut self, cookie: u64, netns: u32, port: u16) {
        self.listener_socks.retain(|_, c| *c != cookie);
        if let Some(list) = self.listeners.get_mut(&(netns, port)) {
            list.retain(|c| *c != cookie);
            if list.is_empty() {
                self.listeners.remove(&(netns, port));
            }
        }
    }

    /// The owner of the listener that accepted this child, when exactly one
    /// process owns the matching listeners (SO_REUSEPORT groups owned by
    /// several processes are ambiguous: no guess).
    fn listener_owner(&self, ev: &Event) -> Option<Owner> {
        let candidates = self.listeners.get(&(ev.netns, ev.tuple.local.port()))?;
        let matching = |exact: bool| {
            candidates.iter().filter_map(move |cookie| self.conns.get(cookie)).filter(move |l| {
                let ip = l.tuple().local.ip();
                if exact { ip == ev.tuple.local.ip() } else { ip.is_unspecified() }
            })
        };
        let mut owners = matching(true).chain(matching(false)).map(|l| l.owner());
        let first = owners.next()??;
        owners.all(|o| o.map(|o| o.pid) == Some(first.pid)).then_some(first)
    }
}

#[cfg(test)]
pub(crate) mod tests;
