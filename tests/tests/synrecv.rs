//! Real SYN_RECV on the real kernel: request sockets from SYN to handshake,
//! against delays the test controls (TCP_DEFER_ACCEPT, dropped ACKs), SYN-ACK
//! retransmits and drops against the kernel's own counters.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use serde_json::Value;
use tcptrace_tests::{
    background::Background,
    dropped,
    events::{LifecycleLine, parse_lifecycle},
    faults, kernel_btf_has_name,
    netns::Pair,
    peers::{client_command, connected_client, server, server_on_b},
    procs::Held,
    require_root,
    tracer::{Finished, Tracer},
};

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
    let mut tracer = Tracer::events_in(&[&pair.b], &[]);
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
            client_command(
                &pair.a,
                addr,
                &["--count", &n.to_string(), "--first-write-delay", &delay.to_string()],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        );
    }
    // Ground truth per connection: the client's own connect()-to-first-write
    // time. It is the delay asked for on a fast machine; on a slow one (a
    // TCG guest) the client's sleep can end 100 ms late, and so does the
    // first byte.
    let mut first_write: HashMap<SocketAddr, u64> = HashMap::new();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let ["first-write", local, us] = w[..] {
                first_write.insert(local.parse().unwrap(), us.parse().unwrap());
            }
        }
    }
    assert_eq!(first_write.len(), 2 * n, "a first-write line per connection");
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
        let group: Vec<(u64, u64)> = ends
            .iter()
            .filter(|l| l.local == local)
            .map(|l| {
                let truth =
                    *first_write.get(&l.remote).unwrap_or_else(|| panic!("no first-write for {}", l.remote));
                assert!(truth >= delay * 1000, "the client slept {delay} ms at least: {truth} µs");
                (l.duration_us.unwrap(), truth)
            })
            .collect();
        assert_eq!(group.len(), n, "one syn_recv_end line per connection");
        let mut truths: Vec<u64> = group.iter().map(|(_, t)| *t).collect();
        truths.sort_unstable();
        let median = truths[n / 2];
        let worst = group.iter().map(|(d, t)| d.abs_diff(*t)).max().unwrap();
        eprintln!(
            "measured: SYN_RECV dwell with first byte after {delay} ms (client: median {:.1} ms): p50 {:.1} ms, \
             worst error {:.2} ms",
            median as f64 / 1e3,
            p50 as f64 / 1e3,
            worst as f64 / 1e3,
        );
        assert!(within(p50, median, 0.10), "p50 {p50} µs vs the clients' median {median} µs");
        assert!(group.iter().all(|(d, t)| within(*d, *t, 0.10)), "(dwell, client) µs: {group:?}");
    }
}

