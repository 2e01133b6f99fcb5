//! The foundation end to end on the real kernel: every transition of 200
//! connections between two namespaces, both ends, exactly once, in order,
//! with the right 4-tuple and nothing lost (IPv4 and IPv6); clean exits.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tcptrace_tests::{
    background::Background,
    events::{Ev, parse_conns, parse_events, stdout_lines},
    netns::Pair,
    require_root,
    tracer::{Tracer, loaded_tcptrace_programs},
    workspace_binary,
};

const CLIENT_FIRST: &[(&str, &str)] = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];
const CLIENT_SECOND: &[(&str, &str)] = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];
const SERVER_FIRST: &[(&str, &str)] = &[
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];
const SERVER_SECOND: &[(&str, &str)] = &[
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

fn transitions(events: &[&Ev]) -> Vec<(String, String)> {
    events.iter().filter_map(|e| e.transition()).collect()
}

fn every_transition_once_in_order(ipv6: bool) {
    require_root();
    let pair = Pair::new(if ipv6 { "pl6" } else { "pl4" });
    let (client_ip, server_ip) = pair.addrs(ipv6);
    let server_addr = SocketAddr::new(server_ip, 8080);
    let mut server_cmd = pair.b.command(workspace_binary("ttserver"));
    server_cmd.args(["--listen", &server_addr.to_string()]);
    let _server = Background::start(server_cmd, "listening");

    let mut tracer = Tracer::start(&["run", "--format", "json", "--events"]);
    let mut conns = Vec::new();
    for mode in ["C", "S"] {
        let out = pair
            .a
            .command(workspace_binary("ttclient"))
            .args(["--connect", &server_addr.to_string(), "--count", "100", "--mode", mode])
            .output()
            .unwrap();
        assert!(out.status.success(), "ttclient failed: {}", String::from_utf8_lossy(&out.stderr));
        conns.extend(parse_conns(&stdout_lines(&out)));
    }
    assert_eq!(conns.len(), 200, "the client made 200 connections");

    // Each connection ends with one ->CLOSE on each side: wait for all 400.
    let (ns_a, ns_b) = (pair.a.inode, pair.b.inode);
    tracer.wait_for_events(Duration::from_secs(30), "400 closes in the test namespaces", 400, |e| {
        (e.netns == ns_a || e.netns == ns_b) && e.new.as_deref() == Some("CLOSE")
    });
    let finished = tracer.stop();
    assert!(finished.status.success(), "tcptrace exit: {:?}\n{}", finished.status, finished.stderr);

    let events = parse_events(&finished.stdout);
    let ours: Vec<&Ev> =
        events.iter().filter(|e| (e.netns == ns_a || e.netns == ns_b) && e.event == "state").collect();
    let mut by_cookie: HashMap<(u64, u64), Vec<&Ev>> = HashMap::new();
    for e in &ours {
        by_cookie.entry((e.netns, e.cookie)).or_default().push(e);
    }

    // A client port can come back in a later connection to the same server
    // (after a server-first close it is free at once): the n-th connection
    // with a tuple is the n-th socket with it.
    let mut nth: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut matched = 0;
    let mut matched_cookies = std::collections::HashSet::new();
    for conn in &conns {
        let n = {
            let seen = nth.entry((conn.local, conn.remote)).or_default();
            *seen += 1;
            *seen - 1
        };
        assert_eq!(conn.remote, server_addr);
        assert_eq!(conn.local.ip(), client_ip);
        let (client_expect, server_expect) =
            if conn.mode == "C" { (CLIENT_FIRST, SERVER_SECOND) } else { (CLIENT_SECOND, SERVER_FIRST) };

        // Client socket: the cookie whose handshake completed with this tuple.
        let client = ours
            .iter()
            .filter(|e| e.netns == ns_a && e.is("SYN_SENT", "ESTABLISHED") && e.local == conn.local)
            .nth(n)
            .unwrap_or_else(|| panic!("no SYN_SENT -> ESTABLISHED for {conn:?}"));
        let client_events = &by_cookie[&(ns_a, client.cookie)];
        let expect: Vec<_> = client_expect.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(transitions(client_events), expect, "client side of {conn:?}");
        for e in client_events {
            assert_eq!(e.remote, server_addr, "client event {e:?}");
            if e.is("CLOSE", "SYN_SENT") {
                // The source port is chosen after this transition (inet_hash_connect).
                assert_eq!(e.local.ip(), client_ip, "client event {e:?}");
                assert!(e.local.port() == 0 || e.local == conn.local, "client event {e:?}");
            } else {
                assert_eq!(e.local, conn.local, "client event {e:?}");
            }
        }

        // Server socket: the accepted child for this peer.
        let server = ours
            .iter()
            .filter(|e| e.netns == ns_b && e.is("LISTEN", "SYN_RECV") && e.remote == conn.local)
            .nth(n)
            .unwrap_or_else(|| panic!("no LISTEN -> SYN_RECV for {conn:?}"));
        let server_events = &by_cookie[&(ns_b, server.cookie)];
        let expect: Vec<_> = server_expect.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(transitions(server_events), expect, "server side of {conn:?}");
        for e in server_events {
            assert_eq!((e.local, e.remote), (server_addr, conn.local), "server event {e:?}");
        }
        matched_cookies.insert((ns_a, client.cookie));
        matched_cookies.insert((ns_b, server.cookie));
        matched += 1;
    }
    assert_eq!(matched, 200);
    // Nothing else happened in these namespaces but the listener's own transition.
    let listener_events = ours.iter().filter(|e| e.is("CLOSE", "LISTEN")).count();
    let extra: Vec<String> = ours
        .iter()
        .filter(|e| !e.is("CLOSE", "LISTEN") && !matched_cookies.contains(&(e.netns, e.cookie)))
        .map(|e| e.raw.to_string())
        .collect();
    assert_eq!(ours.len(), 200 * 10 + listener_events, "unexpected extra transitions: {extra:#?}");

    let report = finished.report();
    assert_eq!(report["events"]["lost"], 0, "report: {report}");
    assert_eq!(report["events"]["decode_errors"], 0, "report: {report}");
    assert_eq!(report["events"]["seen"], report["events"]["received"], "report: {report}");

    let (first, last) = (ours.first().unwrap().ts_ns, ours.last().unwrap().ts_ns);
    let secs = (last - first) as f64 / 1e9;
    eprintln!(
        "measured: {} transitions of 200 connections in {secs:.3} s = {:.0} events/s (whole host: {} events, 0 lost)",
        ours.len(),
        ours.len() as f64 / secs,
        report["events"]["seen"]
    );
}

#[test]
fn every_transition_once_in_order_ipv4() {
    every_transition_once_in_order(false);
}

#[test]
fn every_transition_once_in_order_ipv6() {
    every_transition_once_in_order(true);
}

fn exits_cleanly_on(signal: i32) {
    require_root();
    let tracer = Tracer::start(&["run", "--format", "json"]);
    assert!(!loaded_tcptrace_programs().is_empty(), "programs are loaded while tracing");
    let finished = tracer.stop_with(signal);
    assert!(finished.status.success(), "exit status {:?}: {}", finished.status, finished.stderr);
    let report = finished.report();
    assert!(report["duration_s"].as_f64().unwrap() > 0.0);
    assert!(report["events"]["seen"].is_u64() && report["events"]["lost"].is_u64(), "{report}");
    assert_eq!(loaded_tcptrace_programs(), Vec::<String>::new(), "programs left loaded after exit");
}

#[test]
fn sigterm_prints_report_and_detaches_everything() {
    exits_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_prints_report_and_detaches_everything() {
    exits_cleanly_on(libc::SIGINT);
}

#[test]
fn duration_ends_the_run_with_a_text_report() {
    require_root();
    let tracer = Tracer::start(&["run", "--duration", "1s"]);
    let finished = tracer.wait(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(finished.stdout.iter().any(|l| l.starts_with("tcptrace report:")), "{:?}", finished.stdout);
}
