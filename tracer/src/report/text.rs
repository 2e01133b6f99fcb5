//! The report for people: tables, percentiles and log-scale ASCII histograms.

use std::fmt::Write as _;

use super::Report;
use crate::{
    diagnose::Severity,
    stats::{Histo, human_us},
};

const BAR_WIDTH: u64 = 40;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, report);
    diagnoses(&mut out, report);
    connections(&mut out, report);
    syn_recv(&mut out, report);
    time_wait(&mut out, report);
    connect_errors(&mut out, report);
    retransmits(&mut out, report);
    states(&mut out, report);
    closers(&mut out, report);
    histograms(&mut out, report);
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn header(out: &mut String, report: &Report) {
    let e = &report.events;
    let _ = writeln!(out, "tcptrace report: {:.1} s", report.duration_s);
    let _ = writeln!(
        out,
        "events: {} seen, {} received, {} lost; {} decoded, {} undecodable",
        e.seen, e.received, e.lost, e.decoded, e.decode_errors
    );
    if e.is_lossy() {
        let _ = writeln!(
            out,
            "WARNING: {} events were lost; the numbers below undercount. Retry with a larger \
             --ring-buffer-size or on a less loaded host.",
            e.lost + e.decode_errors
        );
    }
    let full: Vec<String> = report
        .limits
        .iter()
        .filter(|t| t.evicted > 0)
        .map(|t| {
            format!(
                "{}{} {} (cap {})",
                if t.at_least { "at least " } else { "" },
                t.evicted,
                t.title(),
                t.cap
            )
        })
        .collect();
    if !full.is_empty() {
        let _ = writeln!(
            out,
            "WARNING: memory caps reached, left out: {}; the numbers below undercount them.",
            full.join(", ")
        );
    }
}

fn diagnoses(out: &mut String, report: &Report) {
    if report.diagnoses.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", "=".repeat(100));
    for d in &report.diagnoses {
        let tag = match d.severity {
            Severity::Critical => "CRITICAL",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
        };
        let _ = writeln!(out, "{tag}: {}", d.summary);
        for line in d.detail.lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "{}", "=".repeat(100));
    }
}

fn time_wait(out: &mut String, report: &Report) {
    let tw = &report.time_wait;
    let e = &tw.ended;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "TIME_WAIT: {} now ({} existed at start, age unknown), {} created, ended: {} expired, {} reused, \
         {} reset, {} recycled{}",
        tw.current,
        tw.preexisting,
        tw.created,
        e.expired,
        e.reused,
        e.reset,
        e.recycled,
        if e.purged > 0 { format!(", {} purged (namespace gone)", e.purged) } else { String::new() }
    );
    if tw.lifetime.count > 0 {
        let _ = writeln!(
            out,
            "  lifetime: p50 {}, max {} ({} measured; expiry is 60 s plus timer-wheel slack)",
            human_us(tw.lifetime.p50),
            human_us(tw.lifetime.max),
            tw.lifetime.count
        );
    }
    if tw.overflow.kernel > 0 || tw.overflow.closes_without_time_wait > 0 {
        let _ = writeln!(
            out,
            "  skipped TIME_WAIT (tcp_max_tw_buckets): {} (kernel counter), {} seen closing",
            tw.overflow.kernel, tw.overflow.closes_without_time_wait
        );
    }
    if tw.by_destination.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:>10} {:<20} {:<26} {:<6} {:>7} {:>7} {:>6} {:>9}  CLOSERS",
        "NETNS", "LOCAL", "REMOTE", "SIDE", "COUNT", "PORTS", "USED", "CREATED/s"
    );
    for d in &tw.by_destination {
        let closers: Vec<String> = d
            .closers
            .iter()
            .map(|c| {
                let comm = c.comm_text.as_deref().unwrap_or("-");
                match c.pid {
                    Some(pid) => format!("{comm}[{pid}] x{}", c.count),
                    None => format!("{comm} x{}", c.count),
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:>10} {:<20} {:<26} {:<6} {:>7} {:>7} {:>6} {:>9.1}  {}",
            d.netns,
            d.local,
            d.remote,
            d.side,
            d.count,
            d.port_range.map_or_else(|| "-".into(), |r| r.to_string()),
            d.utilization.map_or_else(|| "-".into(), |u| format!("{:.0}%", 100.0 * u)),
            d.created_per_s,
            closers.join(", ")
        );
    }
}

