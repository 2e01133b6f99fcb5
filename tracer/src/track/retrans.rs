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

use crate::{
    event::{CaState, Comm, Owner, RetransmitTiming, TcpState},
    stats::{Histo, Precision},
    track::{compact::Stamp, timewait::dest::DestKey},
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
    fn new() -> Self {
        Self { stalls: StallHistos::new(Precision::Coarse), max_backoff: 0, owner: None }
    }

    fn record(&mut self, stall: &Stall, owner: Option<Owner>) {
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
    fn rows_order_by_count_then_pid_then_name_as_json_writes_it() {
        use crate::event::Comm;
        let owned = |n: u32, pid: u32, name: &[u8]| {
            let mut raw = [0u8; 16];
            raw[..name.len()].copy_from_slice(name);
            let mut r = row(n, 1);
            r.owner = Some(Owner { pid, comm: Comm::new(raw), cgroup: 1 });
            r
        };
        assert!(owned(1, 9, b"z") < owned(2, 1, b"a"), "the count first");
        assert!(row(3, 1) < owned(3, 1, b"a"), "no owner before any");
        assert!(owned(3, 1, b"z") < owned(3, 2, b"a"), "then the pid");
        // JSON writes "\xff" as U+FFFD, before an emoji (U+1F600) as text,
        // after it as bytes ("\xf0\x9f\x98\x80"): the text decides.
        assert!(owned(3, 1, b"a\xff") < owned(3, 1, b"a\xf0\x9f\x98\x80"));
        assert_eq!(owned(3, 1, b"a").cmp(&owned(3, 1, b"a")), std::cmp::Ordering::Equal);
    }

    const MS: u64 = 1_000_000;

    fn timing(since_ack_ms: u32, rto_ms: u32, backoff: u8) -> Option<RetransmitTiming> {
        Some(RetransmitTiming { since_ack_us: since_ack_ms * 1000, rto_us: rto_ms * 1000, backoff })
    }

    #[test]
    fn a_run_of_timeouts_stalls_as_the_rto_backs_off() {
        // Blackout: last ACK at 0, RTO 300 ms, then 600, 1200 ms; no ACK in between.
        let mut conn = ConnStalls::default();
        let mut seen = Vec::new();
        let mut at = 0;
        for (k, rto) in [300u32, 600, 1200].into_iter().enumerate() {
            at += u64::from(rto) * MS;
            let t = timing((at / MS) as u32, rto, k as u8);
            let s = Stall::measure(at, StallCause::Timeout, t, TcpState::Established, conn.last_ns(), None)
                .expect("measured");
            conn.add(at, Some(&s));
            assert_eq!((s.rto_us, s.backoff), (Some(rto * 1000), Some(k as u8)));
            seen.push(s.us / 1000);
        }
        assert_eq!(seen, [300, 600, 1200], "each the wait since the previous resend, not since the ACK");
        assert_eq!((conn.total_us(), conn.max_us()), (2_100_000, 1_200_000));
    }

    #[test]
    fn a_fast_retransmit_stalls_since_the_last_ack() {
        // The dup ACK that triggered it arrived 0 jiffies ago.
        let s =
            Stall::measure(5 * MS, StallCause::Fast, timing(0, 200, 0), TcpState::Established, None, None);
        assert_eq!(s.map(|s| s.us), Some(0));
        // Without timing (an old recording) and no earlier resend: unknown.
        assert_eq!(Stall::measure(5 * MS, StallCause::Fast, None, TcpState::Established, None, None), None);
    }

    #[test]
    fn a_syn_stalls_since_syn_sent_never_since_a_stale_ack_stamp() {
        // rcv_tstamp is meaningless in SYN_SENT (nothing received): ignored.
        let t = timing(1, 1000, 0);
        let first = Stall::measure(1_010 * MS, StallCause::Syn, t, TcpState::SynSent, None, Some(10 * MS));
        assert_eq!(first.map(|s| s.us), Some(1_000_000));
        let second = Stall::measure(
            3_010 * MS,
            StallCause::Syn,
            t,
            TcpState::SynSent,
            Some(1_010 * MS),
            Some(10 * MS),
        );
        assert_eq!(second.map(|s| s.us), Some(2_000_000));
    }

    #[test]
    fn stall_causes_follow_segment_kind_then_congestion_state() {
        use StallCause as C;
        assert_eq!(C::of(SegmentKind::Syn, CaState::Loss), C::Syn);
        assert_eq!(C::of(SegmentKind::SynAck, CaState::Open), C::SynAck);
        assert_eq!(C::of(SegmentKind::Data, CaState::Loss), C::Timeout);
        assert_eq!(C::of(SegmentKind::Fin, CaState::Recovery), C::Fast);
        assert_eq!(C::of(SegmentKind::Data, CaState::Open), C::Probe);
    }

    #[test]
    fn stalls_are_kept_by_cause_destination_and_process() {
        use crate::track::{conn::Role, timewait::DestKey};
        let mut s = RetransStats::default();
        let tuple = crate::event::Tuple {
            local: "10.0.0.1:40000".parse().expect("addr"),
            remote: "10.0.0.2:80".parse().expect("addr"),
        };
        let dest = DestKey::new(1, &tuple, Some(Role::Active));
        let owner = Owner { pid: 7, comm: Comm::new(*b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), cgroup: 1 };
        for (us, backoff) in [(300_000, 0), (600_000, 1), (1_200_000, 2)] {
            let stall =
                Stall { cause: StallCause::Timeout, us, rto_us: Some(us as u32), backoff: Some(backoff) };
            s.stall(&stall, dest, Some(owner));
        }
        s.stall(&Stall { cause: StallCause::Fast, us: 50, rto_us: None, backoff: None }, dest, None);
        assert_eq!(s.stalls.get(StallCause::Timeout).len(), 3);
        assert_eq!(s.stalls.get(StallCause::Fast).len(), 1);
        assert_eq!(s.stalls.all().len(), 4);
        let row = &s.stall_dests[&dest];
        assert_eq!((row.max_backoff, row.owner), (2, Some(owner)));
        assert_eq!(row.stalls.all().len(), 4);
        let by_proc = &s.stall_procs[&ProcessKey { pid: 7, comm: owner.comm }];
        assert_eq!(by_proc.stalls.all().len(), 3, "the stall without an owner is not a process's");
    }

    #[test]
    fn classifies_segments_by_state_and_flags() {
        let mut s = RetransStats::default();
        // A SYN is resent by the RTO, after tcp_enter_loss().
        s.segment(TcpState::SynSent, 1, true, false, CaState::Loss);
        s.segment(TcpState::SynRecv, 1, true, false, CaState::Open);
        s.segment(TcpState::Established, 3, false, false, CaState::Recovery);
        s.segment(TcpState::CloseWait, 1, false, false, CaState::Loss);
        s.segment(TcpState::FinWait1, 1, false, true, CaState::Loss);
        s.segment(TcpState::LastAck, 1, false, true, CaState::Open);
        s.segment(TcpState::Closing, 1, false, true, CaState::Open);
        s.synack();
        assert_eq!(s.segments, Segments { syn: 1, synack: 2, data: 4, fin: 3 });
        assert_eq!(s.causes, Causes { timeout: 4, fast: 3, other: 3 });
    }

    #[test]
    fn a_fin_on_a_multi_segment_skb_is_one_fin_and_data() {
        let mut s = RetransStats::default();
        s.segment(TcpState::FinWait1, 4, false, true, CaState::Recovery);
        assert_eq!(s.segments, Segments { syn: 0, synack: 0, data: 3, fin: 1 });
        assert_eq!(s.causes, Causes { timeout: 0, fast: 4, other: 0 });
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
