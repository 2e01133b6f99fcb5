//! The live view: redrawn in place in a real terminal (tmux), one JSON line
//! per interval otherwise; and `--hdr-log` read back with the hdrhistogram crate.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use hdrhistogram::{
    Histogram,
    serialization::{
        Deserializer,
        interval_log::{IntervalLogIterator, LogEntry},
    },
};
use tcptrace_tests::{background::Background, netns::Pair, require_root, tracer::Tracer, workspace_binary};

fn capture(session: &str) -> String {
    let out = Command::new("tmux").args(["capture-pane", "-p", "-t", session]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls the pane until `pred` holds (or panics after `timeout`).
fn wait_pane(session: &str, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let pane = capture(session);
        if pred(&pane) {
            return pane;
        }
        assert!(Instant::now() < deadline, "tmux pane never showed {what}:\n{pane}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct TmuxSession(String);

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

#[test]
fn live_view_redraws_in_a_terminal() {
    require_root();
    let name = format!("tcptrace-live-{}", std::process::id());
    let bin = workspace_binary("tcptrace");
    // Scoped to a namespace of its own: on a busy host the whole host's
    // final report is longer than the pane.
    let pair = Pair::new("tmx");
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", &name, "-x", "160", "-y", "50"])
        .arg(format!(
            "{} run --duration 5s --interval 500ms --netns {} --netns {}; sleep 60",
            bin.display(),
            pair.a.inode,
            pair.b.inode
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let _session = TmuxSession(name.clone());
    let first = wait_pane(&name, Duration::from_secs(20), "the summary", |p| {
        p.contains("TIME_WAIT:") && p.contains("+1s")
    });
    assert!(first.lines().next().unwrap_or("").starts_with("tcptrace "), "drawn from the top:\n{first}");
    let later = wait_pane(&name, Duration::from_secs(20), "an update", |p| p.contains("+3s"));
    assert!(!later.contains("+1s "), "redrawn in place, not appended:\n{later}");
    // It ends with the final report.
    wait_pane(&name, Duration::from_secs(20), "the final report", |p| p.contains("tcptrace report:"));
}

#[test]
fn json_intervals_and_hdr_log() {
    require_root();
    let pair = Pair::new("hdr");
    let addr = SocketAddr::new(pair.b4.into(), 8300);
    let log = std::env::temp_dir().join(format!("tcptrace-{}.hlog", std::process::id()));
    let mut tracer = Tracer::start(&[
        "run",
        "--format",
        "json",
        "--interval",
        "300ms",
        "--hdr-log",
        log.to_str().unwrap(),
        "--netns",
        &pair.a.inode.to_string(),
    ]);
    let mut server = pair.b.command(workspace_binary("ttserver"));
    server.args(["--listen", &addr.to_string()]);
    let _server = Background::start(server, "listening");
    let out = pair
        .a
        .command(workspace_binary("ttclient"))
        .args(["--connect", &addr.to_string(), "--count", "20", "--mode", "C"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut intervals = 0;
    tracer.wait_until(Duration::from_secs(10), "an interval showing the connections", |l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        intervals += usize::from(v["type"] == "interval");
        v["type"] == "interval" && v["closed"] == 20
    });
    let finished = tracer.stop();
    let report = finished.report();
    assert!(intervals >= 1);

    let text = std::fs::read(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let mut deserializer = Deserializer::new();
    let mut established = 0;
    let mut tags = std::collections::HashSet::new();
    for entry in IntervalLogIterator::new(&text) {
        if let Ok(LogEntry::Interval(h)) = entry {
            let tag = h.tag().unwrap().as_str().to_string();
            let bytes = base64(h.encoded_histogram());
            let hist: Histogram<u64> = deserializer.deserialize(&mut &bytes[..]).unwrap();
            if tag == "dwell_ESTABLISHED" {
                established += hist.len();
            }
            tags.insert(tag);
        }
    }
    assert!(tags.contains("time_wait_lifetime") && tags.contains("syn_recv_request"), "{tags:?}");
    assert_eq!(
        established,
        report["states"]["ESTABLISHED"]["count"].as_u64().unwrap(),
        "the intervals add up to the report's histogram"
    );
    assert_eq!(established, 20);
}

fn base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