fn syn_recv(out: &mut String, report: &Report) {
    let s = &report.syn_recv;
    if s.created == 0
        && s.without_request == 0
        && s.kernel_counters.iter().all(|c| c.deltas.values().all(|v| *v == 0))
    {
        return;
    }
    let dropped: u64 = s.dropped.values().sum();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "SYN_RECV (request sockets, SYN to handshake): {} seen, {} established, {} dropped, {} still waiting; \
         {} SYN-ACK retransmits",
        s.created, s.completed, dropped, s.current, s.synack_retransmits
    );
    if s.dwell.count > 0 {
        let _ = writeln!(
            out,
            "  dwell: p50 {}, p90 {}, p99 {}, max {}",
            human_us(s.dwell.p50),
            human_us(s.dwell.p90),
            human_us(s.dwell.p99),
            human_us(s.dwell.max)
        );
    }
    let reasons: Vec<String> =
        s.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    if !reasons.is_empty() {
        let _ = writeln!(out, "  dropped: {}", reasons.join(", "));
    }
    if s.without_request > 0 {
        let _ = writeln!(
            out,
            "  handshakes without a request socket (syncookies, or older than tracing): {}",
            s.without_request
        );
    }
    if !s.listeners.is_empty() {
        let _ = writeln!(
            out,
            "  {:<26} {:>10} {:>7} {:<16} {:>9} {:>7} {:>8} {:>9} {:>9}",
            "LISTENER", "NETNS", "PID", "COMM", "ESTABL.", "DROPPED", "SYNACK-RT", "DWELL p50", "p99"
        );
        for l in &s.listeners {
            let _ = writeln!(
                out,
                "  {:<26} {:>10} {:>7} {:<16} {:>9} {:>7} {:>8} {:>9} {:>9}",
                l.local,
                l.netns,
                l.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                l.comm_text.as_deref().unwrap_or("-"),
                l.completed,
                l.dropped.values().sum::<u64>(),
                l.synack_retransmits,
                if l.dwell.count > 0 { human_us(l.dwell.p50) } else { "-".into() },
                if l.dwell.count > 0 { human_us(l.dwell.p99) } else { "-".into() },
            );
        }
    }
    for c in s.kernel_counters.iter().filter(|c| c.deltas.values().any(|v| *v != 0)) {
        let list: Vec<String> =
            c.deltas.iter().filter(|(_, v)| **v != 0).map(|(k, v)| format!("{k} +{v}")).collect();
        let _ = writeln!(out, "  kernel counters in netns {}: {}", c.netns, list.join(", "));
    }
}

fn retransmits(out: &mut String, report: &Report) {
    let r = &report.retransmits;
    let s = &r.segments;
    let total = s.syn + s.synack + s.data + s.fin;
    if total == 0 && r.timeouts == 0 {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "retransmits: {total} segments ({} SYN, {} SYN-ACK, {} data, {} FIN); causes: {} timeout, {} fast \
         recovery, {} other; {} connections killed by timeout",
        s.syn, s.synack, s.data, s.fin, r.causes.timeout, r.causes.fast, r.causes.other, r.timeouts
    );
    let p = &r.per_connection;
    if p.count > 0 {
        let _ = writeln!(
            out,
            "  per connection: p50 {}, p90 {}, p99 {}, max {} ({} connections)",
            p.p50, p.p90, p.p99, p.max, p.count
        );
    }
    for (title, rows) in [("most retransmits", &r.top), ("killed by retransmission timeout", &r.killed)] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {title}:");
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<26} {:<26} {:>6}  STATE",
            "PID", "COMM", "NETNS", "LOCAL", "REMOTE", "RETRANS"
        );
        for c in rows {
            let _ = writeln!(
                out,
                "  {:>7} {:<16} {:>10} {:<26} {:<26} {:>6}  {}",
                c.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                c.comm_text.as_deref().unwrap_or("-"),
                c.netns,
                c.local,
                c.remote,
                c.retransmits,
                c.state
            );
        }
    }
}

fn connect_errors(out: &mut String, report: &Report) {
    if report.connect_errors.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "connect() errors");
    let _ = writeln!(
        out,
        "  {:>7} {:<16} {:>10} {:<26} {:<14} {:>7}",
        "PID", "COMM", "NETNS", "REMOTE", "ERRNO", "COUNT"
    );
    for e in &report.connect_errors {
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<26} {:<14} {:>7}",
            e.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            e.comm_text.as_deref().unwrap_or("-"),
            e.netns,
            e.remote,
            e.errno,
            e.count
        );
    }
}

