//! Retransmits on the real kernel, against the kernel's own per-socket
//! counters (`tcpi_total_retrans`, read by the test peers before closing).
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use tcptrace_tests::{
    background::Background,
    events::{parse_conns, parse_events, stdout_lines},
    faults,
    netns::{NetNs, Pair},
    require_root,
    tracer::Tracer,
    workspace_binary,
};

fn server(ns: &NetNs, addr: SocketAddr) -> Background {
    let mut cmd = ns.command(workspace_binary("ttserver"));
    cmd.args(["--listen", &addr.to_string()]);
    Background::start(cmd, "listening")
}

fn tracer_for(pair: &Pair, port: u16) -> Tracer {
    Tracer::start(&[
        "run",
        "--format",
        "json",
        "--events",
        "--port",
        &port.to_string(),
        "--netns",
        &pair.a.inode.to_string(),
        "--netns",
        &pair.b.inode.to_string(),
    ])
}

#[test]
fn data_loss_retransmits_match_the_kernel_per_connection() {
    require_root();
    let pair = Pair::new("loss");
    let addr = SocketAddr::new(pair.b4.into(), 8095);
    let mut srv = server(&pair.b, addr);
    // 10% of the server's data segments are lost where they arrive.
    pair.a.nft(&faults::drop_data_from(8095, 10));
    let mut tracer = tracer_for(&pair, 8095);
    let n = 4;
    let out = pair
        .a
        .command(workspace_binary("ttclient"))
        .args(["--connect", &addr.to_string(), "--count", &n.to_string(), "--mode", "B", "--arg", "2000000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The server prints each connection's tcpi_total_retrans before closing.
    let mut server_lines = Vec::new();
    for _ in 0..n {
        server_lines.push(srv.wait_for(Duration::from_secs(30), |l| l.starts_with("conn ")));
    }
    let truth = parse_conns(&server_lines);
    tracer.wait_for_events(Duration::from_secs(30), "server closes", n, |e| {
        e.netns == pair.b.inode && e.is("LAST_ACK", "CLOSE")
    });
    let finished = tracer.stop();
    let events = parse_events(&finished.stdout);
    let report = finished.report();

    // Sum the retransmit events of each server socket.
    let mut by_peer: HashMap<SocketAddr, u64> = HashMap::new();
    for e in events.iter().filter(|e| e.netns == pair.b.inode && e.event == "retransmit") {
        let segs: u64 = e.raw["detail"]
            .as_str()
            .and_then(|d| d.split(" x").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("segment count in detail");
        *by_peer.entry(e.remote).or_default() += segs;
    }
    let top = report["retransmits"]["top"].as_array().unwrap();
    let mut total = 0;
    for conn in &truth {
        let ours = by_peer.get(&conn.remote).copied().unwrap_or(0);
        let reported = top
            .iter()
            .find(|r| r["remote"] == conn.remote.to_string() && r["netns"] == pair.b.inode)
            .map_or(0, |r| r["retransmits"].as_u64().unwrap());
        eprintln!(
            "measured: connection {} -> {}: kernel tcpi_total_retrans {}, tcptrace {} (events {ours})",
            conn.local, conn.remote, conn.retrans, reported
        );
        assert!(conn.retrans > 0, "10% loss must cause retransmits");
        assert_eq!(ours, u64::from(conn.retrans), "events for {conn:?}");
        assert_eq!(reported, u64::from(conn.retrans), "report top row for {conn:?}");
        total += u64::from(conn.retrans);
    }
    let segments = &report["retransmits"]["segments"];
    assert_eq!(segments["data"].as_u64().unwrap(), total, "{segments}");
    assert_eq!(segments["syn"], 0);
    let per = &report["retransmits"]["per_connection"];
    assert_eq!(per["count"].as_u64().unwrap(), 2 * n as u64, "both ends of each connection, zeros included");
    assert_eq!(per["min"], 0, "the client side retransmitted nothing");
}

#[test]
fn a_dropped_syn_is_one_syn_retransmit_and_a_second_in_syn_sent() {
    require_root();
    let pair = Pair::new("synrt");
    let addr = SocketAddr::new(pair.b4.into(), 8096);
    let _srv = server(&pair.b, addr);
    pair.b.nft(&faults::drop_first_syn(8096));
    let mut tracer = tracer_for(&pair, 8096);
    let out = pair
        .a
        .command(workspace_binary("ttclient"))
        .args(["--connect", &addr.to_string(), "--count", "1", "--mode", "C"])
        .output()
        .unwrap();
    let conns = parse_conns(&stdout_lines(&out));
    assert_eq!(conns[0].retrans, 1, "the kernel counts one SYN retransmit");
    tracer.wait_for_events(Duration::from_secs(10), "closes", 2, |e| e.new.as_deref() == Some("CLOSE"));
    let finished = tracer.stop();
    let report = finished.report();
    let r = &report["retransmits"];
    assert_eq!(r["segments"]["syn"], 1, "{r}");
    assert_eq!(r["segments"]["data"], 0, "{r}");
    let row = &r["top"][0];
    assert_eq!(row["local"], conns[0].local.to_string());
    assert_eq!(row["retransmits"], 1);
    assert_eq!(row["state"], "SYN_SENT");
    assert_eq!(row["comm"], "ttclient");
    let syn_sent = report["states"]["SYN_SENT"]["p50"].as_u64().unwrap();
    eprintln!("measured: 1 SYN retransmit (kernel 1), SYN_SENT {:.1} ms", syn_sent as f64 / 1e3);
    assert!((1_000_000..=1_100_000).contains(&syn_sent), "{syn_sent} µs");
}

#[test]
fn a_dead_peer_kills_the_connection_by_timeout() {
    require_root();
    let pair = Pair::new("dead");
    pair.a.sysctl("net.ipv4.tcp_retries2", "3");
    let addr = SocketAddr::new(pair.b4.into(), 8097);
    let _srv = server(&pair.b, addr);
    let mut tracer = tracer_for(&pair, 8097);
    let mut client = Background::start(
        {
            let mut c = pair.a.command(workspace_binary("ttclient"));
            c.args([
                "--connect",
                &addr.to_string(),
                "--count",
                "1",
                "--mode",
                "T",
                "--hold",
                "500",
                "--print-connected",
            ]);
            c
        },
        "connected",
    );
    // Everything from now on is lost in both directions.
    pair.a.nft(&faults::drop_all(8097));
    pair.b.nft(&faults::drop_all(8097));
    let line = client.wait_for(Duration::from_secs(60), |l| l.starts_with("conn "));
    let truth = &parse_conns(std::slice::from_ref(&line))[0];
    assert!(line.contains("error=ETIMEDOUT"), "{line}");
    tracer.wait_for_events(Duration::from_secs(10), "client close", 1, |e| {
        e.netns == pair.a.inode && e.new.as_deref() == Some("CLOSE")
    });
    let report = tracer.stop().report();
    let r = &report["retransmits"];
    eprintln!(
        "measured: killed by timeout after {} retransmits (kernel {})",
        r["killed"][0]["retransmits"], truth.retrans
    );
    assert_eq!(r["timeouts"], 1, "{r}");
    let killed = &r["killed"][0];
    assert_eq!(killed["local"], truth.local.to_string());
    assert_eq!(killed["comm"], "ttclient");
    assert_eq!(killed["retransmits"].as_u64().unwrap(), u64::from(truth.retrans), "{killed}");
    assert!(truth.retrans >= 3, "tcp_retries2=3: {}", truth.retrans);
}
