//! `--events`: one line per event, aligned text or JSON lines.

use std::io::{self, Write};

use serde::Serialize;

use crate::{
    cli::Format,
    clock::Clock,
    event::{Comm, Event, EventKind, Lifecycle, Owner, TcpState},
};

/// A line the event stream shows: a kernel event as it happened, or a
/// lifecycle summary the tracker derived (request socket established after
/// X ms, TIME_WAIT ended, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    Event { event: &'a Event, owner: Option<&'a Owner> },
    Lifecycle(Lifecycle),
}

pub struct EventPrinter<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    header_done: bool,
}

const WIDTH_ADDR: usize = 24;

impl<W: Write> EventPrinter<W> {
    pub fn new(out: W, format: Format, clock: Clock) -> Self {
        Self { out, format, clock, header_done: false }
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
                | EventKind::ResetSent
                | EventKind::ResetReceived
                | EventKind::Retransmit { .. }
                | EventKind::SynAckRetransmit { .. }
                | EventKind::SockError { .. }
                | EventKind::ConnectError { .. }
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
            Line::Event { event, owner } => (
                event.ts_ns,
                event.netns,
                event.tuple.local.to_string(),
                event.tuple.remote.to_string(),
                owner.map(|o| o.pid),
                owner.map(|o| o.comm),
                describe(event),
            ),
            Line::Lifecycle(l) => (
                l.ts_ns,
                l.netns,
                l.tuple.local.to_string(),
                l.tuple.remote.to_string(),
                l.owner.map(|o| o.pid),
                l.owner.map(|o| o.comm),
                l.detail.clone(),
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
            Line::Event { event, owner } => {
                let json = JsonEvent::new(event, *owner, &self.clock);
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
                    outcome: Option<&'static str>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    duration_us: Option<u64>,
                    detail: &'a str,
                }
                let json = JsonLifecycle {
                    r#type: "lifecycle",
                    time: self.clock.rfc3339(l.ts_ns),
                    ts_ns: l.ts_ns,
                    event: l.event,
                    netns: l.netns,
                    local: l.tuple.local.to_string(),
                    remote: l.tuple.remote.to_string(),
                    pid: l.owner.map(|o| o.pid),
                    comm: l.owner.as_ref().map(|o| &o.comm),
                    outcome: l.outcome,
                    duration_us: l.duration_ns.map(|ns| ns / 1000),
                    detail: &l.detail,
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
        EventKind::ResetSent => "RST sent".into(),
        EventKind::ResetReceived => "RST received".into(),
        EventKind::Owner => "owner changed".into(),
        EventKind::Retransmit { state, segs, syn, fin, ca_state } => {
            let what = retransmit_segment(state, syn, fin);
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
    }
}

/// Which kind of segment a retransmission resent, from its flags and the
/// state it was sent in.
pub fn retransmit_segment(state: TcpState, syn: bool, fin: bool) -> &'static str {
    if syn {
        if state == TcpState::SynRecv { "SYN-ACK" } else { "SYN" }
    } else if fin {
        "FIN"
    } else {
        "data"
    }
}

/// `icsk_ca_state`: Loss means the retransmission timer fired (RTO).
pub fn recovery_name(ca_state: u8) -> &'static str {
    match ca_state {
        0 => "open",
        1 => "disorder",
        2 => "cwr",
        3 => "fast recovery",
        4 => "RTO",
        _ => "unknown",
    }
}

pub fn errno_name(errno: u32) -> String {
    let name = match errno as i32 {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EPIPE => "EPIPE",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::EALREADY => "EALREADY",
        libc::EISCONN => "EISCONN",
        libc::ENETDOWN => "ENETDOWN",
        libc::EPROTO => "EPROTO",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
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
    /// The task that was running when the hook fired (often unrelated).
    task_pid: u32,
    task_comm: &'a Comm,
    /// Whether that task held the socket lock (it is then the owner).
    owner_context: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl<'a> JsonEvent<'a> {
    fn new(event: &'a Event, owner: Option<&'a Owner>, clock: &Clock) -> Self {
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
            task_pid: event.task.pid,
            task_comm: &event.task.comm,
            owner_context: event.owned_by_task,
            detail: (!matches!(event.kind, EventKind::State { .. })).then(|| describe(event)),
        }
    }
}