fn connections(out: &mut String, report: &Report) {
    let c = &report.connections;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "connections: {} opened, {} closed ({} were open before tracing), {} still open",
        c.opened, c.closed, c.preexisting, report.live_sockets
    );
    let _ = writeln!(
        out,
        "  who closed first: {} here (active close), {} the peer, {} both at once",
        c.active_close_local, c.active_close_remote, c.simultaneous_close
    );
    let _ = writeln!(
        out,
        "  abortive: {} reset sent, {} reset received, {} aborted (timeout, failed connect)",
        c.reset_sent, c.reset_received, c.aborted
    );
    let _ = writeln!(out, "  went on to TIME_WAIT: {}", c.time_wait);
    if c.evicted > 0 {
        let _ = writeln!(out, "  evicted at the memory cap: {}", c.evicted);
    }
}

fn states(out: &mut String, report: &Report) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "dwell per state", "count", "min", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, s) in &report.states.0 {
        if s.count == 0 {
            let _ = writeln!(out, "  {name:<14} {:>8}", 0);
            continue;
        }
        let _ = writeln!(
            out,
            "  {name:<14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            s.count,
            human_us(s.min),
            human_us(s.mean as u64),
            human_us(s.p50),
            human_us(s.p90),
            human_us(s.p99),
            human_us(s.p999),
            human_us(s.max)
        );
    }
    let _ = writeln!(
        out,
        "  (SYN_RECV_CHILD: the accepted socket's own SYN_RECV, from the final ACK to ESTABLISHED; \
         not the SYN_RECV that ss shows)"
    );
}

fn closers(out: &mut String, report: &Report) {
    if report.active_closers.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "active closers (the side that closes first holds the TIME_WAIT)");
    let _ = writeln!(
        out,
        "  {:>7} {:<16} {:>10} {:<20} {:<26} {:>7} {:>9}  CGROUP",
        "PID", "COMM", "NETNS", "LOCAL", "REMOTE", "CLOSES", "TIME_WAIT"
    );
    for row in &report.active_closers {
        let pid = row.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        let comm = row.comm_text.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<20} {:<26} {:>7} {:>9}  {}",
            pid,
            comm,
            row.netns,
            row.local,
            row.remote,
            row.closes,
            row.time_wait,
            row.cgroup.as_deref().unwrap_or("-")
        );
    }
}

