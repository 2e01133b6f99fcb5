//! Why connections end, on the real kernel: every end reason produced by
//! the kernel path it names, in namespaces the test creates. Ground truth:
//! what the test made each peer do (its settings and faults), what each
//! peer's own system calls returned (the `error=` of its lines), the
//! kernel's own counters of the namespace (TCPAbortOnClose, TCPAbortOnData,
//! TCPAbortOnTimeout), and `ss` for the connections still open.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use serde_json::Value;
use tcptrace_tests::{
    dropped,
    events::{parse_conns, parse_lifecycle},
    faults, kernel_has_drop_reasons,
    netns::{NetNs, Pair},
    peers::{client, client_command, client_unchecked, connected_client, server_on_b},
    procs::Held,
    require_root,
    tracer::Tracer,
};

/// Every non-zero reason, for messages and exact comparisons.
fn nonzero(report: &Value) -> HashMap<String, u64> {
    report["connection_ends"]["by_reason"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(0))
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

/// The count of the `connection_ends` row of `comm` with this remote (for
/// connections it opened) or local (accepted) endpoint and reason.
fn row(report: &Value, comm: &str, endpoint: &str, reason: &str) -> u64 {
    report["connection_ends"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["comm"] == comm && r["reason"] == reason && (r["remote"] == endpoint || r["local"] == endpoint)
        })
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

fn counter(ns: &NetNs, name: &str) -> i64 {
    ns.tcp_counters().get(name).copied().unwrap_or_else(|| panic!("no kernel counter {name}"))
}

fn expect(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[test]
fn orderly_closes_refusals_and_unreachable_hosts() {
    require_root();
    let pair = Pair::new("endc");
    let (open, _server) = server_on_b(&pair, 8120, &[]);
    let closed = SocketAddr::new(pair.b4.into(), 8121);
    let unreachable = SocketAddr::new(pair.b4.into(), 8122);
    pair.b.nft(&faults::reject_host_unreachable(8122));
    let rsts_before = counter(&pair.b, "Tcp:OutRsts");
    let tracer = Tracer::events_in(&pair.both(), &[]);
    let conns = client(&pair.a, open, &["--count", "3", "--mode", "C"]);
    let errors = |addr, n: usize, errno: &str, extra: &[&str]| {
        let count = n.to_string();
        let args = [["--count", count.as_str(), "--mode", "C", "--keep-going"].as_slice(), extra].concat();
        let (_, lines) = client_unchecked(&pair.a, addr, &args);
        let failed = lines.iter().filter(|l| l.starts_with(&format!("error {errno} "))).count();
        assert_eq!(failed, n, "connect() to {addr}: {lines:?}");
    };
    // A blocking connect() (bound first), so that connect() itself fails
    // and the connect() error table sees it too; five, which is enough for
    // a diagnosis.
    errors(closed, 5, "ECONNREFUSED", &["--source-port", "40001"]);
    errors(unreachable, 2, "EHOSTUNREACH", &[]);
    let report = tracer.stop().report();
    let rsts = counter(&pair.b, "Tcp:OutRsts") - rsts_before;
    eprintln!("measured: {}; drops {}; server's OutRsts +{rsts}", report["connection_ends"], report["drops"]);

    assert_eq!(conns.len(), 3);
    // Each refused SYN found no socket on the server's side: the kernel
    // dropped it (NO_SOCKET) and answered it with the RST it counted.
    if kernel_has_drop_reasons() {
        let no_socket = dropped(&report, pair.b.inode, "NO_SOCKET", &closed.to_string());
        assert_eq!((no_socket, rsts), (5, 5), "NO_SOCKET drops toward {closed} vs the server's OutRsts");
        // The reject rule drops each SYN to the unreachable port (and
        // answers with the ICMP that the client's EHOSTUNREACH counted).
        assert_eq!(dropped(&report, pair.b.inode, "NETFILTER_DROP", &unreachable.to_string()), 2);
    } else {
        assert_eq!(report["drops"]["available"], false, "no reasons before Linux 5.17");
    }
    // The ICMP host unreachable answers the SYN while connect() still holds
    // the socket (veth delivers it in the sender's own context): a soft
    // error on every kernel (sk_err_soft; since Linux 6.5 always so in
    // SYN_SENT), which the client reads through SO_ERROR before it closes
    // the socket itself (seen on 5.10, 6.1, 6.12 and 6.18). An ICMP that
    // ends a connection is the timeouts test's fifth client.
    let unreachable_class = "connect_abandoned";
    // Each connection counts once per end: the client's and the server's.
    assert_eq!(
        nonzero(&report),
        expect(&[
            ("closed_local_first", 3),
            ("closed_remote_first", 3),
            ("refused", 5),
            (unreachable_class, 2)
        ])
    );
    let e = &report["connection_ends"];
    assert_eq!(
        (e["orderly"].as_u64(), e["failed"].as_u64(), e["still_open"].as_u64()),
        (Some(6), Some(7), Some(0))
    );
    assert_eq!(row(&report, "ttclient", &open.to_string(), "closed_local_first"), 3);
    assert_eq!(row(&report, "ttserver", &open.to_string(), "closed_remote_first"), 3);
    assert_eq!(row(&report, "ttclient", &closed.to_string(), "refused"), 5);
    // Five refusals toward one destination by one process: a diagnosis
    // that names both (the two abandoned connects stay below its floor).
    let summaries: Vec<&str> =
        report["diagnoses"].as_array().unwrap().iter().filter_map(|d| d["summary"].as_str()).collect();
    let refused = summaries
        .iter()
        .find(|s| s.contains("refused"))
        .unwrap_or_else(|| panic!("no diagnosis of the refusals: {summaries:?}"));
    assert!(refused.starts_with("5 connections of ttclient (pid "), "{refused}");
    assert!(refused.contains(&format!("with {closed} ended")), "{refused}");
    assert!(
        !summaries.iter().any(|s| s.contains("connect_abandoned") || s.contains("while connecting")),
        "{summaries:?}"
    );
    assert_eq!(row(&report, "ttclient", &unreachable.to_string(), unreachable_class), 2);
    // The connect() error table names the same class (the non-blocking
    // connects to the unreachable host failed after connect() returned).
    let classes: Vec<(String, String, u64)> = report["connect_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["errno"].to_string(), r["class"].to_string(), r["count"].as_u64().unwrap()))
        .collect();
    assert!(classes.contains(&("\"ECONNREFUSED\"".into(), "\"refused\"".into(), 5)), "{classes:?}");
}

#[test]
fn resets_name_who_reset_and_why() {
    require_root();
    let pair = Pair::new("endr");
    // A closed socket's FIN_WAIT2 stays a full socket (not a timewait
    // socket) when tcp_fin_timeout exceeds TCP_TIMEWAIT_LEN: data or an RST
    // reaching it after the close then meet the full socket.
    pair.b.sysctl("net.ipv4.tcp_fin_timeout", "70");
    let ports = [8123, 8124, 8125, 8126];
    let servers: Vec<_> = ports.iter().map(|&p| server_on_b(&pair, p, &[])).collect();
    let addr = |i: usize| servers[i].0;
    let tracer = Tracer::events_in(&pair.both(), &[]);
    let b_close = counter(&pair.b, "TcpExt:TCPAbortOnClose");

    // The server closes with SO_LINGER 0 (ttserver L).
    client(&pair.a, addr(0), &["--count", "2", "--mode", "L"]);
    // The server closes with the client's last 100 bytes unread (U).
    let unread = client_unchecked(&pair.a, addr(1), &["--count", "2", "--mode", "U"]).1;
    // The client sends 100 bytes after the server's close (W).
    let b_data = counter(&pair.b, "TcpExt:TCPAbortOnData");
    let after_close = client_unchecked(&pair.a, addr(2), &["--count", "2", "--mode", "W"]).1;
    let b_data = counter(&pair.b, "TcpExt:TCPAbortOnData") - b_data;
    // The client answers the server's FIN by closing with SO_LINGER 0 (K).
    let a_data = counter(&pair.a, "TcpExt:TCPAbortOnData");
    client(&pair.a, addr(3), &["--count", "2", "--mode", "K"]);
    let a_data = counter(&pair.a, "TcpExt:TCPAbortOnData") - a_data;
    let b_close = counter(&pair.b, "TcpExt:TCPAbortOnClose") - b_close;
    let report = tracer.stop().report();
    eprintln!(
        "measured: {}; kernel: server TCPAbortOnClose {b_close}, TCPAbortOnData (W) {b_data}; client \
         TCPAbortOnData (K) {a_data}",
        report["connection_ends"]
    );

    // The kernel's own account of its reset paths: close() with unread
    // data, data after close(), and a linger-zero close (which
    // tcp_close() counts as TCPAbortOnData).
    assert_eq!((b_close, b_data, a_data), (2, 2, 2), "kernel counters");
    let conns: Vec<&String> = unread.iter().filter(|l| l.starts_with("conn ")).collect();
    assert_eq!(conns.len(), 2, "{unread:?}");
    assert!(
        conns.iter().all(|l| l.contains(" error=ECONNRESET")),
        "the reset reached the client: {unread:?}"
    );
    // W's client had read the end of the stream; the reset left EPIPE
    // (tcp_reset() in CLOSE_WAIT).
    let conns: Vec<&String> = after_close.iter().filter(|l| l.starts_with("conn ")).collect();
    assert_eq!(conns.len(), 2, "{after_close:?}");
    assert!(
        conns.iter().all(|l| l.contains(" error=EPIPE")),
        "the reset reached the client: {after_close:?}"
    );
    let (l, u, w, k) = (addr(0).to_string(), addr(1).to_string(), addr(2).to_string(), addr(3).to_string());
    assert_eq!(row(&report, "ttserver", &l, "reset_linger_zero"), 2);
    assert_eq!(row(&report, "ttclient", &l, "reset_by_peer"), 2);
    assert_eq!(row(&report, "ttserver", &u, "reset_unread_data"), 2);
    assert_eq!(row(&report, "ttclient", &u, "reset_by_peer"), 2);
    assert_eq!(row(&report, "ttserver", &w, "reset_data_after_close"), 2);
    assert_eq!(row(&report, "ttclient", &w, "reset_by_peer"), 2);
    assert_eq!(row(&report, "ttclient", &k, "reset_linger_zero"), 2);
    assert_eq!(row(&report, "ttserver", &k, "reset_by_peer"), 2);
    assert_eq!(
        nonzero(&report),
        expect(&[
            ("reset_by_peer", 8),
            ("reset_linger_zero", 4),
            ("reset_unread_data", 2),
            ("reset_data_after_close", 2)
        ])
    );
    // Where the peers' resets hit: the clients of L and U while
    // ESTABLISHED, W's client after the server's FIN, K's server after its
    // own FIN (FIN_WAIT1, or FIN_WAIT2 once the client's delayed ACK of it
    // came first).
    let states = &report["connection_ends"]["reset_by_peer_in"];
    let n = |s: &str| states[s].as_u64().unwrap_or(0);
    assert_eq!((n("ESTABLISHED"), n("CLOSE_WAIT"), n("FIN_WAIT1") + n("FIN_WAIT2")), (4, 2, 2), "{states}");
    let total: u64 = states.as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(total, 8, "no other state: {states}");
}

#[test]
fn timeouts_name_the_limit_that_expired() {
    require_root();
    let pair = Pair::new("endt");
    pair.a.sysctl("net.ipv4.tcp_syn_retries", "1");
    pair.a.sysctl("net.ipv4.tcp_retries2", "3");
    let ports = [8127, 8128, 8129, 8130];
    let servers: Vec<_> = ports.iter().chain(&[8131]).map(|&p| server_on_b(&pair, p, &[])).collect();
    let addr = |i: usize| servers[i].0;
    let mut tracer = Tracer::events_in(&pair.both(), &[]);
    let before = counter(&pair.a, "TcpExt:TCPAbortOnTimeout");
    // Each client holds its connection until every segment is dropped.
    let held = |addr, extra: &[&str]| {
        let args = [["--count", "1"].as_slice(), extra].concat();
        Held::start(client_command(&pair.a, addr, &args), "holding")
    };
    let mut retransmit = held(addr(1), &["--mode", "T"]);
    let mut keepalive = held(addr(2), &["--mode", "I"]);
    let mut user = held(addr(3), &["--mode", "T", "--user-timeout", "1500"]);
    // The fifth meets a router that answers its data with ICMP host
    // unreachable: soft errors, then the retransmission timeout, which
    // reports the last soft error instead of ETIMEDOUT (tcp_write_err()).
    let mut unreachable = held(addr(4), &["--mode", "T"]);
    pair.a.nft(&faults::drop_ports("tt_endt", &ports));
    pair.b.nft(&faults::drop_ports("tt_endt", &ports));
    pair.b.nft(&faults::reject_host_unreachable(8131));
    for client in [&mut retransmit, &mut keepalive, &mut user, &mut unreachable] {
        client.go();
    }
    // A blocking connect() (bound first): connect() itself times out, so
    // the connect() error table sees it too.
    let syn =
        client_unchecked(&pair.a, addr(0), &["--count", "1", "--mode", "C", "--source-port", "40100"]).1;
    assert!(syn.iter().any(|l| l.starts_with("error ETIMEDOUT ")), "{syn:?}");
    let lines: Vec<String> =
        [&mut retransmit, &mut keepalive, &mut user].into_iter().map(|c| c.line("conn ")).collect();
    for line in &lines {
        assert!(line.contains("error=ETIMEDOUT"), "{line}");
    }
    let unreachable_line = unreachable.line("conn ");
    assert!(unreachable_line.contains("error=EHOSTUNREACH"), "{unreachable_line}");
    let truth = parse_conns(&lines);
    tracer.wait_for_events(Duration::from_secs(10), "client closes", 5, |e| {
        e.netns == pair.a.inode && e.new.as_deref() == Some("CLOSE")
    });
    let timeouts = counter(&pair.a, "TcpExt:TCPAbortOnTimeout") - before;
    // The servers never learn: their connections are still open (the
    // fifth server's too: the router's rejects stopped the client's data).
    let open_in_b = pair.b.sh("ss", &["-Htn", "state", "established"]).lines().count() as u64;
    let finished = tracer.stop();
    let report = finished.report();
    eprintln!("measured: {}; kernel: TCPAbortOnTimeout {timeouts}", report["connection_ends"]);

    assert_eq!(
        nonzero(&report),
        expect(&[
            ("timeout_syn", 1),
            ("timeout_retransmit", 1),
            ("timeout_keepalive", 1),
            ("timeout_user", 1),
            ("unreachable", 1)
        ])
    );
    // tcp_write_err() counts every one of them.
    assert_eq!(timeouts, 5, "TCPAbortOnTimeout");
    assert_eq!(row(&report, "ttclient", &addr(4).to_string(), "unreachable"), 1);
    assert_eq!(row(&report, "ttclient", &addr(0).to_string(), "timeout_syn"), 1);
    let connect_errors: Vec<(String, String)> = report["connect_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["errno"].to_string(), r["class"].to_string()))
        .collect();
    assert_eq!(connect_errors, [("\"ETIMEDOUT\"".to_string(), "\"timeout_syn\"".to_string())]);
    assert_eq!(row(&report, "ttclient", &addr(1).to_string(), "timeout_retransmit"), 1);
    assert_eq!(row(&report, "ttclient", &addr(2).to_string(), "timeout_keepalive"), 1);
    assert_eq!(row(&report, "ttclient", &addr(3).to_string(), "timeout_user"), 1);
    assert_eq!(open_in_b, 4);
    assert_eq!(report["connection_ends"]["still_open"], open_in_b, "the servers' four connections");
    // `--events` says it per connection.
    let ends: Vec<(String, String)> = parse_lifecycle(&finished.stdout)
        .into_iter()
        .filter(|l| l.event == "connection_end")
        .map(|l| (l.local.to_string(), l.outcome.unwrap_or_default()))
        .collect();
    for (conn, want) in truth.iter().zip(["timeout_retransmit", "timeout_keepalive", "timeout_user"]) {
        assert!(
            ends.contains(&(conn.local.to_string(), want.to_string())),
            "{want} for {}: {ends:?}",
            conn.local
        );
    }
}

/// `ss -K` (the kernel's `tcp_abort()`, SOCK_DESTROY) kills three client
/// sockets: each ends as `reset_killed` on the client's side and as
/// `reset_by_peer` on the server's. Ground truth: the sockets `ss -K` listed
/// as killed, and each namespace's `EstabResets` (connections that went
/// from ESTABLISHED to CLOSE).
#[test]
fn sockets_killed_with_ss_k_end_as_reset_killed() {
    require_root();
    let pair = Pair::new("endk");
    let (addr, _server) = server_on_b(&pair, 8128, &[]);
    let tracer = Tracer::events_in(&pair.both(), &[]);
    let held: Vec<_> =
        (0..3).map(|_| connected_client(&pair.a, addr, &["--first-write-delay", "60000"])).collect();
    let before = (counter(&pair.a, "Tcp:EstabResets"), counter(&pair.b, "Tcp:EstabResets"));
    let port = addr.port().to_string();
    let killed = pair.a.sh("ss", &["-Htn", "-K", "dst", &addr.ip().to_string(), "dport", "=", &port]);
    assert_eq!(killed.lines().count(), 3, "ss -K killed the three client sockets: {killed}");
    let mut tracer = tracer;
    tracer.wait_for_events(Duration::from_secs(10), "both ends closed", 6, |e| {
        (e.netns == pair.a.inode || e.netns == pair.b.inode) && e.new.as_deref() == Some("CLOSE")
    });
    let resets =
        (counter(&pair.a, "Tcp:EstabResets") - before.0, counter(&pair.b, "Tcp:EstabResets") - before.1);
    let report = tracer.stop().report();
    eprintln!(
        "measured: {}; EstabResets client {} server {}",
        report["connection_ends"]["rows"], resets.0, resets.1
    );
    assert_eq!(resets, (3, 3), "EstabResets in each namespace");
    assert_eq!(nonzero(&report), expect(&[("reset_killed", 3), ("reset_by_peer", 3)]));
    assert_eq!(row(&report, "ttclient", &addr.to_string(), "reset_killed"), 3);
    assert_eq!(row(&report, "ttserver", &addr.to_string(), "reset_by_peer"), 3);
    drop(held);
}
