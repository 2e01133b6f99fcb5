//! Retransmits: per segment kind, per recovery mode, per connection; and
//! connections killed by retransmission timeout.
//!
//! Source: `tcp:tcp_retransmit_skb`, which fires once per retransmitted skb
//! (several segments when it is a GSO skb: the event carries the count, like
//! the kernel's `tcpi_total_retrans`). On kernels where it also reports
//! failed attempts, the kernel program keeps only the ones that went out.
//! SYN-ACK retransmits come from the request socket and are added to the
//! accepted connection, as the kernel does (`total_retrans` of a child starts
//! at its request's `num_retrans`).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::SocketAddr,
};

use serde::Serialize;

mod stalls;
pub use stalls::{ConnStalls, ProcessKey, Stall, StallCause, StallHistos, StallRow};

use crate::{
    event::{CaState, Comm, Owner, TcpState},
    stats::{Histo, Precision},
    track::timewait::dest::DestKey,
};

/// Destinations and processes with stall histograms kept; more are counted
/// in `stall_rows_dropped`.
pub const STALL_ROWS: usize = 1024;

/// Connections listed in `top` and in `killed`.
pub const LISTED: usize = 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Segments {
    pub syn: u64,
    pub synack: u64,
    pub data: u64,
    pub fin: u64,
}

/// Why a segment was resent, from the congestion state (`icsk_ca_state`)
/// when it was (docs/ARCHITECTURE.md, "Retransmits", for what each equals in
/// the kernel's own counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Causes {
    /// Sent in TCP_CA_Loss, the state the retransmission timer enters: the
    /// segment each RTO resends (SYNs included) and the ones resent after it
    /// until the loss is repaired; and SYN-ACKs, which the request socket's
    /// timer resends.
    pub timeout: u64,
    /// Sent in TCP_CA_Recovery: fast retransmit and the rest of that recovery.
    pub fast: u64,
    /// Sent in any other state: tail loss probes (TCP_CA_Open or CWR).
    pub other: u64,
}

/// A connection as listed in `top` / `killed`. Made for every connection
/// that closes, so it holds the owner as the tracker has it (the name as raw
/// bytes): no allocation; the report turns it into text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRow {
    pub retransmits: u32,
    /// Sum and largest of its retransmissions' stalls, µs (0: none measured).
    pub stall_total_us: u64,
    pub stall_max_us: u64,
    pub owner: Option<Owner>,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// State of the last retransmit (or at the end).
    pub state: TcpState,
}

impl ConnRow {
    pub fn new(
        owner: Option<Owner>,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        retransmits: u32,
        state: TcpState,
    ) -> Self {
        Self { retransmits, stall_total_us: 0, stall_max_us: 0, owner, netns, local, remote, state }
    }

    pub fn with_stalls(mut self, stalls: ConnStalls) -> Self {
        self.stall_total_us = stalls.total_us();
        self.stall_max_us = stalls.max_us();
        self
    }
}

/// The order of `top`'s heap, which picks the row dropped among equal counts:
/// retransmits, then pid and name (as JSON writes it), then the rest. It was
/// the derived order of the row when the row held the name as text; kept so
/// that ties resolve as they did. The cgroup comes last (the row never
/// compared it before).
impl Ord for ConnRow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let pid = |r: &Self| r.owner.map(|o| o.pid);
        let (comm, other_comm) = (self.owner.map(|o| o.comm), other.owner.map(|o| o.comm));
        self.retransmits
            .cmp(&other.retransmits)
            .then_with(|| pid(self).cmp(&pid(other)))
            .then_with(|| comm.as_ref().map(Comm::lossy).cmp(&other_comm.as_ref().map(Comm::lossy)))
            .then_with(|| {
                // Only names that differ in invalid UTF-8 get here.
                let text = |c: Option<Comm>| c.map(|c| c.to_string());
                if comm == other_comm { std::cmp::Ordering::Equal } else { text(comm).cmp(&text(other_comm)) }
            })
            .then_with(|| self.netns.cmp(&other.netns))
            .then_with(|| self.local.cmp(&other.local))
            .then_with(|| self.remote.cmp(&other.remote))
            .then_with(|| self.state.cmp(&other.state))
            .then_with(|| self.owner.map(|o| o.cgroup).cmp(&other.owner.map(|o| o.cgroup)))
    }
}

impl PartialOrd for ConnRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

