//! The live view: a summary every `--interval`, redrawn in place on a
//! terminal (crossterm), or one line per interval otherwise (`"type":
//! "interval"` in JSON).

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
};

use crossterm::{
    cursor::MoveTo,
    queue,
    terminal::{Clear, ClearType},
};
use serde::Serialize;

use crate::{
    event::Comm,
    host::clock::Clock,
    host::netns::{NetnsRegistry, PortRanges},
    pipeline::collect::KernelCounters,
    report::owner::RowOwner,
    stats::human_us,
    track::{Tracker, endpoint, stuck::count_by_state},
};

/// Rows per table in the live view.
const TOP: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMode {
    /// No periodic output (the `--events` text stream owns the terminal).
    Off,
    /// Redraw a summary in place (stdout is a terminal, text format).
    Terminal,
    /// One line per interval: text.
    TextLines,
    /// One line per interval: JSON.
    JsonLines,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeWaitRow {
    pub netns: u32,
    pub local: String,
    pub remote: String,
    pub count: u64,
    pub port_range: Option<u32>,
    pub utilization: Option<f64>,
    pub closer: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerRow {
    pub local: String,
    pub netns: u32,
    pub comm: Option<Comm>,
    pub completed: u64,
    pub dropped: u64,
    pub synack_retransmits: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloserRow {
    #[serde(flatten)]
    pub owner: RowOwner,
    pub remote: String,
    pub closes: u64,
    pub time_wait: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetransRow {
    pub comm: Option<Comm>,
    pub local: String,
    pub remote: String,
    pub retransmits: u32,
    /// Its longest retransmission stall, µs.
    pub stall_max_us: u64,
}

/// One interval's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub elapsed_s: f64,
    pub events_seen: u64,
    pub events_lost: u64,
    /// Runs of tcptrace's programs the kernel skipped (recursion): lost too.
    pub recursion_misses: u64,
    pub live_sockets: usize,
    pub opened: u64,
    pub closed: u64,
    /// Connections opened per second during this interval.
    pub opened_per_s: f64,
    pub time_wait: u64,
    pub time_wait_top: Vec<TimeWaitRow>,
    pub syn_recv_waiting: usize,
    pub syn_recv_completed: u64,
    pub syn_recv_dropped: u64,
    pub listeners_top: Vec<ListenerRow>,
    pub closers_top: Vec<CloserRow>,
    pub retransmits: u64,
    /// Stalls of all retransmissions since the start, all causes: p50, p99 (µs).
    pub retransmit_stall_p50_us: u64,
    pub retransmit_stall_p99_us: u64,
    pub retransmits_top: Vec<RetransRow>,
    pub connect_errors: u64,
    /// Sockets stuck in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK (`--stuck-after`).
    pub stuck: u64,
    pub stuck_close_wait: u64,
    /// The oldest stuck socket's time in its state, seconds.
    pub stuck_oldest_s: f64,
}

/// Builds and shows interval summaries.
pub struct LiveView {
    mode: LiveMode,
    clock: Clock,
    color: bool,
    started_ns: u64,
    last_ns: u64,
    last_opened: u64,
    port_ranges: PortRanges,
}

impl LiveView {
    pub fn new(mode: LiveMode, clock: Clock, started_ns: u64, registry: NetnsRegistry) -> Self {
        let color = mode == LiveMode::Terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self {
            mode,
            clock,
            color,
            started_ns,
            last_ns: started_ns,
            last_opened: 0,
            port_ranges: PortRanges::new(registry),
        }
    }

    pub fn mode(&self) -> LiveMode {
        self.mode
    }

    pub fn summarize(&mut self, tracker: &mut Tracker, kernel: &KernelCounters, now_ns: u64) -> Interval {
        let seconds = (now_ns.saturating_sub(self.last_ns) as f64 / 1e9).max(1e-3);
        let opened = tracker.counters.opened;
        let opened_per_s = (opened.saturating_sub(self.last_opened)) as f64 / seconds;
        self.last_ns = now_ns;
        self.last_opened = opened;

        let mut tw: Vec<_> = tracker.timewait.destinations.iter().filter(|(_, r)| r.current > 0).collect();
        tw.sort_by(|a, b| b.1.current.cmp(&a.1.current).then_with(|| a.0.remote.cmp(&b.0.remote)));
        let tw: Vec<_> =
            tw.into_iter().take(TOP).map(|(k, r)| (*k, r.current, r.closers.first().cloned())).collect();
        let time_wait_top = tw
            .into_iter()
            .map(|(key, count, closer)| {
                let range = if key.client_side { self.port_ranges.size(key.netns) } else { None };
                TimeWaitRow {
                    netns: key.netns,
                    local: endpoint(&key.local),
                    remote: endpoint(&key.remote),
                    count,
                    port_range: range,
                    utilization: range.map(|r| count as f64 / f64::from(r)),
                    closer: closer.and_then(|(o, _)| o.map(|o| format!("{}[{}]", o.comm, o.pid))),
                }
            })
            .collect();

        let s = &tracker.synrecv;
        let mut listeners: Vec<_> = s.listeners.iter().map(|(_, r)| r).collect();
        listeners.sort_by(|a, b| {
            let total =
                |r: &crate::track::synrecv::ListenerRow| r.completed + r.dropped.values().sum::<u64>();
            total(b).cmp(&total(a)).then_with(|| a.local.cmp(&b.local))
        });
        let listeners_top = listeners
            .into_iter()
            .take(TOP)
            .map(|r| ListenerRow {
                local: r.local.to_string(),
                netns: r.netns,
                comm: r.owner.map(|o| o.comm),
                completed: r.completed,
                dropped: r.dropped.values().sum(),
                synack_retransmits: r.synack_retransmits,
            })
            .collect();

        let mut closers: Vec<_> = tracker.closers.iter().collect();
        closers.sort_by(|a, b| b.1.closes.cmp(&a.1.closes).then_with(|| a.0.remote.cmp(&b.0.remote)));
        let closers_top = closers
            .into_iter()
            .take(TOP)
            .map(|(k, r)| CloserRow {
                owner: k.owner.into(),
                remote: endpoint(&k.remote),
                closes: r.closes,
                time_wait: r.time_wait,
            })
            .collect();

        let mut retrans = tracker.retrans.top();
        retrans.extend(tracker.live_retransmitters());
        retrans.sort_by_key(|r| std::cmp::Reverse(r.retransmits));
        let retransmits_top = retrans
            .into_iter()
            .take(TOP)
            .map(|r| RetransRow {
                comm: r.owner.map(|o| o.comm),
                local: r.local.to_string(),
                remote: r.remote.to_string(),
                retransmits: r.retransmits,
                stall_max_us: r.stall_max_us,
            })
            .collect();
        let seg = tracker.retrans.segments;
        let stalls = tracker.retrans.stalls.all().summary();
        let stuck = tracker.stuck(now_ns, tracker.stuck_after_ns);
        let by_state = count_by_state(&stuck);
        let stuck_oldest_ns = stuck.iter().map(|(_, r)| r.oldest_ns).max().unwrap_or(0);

        Interval {
            kind: "interval",
            time: self.clock.rfc3339(now_ns),
            elapsed_s: (now_ns.saturating_sub(self.started_ns) as f64 / 1e9 * 10.0).round() / 10.0,
            events_seen: kernel.seen,
            events_lost: kernel.lost,
            recursion_misses: kernel.recursion_misses(),
            live_sockets: tracker.live(),
            opened,
            closed: tracker.counters.closed,
            opened_per_s: (opened_per_s * 10.0).round() / 10.0,
            time_wait: tracker.timewait.current(),
            time_wait_top,
            syn_recv_waiting: s.current(),
            syn_recv_completed: s.completed,
            syn_recv_dropped: s.dropped.values().sum(),
            listeners_top,
            closers_top,
            retransmits: seg.syn + seg.synack + seg.data + seg.fin,
            retransmit_stall_p50_us: stalls.p50,
            retransmit_stall_p99_us: stalls.p99,
            retransmits_top,
            connect_errors: tracker.connect_errors.iter().map(|(_, n)| *n).sum(),
            stuck: by_state.iter().map(|(_, n)| n).sum(),
            // STUCK_STATES begins with CLOSE_WAIT.
            stuck_close_wait: by_state[0].1,
            stuck_oldest_s: (stuck_oldest_ns as f64 / 1e8).round() / 10.0,
        }
    }

    /// Shows one interval according to the mode.
    pub fn show(&self, interval: &Interval, out: &mut impl Write) -> io::Result<()> {
        match self.mode {
            LiveMode::Off => Ok(()),
            LiveMode::JsonLines => {
                serde_json::to_writer(&mut *out, interval)?;
                out.write_all(b"\n")?;
                out.flush()
            }
            LiveMode::TextLines => {
                writeln!(out, "{}", one_line(interval))?;
                out.flush()
            }
            LiveMode::Terminal => {
                queue!(out, MoveTo(0, 0), Clear(ClearType::All))?;
                out.write_all(self.dashboard(interval).replace('\n', "\r\n").as_bytes())?;
                out.flush()
            }
        }
    }

    fn paint(&self, text: &str, level: u8) -> String {
        if !self.color || level == 0 {
            return text.to_string();
        }
        // 1: yellow (attention), 2: red (trouble).
        let code = if level >= 2 { 31 } else { 33 };
        format!("\x1b[1;{code}m{text}\x1b[0m")
    }

    pub fn dashboard(&self, i: &Interval) -> String {
        let mut s = String::new();
        let mut lost = if i.events_lost > 0 {
            self.paint(&format!("{} LOST", i.events_lost), 2)
        } else {
            "0 lost".into()
        };
        if i.recursion_misses > 0 {
            lost += ", ";
            lost += &self.paint(&format!("{} SKIPPED (recursion)", i.recursion_misses), 2);
        }
        let _ = writeln!(
            s,
            "tcptrace  {}  +{:.0}s  {} events, {lost}  (Ctrl-C: final report)",
            &i.time[11..19],
            i.elapsed_s,
            i.events_seen
        );
        let _ = writeln!(
            s,
            "connections: {} live, {} opened ({:.0}/s), {} closed, {} connect() errors{}",
            i.live_sockets,
            i.opened,
            i.opened_per_s,
            i.closed,
            i.connect_errors,
            stuck_note(i)
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "TIME_WAIT: {}", i.time_wait);
        if !i.time_wait_top.is_empty() {
            let _ = writeln!(
                s,
                "  {:>10} {:<20} {:<24} {:>7} {:>7} {:>6}  CLOSER",
                "NETNS", "LOCAL", "REMOTE", "COUNT", "PORTS", "USED"
            );
            for r in &i.time_wait_top {
                let used = r.utilization.map_or_else(|| "-".to_string(), |u| format!("{:.0}%", 100.0 * u));
                let level = r.utilization.map_or(0, |u| {
                    if u >= 0.9 {
                        2
                    } else if u >= 0.5 {
                        1
                    } else {
                        0
                    }
                });
                let _ = writeln!(
                    s,
                    "  {:>10} {:<20} {:<24} {:>7} {:>7} {:>6}  {}",
                    r.netns,
                    r.local,
                    r.remote,
                    r.count,
                    r.port_range.map_or_else(|| "-".into(), |p| p.to_string()),
                    self.paint(&used, level),
                    r.closer.as_deref().unwrap_or("-").escape_debug()
                );
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "SYN_RECV: {} waiting, {} established, {} dropped",
            i.syn_recv_waiting,
            i.syn_recv_completed,
            self.paint(&i.syn_recv_dropped.to_string(), u8::from(i.syn_recv_dropped > 0))
        );
        for l in &i.listeners_top {
            let _ = writeln!(
                s,
                "  {:<24} {:>10} {:<16} {:>7} established {:>5} dropped {:>5} SYN-ACK retransmits",
                l.local,
                l.netns,
                name_cell(l.comm.as_ref()).escape_debug(),
                l.completed,
                l.dropped,
                l.synack_retransmits
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "active closers (hold the TIME_WAIT):");
        for c in &i.closers_top {
            let who = match &c.owner {
                RowOwner::Process(o) | RowOwner::InWorkload(o, _) => {
                    format!("{}[{}]", o.comm.lossy().escape_debug(), o.pid)
                }
                RowOwner::Unknown | RowOwner::Label(_) => "-".to_string(),
            };
            let _ = writeln!(
                s,
                "  {who:<24} -> {:<24} {:>7} closes {:>7} TIME_WAIT",
                c.remote, c.closes, c.time_wait
            );
        }
        let _ = writeln!(s);
        let stall = stall_note(i);
        let _ = writeln!(
            s,
            "retransmits: {}{stall}",
            self.paint(&i.retransmits.to_string(), u8::from(i.retransmits > 0))
        );
        for r in &i.retransmits_top {
            let _ = writeln!(
                s,
                "  {:<16} {:<24} -> {:<24} {:>6}  max stall {}",
                name_cell(r.comm.as_ref()).escape_debug(),
                r.local,
                r.remote,
                r.retransmits,
                human_us(r.stall_max_us)
            );
        }
        s
    }
}

/// A process name as JSON writes it (lossy UTF-8), `-` when unknown. The
/// dashboard escapes it (`escape_debug`, which ignores the column width).
fn name_cell(comm: Option<&Comm>) -> Cow<'_, str> {
    comm.map_or(Cow::Borrowed("-"), Comm::lossy)
}

/// The retransmissions' stall p50/p99, beside their count (empty without any).
fn stall_note(i: &Interval) -> String {
    if i.retransmits == 0 {
        return String::new();
    }
    format!(
        " (stall p50 {}, p99 {})",
        human_us(i.retransmit_stall_p50_us),
        human_us(i.retransmit_stall_p99_us)
    )
}

/// `, N stuck (M in CLOSE_WAIT, oldest T s)`, or nothing.
fn stuck_note(i: &Interval) -> String {
    if i.stuck == 0 {
        return String::new();
    }
    format!(", {} stuck ({} in CLOSE_WAIT, oldest {:.0} s)", i.stuck, i.stuck_close_wait, i.stuck_oldest_s)
}

/// The text line for non-terminals.
pub fn one_line(i: &Interval) -> String {
    let tw_top = i
        .time_wait_top
        .first()
        .map(|r| match r.utilization {
            Some(u) => {
                format!(" (top {} {:.0}% of {} ports)", r.remote, 100.0 * u, r.port_range.unwrap_or(0))
            }
            None => format!(" (top {} {})", r.remote, r.count),
        })
        .unwrap_or_default();
    let skipped = if i.recursion_misses > 0 {
        format!(", {} skipped by the kernel (recursion)", i.recursion_misses)
    } else {
        String::new()
    };
    let stall = stall_note(i);
    format!(
        "interval {} +{:.0}s: {} events ({} lost{skipped}), {:.0} conns/s, {} live, TIME_WAIT {}{tw_top}, SYN_RECV {} waiting / {} dropped, {} retransmits{stall}, {} connect errors{}",
        &i.time[11..19],
        i.elapsed_s,
        i.events_seen,
        i.events_lost,
        i.opened_per_s,
        i.live_sockets,
        i.time_wait,
        i.syn_recv_waiting,
        i.syn_recv_dropped,
        i.retransmits,
        i.connect_errors,
        stuck_note(i)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::{Limits, tests::*};

    #[test]
    fn summaries_count_and_render() {
        let mut t = Tracker::new(Limits::default(), true);
        let c = Sock::new(1, "198.18.0.1:40000", "198.18.0.2:8080");
        use crate::event::TcpState::*;
        t.handle(&c.by(0, Close, SynSent, task(10, "ttclient")));
        t.handle(&c.irq(1, SynSent, Established));
        let clock = Clock::with_offset_ns(1_795_824_000_000_000_000);
        let mut view = LiveView::new(LiveMode::JsonLines, clock, 0, NetnsRegistry::default());
        let i = view.summarize(&mut t, &KernelCounters { seen: 2, ..Default::default() }, 2_000 * MS);
        assert_eq!((i.opened, i.live_sockets), (1, 1));
        assert!((i.opened_per_s - 0.5).abs() < 1e-9);
        let mut out = Vec::new();
        view.show(&i, &mut out).expect("write");
        let json: serde_json::Value = serde_json::from_slice(&out).expect("json line");
        assert_eq!(json["type"], "interval");
        assert!(one_line(&i).contains("2 events (0 lost)"));
        assert!(view.dashboard(&i).contains("connections: 1 live"));
        assert!(!view.dashboard(&i).contains('\x1b'), "no colour outside terminals");
        assert_eq!(json["recursion_misses"], 0);
        assert!(!one_line(&i).contains("skipped") && !view.dashboard(&i).contains("SKIPPED"));
    }

    #[test]
    fn recursion_misses_show_as_lost_in_every_mode() {
        let mut t = Tracker::new(Limits::default(), true);
        let clock = Clock::with_offset_ns(1_795_824_000_000_000_000);
        let mut view = LiveView::new(LiveMode::JsonLines, clock, 0, NetnsRegistry::default());
        let kernel = KernelCounters {
            seen: 5,
            recursion: vec![crate::pipeline::collect::ProgramMisses {
                program: "tcptrace_state".into(),
                misses: Some(4),
                run_cnt: 0,
                run_time_ns: 0,
            }],
            ..Default::default()
        };
        let i = view.summarize(&mut t, &kernel, 1_000 * MS);
        assert_eq!(i.recursion_misses, 4);
        assert!(
            one_line(&i).contains("5 events (0 lost, 4 skipped by the kernel (recursion))"),
            "{}",
            one_line(&i)
        );
        assert!(
            view.dashboard(&i).contains("5 events, 0 lost, 4 SKIPPED (recursion)"),
            "{}",
            view.dashboard(&i)
        );
        let mut out = Vec::new();
        view.show(&i, &mut out).expect("write");
        let json: serde_json::Value = serde_json::from_slice(&out).expect("json line");
        assert_eq!(json["recursion_misses"], 4);
    }
}
