//! `--events`: one line per event, aligned text or JSON lines.

use std::io::{self, Write};

use serde::Serialize;

use crate::{
    event::{CaState, Comm, Event, EventKind, Owner, TcpState, errno_name},
    host::clock::Clock,
    output::Format,
    stats::human_us,
    track::{
        lifecycle::{Lifecycle, Step},
        retrans::{SegmentKind, Stall, StallCause},
        synrecv::RequestDrop,
        timewait::TwEnd,
    },
    workload::resolve::Workloads,
};

/// A line the event stream shows: a kernel event as it happened, or a
/// lifecycle summary the tracker derived (request socket established after
/// X ms, TIME_WAIT ended, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `stall`: the tracker's measure of a retransmission's stall.
    Event {
        event: &'a Event,
        owner: Option<&'a Owner>,
        stall: Option<Stall>,
    },
    Lifecycle(Lifecycle),
}

pub struct EventPrinter<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    header_done: bool,
    /// Names the owner's workload in JSON lines (`"workload"`: its label).
    workloads: Option<Workloads>,
}

const WIDTH_ADDR: usize = 24;

impl<W: Write> EventPrinter<W> {
    pub fn new(out: W, format: Format, clock: Clock) -> Self {
        Self { out, format, clock, header_done: false, workloads: None }
    }

    /// JSON lines name each owner's workload.
    pub fn with_workloads(mut self, workloads: Workloads) -> Self {
        self.workloads = Some(workloads);
        self
    }

    fn workload_of(&mut self, owner: Option<&Owner>) -> Option<String> {
        let owner = owner?;
        Some(self.workloads.as_mut()?.of_process(owner.cgroup, owner.pid)?.label())
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Whether `--events` shows this kernel event. Timer and owner events are
    /// internal: the tracker turns them into [`Lifecycle`] lines.
    pub fn shows(event: &Event) -> bool {
        matches!(
            event.kind,
            EventKind::State { .. }
                | EventKind::ResetSent { .. }
                | EventKind::ResetReceived
                | EventKind::Retransmit { .. }
                | EventKind::SynAckRetransmit { .. }
                | EventKind::SockError { .. }
                | EventKind::ConnectError { .. }
                | EventKind::Accepted
                | EventKind::Drop { .. }
        )
    }

    pub fn print(&mut self, line: &Line<'_>) -> io::Result<()> {
        match self.format {
            Format::Text => self.print_text(line),
            Format::Json => self.print_json(line),
        }
    }

    fn print_text(&mut self, line: &Line<'_>) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:<15} {:>7} {:<16} {:>10} {:<WIDTH_ADDR$} {:<WIDTH_ADDR$} EVENT",
                "TIME(UTC)", "PID", "COMM", "NETNS", "LOCAL", "REMOTE"
            )?;
        }
        let (ts, netns, local, remote, pid, comm, what) = match line {
            Line::Event { event, owner, stall } => (
                event.ts_ns,
                event.netns,
                event.tuple.local.to_string(),
                event.tuple.remote.to_string(),
                owner.map(|o| o.pid),
                owner.map(|o| o.comm),
                describe_with_stall(event, stall.as_ref()),
            ),
            Line::Lifecycle(l) => (
                l.ts_ns,
                l.netns,
                l.tuple.local.to_string(),
                l.tuple.remote.to_string(),
                l.owner.map(|o| o.pid),
                l.owner.map(|o| o.comm),
                lifecycle_detail(&l.step),
            ),
        };
        let pid = pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        let comm = comm.map_or_else(|| "-".to_string(), |c| c.to_string());
        writeln!(
            self.out,
            "{:<15} {:>7} {:<16} {:>10} {:<WIDTH_ADDR$} {:<WIDTH_ADDR$} {}",
            self.clock.time_of_day(ts),
            pid,
            comm,
            netns,
            local,
            remote,
            what
        )
    }

    fn print_json(&mut self, line: &Line<'_>) -> io::Result<()> {
        match line {
            Line::Event { event, owner, stall } => {
                let mut json = JsonEvent::new(event, *owner, stall.as_ref(), &self.clock);
                json.workload = self.workload_of(*owner);
                serde_json::to_writer(&mut self.out, &json)?;
            }
            Line::Lifecycle(l) => {
                #[derive(Serialize)]
                struct JsonLifecycle<'a> {
                    r#type: &'static str,
                    time: String,
                    ts_ns: u64,
                    event: &'static str,
                    netns: u32,
                    local: String,
                    remote: String,
                    pid: Option<u32>,
                    comm: Option<&'a Comm>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    workload: Option<String>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    outcome: Option<&'static str>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    duration_us: Option<u64>,
                    detail: &'a str,
                }
                let detail = lifecycle_detail(&l.step);
                let workload = self.workload_of(l.owner.as_ref());
                let json = JsonLifecycle {
                    r#type: "lifecycle",
                    time: self.clock.rfc3339(l.ts_ns),
                    ts_ns: l.ts_ns,
                    event: lifecycle_name(&l.step),
                    netns: l.netns,
                    local: l.tuple.local.to_string(),
                    remote: l.tuple.remote.to_string(),
                    pid: l.owner.map(|o| o.pid),
                    comm: l.owner.as_ref().map(|o| &o.comm),
                    workload,
                    outcome: lifecycle_outcome(&l.step),
                    duration_us: l.step.duration_ns().map(|ns| ns / 1000),
                    detail: &detail,
                };
                serde_json::to_writer(&mut self.out, &json)?;
            }
        }
        self.out.write_all(b"\n")
    }
}

