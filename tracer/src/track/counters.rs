//! What the tracker counts for the report: dwell states, connection
//! counters, anomalies, and the keys and values of its closer and connect()
//! error rows.

use std::net::SocketAddr;

use serde::Serialize;

use super::{
    conn::{CloseKind, Conn, Role},
    end::EndReason,
};
use crate::event::{Owner, TcpState, Tuple};

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

pub(super) fn dwell_index(state: TcpState) -> Option<usize> {
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

impl ConnCounters {
    /// The counter of connections closed this way.
    pub fn closed_as(&mut self, kind: CloseKind) -> &mut u64 {
        match kind {
            CloseKind::Local => &mut self.active_close_local,
            CloseKind::Remote => &mut self.active_close_remote,
            CloseKind::Simultaneous => &mut self.simultaneous_close,
            CloseKind::ResetSent => &mut self.reset_sent,
            CloseKind::ResetReceived => &mut self.reset_received,
            CloseKind::Aborted => &mut self.aborted,
        }
    }
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
    /// Accepted children closed before they were ever ESTABLISHED: the
    /// loser of two CPUs completing the same request socket at once (the
    /// final ACK and the first data segment both create a child; the
    /// second one's ehash insert fails and `tcp_done()` closes it), or a
    /// child whose set-up failed. Not a connection: neither opened nor
    /// closed is counted for it.
    pub children_never_established: u64,
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
        let Tuple { mut local, mut remote } = conn.tuple();
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

/// One `connect_errors` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectErrorKey {
    pub owner: Option<Owner>,
    pub netns: u32,
    pub remote: SocketAddr,
    pub errno: u32,
}

/// Closed connections by [`EndReason`], and the resets by the peer by the
/// state they hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndCounts {
    by_reason: [u64; EndReason::ALL.len()],
    /// Indexed by the kernel's state number.
    reset_by_peer_in: [u64; 13],
}

impl EndCounts {
    pub fn add(&mut self, reason: EndReason, closed_from: Option<TcpState>) {
        // ALL lists the reasons in declaration order: a reason is its index.
        self.by_reason[reason as usize] += 1;
        if reason == EndReason::ResetByPeer
            && let Some(slot) =
                closed_from.and_then(|s| self.reset_by_peer_in.get_mut(usize::from(s.to_u8())))
        {
            *slot += 1;
        }
    }

    pub fn count(&self, reason: EndReason) -> u64 {
        self.by_reason[reason as usize]
    }

    /// Every reason with its count, in [`EndReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (EndReason, u64)> + '_ {
        EndReason::ALL.iter().copied().zip(self.by_reason.iter().copied())
    }

    /// Resets by the peer by the state they hit, states without any left out.
    pub fn reset_by_peer_states(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        TcpState::ALL.iter().filter_map(|s| {
            let n = *self.reset_by_peer_in.get(usize::from(s.to_u8()))?;
            (n > 0).then_some((*s, n))
        })
    }
}

/// One `connection_ends` row: a process's connections toward one peer
/// endpoint that ended one way (ephemeral ports aggregated as in
/// [`CloserKey`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndKey {
    pub owner: Option<Owner>,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub reason: EndReason,
}

impl EndKey {
    pub fn new(owner: Option<Owner>, conn: &Conn, reason: EndReason) -> Self {
        let CloserKey { owner, netns, local, remote } = CloserKey::new(owner, conn);
        Self { owner, netns, local, remote, reason }
    }
}
