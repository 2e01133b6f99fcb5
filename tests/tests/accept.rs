//! The accept queue and kernel drops, on the real kernel. Ground truth: a
//! server that sleeps a known time before each accept() and measures how
//! long each connection waited (from poll() saying the queue is readable to
//! accept() returning), and `ss -lnt`'s Recv-Q/Send-Q for a listener that
//! never accepts.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::time::{Duration, Instant};

use serde_json::Value;
use tcptrace_tests::{
    netns::{NetNs, Pair},
    peers::{client, connected_client, server_on_b},
    require_root, slow_machine,
    tracer::Tracer,
};

/// The `accept_queue` row of the listener bound to `local` in `netns`.
fn listener_row<'a>(report: &'a Value, netns: u64, local: &str) -> &'a Value {
    report["accept_queue"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["netns"] == netns && l["local"] == local)
        .unwrap_or_else(|| panic!("no accept-queue row for {local}: {}", report["accept_queue"]))
}

/// `ss -lnt`'s (Recv-Q, Send-Q) of the listener on `local` in `ns`: the
/// children waiting for accept() and the queue's limit.
fn ss_listen_queue(ns: &NetNs, local: &str) -> (u64, u64) {
    let text = ns.sh("ss", &["-lnt"]);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(local))
        .unwrap_or_else(|| panic!("ss -lnt shows no listener on {local}:\n{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    (cols[1].parse().unwrap(), cols[2].parse().unwrap())
}

#[test]
fn a_slow_acceptor_shows_as_the_wait_from_handshake_to_accept() {
    require_root();
    let pair = Pair::new("accw");
    const DELAY_MS: u64 = 300;
    let delay = DELAY_MS.to_string();
    let (addr, mut server) = server_on_b(&pair, 8130, &["--accept-delay", &delay]);
    let tracer = Tracer::events_in(&pair.both(), &[]);
    // One at a time: each connection waits in the queue while the server
    // sleeps, then is served; the client makes the next one after.
    let conns = client(&pair.a, addr, &["--count", "3", "--mode", "C"]);
    let mut waited_us = Vec::new();
    for n in 1..=3 {
        let line = server.wait_for(Duration::from_secs(10), |l| l.starts_with("accepted "));
        assert!(line.contains(" waited_us="), "connection {n}: {line}");
        waited_us.push(line.rsplit_once("waited_us=").unwrap().1.parse::<u64>().unwrap());
    }
    let report = tracer.stop().report();
    eprintln!("measured: {}; the server's own waits {waited_us:?} µs", report["accept_queue"]);
    assert_eq!(conns.len(), 3);

    let a = &report["accept_queue"];
    assert_eq!(a["accepted"], 3, "every accept() the server made: {a}");
    assert_eq!(a["unmatched"], 0, "{a}");
    assert_eq!(a["waiting"], 0, "{a}");
    let row = listener_row(&report, pair.b.inode, &addr.to_string());
    assert_eq!(row["accepted"], 3);
    assert_eq!(row["comm"], "ttserver", "the listener's owner");
    // Lower bound: the server slept DELAY_MS between the child joining the
    // queue and accept() returning it. Upper bound: what the server itself
    // measured from poll()'s wake-up, plus that wake-up's latency (the
    // child joined the queue before poll() returned: microseconds on a
    // host, a few milliseconds in a loaded guest, more in an emulated one
    // without KVM, `slow_machine`). The global histogram
    // keeps 3 significant digits (the bucket of 300 ms is 256 µs wide).
    let wait = &a["wait"];
    let (min, max) = (wait["min"].as_u64().unwrap(), wait["max"].as_u64().unwrap());
    let server_max = *waited_us.iter().max().unwrap();
    assert_eq!(wait["count"], 3);
    assert!(min + 256 >= DELAY_MS * 1000, "accept wait {min} µs is shorter than the server's sleep");
    let latency = if slow_machine() { 200_000 } else { 20_000 };
    assert!(max <= server_max + latency, "accept wait {max} µs vs the server's own {server_max} µs");
    // accept() names the socket's owner: the server's connections are its.
    let ends = report["connection_ends"]["rows"].as_array().unwrap();
    let served: u64 =
        ends.iter().filter(|r| r["comm"] == "ttserver").map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(served, 3, "{ends:?}");
}

#[test]
fn the_accept_queue_depth_and_limit_match_ss() {
    require_root();
    let pair = Pair::new("accq");
    const BACKLOG: u64 = 5;
    let backlog = BACKLOG.to_string();
    let (addr, _server) = server_on_b(&pair, 8131, &["--backlog", &backlog, "--no-accept"]);
    let tracer = Tracer::events_in(&pair.both(), &[]);
    let held: Vec<_> =
        (0..3).map(|_| connected_client(&pair.a, addr, &["--first-write-delay", "60000"])).collect();
    // The client is connected before its final ACK reaches the server:
    // wait until the server's kernel has queued all three.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ss = loop {
        let ss = ss_listen_queue(&pair.b, &addr.to_string());
        if ss.0 == 3 || Instant::now() > deadline {
            break ss;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let report = tracer.stop().report();
    eprintln!("measured: {}; ss -lnt Recv-Q/Send-Q {ss:?}", report["accept_queue"]);
    assert_eq!(ss, (3, BACKLOG), "three children wait, the limit is the backlog");
    let row = listener_row(&report, pair.b.inode, &addr.to_string());
    assert_eq!(row["queue_max"].as_u64(), Some(ss.0), "deepest queue vs ss Recv-Q: {row}");
    assert_eq!(row["queue_limit"].as_u64(), Some(ss.1), "limit vs ss Send-Q: {row}");
    assert_eq!(row["queue_depth"]["count"], 3, "one sample per handshake: {row}");
    assert_eq!(row["accepted"], 0);
    assert_eq!(report["accept_queue"]["waiting"], 3);
    drop(held);
}
