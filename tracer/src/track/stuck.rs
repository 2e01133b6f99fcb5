//! Stuck sockets: connections sitting in a state that only the application
//! or the peer can end.
//! - CLOSE_WAIT: the peer closed; this side's application never called
//!   close() (a descriptor leak, or a thread blocked elsewhere). The kernel
//!   never times it out.
//! - FIN_WAIT2: this side shut down its sending side and waits for the
//!   peer's FIN; without close() (a half-close) `tcp_fin_timeout` does not
//!   apply, so it waits as long as the peer's application holds on.
//! - LAST_ACK: this side's FIN waits for the peer's ACK (a peer gone, or
//!   a path that drops it): it ends after the FIN's retransmissions.
//!
//! Sockets already in one of these states when tracing began are listed at
//! the start (host/snapshot.rs) with their owner: their age is at least the
//! run's length.

use std::net::SocketAddr;

use super::{Mark, Role, Tracker, compact::Stamp, conn::Conn};
use crate::event::{Owner, TcpState, Tuple};

pub const STUCK_STATES: [TcpState; 3] = [TcpState::CloseWait, TcpState::FinWait2, TcpState::LastAck];

/// `--stuck-after` unless given.
pub const DEFAULT_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The stuck sockets of `rows` in each of [`STUCK_STATES`], in that order.
pub fn count_by_state(rows: &[(StuckKey, StuckRow)]) -> [(TcpState, u64); 3] {
    STUCK_STATES.map(|s| (s, rows.iter().filter(|(k, _)| k.state == s).map(|(_, r)| r.count).sum()))
}

/// One row: a process's sockets in one stuck state toward one peer
/// (ephemeral ports folded as in the closer rows).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StuckKey {
    pub state: TcpState,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub owner: Option<(u32, [u8; 16])>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StuckRow {
    pub count: u64,
    /// The oldest age in the state, ns (a lower bound for sockets that
    /// were in it before tracing began).
    pub oldest_ns: u64,
    /// How many were in the state before tracing began.
    pub before_tracing: u64,
    pub owner: Option<Owner>,
}

impl Tracker {
    /// A socket in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK that existed before
    /// tracing (listed at the start): a record of unknown age, unless an
    /// event created one already.
    pub fn adopt_existing(
        &mut self,
        netns: u32,
        tuple: Tuple,
        cookie: u64,
        state: TcpState,
        owner: Option<Owner>,
    ) {
        if cookie == 0 || self.conns.contains(&cookie) || !STUCK_STATES.contains(&state) {
            return;
        }
        self.conns.insert_with(cookie, |seq| Conn::new(seq, netns, tuple, Role::Unknown, state));
        let owner = owner.map(|o| self.owners.intern(o));
        if let Some(conn) = self.conns.get_mut(&cookie) {
            if let Some(owner) = owner {
                conn.set_owner(owner, false);
            }
            conn.state_since = Stamp::UNKNOWN;
            conn.mark(Mark::CountedOpen);
        }
        if self.owner_filter.matches(self.conns.get(&cookie).and_then(Conn::owner).as_ref()) {
            self.counters.preexisting += 1;
        }
        self.classify(cookie);
    }

    /// Sockets in a stuck state for `after_ns` or longer at `now_ns`, and
    /// every one already in it when tracing began (at least as old as the
    /// run), by process, peer and state. In summary mode, a socket's
    /// transitions still pending in the kernel count as they say.
    pub fn stuck(&self, now_ns: u64, after_ns: u64) -> Vec<(StuckKey, StuckRow)> {
        let mut rows: std::collections::BTreeMap<StuckKey, StuckRow> = std::collections::BTreeMap::new();
        let mut add = |state: TcpState,
                       netns: u32,
                       tuple: Tuple,
                       role: Role,
                       owner: Option<Owner>,
                       since: Option<u64>| {
            if !STUCK_STATES.contains(&state) {
                return;
            }
            let (age, before) = match since {
                Some(since) => (now_ns.saturating_sub(since), false),
                None => (now_ns.saturating_sub(self.started_ns), true),
            };
            if !before && age < after_ns {
                return;
            }
            let Tuple { mut local, mut remote } = tuple;
            match role {
                Role::Passive => remote.set_port(0),
                Role::Active => local.set_port(0),
                // Unknown side: keep the lower port, the service's in
                // practice, and fold the other.
                _ if local.port() < remote.port() => remote.set_port(0),
                _ => local.set_port(0),
            }
            let key = StuckKey { state, netns, local, remote, owner: owner.map(|o| (o.pid, o.comm.raw())) };
            let row = rows.entry(key).or_default();
            row.count += 1;
            row.oldest_ns = row.oldest_ns.max(age);
            row.before_tracing += u64::from(before);
            row.owner = owner;
        };
        for (cookie, c) in self.conns.iter() {
            if c.closed_at.is_some() || c.has(Mark::Excluded) {
                continue;
            }
            match self.pending.get(cookie) {
                Some(p) => add(p.state, c.netns, c.tuple(), c.role, p.owner.or(c.owner()), Some(p.since_ns)),
                None => add(c.state, c.netns, c.tuple(), c.role, c.owner(), c.state_since.get()),
            }
        }
        for (_, p) in self.pending_only() {
            add(p.state, p.netns, p.tuple, p.role, p.owner, Some(p.since_ns));
        }
        rows.into_iter().collect()
    }

    /// Summary mode: the sockets with transitions pending in the kernel, as
    /// read at the last tick (replacing the previous reading).
    pub fn set_pending(&mut self, pending: impl IntoIterator<Item = (u64, PendingSocket)>) {
        self.pending.clear();
        for (cookie, p) in pending {
            let known_since = self.conns.get(&cookie).map(|c| (c.closed_at.is_some(), c.state_since.get()));
            match known_since {
                // Closed since the reading, or the tracker already knows later.
                Some((true, _)) => {}
                Some((false, Some(since))) if since >= p.since_ns => {}
                // Unknown here: only if the owner filter wants it.
                None if !self.owner_filter.matches(p.owner.as_ref()) => {}
                _ => {
                    self.pending.insert(cookie, p);
                }
            }
        }
    }

    /// A transition has arrived for a socket read as pending: from here on
    /// the tracker's own record knows at least as much.
    pub(super) fn pending_overtaken(&mut self, ev: &crate::event::Event) {
        if !self.pending.is_empty() && self.pending.get(&ev.cookie).is_some_and(|p| ev.ts_ns >= p.since_ns) {
            self.pending.remove(&ev.cookie);
        }
    }

    /// Pending sockets the tracker has no record of (nothing of them
    /// reached userspace yet; the owner filter wanted them when read).
    pub(super) fn pending_only(&self) -> impl Iterator<Item = (&u64, &PendingSocket)> {
        self.pending.iter().filter(|(cookie, _)| !self.conns.contains(cookie))
    }
}

/// Summary mode: what the kernel's pending steps of a socket say it is now
/// (`pipeline::summary::pending_socket`). A reading, not events: the steps
/// still reach the tracker later, once, as events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSocket {
    pub netns: u32,
    pub tuple: Tuple,
    pub state: TcpState,
    /// When it entered `state`.
    pub since_ns: u64,
    /// The last task that owned it in a pending step.
    pub owner: Option<Owner>,
    pub role: Role,
}
