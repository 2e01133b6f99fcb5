//! Record and replay: a recording replays into exactly the report the live
//! run that recorded it printed, to the last field.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use tcptrace_tests::{
    background::Background,
    events::{parse_conns, parse_events, stdout_lines},
    faults, kernel_has_socket_cookies,
    netns::Pair,
    require_root,
    tracer::Tracer,
    workspace_binary,
};

/// Deletes the recording when the test ends, also on failure.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn replay_equals_the_live_report() {
    require_root();
    let pair = Pair::new("rec");
    pair.a.sysctl("net.ipv4.ip_local_port_range", "40000 40049");
    let file = std::env::temp_dir().join(format!("tcptrace-test-{}.tcptrace", std::process::id()));
    let _remove = RemoveOnDrop(file.clone());
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
    let watched = watcher.stop();
    assert!(recorded.status.success(), "{}", recorded.stderr);
    assert!(watched.status.success(), "{}", watched.stderr);
    assert!(recorded.stderr.contains("tcptrace: recorded"), "{}", recorded.stderr);
    let live = recorded.report();

    let out = Command::new(workspace_binary("tcptrace"))
        .args(["report", file.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replayed["events"]["lost"], 0);
    assert!(live["connect_errors"][0]["count"].as_u64().unwrap() > 0, "the port range ran out");
    assert!(live["retransmits"]["segments"]["syn"].as_u64().unwrap() >= 1);
    for key in live.as_object().unwrap().keys() {
        assert_eq!(live[key], replayed[key], "section {key} differs");
    }
    assert_eq!(live, replayed);

    // An independent `run` over the same traffic (started before the
    // recorder, stopped after it; the traffic ran in between) saw the same
    // transitions and counts as the replay.
    // Each tracer's programs read the clock themselves: compare each
    // socket's sequence of transitions, not the timestamps.
    // Sockets by cookie; where the kernel gives tracing programs no cookies
    // (5.10), each tcptrace masks addresses its own way: by kernel address
    // then (a later socket may take an address over: its transitions follow
    // in time order, in both).
    let cookies = kernel_has_socket_cookies();
    let transitions = |lines: &[String]| -> Vec<(String, String, String)> {
        let mut t: Vec<_> = parse_events(lines)
            .into_iter()
            .filter_map(|e| {
                let socket = if cookies { e.cookie.to_string() } else { e.raw["sock"].as_str()?.to_string() };
                Some((socket, e.ts_ns, e.old?, e.new?))
            })
            .collect();
        t.sort();
        t.into_iter().map(|(socket, _, old, new)| (socket, old, new)).collect()
    };
    let out = Command::new(workspace_binary("tcptrace"))
        .args(["report", file.to_str().unwrap(), "--format", "json", "--events"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed_lines = stdout_lines(&out);
    let (seen_live, seen_replayed) = (transitions(&watched.stdout), transitions(&replayed_lines));
    assert!(seen_live.len() > 2 * conns, "{} transitions", seen_live.len());
    assert_eq!(seen_live, seen_replayed, "transitions seen by the watcher and in the recording");
    let watched = watched.report();
    for (section, field) in [
        ("connections", "opened"),
        ("connections", "closed"),
        ("time_wait", "created"),
        ("time_wait", "current"),
        ("time_wait", "ended"),
        ("syn_recv", "created"),
        ("syn_recv", "completed"),
        ("syn_recv", "dropped"),
        ("retransmits", "segments"),
    ] {
        assert_eq!(watched[section][field], replayed[section][field], "{section}.{field}: watcher vs replay");
    }
    assert_eq!(watched["connect_errors"], replayed["connect_errors"], "connect errors: watcher vs replay");
    eprintln!(
        "measured: watcher and replay agree on {} transitions, time_wait {}, syn_recv created {}",
        seen_live.len(),
        replayed["time_wait"]["created"],
        replayed["syn_recv"]["created"]
    );
}
