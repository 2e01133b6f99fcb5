//! The connection tracker: turns the event stream into per-connection
//! records, dwell-time histograms, close analysis and process attribution.
//!
//! Pure logic, no I/O: it is fed events in ring-buffer order (one socket's
//! events are in order: the socket lock serialises its transitions) and is
//! unit-tested on synthetic sequences below.
//!
//! Attribution rule (docs/ARCHITECTURE.md): a socket's owner is taken only
//! from events whose task held the socket lock (`owned_by_task`): connect,
//! listen, close, shutdown, sendmsg. Accepted sockets inherit their
//! listener's owner until such an event names the real one. Otherwise the
//! owner is unknown, and reported as such.

pub mod conn;
pub mod retrans;
pub mod rows;
pub mod synrecv;
pub mod timewait;

use std::{collections::VecDeque, net::SocketAddr};

// foldhash: keys are socket cookies and tuples from our own kernel programs,
// not attacker-chosen strings; SipHash cost ~23% of the pipeline (perf).
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use serde::Serialize;

pub use self::conn::{CloseKind, Conn, Role};
use self::{
    retrans::{ConnRow, RetransStats},
    rows::BoundedRows,
    synrecv::{ListenerInfo, SynRecvTracker},
    timewait::TimeWaitTracker,
};
use crate::{
    event::{Event, EventKind, Owner, TcpState},
    filter::OwnerFilter,
    stats::{Histo, Precision},
};

/// Memory bounds: every table the tracker keeps grows with what it sees, so
/// each has a cap, and what does not fit is counted (report: `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live full-socket records; the oldest is evicted beyond this.
    pub max_sockets: usize,
    /// TIME_WAIT records (born while tracing or listed at start); the oldest
    /// is evicted beyond this.
    pub max_time_wait: usize,
    /// Request sockets (SYN_RECV), and accepted children waiting to be paired
    /// with their request; the oldest is evicted beyond this.
    pub max_requests: usize,
    /// Rows per report table (processes x peers, listeners, destinations,
    /// connect() errors); further keys share an overflow row.
    pub max_rows: usize,
}

/// Testing only: lowers (or raises) the caps, e.g.
/// `TCPTRACE_DEBUG_LIMITS=sockets=100,time_wait=50,requests=20,rows=5`.
pub const LIMITS_ENV: &str = "TCPTRACE_DEBUG_LIMITS";

impl Limits {
    /// The built-in caps: about 1 KB per record at most, so a few hundred MB
    /// in the worst case, and a report that stays readable.
    pub const BUILT_IN: Limits =
        Limits { max_sockets: 1 << 20, max_time_wait: 1 << 20, max_requests: 1 << 18, max_rows: 10_000 };

    /// `self` with the overrides of a `TCPTRACE_DEBUG_LIMITS` value applied.
    pub fn with_overrides(mut self, spec: &str) -> Result<Self, String> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item.split_once('=').ok_or_else(|| format!("'{item}': expected NAME=N"))?;
            let value: usize = value
                .trim()
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("'{item}': bad number"))?;
            match name.trim() {
                "sockets" => self.max_sockets = value,
                "time_wait" => self.max_time_wait = value,
                "requests" => self.max_requests = value,
                "rows" => self.max_rows = value,
                other => return Err(format!("unknown limit '{other}' (sockets, time_wait, requests, rows)")),
            }
        }
        Ok(self)
    }
}

impl Default for Limits {
    /// [`Limits::BUILT_IN`], with `TCPTRACE_DEBUG_LIMITS` applied when set.
    fn default() -> Self {
        let Ok(spec) = std::env::var(LIMITS_ENV) else { return Self::BUILT_IN };
        Self::BUILT_IN.with_overrides(&spec).unwrap_or_else(|e| {
            log::warn!("ignoring {LIMITS_ENV}: {e}");
            Self::BUILT_IN
        })
    }
}

/// A closed record stays this long (in event time) before it is counted, so
/// that an RST sent right after the CLOSE transition (tcp_disconnect, close
/// with unread data: the kernel sets CLOSE first) is still attributed to it.
pub const CLOSE_GRACE_NS: u64 = 100_000_000;

