//! The tracker on real recorded traces (tracer/tests/fixtures), without
//! privileges: the numbers the kernel's own ground truth gave at recording time.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::path::PathBuf;

use serde_json::Value;
use tracer::{cli::Thresholds, commands::record::replay, pipeline::filter::FilterArgs};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn report(name: &str, filters: &FilterArgs) -> Value {
    let report = replay(&fixture(name), filters, Thresholds::default(), None)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    serde_json::from_str(&report.to_json_line()).unwrap()
}

#[test]
fn port_exhaustion_recording() {
    let r = report("port-exhaustion.tcptrace", &FilterArgs::default());
    assert_eq!(r["events"]["lost"], 0);
    let dest = &r["time_wait"]["by_destination"][0];
    assert_eq!(dest["remote"], "198.18.31.2:8080");
    assert_eq!(dest["count"], 100);
    assert_eq!(dest["port_range"], 100, "recorded namespace facts are used");
    assert_eq!(dest["utilization"], 1.0);
    assert_eq!(dest["closers"][0]["comm"], "ttclient");
    assert_eq!(r["connect_errors"][0]["errno"], "EADDRNOTAVAIL");
    assert_eq!(r["connect_errors"][0]["count"], 50);
    let d = &r["diagnoses"][0];
    assert_eq!(d["severity"], "critical");
    assert!(d["summary"].as_str().unwrap().contains("198.18.31.2:8080"), "{d}");
    assert_eq!(r["connections"]["active_close_local"], 100);
}

/// The fixtures were recorded before tcptrace read recursion misses: the
/// report says the count is unknown instead of claiming 0 silently.
#[test]
fn recordings_without_recursion_misses_say_so() {
    let r = report("port-exhaustion.tcptrace", &FilterArgs::default());
    assert_eq!(r["events"]["recursion_misses"], 0);
    let notes = r["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("before tcptrace counted the runs the kernel skipped")),
        "{notes:?}"
    );
}

#[test]
fn handshake_recording() {
    let r = report("handshakes.tcptrace", &FilterArgs::default());
    let s = &r["syn_recv"];
    assert_eq!(s["synack_retransmits"], 1, "{s}");
    let listener = |port: &str| {
        s["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["local"].as_str().unwrap().ends_with(port))
            .unwrap()
            .clone()
    };
    let plain = listener(":8443");
    assert_eq!(plain["completed"], 6);
    assert_eq!(plain["synack_retransmits"], 1);
    let max = plain["dwell"]["max"].as_u64().unwrap();
    assert!((1_000_000..1_100_000).contains(&max), "the lost ACK costs one SYN-ACK timeout: {max}");
    let deferred = listener(":8444");
    assert_eq!(deferred["completed"], 3);
    let p50 = deferred["dwell"]["p50"].as_u64().unwrap();
    assert!(p50.abs_diff(250_000) < 25_000, "first byte after 250 ms: {p50}");
}

#[test]
fn data_loss_recording_matches_the_kernels_counters() {
    let r = report("data-loss.tcptrace", &FilterArgs::default());
    let truth = std::fs::read_to_string(fixture("data-loss.server.txt")).unwrap();
    let top = r["retransmits"]["top"].as_array().unwrap();
    let mut checked = 0;
    for line in truth.lines().filter(|l| l.starts_with("conn ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (remote, retrans) = (f[2], f[4].trim_start_matches("retrans=").parse::<u64>().unwrap());
        let ours =
            top.iter().find(|t| t["remote"] == remote).map_or(0, |t| t["retransmits"].as_u64().unwrap());
        assert_eq!(ours, retrans, "connection from {remote}");
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn replay_applies_its_own_filters() {
    let only_server = FilterArgs { comms: vec!["ttserver".into()], ..Default::default() };
    let r = report("port-exhaustion.tcptrace", &only_server);
    assert_eq!(r["connections"]["active_close_local"], 0, "the server never closes first here");
    assert_eq!(r["connections"]["active_close_remote"], 100);
    assert_eq!(r["connect_errors"].as_array().unwrap().len(), 0);
}