pub struct RetransStats {
    pub segments: Segments,
    pub causes: Causes,
    /// Segments the kernel counted as retransmitted (`total_retrans`) that no
    /// event showed: in neither `segments` nor `causes`.
    pub unseen: u64,
    /// Retransmits per closed connection (zeros included), as a count histogram.
    pub per_connection: Histo,
    /// Connections killed by retransmission timeout (ETIMEDOUT).
    pub timeouts: u64,
    /// The connections with the most retransmits (min-heap of the top N).
    top: BinaryHeap<Reverse<ConnRow>>,
    pub killed: Vec<ConnRow>,
    /// Stalls by cause, every retransmission whose stall was measured.
    pub stalls: StallHistos,
    /// Per destination (ports folded as TIME_WAIT destinations fold them).
    pub stall_dests: HashMap<DestKey, StallRow>,
    /// Per process (no owner known: not listed).
    pub stall_procs: HashMap<ProcessKey, StallRow>,
    /// Rows not kept because [`STALL_ROWS`] were full.
    pub stall_rows_dropped: u64,
}

impl Default for RetransStats {
    fn default() -> Self {
        Self {
            segments: Segments::default(),
            causes: Causes::default(),
            unseen: 0,
            per_connection: Histo::new(Precision::Fine),
            timeouts: 0,
            top: BinaryHeap::new(),
            killed: Vec::new(),
            stalls: StallHistos::new(Precision::Fine),
            stall_dests: HashMap::new(),
            stall_procs: HashMap::new(),
            stall_rows_dropped: 0,
        }
    }
}

/// Which kind of segment was resent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    Syn,
    SynAck,
    Fin,
    Data,
}

impl SegmentKind {
    /// From the retransmitted skb's flags and the state it was sent in: a
    /// SYN sent from SYN_RECV is a SYN-ACK.
    pub fn of(state: TcpState, syn: bool, fin: bool) -> Self {
        if syn {
            if state == TcpState::SynRecv { Self::SynAck } else { Self::Syn }
        } else if fin {
            Self::Fin
        } else {
            Self::Data
        }
    }
}

impl RetransStats {
    pub fn segment(&mut self, state: TcpState, segs: u32, syn: bool, fin: bool, ca_state: CaState) {
        let n = u64::from(segs);
        match SegmentKind::of(state, syn, fin) {
            SegmentKind::Syn => self.segments.syn += n,
            SegmentKind::SynAck => self.segments.synack += n,
            // A FIN can ride on the last data skb (close() with data still
            // queued), several segments long: only the last segment carries
            // the FIN (GSO clears it on the others).
            SegmentKind::Fin => {
                self.segments.fin += 1;
                self.segments.data += n.saturating_sub(1);
            }
            SegmentKind::Data => self.segments.data += n,
        }
        match ca_state {
            CaState::Loss => self.causes.timeout += n,
            CaState::Recovery => self.causes.fast += n,
            _ => self.causes.other += n,
        }
    }

    /// A SYN-ACK resent by its request socket's timer (which the kernel
    /// counts in TCPTimeouts, `tcp_syn_ack_timeout()`).
    pub fn synack(&mut self) {
        self.segments.synack += 1;
        self.causes.timeout += 1;
    }

    /// A retransmission's stall, toward `dest`, by `owner`.
    pub fn stall(&mut self, stall: &Stall, dest: DestKey, owner: Option<Owner>) {
        self.stalls.record(stall);
        let mut dropped = 0;
        match self.stall_dests.len() < STALL_ROWS || self.stall_dests.contains_key(&dest) {
            true => self.stall_dests.entry(dest).or_insert_with(StallRow::new).record(stall, owner),
            false => dropped += 1,
        }
        if let Some(o) = owner {
            let key = ProcessKey { pid: o.pid, comm: o.comm };
            match self.stall_procs.len() < STALL_ROWS || self.stall_procs.contains_key(&key) {
                true => self.stall_procs.entry(key).or_insert_with(StallRow::new).record(stall, owner),
                false => dropped += 1,
            }
        }
        self.stall_rows_dropped += dropped;
    }

    /// A connection ended: its count goes into the histogram and maybe `top`.
    pub fn closed(&mut self, row: ConnRow, timed_out: bool) {
        self.per_connection.record_value(u64::from(row.retransmits));
        if timed_out {
            self.timeouts += 1;
            if self.killed.len() < LISTED {
                self.killed.push(row.clone());
            }
        }
        self.consider(row);
    }

    /// Offers a connection (closed, or still open at the end) to `top`.
    pub fn consider(&mut self, row: ConnRow) {
        if row.retransmits == 0 {
            return;
        }
        if self.top.len() < LISTED {
            self.top.push(Reverse(row));
        } else if self.top.peek().is_some_and(|Reverse(min)| row.retransmits > min.retransmits) {
            self.top.pop();
            self.top.push(Reverse(row));
        }
    }

    /// `top`, most retransmits first.
    pub fn top(&self) -> Vec<ConnRow> {
        let mut rows: Vec<ConnRow> = self.top.iter().map(|Reverse(r)| r.clone()).collect();
        rows.sort_by(|a, b| b.retransmits.cmp(&a.retransmits).then_with(|| a.local.cmp(&b.local)));
        rows
    }
}

#[cfg(test)]
mod tests;
