//! Real SYN_RECV on the real kernel: request sockets from SYN to handshake,
//! against delays the test controls (TCP_DEFER_ACCEPT, dropped ACKs), SYN-ACK
//! retransmits and drops against the kernel's own counters.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use tcptrace_tests::{
    background::Background,
    events::{LifecycleLine, parse_lifecycle},
    faults,
    netns::{NetNs, Pair},
    require_root,
    tracer::{Finished, Tracer},
    workspace_binary,
};

fn server(ns: &NetNs, addr: SocketAddr, extra: &[&str]) -> Background {
    let mut cmd = ns.command(workspace_binary("ttserver"));
    cmd.args(["--listen", &addr.to_string()]).args(extra);
    Background::start(cmd, "listening")
}

fn client_cmd(ns: &NetNs, addr: SocketAddr, args: &[&str]) -> Command {
    let mut cmd = ns.command(workspace_binary("ttclient"));
    cmd.args(["--connect", &addr.to_string()]).args(args);
    cmd
}

fn tracer_for(ns: &NetNs) -> Tracer {
    Tracer::start(&["run", "--format", "json", "--events", "--netns", &ns.inode.to_string()])
}

fn ends(finished: &Finished) -> Vec<LifecycleLine> {
    parse_lifecycle(&finished.stdout).into_iter().filter(|l| l.event == "syn_recv_end").collect()
}

fn listener<'a>(report: &'a Value, local: &str) -> &'a Value {
    report["syn_recv"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["local"] == local)
        .unwrap_or_else(|| panic!("no listener {local}: {}", report["syn_recv"]))
}

fn within(actual_us: u64, expected_us: u64, share: f64) -> bool {
    (actual_us as f64 - expected_us as f64).abs() <= expected_us as f64 * share
}

