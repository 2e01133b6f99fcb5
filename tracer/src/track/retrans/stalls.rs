//! Stalls: how long a connection waited before each retransmission went
//! out, by cause, per connection, destination and process.

use serde::Serialize;

use crate::{
    event::{CaState, Comm, Owner, RetransmitTiming, TcpState},
    stats::{Histo, Precision},
    track::compact::Stamp,
};

use super::SegmentKind;

/// Which wait a retransmission ended: the retransmission timer (`timeout`),
/// fast recovery (`fast`), a SYN or SYN-ACK resent by its timer, or a tail
/// loss probe (`probe`: sent in Open, Disorder or CWR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StallCause {
    Timeout,
    Fast,
    Syn,
    SynAck,
    Probe,
}

impl StallCause {
    pub const ALL: [Self; 5] = [Self::Timeout, Self::Fast, Self::Syn, Self::SynAck, Self::Probe];

    pub fn of(kind: SegmentKind, ca_state: CaState) -> Self {
        match (kind, ca_state) {
            (SegmentKind::Syn, _) => Self::Syn,
            (SegmentKind::SynAck, _) => Self::SynAck,
            (_, CaState::Loss) => Self::Timeout,
            (_, CaState::Recovery) => Self::Fast,
            _ => Self::Probe,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Fast => "fast",
            Self::Syn => "syn",
            Self::SynAck => "synack",
            Self::Probe => "probe",
        }
    }

    /// The title of its stall histogram in the text report.
    pub fn stall_title(self) -> &'static str {
        match self {
            Self::Timeout => "retransmit stall: timeout",
            Self::Fast => "retransmit stall: fast recovery",
            Self::Syn => "retransmit stall: SYN",
            Self::SynAck => "retransmit stall: SYN-ACK",
            Self::Probe => "retransmit stall: loss probe",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One retransmission's stall: how long the connection had waited, without
/// an ACK and without another retransmission, when this one went out
/// (docs/ARCHITECTURE.md, "Retransmit stalls").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub cause: StallCause,
    pub us: u64,
    /// The RTO (`icsk_rto`) and backoff count (`icsk_backoff`) at the time;
    /// for a `timeout`, the RTO that fired.
    pub rto_us: Option<u32>,
    pub backoff: Option<u8>,
}

impl Stall {
    /// The stall of a retransmission at `ts_ns` on a full socket: the least of
    /// the time since the last ACK (the kernel's `rcv_tstamp`; not in SYN_SENT,
    /// where nothing was received), since this connection's previous
    /// retransmission, and, for a SYN, since the socket entered SYN_SENT.
    /// None when nothing bounds it.
    pub fn measure(
        ts_ns: u64,
        cause: StallCause,
        timing: Option<RetransmitTiming>,
        state: TcpState,
        previous_ns: Option<u64>,
        syn_sent_ns: Option<u64>,
    ) -> Option<Self> {
        let since = |t: u64| ts_ns.saturating_sub(t) / 1000;
        let ack = timing.filter(|_| state != TcpState::SynSent).map(|t| u64::from(t.since_ack_us));
        let syn = syn_sent_ns.filter(|_| cause == StallCause::Syn).map(since);
        let us = [ack, previous_ns.map(since), syn].into_iter().flatten().min()?;
        Some(Self { cause, us, rto_us: timing.map(|t| t.rto_us), backoff: timing.map(|t| t.backoff) })
    }
}

/// A connection's stalls so far, in 16 bytes (one per live socket record):
/// µs as `u32`, saturating (71 minutes of stalls on one connection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStalls {
    total_us: u32,
    max_us: u32,
    /// When its last retransmission went out (ts_ns).
    last: Stamp,
}

impl ConnStalls {
    pub fn add(&mut self, ts_ns: u64, stall: Option<&Stall>) {
        self.last = Stamp::at(ts_ns);
        if let Some(s) = stall {
            let us = u32::try_from(s.us).unwrap_or(u32::MAX);
            self.total_us = self.total_us.saturating_add(us);
            self.max_us = self.max_us.max(us);
        }
    }

    /// When its last retransmission went out (ts_ns), if any.
    pub fn last_ns(&self) -> Option<u64> {
        self.last.get()
    }

    pub fn total_us(&self) -> u64 {
        u64::from(self.total_us)
    }

    pub fn max_us(&self) -> u64 {
        u64::from(self.max_us)
    }
}

/// Stall histograms by cause.
#[derive(Clone, Debug)]
pub struct StallHistos {
    by_cause: [Histo; 5],
}

impl StallHistos {
    pub fn new(precision: Precision) -> Self {
        Self { by_cause: std::array::from_fn(|_| Histo::new(precision)) }
    }

    pub fn record(&mut self, stall: &Stall) {
        // Zero allowed: a fast retransmit within the jiffy of the last ACK.
        self.by_cause[stall.cause.index()].record_value(stall.us);
    }

    pub fn get(&self, cause: StallCause) -> &Histo {
        &self.by_cause[cause.index()]
    }

    /// All causes together.
    pub fn all(&self) -> Histo {
        let mut h = self.by_cause[0].clone();
        for other in &self.by_cause[1..] {
            h.add(other);
        }
        h
    }
}

/// Stalls toward one destination or of one process.
#[derive(Clone, Debug)]
pub struct StallRow {
    pub stalls: StallHistos,
    /// Largest backoff count seen on a timeout retransmission (`icsk_backoff`
    /// before the expiry's own increment).
    pub max_backoff: u8,
    /// The last owner seen (destination rows).
    pub owner: Option<Owner>,
}

impl StallRow {
    pub(super) fn new() -> Self {
        Self { stalls: StallHistos::new(Precision::Coarse), max_backoff: 0, owner: None }
    }

    pub(super) fn record(&mut self, stall: &Stall, owner: Option<Owner>) {
        self.stalls.record(stall);
        if stall.cause == StallCause::Timeout {
            self.max_backoff = self.max_backoff.max(stall.backoff.unwrap_or(0));
        }
        if owner.is_some() {
            self.owner = owner;
        }
    }
}

/// A process, as stall rows key it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub pid: u32,
    pub comm: Comm,
}
