//! `tcptrace demo`: reproduces the incident, shows the diagnosis, and leaves
//! nothing behind (namespaces, and with them veth pairs and nftables tables),
//! also when interrupted.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::time::Duration;

use tcptrace_tests::{require_root, slow_machine, tracer::Tracer};

fn demo_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("tcptrace-demo"))
        .map(str::to_string)
        .collect()
}

#[test]
fn time_wait_demo_diagnoses_exhaustion_and_cleans_up() {
    require_root();
    // The demo client paces 250 connections/s, but under TCG manages about 80/s:
    // it needs longer to fill the 500 ports.
    let duration = if slow_machine() { "12s" } else { "4s" };
    let tracer = Tracer::start(&["demo", "time-wait", "--duration", duration, "--format", "json"]);
    let finished = tracer.wait(Duration::from_secs(60));
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = finished.report();
    let critical = &report["diagnoses"][0];
    assert_eq!(critical["severity"], "critical", "{}", report["diagnoses"]);
    assert!(critical["summary"].as_str().unwrap().contains("198.18.250.2:8080"), "{critical}");
    assert!(critical["summary"].as_str().unwrap().contains("demo-client"), "{critical}");
    assert_eq!(report["time_wait"]["by_destination"][0]["count"], 500);
    assert_eq!(demo_namespaces(), Vec::<String>::new(), "namespaces removed");
}

#[test]
fn interrupted_demo_still_reports_and_cleans_up() {
    require_root();
    let mut tracer = Tracer::start(&["demo", "retransmits", "--duration", "60s", "--format", "json"]);
    tracer.wait_until(Duration::from_secs(20), "a retransmit", |l| {
        l.contains("\"type\":\"interval\"") && !l.contains("\"retransmits\":0,")
    });
    let finished = tracer.stop_with(libc::SIGINT);
    assert!(finished.status.success(), "{}", finished.stderr);
    let report = finished.report();
    assert!(report["retransmits"]["segments"]["data"].as_u64().unwrap() > 0);
    assert_eq!(demo_namespaces(), Vec::<String>::new(), "namespaces removed after Ctrl-C");
}
