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

use std::{cmp::Reverse, collections::BinaryHeap, net::SocketAddr};

use serde::Serialize;

use crate::{
    event::{Owner, TcpState},
    stats::{Histo, Precision},
};

/// `icsk_ca_state` values (include/net/tcp.h `enum tcp_ca_state`).
pub const TCP_CA_RECOVERY: u8 = 3;
pub const TCP_CA_LOSS: u8 = 4;

/// Connections listed in `top` and in `killed`.
pub const LISTED: usize = 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Segments {
    pub syn: u64,
    pub synack: u64,
    pub data: u64,
    pub fin: u64,
}

/// Why a segment was resent, from the congestion state at the time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Causes {
    /// The retransmission timer fired (TCP_CA_Loss).
    pub timeout: u64,
    /// Fast retransmit / loss recovery (TCP_CA_Recovery).
    pub fast: u64,
    /// Anything else (tail loss probe, SYN/SYN-ACK timers, ...).
    pub other: u64,
}

/// A connection as listed in `top` / `killed`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnRow {
    pub retransmits: u32,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The name escaped for terminals (`\x1b`, `\xff`), from the raw bytes.
    pub comm_text: Option<String>,
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
        Self {
            retransmits,
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.to_lossy_string()),
            comm_text: owner.map(|o| o.comm.to_string()),
            netns,
            local,
            remote,
            state,
        }
    }
}

pub struct RetransStats {
    pub segments: Segments,
    pub causes: Causes,
    /// Retransmits per closed connection (zeros included), as a count histogram.
    pub per_connection: Histo,
    /// Connections killed by retransmission timeout (ETIMEDOUT).
    pub timeouts: u64,
    /// The connections with the most retransmits (min-heap of the top N).
    top: BinaryHeap<Reverse<ConnRow>>,
    pub killed: Vec<ConnRow>,
}

impl Default for RetransStats {
    fn default() -> Self {
        Self {
            segments: Segments::default(),
            causes: Causes::default(),
            per_connection: Histo::new(Precision::Fine),
            timeouts: 0,
            top: BinaryHeap::new(),
            killed: Vec::new(),
        }
    }
}

/// Which kind of segment was resent.
pub fn segment_kind(state: TcpState, syn: bool, fin: bool) -> &'static str {
    if syn {
        if state == TcpState::SynRecv { "synack" } else { "syn" }
    } else if fin {
        "fin"
    } else {
        "data"
    }
}

impl RetransStats {
    pub fn segment(&mut self, state: TcpState, segs: u32, syn: bool, fin: bool, ca_state: u8) {
        let n = u64::from(segs);
        match segment_kind(state, syn, fin) {
            "syn" => self.segments.syn += n,
            "synack" => self.segments.synack += n,
            "fin" => self.segments.fin += n,
            _ => self.segments.data += n,
        }
        match ca_state {
            TCP_CA_LOSS => self.causes.timeout += n,
            TCP_CA_RECOVERY => self.causes.fast += n,
            _ => self.causes.other += n,
        }
    }

    pub fn synack(&mut self) {
        self.segments.synack += 1;
        self.causes.other += 1;
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
mod tests {
    use super::*;

    fn row(n: u32, port: u16) -> ConnRow {
        ConnRow::new(
            None,
            1,
            SocketAddr::from(([10, 0, 0, 1], port)),
            "10.0.0.2:80".parse().expect("addr"),
            n,
            TcpState::Established,
        )
    }

    #[test]
    fn classifies_segments_by_state_and_flags() {
        let mut s = RetransStats::default();
        s.segment(TcpState::SynSent, 1, true, false, 0);
        s.segment(TcpState::SynRecv, 1, true, false, 0);
        s.segment(TcpState::Established, 3, false, false, TCP_CA_RECOVERY);
        s.segment(TcpState::CloseWait, 1, false, false, TCP_CA_LOSS);
        s.segment(TcpState::FinWait1, 1, false, true, TCP_CA_LOSS);
        s.segment(TcpState::LastAck, 1, false, true, 0);
        s.segment(TcpState::Closing, 1, false, true, 0);
        assert_eq!(s.segments, Segments { syn: 1, synack: 1, data: 4, fin: 3 });
        assert_eq!(s.causes, Causes { timeout: 2, fast: 3, other: 4 });
    }

    #[test]
    fn per_connection_counts_zeros_and_top_keeps_the_largest() {
        let mut s = RetransStats::default();
        for i in 0..100u32 {
            s.closed(row(i % 5, 1000 + i as u16), false);
        }
        s.closed(row(50, 1), true);
        let h = s.per_connection.summary();
        assert_eq!(h.count, 101);
        assert_eq!(h.min, 0, "zeros are recorded");
        assert_eq!(h.max, 50);
        let top = s.top();
        assert_eq!(top.len(), LISTED);
        assert_eq!(top[0].retransmits, 50);
        assert!(top.iter().all(|r| r.retransmits >= 4), "{top:?}");
        assert_eq!(s.timeouts, 1);
        assert_eq!(s.killed.len(), 1);
    }
}