fn histograms(out: &mut String, report: &Report) {
    for (name, histo) in &report.histograms {
        if histo.is_empty() {
            continue;
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{name} ({} samples)", histo.len());
        bars(out, histo);
    }
}

/// One line per power-of-two bucket: range, bar, count.
pub fn bars(out: &mut String, histo: &Histo) {
    let buckets = histo.log2_buckets();
    let peak = buckets.iter().map(|b| b.2).max().unwrap_or(0).max(1);
    for (low, high, count) in buckets {
        let width = (count * BAR_WIDTH).div_ceil(peak);
        let range = format!("{} - {}", human_us(low), human_us(high));
        let _ = writeln!(out, "  {range:>19} |{:<40}| {count}", "#".repeat(width as usize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroup::CgroupNames,
        report::EventCounts,
        track::{Limits, Tracker, tests::*},
    };

    #[test]
    fn renders_tables_bars_and_lossy_warning() {
        let mut t = Tracker::new(Limits::default(), true);
        let c = Sock::new(1, "198.18.0.1:40000", "198.18.0.2:8080");
        let client = task(10, "ttclient");
        for e in [
            c.by(0, crate::event::TcpState::Close, crate::event::TcpState::SynSent, client),
            c.irq(1, crate::event::TcpState::SynSent, crate::event::TcpState::Established),
            c.by(151, crate::event::TcpState::Established, crate::event::TcpState::FinWait1, client),
            c.irq(152, crate::event::TcpState::FinWait1, crate::event::TcpState::FinWait2),
            c.irq(153, crate::event::TcpState::FinWait2, crate::event::TcpState::Close),
        ] {
            t.handle(&e);
        }
        t.finish();
        let events = EventCounts { seen: 10, lost: 2, received: 8, lossy: true, ..Default::default() };
        let mut ctx = crate::report::ReportContext {
            cgroups: CgroupNames::with_root(std::path::Path::new("/nonexistent")),
            netns: Default::default(),
        };
        let report = Report::build(1.0, events, vec![], &mut t, &mut ctx);
        let text = render(&report);
        assert!(text.contains("events: 10 seen, 8 received, 2 lost; 0 decoded, 0 undecodable"), "{text}");
        assert!(text.contains("WARNING: 2 events were lost"), "{text}");
        assert!(!text.contains("memory caps reached"), "{text}");
        assert!(text.contains("1 here (active close)"), "{text}");
        assert!(text.contains("ttclient"), "{text}");
        assert!(text.contains("ESTABLISHED (1 samples)"), "{text}");
        assert!(text.contains("|########################################| 1"), "{text}");

        let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).expect("json");
        assert_eq!(json["type"], "report");
        assert_eq!(json["connections"]["active_close_local"], 1);
        assert_eq!(json["active_closers"][0]["comm"], "ttclient");
        assert_eq!(json["active_closers"][0]["pid"], 10);
        assert_eq!(json["active_closers"][0]["remote"], "198.18.0.2:8080");
        assert_eq!(json["active_closers"][0]["local"], "198.18.0.1");
        let established = &json["states"]["ESTABLISHED"];
        assert_eq!(established["count"], 1);
        assert!(established["p50"].as_u64().expect("p50").abs_diff(150_000) <= 150);
        assert_eq!(json["states"]["lifetime"]["count"], 1);
        assert!(report.to_json_line().contains("\"states\":{\"SYN_SENT\""), "lifecycle order kept");
        assert_eq!(json["events"]["lossy"], true);
        let sockets = &json["limits"][0];
        assert_eq!((sockets["table"].as_str(), sockets["evicted"].as_u64()), (Some("sockets"), Some(0)));
    }

    #[test]
    fn odd_process_names_are_escaped_from_their_bytes_in_tables() {
        use crate::event::{Comm, TcpState::*};
        let mut t = Tracker::new(Limits::default(), true);
        let mut raw = [0u8; 16];
        raw[..11].copy_from_slice(b"tt\"q\\b\n\x1b[m\xff");
        let mut odd = task(10, "x");
        odd.comm = Comm::new(raw);
        let c = Sock::new(1, "198.18.0.1:40000", "198.18.0.2:8080");
        for e in [
            c.by(0, Close, SynSent, odd),
            c.irq(1, SynSent, Established),
            c.by(2, Established, FinWait1, odd),
            c.irq(3, FinWait1, FinWait2),
            c.irq(4, FinWait2, Close),
        ] {
            t.handle(&e);
        }
        t.finish();
        let mut ctx = crate::report::ReportContext {
            cgroups: CgroupNames::with_root(std::path::Path::new("/nonexistent")),
            netns: Default::default(),
        };
        let report = Report::build(1.0, EventCounts::default(), vec![], &mut t, &mut ctx);
        let text = render(&report);
        assert!(text.contains(r#"tt\"q\\b\n\x1b[m\xff"#), "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).expect("json");
        assert_eq!(json["active_closers"][0]["comm"], "tt\"q\\b\n\u{1b}[m\u{fffd}");
    }

    #[test]
    fn evictions_at_the_caps_are_a_warning_with_other_rows() {
        let limits = Limits { max_sockets: 1, max_rows: 1, ..Limits::BUILT_IN };
        let mut t = Tracker::new(limits, true);
        let client = task(10, "ttclient");
        use crate::event::TcpState::*;
        // Three connections closed actively toward three peers (rows cap 1)...
        for i in 0..3u64 {
            let c = Sock::new(i + 1, "198.18.0.1:40000", &format!("198.18.0.{}:8080", i + 2));
            let t0 = i * 1000;
            t.handle(&c.by(t0, Close, SynSent, client));
            t.handle(&c.irq(t0 + 1, SynSent, Established));
            t.handle(&c.by(t0 + 2, Established, FinWait1, client));
            t.handle(&c.irq(t0 + 3, FinWait1, FinWait2));
            t.handle(&c.irq(t0 + 4, FinWait2, Close));
        }
        // ... then three connections still opening (socket cap 1).
        for i in 0..3u64 {
            let c = Sock::new(i + 10, "198.18.0.1:40001", "198.18.0.9:8080");
            t.handle(&c.by(5000 + i, Close, SynSent, client));
        }
        t.finish();
        let mut ctx = crate::report::ReportContext {
            cgroups: CgroupNames::with_root(std::path::Path::new("/nonexistent")),
            netns: Default::default(),
        };
        let report = Report::build(1.0, EventCounts::default(), vec![], &mut t, &mut ctx);
        let text = render(&report);
        assert!(
            text.contains(
                "WARNING: memory caps reached, left out: 2 socket records (cap 1), 2 active-closer rows"
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).expect("json");
        let closers = json["active_closers"].as_array().expect("rows");
        assert_eq!(closers.len(), 2, "{closers:?}");
        assert_eq!(closers[1]["comm"], "(other: 2 more rows)");
        assert_eq!(closers[1]["closes"], 2);
    }
}
