//! Record and replay: a recording replays into exactly the report the live
//! run that recorded it printed, to the last field.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use tcptrace_tests::{
    background::Background,
    events::{parse_conns, stdout_lines},
    faults,
    netns::Pair,
    require_root,
    tracer::Tracer,
    workspace_binary,
};

#[test]
fn replay_equals_the_live_report() {
    require_root();
    let pair = Pair::new("rec");
    pair.a.sysctl("net.ipv4.ip_local_port_range", "40000 40049");
    let file = std::env::temp_dir().join(format!("tcptrace-test-{}.tcptrace", std::process::id()));
    let ns = |n: &tcptrace_tests::netns::NetNs| n.inode.to_string();
    let (na, nb) = (ns(&pair.a), ns(&pair.b));
    // A plain live run watches too, to know when the traffic is over.
    let mut watcher = Tracer::start(&["run", "--format", "json", "--events", "--netns", &na, "--netns", &nb]);
    let recorder = Tracer::start(&[
        "record",
        "-o",
        file.to_str().unwrap(),
        "--report",
        "--format",
        "json",
        "--netns",
        &na,
        "--netns",
        &nb,
    ]);
    let addr = |p: u16| SocketAddr::new(pair.b4.into(), p);
    let mut servers = Vec::new();
    for port in [8201u16, 8202] {
        let mut cmd = pair.b.command(workspace_binary("ttserver"));
        cmd.args(["--listen", &addr(port).to_string()]);
        servers.push(Background::start(cmd, "listening"));
    }
    pair.b.nft(&faults::drop_first_syn(8202));
    // Short client-closes-first connections until the 50 ports run out, a
    // few server-closes-first ones, resets, and one connection with a lost SYN.
    let mut conns = 0;
    for (port, args) in [
        (8201, vec!["--count", "60", "--mode", "C", "--keep-going"]),
        (8201, vec!["--count", "5", "--mode", "L", "--keep-going"]),
        (8202, vec!["--count", "1", "--mode", "S"]),
    ] {
        let out = pair
            .a
            .command(workspace_binary("ttclient"))
            .args(["--connect", &addr(port).to_string()])
            .args(&args)
            .output()
            .unwrap();
        conns += parse_conns(&stdout_lines(&out)).len();
    }
    assert!(conns > 10);
    watcher.wait_for_events(Duration::from_secs(20), "the last server close", 1, |e| {
        e.netns == pair.b.inode && e.local.port() == 8202 && e.new.as_deref() == Some("CLOSE")
    });
    std::thread::sleep(Duration::from_millis(300));
    let recorded = recorder.stop();
    drop(watcher);
    assert!(recorded.status.success(), "{}", recorded.stderr);
    assert!(recorded.stderr.contains("tcptrace: recorded"), "{}", recorded.stderr);
    let live = recorded.report();

    let out = Command::new(workspace_binary("tcptrace"))
        .args(["report", file.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(replayed["events"]["lost"], 0);
    assert!(live["connect_errors"][0]["count"].as_u64().unwrap() > 0, "the port range ran out");
    assert!(live["retransmits"]["segments"]["syn"].as_u64().unwrap() >= 1);
    for key in live.as_object().unwrap().keys() {
        assert_eq!(live[key], replayed[key], "section {key} differs");
    }
    assert_eq!(live, replayed);
}
