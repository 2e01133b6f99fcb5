//! Stuck sockets on the real kernel: a server that never closes the
//! connections its clients closed (a CLOSE_WAIT leak), some leaked before
//! tracing began. Ground truth: the server process the test started, the
//! connections it made, `ss` in the server's namespace, and the test's own
//! clock for the threshold.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::time::{Duration, Instant};

use serde_json::Value;
use tcptrace_tests::{
    netns::{NetNs, Pair},
    peers::{client, server_on_b},
    require_root,
    tracer::{Tracer, args_in},
};

fn close_wait(ns: &NetNs) -> usize {
    ns.sh("ss", &["-Htn", "state", "close-wait"]).lines().count()
}

/// Waits (30 s at most) until `ns` has `n` sockets in CLOSE_WAIT.
fn until_close_wait(ns: &NetNs, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while close_wait(ns) != n {
        assert!(Instant::now() < deadline, "ss never showed {n} CLOSE_WAIT sockets (now {})", close_wait(ns));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn close_wait_leaks_are_named_with_their_process_and_age() {
    require_root();
    let pair = Pair::new("stk");
    let (addr, server) = server_on_b(&pair, 8140, &[]);
    // The server holds every connection 10 minutes after the client's
    // close: its side stays in CLOSE_WAIT.
    let leak = ["--mode", "C", "--server-mode", "H 600000"];
    let began = Instant::now();
    client(&pair.a, addr, &[["--count", "2"].as_slice(), &leak].concat());
    until_close_wait(&pair.b, 2);
    let mut tracer =
        Tracer::start(&args_in(&["run", "--format", "json", "--stuck-after", "2s"], &pair.both()));
    client(&pair.a, addr, &[["--count", "3"].as_slice(), &leak].concat());
    let leaked = Instant::now();
    until_close_wait(&pair.b, 5);
    // The threshold under test: 2 s in CLOSE_WAIT, with a margin.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(leaked.elapsed()));
    tracer.wait_until(Duration::from_secs(10), "an interval showing the five", |line| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| v["type"] == "interval" && v["stuck"] == 5)
    });
    // One more, too young to count when the run ends.
    client(&pair.a, addr, &[["--count", "1"].as_slice(), &leak].concat());
    until_close_wait(&pair.b, 6);
    let finished = tracer.stop();
    let whole_run = began.elapsed().as_secs_f64();
    let report = finished.report();
    let stuck = &report["stuck"];
    eprintln!("measured: {stuck}; ss: {} in CLOSE_WAIT", close_wait(&pair.b));

    assert_eq!(stuck["by_state"]["CLOSE_WAIT"], 5, "{stuck}");
    assert_eq!(stuck["by_state"]["FIN_WAIT2"], 0, "{stuck}");
    let rows = stuck["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one process, one listener: {stuck}");
    let row = &rows[0];
    assert_eq!(row["pid"], server.pid(), "{row}");
    assert_eq!(row["comm"], "ttserver");
    assert_eq!(row["local"], addr.to_string());
    assert_eq!(row["remote"], pair.a4.to_string());
    assert_eq!((row["count"].as_u64(), row["before_tracing"].as_u64()), (Some(5), Some(2)), "{row}");
    let oldest = row["oldest_s"].as_f64().unwrap();
    assert!((2.0..=whole_run).contains(&oldest), "oldest {oldest} s, the whole test took {whole_run:.1} s");
    let diagnosis = report["diagnoses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["summary"].as_str().unwrap().contains("CLOSE_WAIT"))
        .unwrap_or_else(|| panic!("no CLOSE_WAIT diagnosis: {}", report["diagnoses"]));
    let summary = diagnosis["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("5 sockets of ttserver (pid {}) stuck in CLOSE_WAIT", server.pid())),
        "{summary}"
    );
    assert_eq!(diagnosis["severity"], "warning");
}
