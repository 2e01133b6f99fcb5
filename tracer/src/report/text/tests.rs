//! The text report on small traces: tables, warnings, escaping.

use super::*;
use crate::{
    host::cgroup::CgroupNames,
    report::EventCounts,
    track::{Limits, Tracker, tests::*},
};

/// The report of a one-second run, cgroup ids left unnamed (no cgroup root).
fn build(tracker: &mut Tracker, events: EventCounts) -> Report {
    let mut ctx = crate::report::ReportContext {
        workloads: crate::workload::resolve::Workloads::new(
            CgroupNames::with_root(std::path::Path::new("/nonexistent")),
            None,
        ),
        netns: Default::default(),
    };
    Report::build(1.0, events, vec![], tracker, &mut ctx)
}

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
    let report = build(&mut t, events);
    let text = render(&report);
    assert!(text.contains("events: 10 seen, 8 received, 2 lost; 0 decoded, 0 undecodable"), "{text}");
    assert!(text.contains("WARNING: 2 events were lost"), "{text}");
    assert!(!text.contains("skipped by the kernel"), "no recursion misses, no word of them: {text}");
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
fn recursion_misses_are_on_the_events_line_and_a_warning() {
    let mut t = Tracker::new(Limits::default(), true);
    t.finish();
    let kernel = crate::pipeline::collect::KernelCounters {
        seen: 6,
        submitted: 6,
        recursion: vec![
            crate::pipeline::collect::ProgramMisses {
                program: "tcptrace_state".into(),
                misses: Some(2),
                run_cnt: 0,
                run_time_ns: 0,
            },
            crate::pipeline::collect::ProgramMisses {
                program: "tcptrace_timer_start".into(),
                misses: Some(1),
                run_cnt: 0,
                run_time_ns: 0,
            },
        ],
        ..Default::default()
    };
    let user = crate::pipeline::collect::UserCounters::default();
    user.received.store(6, std::sync::atomic::Ordering::Relaxed);
    user.decoded.store(6, std::sync::atomic::Ordering::Relaxed);
    let events = EventCounts::new(&kernel, &user);
    let report = build(&mut t, events);
    let text = render(&report);
    assert!(
        text.contains(
            "events: 6 seen, 6 received, 0 lost; 6 decoded, 0 undecodable; 3 skipped by the kernel (recursion)"
        ),
        "{text}"
    );
    assert!(!text.contains("events were lost"), "nothing lost from the ring buffer: {text}");
    assert!(
        text.contains(
            "WARNING: the kernel skipped 3 runs of tcptrace's programs because the same program was \
             already running on that CPU (tcptrace_state 2, tcptrace_timer_start 1); any event those \
             runs would have produced is lost"
        ),
        "{text}"
    );
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
    let report = build(&mut t, EventCounts::default());
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
    let report = build(&mut t, EventCounts::default());
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

/// Retransmissions the kernel counted that no event showed: a WARNING in the
/// text, `unseen` in JSON, and the connection's count is the kernel's.
#[test]
fn unseen_retransmits_are_a_warning_and_in_the_connections_count() {
    use crate::event::{CaState, EventKind, TcpState::*};
    let mut t = Tracker::new(Limits::default(), true);
    let c = Sock::new(1, "198.18.0.1:40000", "198.18.0.2:8080");
    let mut rt = c.event(
        500,
        EventKind::Retransmit {
            state: Established,
            segs: 1,
            syn: false,
            fin: false,
            ca_state: CaState::Loss,
            timing: None,
        },
        softirq(),
        false,
    );
    // The kernel's total says one retransmission before it went unseen.
    rt.kernel_total_retrans = Some(2);
    let mut close = c.irq(900, Established, Close);
    close.kernel_total_retrans = Some(2);
    for e in [c.by(0, Close, SynSent, task(10, "ttclient")), c.irq(1, SynSent, Established), rt, close] {
        t.handle(&e);
    }
    t.finish();
    let report = build(&mut t, EventCounts::default());
    let text = render(&report);
    assert!(text.contains("WARNING: 1 more retransmitted segments were counted by the kernel"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).expect("json");
    assert_eq!(json["retransmits"]["unseen"], 1);
    assert_eq!(json["retransmits"]["causes"]["timeout"], 1);
    assert_eq!(json["retransmits"]["per_connection"]["max"], 2);
}

/// Kernel drops get their own section, and the ones that explain another
/// section are repeated beside it: toward a listener under SYN_RECV, lost on
/// the way under the retransmits.
#[test]
fn kernel_drops_are_listed_and_shown_beside_what_they_explain() {
    use crate::event::{EventKind, TcpState::*};
    let mut t = Tracker::new(Limits::default(), true);
    let server = task(20, "ttserver");
    let (l, req, child) = crate::track::tests::passive_handshake();
    let listener = l.sock;
    t.handle(&l.by(0, Close, Listen, server));
    t.handle(&req.event(10, EventKind::RequestArmed { listener, retransmits: 0 }, softirq(), false));
    t.handle(&child.irq(11, Listen, SynRecv));
    let cancel = EventKind::RequestCancelled { listener, retransmits: 0, accept_queue: Some((0, 128)) };
    t.handle(&req.event(11, cancel, softirq(), false));
    // Packets: (source, destination) as the tuple's (local, remote).
    let overflow = Sock::new(0, "198.18.0.1:40001", "198.18.0.2:8080");
    let firewall = Sock::new(0, "198.18.0.2:8080", "198.18.0.1:40000");
    t.handle(&overflow.event(20, EventKind::Drop { reason: 40, tcp_flags: 0x10 }, softirq(), false));
    t.handle(&firewall.event(21, EventKind::Drop { reason: 12, tcp_flags: 0x18 }, softirq(), false));
    t.finish();
    let report = build(&mut t, EventCounts::default());
    assert_eq!(report.drops.segments, 2);
    let text = render(&report);
    assert!(text.contains("Kernel drops (TCP segments thrown away, with the kernel's reason): 2"), "{text}");
    assert!(text.contains("kernel drops toward these listeners: reason 40 198.18.0.2:8080 x1"), "{text}");
    assert!(
        text.contains("Accept queue (handshake complete to accept()): 0 accepted, 1 still waiting"),
        "{text}"
    );
}