/// States whose dwell is measured, with the name used in reports. The child
/// socket's SYN_RECV lasts microseconds (created at the final ACK) and is NOT
/// the SYN_RECV that `ss` shows (a request socket): hence its name.
pub const DWELL_STATES: [(TcpState, &str); 8] = [
    (TcpState::SynSent, "SYN_SENT"),
    (TcpState::SynRecv, "SYN_RECV_CHILD"),
    (TcpState::Established, "ESTABLISHED"),
    (TcpState::FinWait1, "FIN_WAIT1"),
    (TcpState::FinWait2, "FIN_WAIT2"),
    (TcpState::CloseWait, "CLOSE_WAIT"),
    (TcpState::LastAck, "LAST_ACK"),
    (TcpState::Closing, "CLOSING"),
];

fn dwell_index(state: TcpState) -> Option<usize> {
    DWELL_STATES.iter().position(|(s, _)| *s == state)
}

/// `"connections"` counters of the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnCounters {
    /// Opened while tracing (connect or accept seen).
    pub opened: u64,
    /// Connection records ended at CLOSE (including pre-existing ones).
    pub closed: u64,
    pub active_close_local: u64,
    pub active_close_remote: u64,
    pub simultaneous_close: u64,
    pub reset_sent: u64,
    pub reset_received: u64,
    /// Ended without FIN or RST seen: timeouts, failed connects.
    pub aborted: u64,
    /// Closed connections that went on to TIME_WAIT.
    pub time_wait: u64,
    /// FIN_WAIT2/CLOSING -> CLOSE without a timewait socket (tcp_max_tw_buckets).
    pub time_wait_skipped: u64,
    /// Live records dropped at the memory cap.
    pub evicted: u64,
    /// Sockets first seen mid-life (opened before tracing started).
    pub preexisting: u64,
}

/// Oddities in the event stream, counted rather than trusted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Anomalies {
    /// Transitions to the same state (no dwell recorded).
    pub self_transitions: u64,
    /// Transitions whose old state was not the state we last saw.
    pub sequence_gaps: u64,
    /// Events whose timestamp preceded the socket's previous one.
    pub clock_skew: u64,
}

/// One `active_closers` row: a process closing connections toward one peer
/// endpoint. Ephemeral ports are not split into rows: they are 0 here (the
/// local port of connections this side opened, the remote port of
/// connections it accepted), so the service port is on whichever side has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloserKey {
    pub owner: Option<Owner>,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl CloserKey {
    pub fn new(owner: Option<Owner>, conn: &Conn) -> Self {
        let (mut local, mut remote) = (conn.tuple.local, conn.tuple.remote);
        match conn.role {
            Role::Passive => remote.set_port(0),
            _ => local.set_port(0),
        }
        Self { owner, netns: conn.netns, local, remote }
    }
}

/// `ip:port`, or just `ip` when the port is 0 (aggregated ephemeral ports).
pub fn endpoint(addr: &SocketAddr) -> String {
    if addr.port() == 0 { addr.ip().to_string() } else { addr.to_string() }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloserRow {
    pub closes: u64,
    pub time_wait: u64,
}

pub struct Tracker {
    limits: Limits,
    conns: HashMap<u64, Conn>,
    /// (cookie, seq) in insertion order, for evicting the oldest record.
    order: VecDeque<(u64, u64)>,
    /// (cookie, seq, closed_at): records at CLOSE waiting out the grace.
    closing: VecDeque<(u64, u64, u64)>,
    next_seq: u64,
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
    pub timewait: TimeWaitTracker,
    pub synrecv: SynRecvTracker,
    pub retrans: RetransStats,
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
}

/// One `connect_errors` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectErrorKey {
    pub owner: Option<Owner>,
    pub netns: u32,
    pub remote: SocketAddr,
    pub errno: u32,
}