/// Human description of a kernel event for the text stream.
pub fn describe(event: &Event) -> String {
    match event.kind {
        EventKind::State { old, new } => format!("{old} -> {new}"),
        EventKind::ResetSent { in_reply: false } => "RST sent".into(),
        EventKind::ResetSent { in_reply: true } => "RST sent in reply to a segment".into(),
        EventKind::ResetReceived => "RST received".into(),
        EventKind::Owner => "owner changed".into(),
        EventKind::Retransmit { state, segs, syn, fin, ca_state, .. } => {
            let what = segment_name(SegmentKind::of(state, syn, fin));
            format!("retransmit {what} x{segs} in {state} ({})", recovery_name(ca_state))
        }
        EventKind::SynAckRetransmit { retransmits, .. } => {
            format!("SYN-ACK retransmit #{}", u32::from(retransmits) + 1)
        }
        EventKind::SockError { errno } => format!("socket error {}", errno_name(errno)),
        EventKind::TimeWaitArmed { substate } => format!("timewait timer armed ({substate})"),
        EventKind::TimeWaitExpired { .. } => "TIME_WAIT expired".into(),
        EventKind::TimeWaitCancelled { .. } => "timewait timer cancelled".into(),
        EventKind::RequestArmed { .. } => "request timer armed".into(),
        EventKind::RequestExpired { .. } => "request timer expired".into(),
        EventKind::RequestExpireDone => "request timer handled".into(),
        EventKind::RequestCancelled { .. } => "request timer cancelled".into(),
        EventKind::ConnectError { errno } => format!("connect() failed: {}", errno_name(errno)),
        EventKind::Accepted => "accept() returned it".into(),
        EventKind::Drop { reason, tcp_flags } => {
            format!(
                "segment ({}) dropped by the kernel: {}",
                tcp_flags_text(tcp_flags),
                crate::drop_reason::name(reason)
            )
        }
    }
}

/// A TCP flags byte as `tcpdump` spells it (`S`, `S.`, `R`, `F.`, `.`).
pub fn tcp_flags_text(flags: u8) -> String {
    let mut text: String = [(0x02, 'S'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P')]
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, c)| *c)
        .collect();
    if flags & 0x10 != 0 {
        text.push('.');
    }
    if text.is_empty() { "none".into() } else { text }
}

/// [`describe`], and a retransmission's stall, RTO and backoff.
pub fn describe_with_stall(event: &Event, stall: Option<&Stall>) -> String {
    let mut text = describe(event);
    if let Some(s) = stall {
        text.push_str(&format!(", stall {} ({})", human_us(s.us), s.cause.name()));
        if s.cause == StallCause::Timeout
            && let (Some(rto), Some(backoff)) = (s.rto_us, s.backoff)
        {
            text.push_str(&format!(", RTO {} backoff {backoff}", human_us(u64::from(rto))));
        }
    }
    text
}

/// The stable machine name of a lifecycle step (`event` in JSON).
pub fn lifecycle_name(step: &Step) -> &'static str {
    match step {
        Step::TimeWaitStart { .. } => "time_wait_start",
        Step::TimeWaitEnd { .. } => "time_wait_end",
        Step::SynRecvStart => "syn_recv_start",
        Step::SynRecvEstablished { .. } | Step::SynRecvDropped { .. } => "syn_recv_end",
        Step::ConnectionEnd { .. } => "connection_end",
    }
}

/// How a step ended (`outcome` in JSON): the report's names of TIME_WAIT
/// ends and request drops, or `established`.
pub fn lifecycle_outcome(step: &Step) -> Option<&'static str> {
    match step {
        Step::TimeWaitStart { .. } | Step::SynRecvStart => None,
        Step::TimeWaitEnd { end, .. } => Some(end.name()),
        Step::SynRecvEstablished { .. } => Some("established"),
        Step::SynRecvDropped { reason, .. } => Some(reason.name()),
        Step::ConnectionEnd { reason, .. } => Some(reason.name()),
    }
}