#[test]
fn lost_final_ack_costs_one_synack_retransmit_and_a_second() {
    require_root();
    let pair = Pair::new("sar");
    let mut tracer = Tracer::events_in(&[&pair.b], &[]);
    let (addr, _server) = server_on_b(&pair, 8092, &[]);
    pair.b.nft(&faults::drop_first_final_ack(8092));
    let before = pair.b.tcp_counters();
    // No data from the client for a while: only the retransmitted SYN-ACK's
    // ACK can complete the handshake.
    let out =
        client_command(&pair.a, addr, &["--count", "1", "--first-write-delay", "1500"]).output().unwrap();
    assert!(out.status.success());
    tracer.wait_for_events(Duration::from_secs(10), "server close", 1, |e| e.is("LAST_ACK", "CLOSE"));
    let after = pair.b.tcp_counters();
    let finished = tracer.stop();
    let report = finished.report();
    let kernel = after["TcpExt:TCPSynRetrans"] - before["TcpExt:TCPSynRetrans"];
    let end = ends(&finished).pop().expect("syn_recv_end");
    let dwell = end.duration_us.unwrap();
    eprintln!(
        "measured: SYN_RECV {:.1} ms with the final ACK lost; SYN-ACK retransmits: tcptrace {}, kernel TCPSynRetrans {kernel}; events {}",
        dwell as f64 / 1e3,
        report["syn_recv"]["synack_retransmits"],
        report["events"]
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
    let mut tracer = Tracer::events_in(&[&pair.b], &[]);
    let (addr, _server) = server_on_b(&pair, 8093, &[]);
    pair.b.nft(&faults::drop_all_but_syn(8093));
    // The client thinks it is connected; nothing it sends arrives.
    let _client = connected_client(&pair.a, addr, &["--count", "1", "--first-write-delay", "60000"]);
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
    let mut tracer = Tracer::events_in(&[&pair.b], &[]);
    // Backlog 1, never accepts: the accept queue holds two children.
    let (addr, _server) = server_on_b(&pair, 8094, &["--backlog", "1", "--no-accept"]);
    // X1 and X2 lose their final ACK: their requests stay, and the request
    // queue of a backlog-1 listener (two entries) is then full...
    pair.b.nft(&faults::drop_first_final_ack_from(8094, &[41000, 41001]));
    let before = pair.b.tcp_counters();
    let hold = ["--first-write-delay", "60000"];
    // Y and Z are started first and connect on the test's word: all four
    // must connect within the X's first SYN-ACK retransmit (1 s), which the
    // start of two processes in a slow guest did not always leave time for.
    let mut later: Vec<Held> = (0..2)
        .map(|_| {
            let args = [["--connect-on-stdin", "--print-connected"].as_slice(), &hold].concat();
            Held::start(client_command(&pair.a, addr, &args), "waiting")
        })
        .collect();
    let mut clients = Vec::new();
    for port in ["41000", "41001"] {
        clients.push(connected_client(&pair.a, addr, &[["--source-port", port].as_slice(), &hold].concat()));
    }
    // ...so Y and Z are answered with syncookies and fill the accept queue...
    for client in &mut later {
        client.go_until("connected");
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
        "measured: dropped {}, without request {}, kernel {counters}; kernel drops {}",
        s["dropped"], s["without_request"], report["drops"]["by_reason"]
    );
    // The report's copy of the namespace's counters is what the kernel says.
    for name in ["ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "SyncookiesSent", "SyncookiesRecv"]
    {
        assert_eq!(counters[name].as_i64().unwrap(), delta(name), "{name}: report vs /proc/net/netstat");
    }
    // The drops tcptrace traced (request timers) against the kernel's own
    // count of what caused them: each X's one ACK (one SYN-ACK retransmit,
    // tcp_synack_retries 1) overflowed the accept queue once, and that
    // request was dropped when its retries ran out.
    assert_eq!(delta("ListenOverflows"), 2, "each X's ACK overflowed the accept queue once");
    assert_eq!(
        s["dropped"]["accept_queue_full"].as_i64().unwrap(),
        delta("ListenOverflows"),
        "traced accept_queue_full drops vs the kernel's ListenOverflows: {s}"
    );
    assert_eq!(
        s["synack_retransmits"].as_i64().unwrap(),
        delta("TCPSynRetrans"),
        "traced SYN-ACK retransmits vs the kernel's TCPSynRetrans in the server's namespace: {s}"
    );
    // The kernel names the ACKs it threw away for the full queue (Linux
    // 6.12+ has the reason; earlier ones drop them as NOT_SPECIFIED).
    if kernel_btf_has_name("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW") {
        let overflow = dropped(&report, pair.b.inode, "TCP_LISTEN_OVERFLOW", &addr.to_string());
        assert_eq!(
            overflow as i64,
            delta("ListenOverflows"),
            "TCP_LISTEN_OVERFLOW drops: {}",
            report["drops"]
        );
    }
    assert_eq!(s["created"], 2, "only the X had a request socket");
    assert_eq!(s["without_request"].as_i64().unwrap(), delta("SyncookiesRecv"), "syncookie handshakes");
    assert_eq!(s["without_request"], 2);
    drop((clients, later));
}