#[test]
fn defer_accept_dwell_matches_the_first_byte_delay() {
    require_root();
    let pair = Pair::new("dfr");
    let mut tracer = tracer_for(&pair.b);
    let groups = [(250u64, 8090u16), (700, 8091)];
    let servers: Vec<Background> = groups
        .iter()
        .map(|(_, port)| server(&pair.b, SocketAddr::new(pair.b4.into(), *port), &["--defer-accept", "5"]))
        .collect();
    let n = 3;
    let mut clients = Vec::new();
    for (delay, port) in groups {
        let addr = SocketAddr::new(pair.b4.into(), port);
        clients.push(
            client_cmd(
                &pair.a,
                addr,
                &["--count", &n.to_string(), "--first-write-delay", &delay.to_string()],
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        );
    }
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    tracer.wait_for_events(Duration::from_secs(10), "server-side closes", 2 * n, |e| {
        e.new.as_deref() == Some("CLOSE") && e.old.as_deref() == Some("LAST_ACK")
    });
    let finished = tracer.stop();
    drop(servers);
    let report = finished.report();
    let ends = ends(&finished);
    for (delay, port) in groups {
        let local = SocketAddr::new(pair.b4.into(), port);
        let row = listener(&report, &local.to_string());
        assert_eq!(row["completed"], n as u64, "{row}");
        assert_eq!(row["comm"], "ttserver");
        let p50 = row["dwell"]["p50"].as_u64().unwrap();
        let expected = delay * 1000;
        let group: Vec<u64> =
            ends.iter().filter(|l| l.local == local).map(|l| l.duration_us.unwrap()).collect();
        assert_eq!(group.len(), n, "one syn_recv_end line per connection");
        let worst = group.iter().map(|d| d.abs_diff(expected)).max().unwrap();
        eprintln!(
            "measured: SYN_RECV dwell with first byte after {delay} ms: p50 {:.1} ms, worst error {:.2} ms ({:.1}%)",
            p50 as f64 / 1e3,
            worst as f64 / 1e3,
            100.0 * worst as f64 / expected as f64
        );
        assert!(within(p50, expected, 0.10), "p50 {p50} µs vs {expected} µs");
        assert!(group.iter().all(|d| within(*d, expected, 0.10)), "{group:?} vs {expected}");
    }
}

#[test]
fn lost_final_ack_costs_one_synack_retransmit_and_a_second() {
    require_root();
    let pair = Pair::new("sar");
    let addr = SocketAddr::new(pair.b4.into(), 8092);
    let mut tracer = tracer_for(&pair.b);
    let _server = server(&pair.b, addr, &[]);
    pair.b.nft(&faults::drop_first_final_ack(8092));
    let before = pair.b.tcp_counters();
    // No data from the client for a while: only the retransmitted SYN-ACK's
    // ACK can complete the handshake.
    let out = client_cmd(&pair.a, addr, &["--count", "1", "--first-write-delay", "1500"]).output().unwrap();
    assert!(out.status.success());
    tracer.wait_for_events(Duration::from_secs(10), "server close", 1, |e| e.is("LAST_ACK", "CLOSE"));
    let after = pair.b.tcp_counters();
    let finished = tracer.stop();
    let report = finished.report();
    let kernel = after["TcpExt:TCPSynRetrans"] - before["TcpExt:TCPSynRetrans"];
    let end = ends(&finished).pop().expect("syn_recv_end");
    let dwell = end.duration_us.unwrap();
    eprintln!(
        "measured: SYN_RECV {:.1} ms with the final ACK lost; SYN-ACK retransmits: tcptrace {}, kernel TCPSynRetrans {kernel}",
        dwell as f64 / 1e3,
        report["syn_recv"]["synack_retransmits"]
    );
    assert_eq!(end.outcome.as_deref(), Some("established"));
    assert_eq!(report["syn_recv"]["synack_retransmits"], 1);
    assert_eq!(kernel, 1, "the kernel retransmitted the SYN-ACK once");
    assert_eq!(listener(&report, &addr.to_string())["synack_retransmits"], 1);
    // TCP_TIMEOUT_INIT is 1 s; the timer wheel adds up to 32 ms at HZ=250.
    assert!((1_000_000..=1_100_000).contains(&dwell), "{dwell} µs");
}

#[test]
fn request_dropped_by_timeout_after_its_retries() {
    require_root();
    let pair = Pair::new("sto");
    pair.b.sysctl("net.ipv4.tcp_synack_retries", "1");
    let addr = SocketAddr::new(pair.b4.into(), 8093);
    let mut tracer = tracer_for(&pair.b);
    let _server = server(&pair.b, addr, &[]);
    pair.b.nft(&faults::drop_all_but_syn(8093));
    // The client thinks it is connected; nothing it sends arrives.
    let _client = Background::start(
        {
            let mut c = client_cmd(&pair.a, addr, &["--count", "1", "--first-write-delay", "60000"]);
            c.arg("--print-connected");
            c
        },
        "connected",
    );
    tracer.wait_until(Duration::from_secs(10), "the request's end", |l| l.contains("\"syn_recv_end\""));
    let finished = tracer.stop();
    let report = finished.report();
    let end = ends(&finished).pop().expect("syn_recv_end");
    let age = end.duration_us.unwrap();
    eprintln!("measured: request dropped after {:.1} ms ({})", age as f64 / 1e3, end.raw["detail"]);
    assert_eq!(end.outcome.as_deref(), Some("synack_timeout"));
    assert_eq!(report["syn_recv"]["dropped"]["synack_timeout"], 1);
    assert_eq!(report["syn_recv"]["synack_retransmits"], 1);
    // Timer at 1 s (retransmit), then 2 s (give up): 3 s, plus wheel slack.
    assert!((3_000_000..=3_150_000).contains(&age), "{age} µs");
}

#[test]
fn accept_queue_overflow_and_syncookies_agree_with_the_kernel() {
    require_root();
    let pair = Pair::new("ovf");
    pair.b.sysctl("net.ipv4.tcp_synack_retries", "1");
    pair.b.sysctl("net.ipv4.tcp_syncookies", "1");
    let addr = SocketAddr::new(pair.b4.into(), 8094);
    let mut tracer = tracer_for(&pair.b);
    // Backlog 1, never accepts: the accept queue holds two children.
    let _server = server(&pair.b, addr, &["--backlog", "1", "--no-accept"]);
    // X1 and X2 lose their final ACK: their requests stay, and the request
    // queue of a backlog-1 listener (two entries) is then full...
    pair.b.nft(&faults::drop_first_final_ack_from(8094, &[41000, 41001]));
    let before = pair.b.tcp_counters();
    let hold = ["--first-write-delay", "60000", "--print-connected"];
    let mut clients = Vec::new();
    for port in ["41000", "41001"] {
        let mut x = client_cmd(&pair.a, addr, &["--source-port", port]);
        x.args(hold);
        clients.push(Background::start(x, "connected"));
    }
    std::thread::sleep(Duration::from_millis(200));
    // ...so Y and Z are answered with syncookies and fill the accept queue...
    for _ in 0..2 {
        let mut c = client_cmd(&pair.a, addr, &[]);
        c.args(hold);
        clients.push(Background::start(c, "connected"));
    }
    // ...and the X's ACKs, after the SYN-ACK retransmit at 1 s, find it full:
    // the requests are kept, then dropped when their retries run out (3 s).
    let mut ends_seen = 0;
    tracer.wait_until(Duration::from_secs(10), "both requests' ends", |l| {
        ends_seen += usize::from(l.contains("\"syn_recv_end\""));
        ends_seen == 2
    });
    let after = pair.b.tcp_counters();
    let finished = tracer.stop();
    let report = finished.report();
    let s = &report["syn_recv"];
    let delta = |k: &str| after[&format!("TcpExt:{k}")] - before[&format!("TcpExt:{k}")];
    let counters = s["kernel_counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["netns"] == pair.b.inode)
        .unwrap_or_else(|| panic!("no kernel counters for the server namespace: {s}"));
    eprintln!(
        "measured: dropped {}, without request {}, kernel {counters}",
        s["dropped"], s["without_request"]
    );
    for name in ["ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "SyncookiesSent", "SyncookiesRecv"]
    {
        assert_eq!(counters[name].as_i64().unwrap(), delta(name), "{name}: report vs /proc/net/netstat");
    }
    assert_eq!(delta("ListenOverflows"), 2, "each X's ACK overflowed the accept queue once");
    assert_eq!(s["dropped"]["accept_queue_full"], 2, "{s}");
    assert_eq!(s["created"], 2, "only the X had a request socket");
    assert_eq!(s["without_request"].as_i64().unwrap(), delta("SyncookiesRecv"), "syncookie handshakes");
    assert_eq!(s["without_request"], 2);
    drop(clients);
}