/// Human description of a lifecycle step (`detail`).
pub fn lifecycle_detail(step: &Step) -> String {
    match *step {
        Step::TimeWaitStart { substate: TcpState::FinWait2 } => {
            "TIME_WAIT socket created (waiting for the peer's FIN first: FIN_WAIT2)".to_string()
        }
        Step::TimeWaitStart { .. } => "TIME_WAIT begins".to_string(),
        Step::TimeWaitEnd { end, age_ns } => {
            let why = match end {
                TwEnd::Expired => "expired",
                TwEnd::Reused => "reused by a new connect() (tcp_tw_reuse)",
                TwEnd::Reset => "killed by an RST",
                TwEnd::Recycled => "recycled by a new SYN from the peer",
                TwEnd::Purged => "purged with its namespace",
            };
            let after = age_ns.map_or_else(
                || "(born before tracing)".to_string(),
                |a| format!("after {:.3} s", a as f64 / 1e9),
            );
            format!("TIME_WAIT ends: {why} {after}")
        }
        Step::SynRecvStart => "SYN received: request socket in SYN_RECV, SYN-ACK sent".to_string(),
        Step::ConnectionEnd { reason, closed_from, lifetime_ns } => {
            let from = closed_from.map_or_else(String::new, |s| format!(" in {}", s.name()));
            let after = lifetime_ns.map_or_else(
                || " (opened before tracing)".to_string(),
                |ns| format!(" after {:.3} s", ns as f64 / 1e9),
            );
            format!("connection ended{from}{after}: {}", reason.describe())
        }
        Step::SynRecvEstablished { dwell_ns, synack_retransmits } => format!(
            "handshake complete: request socket was in SYN_RECV for {} ({synack_retransmits} SYN-ACK retransmits)",
            human_us(dwell_ns / 1000),
        ),
        Step::SynRecvDropped { reason, age_ns, synack_retransmits } => format!(
            "request dropped after {} in SYN_RECV, {synack_retransmits} SYN-ACK retransmits: {}",
            human_us(age_ns / 1000),
            drop_reason(reason)
        ),
    }
}

/// Why a request socket was dropped, in words.
fn drop_reason(reason: RequestDrop) -> &'static str {
    match reason {
        RequestDrop::SynackTimeout => "no final ACK after the SYN-ACK retries (tcp_synack_retries)",
        RequestDrop::DeferAcceptTimeout => "ACK but no data before TCP_DEFER_ACCEPT expired",
        RequestDrop::AcceptQueueFull => "final ACK came while the accept queue was full (listen overflow)",
        RequestDrop::ListenerClosed => "the listener was closed",
        RequestDrop::Reset => "reset (RST from the client or tcp_abort_on_overflow)",
    }
}

/// A resent segment's kind as the text stream names it.
pub fn segment_name(kind: SegmentKind) -> &'static str {
    match kind {
        SegmentKind::Syn => "SYN",
        SegmentKind::SynAck => "SYN-ACK",
        SegmentKind::Fin => "FIN",
        SegmentKind::Data => "data",
    }
}

/// `icsk_ca_state`: Loss means the retransmission timer fired (RTO).
pub fn recovery_name(ca_state: CaState) -> &'static str {
    match ca_state {
        CaState::Open => "open",
        CaState::Disorder => "disorder",
        CaState::Cwr => "cwr",
        CaState::Recovery => "fast recovery",
        CaState::Loss => "RTO",
        CaState::Unknown(_) => "unknown",
    }
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    r#type: &'static str,
    time: String,
    ts_ns: u64,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<TcpState>,
    family: &'static str,
    local: String,
    remote: String,
    netns: u32,
    cookie: u64,
    sock: String,
    /// The socket's owner as known so far (null: not known yet).
    pid: Option<u32>,
    comm: Option<&'a Comm>,
    /// The owner's workload (unit, container, pod), as the report labels it.
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<String>,
    /// The task that was running when the hook fired (often unrelated).
    task_pid: u32,
    task_comm: &'a Comm,
    /// Whether that task held the socket lock (it is then the owner).
    owner_context: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Retransmissions: the stall (µs), its cause, and the kernel's RTO (µs),
    /// backoff count and time since the last ACK (µs) when it sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    stall_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stall_cause: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rto_us: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since_ack_us: Option<u32>,
}