impl Tracker {
    pub fn new(limits: Limits, timers_available: bool) -> Self {
        Self {
            limits,
            conns: HashMap::new(),
            order: VecDeque::new(),
            closing: VecDeque::new(),
            next_seq: 0,
            listeners: HashMap::new(),
            listener_socks: HashMap::new(),
            timers_available,
            dwell: DWELL_STATES.iter().map(|_| Histo::new(Precision::Fine)).collect(),
            lifetime: Histo::new(Precision::Fine),
            counters: ConnCounters::default(),
            anomalies: Anomalies::default(),
            closers: BoundedRows::new(limits.max_rows),
            timewait: TimeWaitTracker::new(limits.max_time_wait, limits.max_rows),
            synrecv: SynRecvTracker::new(limits.max_requests, limits.max_rows),
            retrans: RetransStats::default(),
            connect_errors: BoundedRows::new(limits.max_rows),
            now_ns: 0,
            started_ns: 0,
            owner_filter: OwnerFilter::default(),
            ignored: HashSet::new(),
            ignored_evicted: 0,
        }
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

    /// Timewait/request sockets remembered as left out by the owner filter,
    /// and how many were forgotten at the cap.
    pub fn ignored_usage(&self) -> (usize, u64) {
        (self.ignored.len(), self.ignored_evicted)
    }

    /// Marks the start of tracing (rates are computed from here).
    pub fn start(&mut self, now_ns: u64) {
        self.started_ns = now_ns;
        self.now_ns = self.now_ns.max(now_ns);
        self.timewait.started_ns = now_ns;
    }

    /// Live socket records (including listeners and records in grace).
    pub fn live(&self) -> usize {
        self.conns.len()
    }

    pub fn conn(&self, cookie: u64) -> Option<&Conn> {
        self.conns.get(&cookie)
    }

    /// Applies one event. Returns the socket's owner as known after it (for
    /// the event stream), or None when unknown.
    pub fn handle(&mut self, ev: &Event) -> Option<Owner> {
        if self.started_ns == 0 {
            self.start(ev.ts_ns);
        }
        self.now_ns = self.now_ns.max(ev.ts_ns);
        self.expire_closing(ev.ts_ns);
        self.timewait.tick(ev.ts_ns);
        self.synrecv.tick(ev.ts_ns);
        match ev.kind {
            EventKind::State { old, new } => self.on_state(ev, old, new),
            EventKind::ResetSent => self.with_conn(ev, |c| c.reset_sent = true),
            EventKind::ResetReceived => self.with_conn(ev, |c| c.reset_received = true),
            EventKind::Owner => self.with_conn(ev, |_| {}),
            EventKind::TimeWaitArmed { .. } => {
                let conn = self.conns.get_mut(&ev.cookie);
                let (closer, role) = match conn {
                    Some(c) => {
                        c.time_wait = true;
                        (c.closer.or(c.owner), Some(c.role))
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
                self.synrecv.synack_retransmitted(ev, listener);
                self.retrans.synack();
                self.listener_info(listener).and_then(|i| i.owner)
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
                if let Some((child, retransmits)) = self.synrecv.cancelled(ev)
                    && let Some(conn) = self.conns.get_mut(&child)
                {
                    conn.retransmits += retransmits;
                }
                None
            }
            EventKind::Retransmit { state, segs, syn, fin, ca_state } => {
                let owner = self.with_conn(ev, |c| {
                    c.retransmits += segs;
                    c.retransmit_state = Some(state);
                });
                if self.owner_filter.matches(owner.as_ref()) {
                    self.retrans.segment(state, segs, syn, fin, ca_state);
                }
                owner
            }
            EventKind::SockError { errno } => {
                self.with_conn(ev, |c| c.timed_out |= errno == libc::ETIMEDOUT as u32)
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

    /// Updates an existing record for a non-state event; a process-context
    /// event also names the owner.
    fn with_conn(&mut self, ev: &Event, update: impl FnOnce(&mut Conn)) -> Option<Owner> {
        let conn = self.conns.get_mut(&ev.cookie)?;
        update(conn);
        if ev.owned_by_task {
            conn.owner = Some(Owner::of(&ev.task));
            conn.owner_inherited = false;
        }
        conn.owner
    }

    fn on_state(&mut self, ev: &Event, old: TcpState, new: TcpState) -> Option<Owner> {
        if old == new {
            self.anomalies.self_transitions += 1;
            return self.conns.get(&ev.cookie).and_then(|c| c.owner);
        }
        let actor = ev.owned_by_task.then(|| Owner::of(&ev.task));
        // A closed socket used again (connect() after a failed connect): its
        // previous life is over, count it before starting the new one.
        if self.conns.get(&ev.cookie).is_some_and(|c| c.closed_at.is_some())
            && let Some(previous) = self.conns.remove(&ev.cookie)
        {
            self.account_closed(&previous);
        }
        if !self.conns.contains_key(&ev.cookie) {
            self.insert(ev, old);
        }
        let inherited = if new == TcpState::SynRecv && old == TcpState::Listen && actor.is_none() {
            self.listener_owner(ev)
        } else {
            None
        };
        let Some(conn) = self.conns.get_mut(&ev.cookie) else { return actor };

        if let Some(owner) = actor {
            conn.owner = Some(owner);
            conn.owner_inherited = false;
        } else if let Some(owner) = inherited {
            conn.owner = Some(owner);
            conn.owner_inherited = true;
        }
        // Dwell in `old`, if we saw the socket enter it.
        if conn.state != old {
            if conn.closed_at.is_none() && conn.state_since.is_some() {
                self.anomalies.sequence_gaps += 1;
            }
        } else if let Some(since) = conn.state_since {
            if ev.ts_ns < since {
                self.anomalies.clock_skew += 1;
            }
            // A connect() that found no free port never sent a SYN: that is
            // not time spent in SYN_SENT (the failure is in connect_errors).
            let no_syn = old == TcpState::SynSent && new == TcpState::Close && ev.tuple.local.port() == 0;
            if let Some(i) = dwell_index(old)
                && !no_syn
                && self.owner_filter.matches(conn.owner.as_ref())
            {
                self.dwell[i].record_ns(ev.ts_ns.saturating_sub(since));
            }
        }

        if conn.opened_at.is_some() && !conn.counted_open && self.owner_filter.matches(conn.owner.as_ref()) {
            conn.counted_open = true;
            self.counters.opened += 1;
        }
        // CLOSE -> SYN_SENT has no source port yet: keep the fuller tuple.
        if ev.tuple.local.port() != 0 || conn.tuple.local.port() == 0 {
            conn.tuple = ev.tuple;
        }
        conn.note_close_step(old, new, actor);
        conn.state = new;
        conn.state_since = Some(ev.ts_ns);
        if new == TcpState::Close {
            if matches!(old, TcpState::FinWait2 | TcpState::Closing) && !conn.time_wait {
                if self.timers_available {
                    self.counters.time_wait_skipped += 1;
                } else {
                    conn.time_wait = true;
                }
            }
            conn.closed_at = Some(ev.ts_ns);
            self.closing.push_back((ev.cookie, conn.seq, ev.ts_ns));
        }
        let owner = conn.owner;

        match (old, new) {
            (_, TcpState::Listen) => {
                let key = (ev.netns, ev.tuple.local.port());
                self.listeners.entry(key).or_default().push(ev.cookie);
                self.listener_socks.insert(ev.sock, ev.cookie);
            }
            (TcpState::Listen, TcpState::Close) => {
                self.forget_listener(ev.cookie, ev.netns, ev.tuple.local.port());
            }
            (TcpState::Listen, TcpState::SynRecv) => {
                if let Some((child, retransmits)) = self.synrecv.child_created(ev)
                    && let Some(conn) = self.conns.get_mut(&child)
                {
                    conn.retransmits += retransmits;
                }
            }
            _ => {}
        }
        owner
    }

    fn insert(&mut self, ev: &Event, old: TcpState) {
        let new = match ev.kind {
            EventKind::State { new, .. } => new,
            _ => old,
        };
        let role = match (old, new) {
            (TcpState::Close, TcpState::SynSent) => Role::Active,
            (TcpState::Close, TcpState::Listen) => Role::Listener,
            (TcpState::Listen, TcpState::SynRecv) => Role::Passive,
            _ => Role::Unknown,
        };
        if self.conns.len() >= self.limits.max_sockets {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut conn = Conn::new(seq, ev.sock, ev.netns, ev.tuple, role, old);
        match role {
            Role::Active | Role::Passive => conn.opened_at = Some(ev.ts_ns),
            Role::Listener => {}
            Role::Unknown => self.counters.preexisting += 1,
        }
        // The socket is in `old` since an unknown time, except brand-new ones.
        if matches!(role, Role::Active | Role::Passive | Role::Listener) {
            conn.state_since = Some(ev.ts_ns);
        }
        self.conns.insert(ev.cookie, conn);
        self.order.push_back((ev.cookie, seq));
        if self.order.len() > 2 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.order.retain(|(cookie, seq)| conns.get(cookie).is_some_and(|c| c.seq == *seq));
        }
    }

    /// Makes room for one record: the oldest goes. A record already at
    /// CLOSE (waiting out its grace) is counted as closed now rather than
    /// lost; any other is dropped and counted as `evicted`.
    fn evict_oldest(&mut self) {
        while let Some((cookie, seq)) = self.order.pop_front() {
            if self.conns.get(&cookie).is_some_and(|c| c.seq == seq) {
                let Some(conn) = self.conns.remove(&cookie) else { return };
                if conn.role == Role::Listener {
                    self.forget_listener(cookie, conn.netns, conn.tuple.local.port());
                }
                if conn.closed_at.is_some() {
                    self.account_closed(&conn);
                } else {
                    self.counters.evicted += 1;
                }
                return;
            }
        }
    }

    /// Live connections with retransmits, as `top` rows (for the report).
    pub fn live_retransmitters(&self) -> Vec<ConnRow> {
        self.conns
            .values()
            .filter(|c| c.retransmits > 0 && c.is_connection())
            .map(|c| {
                ConnRow::new(
                    c.owner,
                    c.netns,
                    c.tuple.local,
                    c.tuple.remote,
                    c.retransmits,
                    c.retransmit_state.unwrap_or(c.state),
                )
            })
            .collect()
    }

    /// Lifecycle lines produced since the last call, in order of production.
    pub fn drain_lifecycle(&mut self) -> Vec<crate::event::Lifecycle> {
        let mut lines: Vec<_> = self.synrecv.lifecycle.drain(..).collect();
        lines.append(&mut self.timewait.lifecycle);
        lines
    }

    /// Namespaces in which a listener was seen.
    pub fn listener_namespaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.listeners.keys().map(|(netns, _)| *netns)
    }

    /// What is known of the listener at kernel address `sock`.
    fn listener_info(&self, sock: u64) -> Option<ListenerInfo> {
        let conn = self.conns.get(self.listener_socks.get(&sock)?)?;
        Some(ListenerInfo { local: conn.tuple.local, owner: conn.owner })
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
                let ip = l.tuple.local.ip();
                if exact { ip == ev.tuple.local.ip() } else { ip.is_unspecified() }
            })
        };
        let mut owners = matching(true).chain(matching(false)).map(|l| l.owner);
        let first = owners.next()??;
        owners.all(|o| o.map(|o| o.pid) == Some(first.pid)).then_some(first)
    }

    fn expire_closing(&mut self, now_ns: u64) {
        while let Some(&(cookie, seq, closed_at)) = self.closing.front() {
            if now_ns != u64::MAX && now_ns.saturating_sub(closed_at) < CLOSE_GRACE_NS {
                return;
            }
            self.closing.pop_front();
            if !self.conns.get(&cookie).is_some_and(|c| c.seq == seq && c.closed_at.is_some()) {
                continue; // evicted, or reopened under the same cookie
            }
            if let Some(conn) = self.conns.remove(&cookie) {
                self.account_closed(&conn);
            }
        }
    }

    fn account_closed(&mut self, conn: &Conn) {
        if !conn.is_connection()
            || !(self.owner_filter.matches(conn.owner.as_ref())
                || self.owner_filter.matches(conn.closer.as_ref()))
        {
            return;
        }
        let c = &mut self.counters;
        c.closed += 1;
        let kind = conn.final_close();
        match kind {
            CloseKind::Local => c.active_close_local += 1,
            CloseKind::Remote => c.active_close_remote += 1,
            CloseKind::Simultaneous => c.simultaneous_close += 1,
            CloseKind::ResetSent => c.reset_sent += 1,
            CloseKind::ResetReceived => c.reset_received += 1,
            CloseKind::Aborted => c.aborted += 1,
        }
        if conn.time_wait {
            c.time_wait += 1;
        }
        if let (Some(opened), Some(closed)) = (conn.opened_at, conn.closed_at) {
            self.lifetime.record_ns(closed.saturating_sub(opened));
        }
        let row = ConnRow::new(
            conn.owner,
            conn.netns,
            conn.tuple.local,
            conn.tuple.remote,
            conn.retransmits,
            conn.retransmit_state.unwrap_or(conn.state),
        );
        if conn.opened_at.is_some() {
            self.retrans.closed(row, conn.timed_out);
        } else {
            // Opened before tracing: earlier retransmits are unknown, so it
            // stays out of the per-connection histogram.
            if conn.timed_out {
                self.retrans.timeouts += 1;
            }
            self.retrans.consider(row);
        }
        if matches!(kind, CloseKind::Local | CloseKind::Simultaneous) {
            let key = CloserKey::new(conn.closer, conn);
            let row = self.closers.row(&key);
            row.closes += 1;
            if conn.time_wait {
                row.time_wait += 1;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