impl<'a> JsonEvent<'a> {
    fn new(event: &'a Event, owner: Option<&'a Owner>, stall: Option<&Stall>, clock: &Clock) -> Self {
        let timing = match event.kind {
            EventKind::Retransmit { timing, .. } => timing,
            _ => None,
        };
        let (old, new) = match event.kind {
            EventKind::State { old, new } => (Some(old), Some(new)),
            _ => (None, None),
        };
        Self {
            r#type: "event",
            time: clock.rfc3339(event.ts_ns),
            ts_ns: event.ts_ns,
            event: event.kind.name(),
            old,
            new,
            family: if event.tuple.local.is_ipv6() { "ipv6" } else { "ipv4" },
            local: event.tuple.local.to_string(),
            remote: event.tuple.remote.to_string(),
            netns: event.netns,
            cookie: event.cookie,
            sock: format!("{:#x}", event.sock),
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| &o.comm),
            workload: None,
            task_pid: event.task.pid,
            task_comm: &event.task.comm,
            owner_context: event.owned_by_task,
            detail: (!matches!(event.kind, EventKind::State { .. })).then(|| describe(event)),
            stall_us: stall.map(|s| s.us),
            stall_cause: stall.map(|s| s.cause.name()),
            rto_us: timing.map(|t| t.rto_us),
            backoff: timing.map(|t| t.backoff),
            since_ack_us: timing.map(|t| t.since_ack_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts the tracker built before it produced typed steps: scripts
    /// and the integration tests read them.
    #[test]
    fn lifecycle_steps_render_as_before() {
        let cases = [
            (
                Step::TimeWaitStart { substate: TcpState::TimeWait },
                "time_wait_start",
                None,
                "TIME_WAIT begins",
            ),
            (
                Step::TimeWaitStart { substate: TcpState::FinWait2 },
                "time_wait_start",
                None,
                "TIME_WAIT socket created (waiting for the peer's FIN first: FIN_WAIT2)",
            ),
            (
                Step::TimeWaitEnd { end: TwEnd::Reused, age_ns: Some(1_500_000_000) },
                "time_wait_end",
                Some("reused"),
                "TIME_WAIT ends: reused by a new connect() (tcp_tw_reuse) after 1.500 s",
            ),
            (
                Step::TimeWaitEnd { end: TwEnd::Reset, age_ns: None },
                "time_wait_end",
                Some("reset"),
                "TIME_WAIT ends: killed by an RST (born before tracing)",
            ),
            (
                Step::SynRecvStart,
                "syn_recv_start",
                None,
                "SYN received: request socket in SYN_RECV, SYN-ACK sent",
            ),
            (
                Step::SynRecvEstablished { dwell_ns: 1_010_000_000, synack_retransmits: 1 },
                "syn_recv_end",
                Some("established"),
                "handshake complete: request socket was in SYN_RECV for 1.01s (1 SYN-ACK retransmits)",
            ),
            (
                Step::SynRecvDropped {
                    reason: RequestDrop::AcceptQueueFull,
                    age_ns: 250_000_000,
                    synack_retransmits: 2,
                },
                "syn_recv_end",
                Some("accept_queue_full"),
                "request dropped after 250ms in SYN_RECV, 2 SYN-ACK retransmits: \
                 final ACK came while the accept queue was full (listen overflow)",
            ),
        ];
        for (step, name, outcome, detail) in cases {
            assert_eq!((lifecycle_name(&step), lifecycle_outcome(&step)), (name, outcome), "{step:?}");
            assert_eq!(lifecycle_detail(&step), detail);
        }
    }

    #[test]
    fn a_retransmits_stall_follows_its_description() {
        let timing =
            Some(crate::event::RetransmitTiming { since_ack_us: 1_216_000, rto_us: 608_000, backoff: 1 });
        let event = Event {
            ts_ns: 1,
            kind: EventKind::Retransmit {
                state: TcpState::Established,
                segs: 1,
                syn: false,
                fin: false,
                ca_state: CaState::Loss,
                timing,
            },
            sock: 1,
            cookie: 1,
            netns: 1,
            tuple: crate::event::Tuple::UNSPECIFIED,
            task: crate::event::Task { pid: 1, tid: 1, comm: Comm::default(), cgroup: 1 },
            owned_by_task: false,
            kernel_total_retrans: None,
            close_errno: 0,
            end_facts: None,
        };
        let stall =
            Stall { cause: StallCause::Timeout, us: 640_000, rto_us: Some(608_000), backoff: Some(1) };
        assert_eq!(
            describe_with_stall(&event, Some(&stall)),
            "retransmit data x1 in ESTABLISHED (RTO), stall 640ms (timeout), RTO 608ms backoff 1"
        );
        assert_eq!(describe_with_stall(&event, None), describe(&event));
    }

    #[test]
    fn resent_segments_are_named_from_flags_and_state() {
        let name = |state, syn, fin| segment_name(SegmentKind::of(state, syn, fin));
        assert_eq!(name(TcpState::SynSent, true, false), "SYN");
        assert_eq!(name(TcpState::SynRecv, true, false), "SYN-ACK");
        assert_eq!(name(TcpState::FinWait1, false, true), "FIN");
        assert_eq!(name(TcpState::LastAck, true, true), "SYN", "a SYN flag wins over FIN");
        assert_eq!(name(TcpState::Established, false, false), "data");
    }
}
