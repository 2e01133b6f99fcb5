//! Retransmits on the real kernel, against the kernel's own counters: per
//! socket (`tcpi_total_retrans`, read by the test peers before closing) and
//! per network namespace (the SNMP/netstat MIBs of `/proc/net/snmp` and
//! `/proc/net/netstat`, read inside the test's own namespaces, so traffic of
//! other tests and background noise elsewhere on the host never counts).
//!
//! What each namespace counter counts, and so what tcptrace's `causes` must
//! equal (Linux 6.x, net/ipv4; `causes` is decided by `icsk_ca_state` when the
//! `tcp:tcp_retransmit_skb` tracepoint fires, docs/ARCHITECTURE.md
//! "Retransmits"):
//!
//! - `Tcp:RetransSegs`: `__tcp_retransmit_skb()` (tcp_output.c) adds the
//!   skb's segment count (`tcp_skb_pcount`, the `tcp_gso_segs` tcptrace reads)
//!   just before handing it to `tcp_transmit_skb()`, as it adds to the
//!   socket's `total_retrans`; `tcp_rtx_synack()` adds 1 per SYN-ACK resent.
//!   Each of those fires the tracepoint (`tcp_retransmit_synack` for a
//!   SYN-ACK), so the sum of the causes equals it. A retransmission whose
//!   transmit fails locally is counted too (and in `TCPRetransFail`); the
//!   tracepoint shows it only since Linux 6.17, with its `err`
//!   (`a_retransmission_that_fails_locally_...`). The other tests assert
//!   `TCPRetransFail` stays 0. Attempts given up before the count (`-EBUSY`
//!   and the like) are in neither; `-EBUSY` ones are in
//!   `TCPSpuriousRtxHostQueues`.
//! - `TcpExt:TCPFastRetrans` and `TCPSlowStartRetrans`:
//!   `tcp_xmit_retransmit_queue()` adds each skb's segments to one of them,
//!   chosen by the same `icsk_ca_state` at the same moment: SlowStart in
//!   CA_Loss, Fast otherwise. Every retransmission in CA_Recovery comes from
//!   there (the RTO timer first enters CA_Loss, a tail loss probe is only
//!   scheduled in CA_Open or CA_CWR), and every caller outside CA_Recovery
//!   enters CA_Loss first (`tcp_non_congestion_loss_retransmit()`: a path MTU
//!   shrink, unacknowledged TCP Fast Open SYN data), so `fast ==
//!   TCPFastRetrans`.
//! - `TcpExt:TCPTimeouts`: +1 each time `tcp_retransmit_timer()` (tcp_timer.c)
//!   fires on a socket with a non-zero window (before `tcp_write_timeout()`
//!   can kill the connection, then `tcp_enter_loss()` and the retransmission
//!   of exactly one segment, the head of the queue, `segs = 1`), and each time
//!   a request socket's SYN-ACK timer fires (`tcp_syn_ack_timeout()`). With no
//!   connection killed, no zero-window probe (that path of the timer counts
//!   no TCPTimeouts) and no resend given up before the count, every one is a
//!   segment sent in CA_Loss (or a SYN-ACK), and every other segment sent in
//!   CA_Loss is in TCPSlowStartRetrans: `timeout == TCPTimeouts +
//!   TCPSlowStartRetrans`.
//! - `TcpExt:TCPLossProbes`: +1 per tail loss probe sent by
//!   `tcp_send_loss_probe()`, whether it retransmitted the last segment (in
//!   CA_Open or CA_CWR: tcptrace's `other`) or sent new data (no retransmit at
//!   all). So `other <= TCPLossProbes` in general, and `other ==
//!   TCPLossProbes` where a probe cannot send new data (after a FIN). The
//!   kernel has no counter of probe retransmissions alone; `other` is checked
//!   as `RetransSegs - TCPFastRetrans - TCPSlowStartRetrans - TCPTimeouts`.
//! - `TcpExt:TCPLostRetransmit` (retransmissions detected lost again: each
//!   RTO after the first re-marks the resent head lost) and
//!   `TCPSpuriousRtxHostQueues` are printed for the record.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;

use tcptrace_tests::{
    background::Background,
    events::{Ev, parse_conns, parse_events},
    faults,
    netns::{NetNs, Pair},
    peers::{client, client_command, client_unchecked, connected_client, server_on_b},
    procs::Held,
    require_root,
    tracer::Tracer,
};

/// The kernel's retransmit counters of one namespace, as read by
/// [`NetNs::tcp_counters`].
const KERNEL_COUNTERS: [&str; 9] = [
    "Tcp:RetransSegs",
    "TcpExt:TCPTimeouts",
    "TcpExt:TCPSlowStartRetrans",
    "TcpExt:TCPFastRetrans",
    "TcpExt:TCPLossProbes",
    "TcpExt:TCPLostRetransmit",
    "TcpExt:TCPRetransFail",
    "TcpExt:TCPSynRetrans",
    "TcpExt:TCPSpuriousRtxHostQueues",
];

/// How much the kernel's retransmit counters of one namespace grew.
struct Mib(HashMap<&'static str, u64>);

impl Mib {
    fn between(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> Self {
        Self(
            KERNEL_COUNTERS
                .iter()
                .map(|&name| {
                    let (b, a) = (before.get(name), after.get(name));
                    let (Some(b), Some(a)) = (b, a) else {
                        panic!("no {name} in /proc/net/{{snmp,netstat}}")
                    };
                    (name, u64::try_from(a - b).unwrap_or_else(|_| panic!("{name} went down: {b} -> {a}")))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> u64 {
        self.0[name]
    }
}

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = KERNEL_COUNTERS
            .iter()
            .map(|name| format!("{} {}", name.split_once(':').map_or(*name, |(_, n)| n), self.0[name]))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// `retransmits.unseen` of the report: segments the kernel counted
/// (`total_retrans`) that no event showed (docs/RELIABILITY.md).
fn unseen(report: &Value) -> u64 {
    report["retransmits"]["unseen"].as_u64().unwrap()
}

/// tcptrace's figures against the kernel's, class by class. On these kernels
/// the tracepoint sometimes does not run the program for a retransmission
/// (docs/RELIABILITY.md): tcptrace then counts it from the kernel's total as
/// `unseen`, with no class. So each class is at most the kernel's, and the
/// shortfalls together are exactly `unseen`: nothing is lost silently.
fn assert_accounted<const N: usize>(
    what: &str,
    seen: [u64; N],
    kernel: [u64; N],
    unseen: u64,
    context: &str,
) {
    for (s, k) in seen.iter().zip(kernel) {
        assert!(*s <= k, "{what}: tcptrace {seen:?} above the kernel's {kernel:?}; {context}");
    }
    let short = kernel.iter().sum::<u64>() - seen.iter().sum::<u64>();
    assert_eq!(short, unseen, "{what}: tcptrace {seen:?}, kernel {kernel:?}, unseen {unseen}; {context}");
}

/// `causes` of the report: (timeout, fast, other).
fn causes(report: &Value) -> (u64, u64, u64) {
    let c = &report["retransmits"]["causes"];
    (c["timeout"].as_u64().unwrap(), c["fast"].as_u64().unwrap(), c["other"].as_u64().unwrap())
}

/// `segments` of the report: (syn, synack, data, fin).
fn segments(report: &Value) -> (u64, u64, u64, u64) {
    let s = &report["retransmits"]["segments"];
    let n = |k: &str| s[k].as_u64().unwrap();
    (n("syn"), n("synack"), n("data"), n("fin"))
}

/// The segment count of a `retransmit` event (its detail says `... xN in ...`).
fn event_segments(e: &Ev) -> u64 {
    e.raw["detail"]
        .as_str()
        .and_then(|d| d.split(" x").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("segment count in detail")
}

#[test]
fn data_loss_retransmits_match_the_kernel_per_connection() {
    require_root();
    let pair = Pair::new("loss");
    let (addr, mut srv) = server_on_b(&pair, 8095, &[]);
    // 10% of the server's data segments are lost where they arrive.
    pair.a.nft(&faults::drop_data_from(8095, 10));
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", "8095"]);
    let n = 4;
    client(&pair.a, addr, &["--count", &n.to_string(), "--mode", "B", "--arg", "2000000"]);
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
        *by_peer.entry(e.remote).or_default() += event_segments(e);
    }
    let top = report["retransmits"]["top"].as_array().unwrap();
    let (mut total, mut shown) = (0, 0);
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
        assert!(ours <= u64::from(conn.retrans), "events for {conn:?}: {ours}");
        assert_eq!(reported, u64::from(conn.retrans), "report top row for {conn:?}");
        total += u64::from(conn.retrans);
        shown += ours;
    }
    // Drops are random: with GSO a 2 MB download is only a few dozen
    // packets, so one connection in a few dozen loses none (CI saw
    // tcpi_total_retrans 0 once in a guest); the checks above hold for it
    // too. All four losing nothing is ~1e-6: then the rule did not work.
    assert!(total > 0, "10% loss must cause retransmits in some connection");
    let segments = &report["retransmits"]["segments"];
    assert_eq!(segments["data"].as_u64().unwrap(), shown, "{segments}");
    assert_eq!(total - shown, unseen(&report), "what no event showed is unseen: {}", report["retransmits"]);
    assert_eq!(segments["syn"], 0);
    let per = &report["retransmits"]["per_connection"];
    assert_eq!(per["count"].as_u64().unwrap(), 2 * n as u64, "both ends of each connection, zeros included");
    assert_eq!(per["min"], 0, "the client side retransmitted nothing");
}

#[test]
fn a_dropped_syn_is_one_syn_retransmit_and_a_second_in_syn_sent() {
    require_root();
    let pair = Pair::new("synrt");
    let (addr, _srv) = server_on_b(&pair, 8096, &[]);
    pair.b.nft(&faults::drop_first_syn(8096));
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", "8096"]);
    let before = pair.a.tcp_counters();
    let (conns, _) = client_unchecked(&pair.a, addr, &["--count", "1", "--mode", "C"]);
    assert_eq!(conns[0].retrans, 1, "the kernel counts one SYN retransmit");
    tracer.wait_for_events(Duration::from_secs(10), "closes", 2, |e| e.new.as_deref() == Some("CLOSE"));
    let kernel = Mib::between(&before, &pair.a.tcp_counters());
    let finished = tracer.stop();
    let report = finished.report();
    let r = &report["retransmits"];
    let context = r.to_string();
    assert_accounted(
        "segments",
        <[u64; 4]>::from(segments(&report)),
        [1, 0, 0, 0],
        unseen(&report),
        &context,
    );
    // The SYN is resent by tcp_retransmit_timer() after tcp_enter_loss(): a
    // timeout (CA_Loss), one TCPTimeouts and one RetransSegs in the client's
    // namespace.
    eprintln!(
        "measured: SYN retransmit causes {:?} (timeout, fast, other); client namespace: {kernel}",
        causes(&report)
    );
    assert_accounted("causes", <[u64; 3]>::from(causes(&report)), [1, 0, 0], unseen(&report), &context);
    assert_eq!(
        (kernel.get("TcpExt:TCPTimeouts"), kernel.get("Tcp:RetransSegs"), kernel.get("TcpExt:TCPSynRetrans")),
        (1, 1, 1),
        "{kernel}"
    );
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
    let (addr, _srv) = server_on_b(&pair, 8097, &[]);
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", "8097"]);
    // The client holds after its exchange until the faults are in: a
    // condition, not a delay (a 500 ms hold raced the two nft runs, and in a
    // slow guest its 2000 bytes got through first and nothing ever failed).
    let client = Held::start(client_command(&pair.a, addr, &["--count", "1", "--mode", "T"]), "holding");
    // Everything from now on is lost in both directions.
    pair.a.nft(&faults::drop_all(8097));
    pair.b.nft(&faults::drop_all(8097));
    let lines = client.release();
    let line =
        lines.iter().find(|l| l.starts_with("conn ")).unwrap_or_else(|| panic!("no conn line: {lines:?}"));
    let truth = &parse_conns(std::slice::from_ref(line))[0];
    assert!(line.contains("error=ETIMEDOUT"), "{line}");
    tracer.wait_for_events(Duration::from_secs(10), "client close", 1, |e| {
        e.netns == pair.a.inode && e.new.as_deref() == Some("CLOSE")
    });
    let report = tracer.stop().report();
    let r = &report["retransmits"];
    eprintln!(
        "measured: killed by timeout after {} retransmits (kernel {}); events {}",
        r["killed"][0]["retransmits"], truth.retrans, report["events"]
    );
    assert_eq!(r["timeouts"], 1, "{r}");
    let killed = &r["killed"][0];
    assert_eq!(killed["local"], truth.local.to_string());
    assert_eq!(killed["comm"], "ttclient");
    assert_eq!(killed["retransmits"].as_u64().unwrap(), u64::from(truth.retrans), "{killed}");
    assert!(truth.retrans >= 3, "tcp_retries2=3: {}", truth.retrans);
}

#[test]
fn a_synack_retransmit_is_a_timeout_as_the_kernel_counts_it() {
    require_root();
    let pair = Pair::new("sart");
    let (addr, _srv) = server_on_b(&pair, 8101, &[]);
    pair.b.nft(&faults::drop_first_final_ack(8101));
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", "8101"]);
    let before = pair.b.tcp_counters();
    // No data from the client for 1.5 s: only the ACK of the SYN-ACK that the
    // request's timer resends (after 1 s) can complete the handshake.
    client(&pair.a, addr, &["--count", "1", "--mode", "C", "--first-write-delay", "1500"]);
    tracer.wait_for_events(Duration::from_secs(10), "server close", 1, |e| {
        e.netns == pair.b.inode && e.is("LAST_ACK", "CLOSE")
    });
    let kernel = Mib::between(&before, &pair.b.tcp_counters());
    let report = tracer.stop().report();
    eprintln!(
        "measured: SYN-ACK retransmit: segments {:?} (syn, synack, data, fin), causes {:?} (timeout, fast, \
         other); server namespace: {kernel}",
        segments(&report),
        causes(&report)
    );
    // reqsk_timer_handler() counts TCPTimeouts (tcp_syn_ack_timeout()) and
    // tcp_rtx_synack() RetransSegs and TCPSynRetrans: a timer-driven resend.
    assert_eq!(segments(&report), (0, 1, 0, 0));
    assert_eq!(causes(&report), (1, 0, 0));
    assert_eq!(
        (kernel.get("TcpExt:TCPTimeouts"), kernel.get("Tcp:RetransSegs"), kernel.get("TcpExt:TCPSynRetrans")),
        (1, 1, 1),
        "{kernel}"
    );
    // Its stall: the request timer's first expiry, TCP_TIMEOUT_INIT (1 s)
    // after the SYN arrived and the first SYN-ACK went out.
    let synack = &report["retransmits"]["stalls"]["synack"];
    eprintln!("measured: SYN-ACK stall {synack} (kernel: TCP_TIMEOUT_INIT 1000 ms)");
    assert_eq!(synack["count"], 1, "{synack}");
    assert!(fired_for(synack["max"].as_u64().unwrap(), 1_000_000, jiffy_us()), "{synack}");
}

#[test]
fn causes_under_random_data_loss_match_the_senders_namespace_counters() {
    require_root();
    let pair = Pair::new("cause");
    let port = 8098;
    let (addr, mut srv) = server_on_b(&pair, port, &[]);
    // 10% of the server's data segments are lost where they arrive: fast
    // recovery mostly, timeouts when a retransmission is lost too, tail loss
    // probes when the last segments go.
    pair.a.nft(&faults::drop_data_from(port, 10));
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", &port.to_string()]);
    let before = (pair.a.tcp_counters(), pair.b.tcp_counters());
    let n = 4;
    client(&pair.a, addr, &["--count", &n.to_string(), "--mode", "B", "--arg", "2000000"]);
    let mut truth = Vec::new();
    for _ in 0..n {
        truth.push(srv.wait_for(Duration::from_secs(30), |l| l.starts_with("conn ")));
    }
    // The server's sockets are gone (their FIN acknowledged): nothing in
    // either namespace can retransmit any more.
    tracer.wait_for_events(Duration::from_secs(30), "server closes", n, |e| {
        e.netns == pair.b.inode && e.is("LAST_ACK", "CLOSE")
    });
    let client_ns = Mib::between(&before.0, &pair.a.tcp_counters());
    let sender = Mib::between(&before.1, &pair.b.tcp_counters());
    let finished = tracer.stop();
    let report = finished.report();
    let (timeout, fast, other) = causes(&report);
    let total_retrans: u64 = parse_conns(&truth).iter().map(|c| u64::from(c.retrans)).sum();
    eprintln!(
        "measured: {n} downloads of 2 MB, 10% data loss: tcptrace causes timeout {timeout}, fast {fast}, other \
         {other}; segments {:?} (syn, synack, data, fin); sender namespace: {sender}; tcpi_total_retrans sum \
         {total_retrans}; client namespace RetransSegs {}",
        segments(&report),
        client_ns.get("Tcp:RetransSegs")
    );
    let k = |name| sender.get(name);
    // Preconditions: only the server's data was lost, every retransmission
    // left the host, no handshake was retransmitted (SYN-ACK timers would
    // count in TCPTimeouts too).
    assert_eq!(client_ns.get("Tcp:RetransSegs"), 0, "client namespace: {client_ns}");
    assert_eq!(k("TcpExt:TCPRetransFail"), 0, "{sender}");
    assert_eq!(k("TcpExt:TCPSynRetrans"), 0, "{sender}");
    let context = format!("{sender}; {}", report["retransmits"]);
    // Data segments = sum of the server sockets' tcpi_total_retrans.
    let unseen = unseen(&report);
    assert_accounted(
        "segments",
        <[u64; 4]>::from(segments(&report)),
        [0, 0, total_retrans, 0],
        unseen,
        &context,
    );
    // The equalities (module comment): fast = segments retransmitted in
    // CA_Recovery; timeout = one segment per RTO + segments retransmitted in
    // CA_Loss after it; other = the rest (probe retransmissions).
    let (fast_k, timeout_k) =
        (k("TcpExt:TCPFastRetrans"), k("TcpExt:TCPTimeouts") + k("TcpExt:TCPSlowStartRetrans"));
    let other_k = k("Tcp:RetransSegs") - fast_k - timeout_k;
    assert_accounted("causes", [timeout, fast, other], [timeout_k, fast_k, other_k], unseen, &context);
    assert!(other_k <= k("TcpExt:TCPLossProbes"), "other = probe retransmissions, a part of TCPLossProbes");
    // The scenario exercised both main causes.
    assert!(fast > 0, "10% loss gives fast retransmits");
    check_fast_stalls(&parse_events(&finished.stdout), &report, &truth);
}

/// A download whose every data segment is lost where it arrives (the
/// handshake and the short "ok" reply pass) until the test lifts the
/// `tt_blackout` rule; the sender sends no tail loss probes
/// (tcp_early_retrans=0 turns TLP off, RACK stays), so only the
/// retransmission timer resends into the black hole.
struct Blackout {
    pair: Pair,
    srv: Background,
    tracer: Tracer,
    /// The sender's (server's) namespace counters before the download.
    before: std::collections::HashMap<String, i64>,
    client: Background,
}

impl Blackout {
    fn start(tag: &str, port: u16) -> Self {
        let pair = Pair::new(tag);
        let (addr, srv) = server_on_b(&pair, port, &[]);
        pair.b.sysctl("net.ipv4.tcp_early_retrans", "0");
        pair.a.nft(&faults::drop_all_data_from(port));
        let tracer = Tracer::events_in(&pair.both(), &["--port", &port.to_string()]);
        let before = pair.b.tcp_counters();
        let client = connected_client(&pair.a, addr, &["--count", "1", "--mode", "B", "--arg", "1000000"]);
        Self { pair, srv, tracer, before, client }
    }
}

#[test]
fn a_blackout_is_resent_by_the_retransmission_timer() {
    require_root();
    let port = 8099;
    let Blackout { pair, mut srv, mut tracer, before, mut client } = Blackout::start("blk", port);
    // Three RTOs (about 0.2 + 0.4 + 0.8 s), each resending the head of the
    // queue into the black hole; then the rule goes and the fourth gets through.
    let rtos = 3;
    tracer.wait_for_events(Duration::from_secs(30), "RTO retransmissions", rtos, |e| {
        e.netns == pair.b.inode && e.event == "retransmit"
    });
    pair.a.nft(&faults::stop_dropping("tt_blackout"));
    let line = client.wait_for(Duration::from_secs(60), |l| l.starts_with("conn "));
    assert!(line.contains(" B "), "{line}");
    let server_line = srv.wait_for(Duration::from_secs(30), |l| l.starts_with("conn "));
    tracer.wait_for_events(Duration::from_secs(30), "server close", 1, |e| {
        e.netns == pair.b.inode && e.is("LAST_ACK", "CLOSE")
    });
    let sender = Mib::between(&before, &pair.b.tcp_counters());
    let dropped = pair.a.nft_counter("tt_blackout", "dropped");
    let finished = tracer.stop();
    let report = finished.report();
    let events = parse_events(&finished.stdout);
    let resent: Vec<&Ev> = events.iter().filter(|e| e.event == "retransmit").collect();
    let truth = &parse_conns(std::slice::from_ref(&server_line))[0];
    let (timeout, fast, other) = causes(&report);
    eprintln!(
        "measured: blackout of {dropped} data packets (GSO, several segments each) over {rtos}+ RTOs: tcptrace causes timeout {timeout}, fast \
         {fast}, other {other}; {} retransmit events; server tcpi_total_retrans {}; sender namespace: {sender}",
        resent.len(),
        truth.retrans
    );
    let k = |name| sender.get(name);
    assert_eq!(k("TcpExt:TCPRetransFail"), 0, "{sender}");
    assert!(resent.iter().all(|e| e.netns == pair.b.inode), "only the server resent: {resent:?}");
    // Every resend into the black hole was made in CA_Loss, the timer's state.
    let detail = |e: &Ev| e.raw["detail"].as_str().unwrap_or_default().to_owned();
    assert!(resent.len() > rtos, "{resent:?}");
    assert!(resent[..rtos].iter().all(|e| detail(e).ends_with("(RTO)")), "{resent:?}");
    // Once an ACK gets through, the loss state resends the rest in slow
    // start. The kernel may still leave it with a hole that RACK then marks
    // lost: a fast retransmission, counted by TCPFastRetrans (seen once, in a
    // CI run on a loaded host). Nothing else resends: TLP is off.
    assert!(
        resent.iter().all(|e| detail(e).ends_with("(RTO)") || detail(e).ends_with("(fast recovery)")),
        "{resent:?}"
    );
    assert_eq!(k("TcpExt:TCPLossProbes"), 0, "{sender}");
    assert!(k("TcpExt:TCPTimeouts") > rtos as u64, "the RTO that got through counts too: {sender}");
    let timeout_k = k("TcpExt:TCPTimeouts") + k("TcpExt:TCPSlowStartRetrans");
    let fast_k = k("TcpExt:TCPFastRetrans");
    assert_eq!(k("Tcp:RetransSegs"), timeout_k + fast_k, "{sender}");
    assert!(fast_k < timeout_k, "the timer did most of the resending: {sender}");
    let context = format!("{sender}; {}", report["retransmits"]);
    assert_accounted("causes", [timeout, fast, other], [timeout_k, fast_k, 0], unseen(&report), &context);
    assert_eq!(
        timeout + fast + unseen(&report),
        u64::from(truth.retrans),
        "the server socket's tcpi_total_retrans"
    );
    assert_eq!(segments(&report), (0, 0, timeout + fast, 0));
}

#[test]
fn fin_retransmits_are_the_fins_the_peer_never_got() {
    require_root();
    let pair = Pair::new("finrt");
    let port = 8100;
    let (addr, mut srv) = server_on_b(&pair, port, &[]);
    // Every FIN the client sends is lost where it arrives, until the rule goes.
    pair.b.nft(&faults::drop_fin_to(port));
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", &port.to_string()]);
    let before = (pair.a.tcp_counters(), pair.b.tcp_counters());
    // Mode C: the client closes first once it has the reply (FIN_WAIT1), the
    // server reads to EOF (the FIN) before it closes.
    let conn = client(&pair.a, addr, &["--count", "1", "--mode", "C"]).pop().expect("conn line");
    let resends = 3;
    tracer.wait_for_events(Duration::from_secs(30), "FIN retransmissions", resends, |e| {
        e.netns == pair.a.inode && e.event == "retransmit"
    });
    pair.b.nft(&faults::stop_dropping("tt_fin"));
    srv.wait_for(Duration::from_secs(30), |l| l.starts_with("conn "));
    tracer.wait_for_events(Duration::from_secs(30), "both sides closed", 2, |e| {
        e.new.as_deref() == Some("CLOSE") && (e.netns == pair.a.inode || e.netns == pair.b.inode)
    });
    let client_ns = Mib::between(&before.0, &pair.a.tcp_counters());
    let server_ns = Mib::between(&before.1, &pair.b.tcp_counters());
    let dropped = pair.b.nft_counter("tt_fin", "dropped");
    let report = tracer.stop().report();
    let (timeout, fast, other) = causes(&report);
    let (_, _, _, fin) = segments(&report);
    eprintln!(
        "measured: {dropped} FINs dropped at the server; tcptrace FIN retransmits {fin} (causes timeout {timeout}, \
         fast {fast}, other {other}); client namespace: {client_ns}; server namespace RetransSegs {}",
        server_ns.get("Tcp:RetransSegs")
    );
    let k = |name| client_ns.get(name);
    // The first FIN and every resend but the last were dropped; the last got
    // through and was acknowledged: resends == drops.
    assert!(dropped > resends as u64, "the FIN and {resends} resends at least: {dropped}");
    let context = format!("{client_ns}; {}", report["retransmits"]);
    let unseen = unseen(&report);
    // Only FINs were resent, each one a dropped FIN.
    assert_accounted("segments", <[u64; 4]>::from(segments(&report)), [0, 0, 0, dropped], unseen, &context);
    assert_eq!(k("Tcp:RetransSegs"), dropped, "{client_ns}");
    assert_eq!(server_ns.get("Tcp:RetransSegs"), 0, "server namespace: {server_ns}");
    // The kernel's own account of the same drops: each FIN the rule threw
    // away, with its reason, where it arrived.
    if tcptrace_tests::kernel_btf_has_name("SKB_DROP_REASON_NETFILTER_DROP") {
        let traced = tcptrace_tests::dropped(&report, pair.b.inode, "NETFILTER_DROP", &addr.to_string());
        assert_eq!(
            traced, dropped,
            "NETFILTER_DROP drops toward {addr} vs the rule's counter: {}",
            report["drops"]
        );
    }
    assert_eq!(k("TcpExt:TCPRetransFail"), 0, "{client_ns}");
    // Alone in flight after close(), the FIN is first resent by a tail loss
    // probe (CA_Open; with no new data to send, TCPLossProbes counts exactly
    // the probes that retransmitted), then by the retransmission timer.
    assert_eq!(k("TcpExt:TCPFastRetrans"), 0, "{client_ns}");
    let timeout_k = k("TcpExt:TCPTimeouts") + k("TcpExt:TCPSlowStartRetrans");
    assert_eq!(timeout_k + k("TcpExt:TCPLossProbes"), dropped, "{client_ns}");
    assert_accounted(
        "causes",
        [timeout, fast, other],
        [timeout_k, 0, k("TcpExt:TCPLossProbes")],
        unseen,
        &context,
    );
    let row = report["retransmits"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["local"] == conn.local.to_string())
        .unwrap_or_else(|| panic!("client row in {}", report["retransmits"]));
    assert_eq!(row["retransmits"].as_u64(), Some(dropped), "{row}");
    assert_eq!(row["state"], "FIN_WAIT1", "{row}");
}

/// Whether this kernel's `tcp:tcp_retransmit_skb` reports failed attempts
/// (the `err` field, Linux 6.17+, kernel commit ad892e912b84). Older kernels
/// fire it only for retransmissions that left the host.
fn tracepoint_reports_failures() -> bool {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/tcp/tcp_retransmit_skb/format")).ok())
        .expect("tcp_retransmit_skb format in tracefs (mount -t tracefs nodev /sys/kernel/tracing)");
    format.contains("field:int err;")
}

/// Waits until `counter` of the namespace has grown by `at_least` since `before`.
fn wait_for_counter(
    ns: &NetNs,
    before: &HashMap<String, i64>,
    counter: &str,
    at_least: u64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let grown = Mib::between(before, &ns.tcp_counters());
        if grown.get(counter) >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{counter} did not grow by {at_least} in {timeout:?}: {grown}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_retransmission_that_fails_locally_counts_as_the_kernel_counts_it() {
    require_root();
    let port = 8102;
    let Blackout { pair, mut srv, mut tracer, before, mut client } = Blackout::start("lfail", port);
    tracer.wait_for_events(Duration::from_secs(30), "an RTO retransmission", 1, |e| {
        e.netns == pair.b.inode && e.event == "retransmit"
    });
    // Now the next retransmissions fail on the sender's own output path:
    // `__tcp_retransmit_skb()` has counted them (RetransSegs, total_retrans)
    // before `tcp_transmit_skb()` returns -EPERM, and counts TCPRetransFail.
    pair.b.nft(&faults::fail_data_leaving(port));
    let failures = 2;
    wait_for_counter(&pair.b, &before, "TcpExt:TCPRetransFail", failures, Duration::from_secs(30));
    pair.b.nft(&faults::delete_table("tt_local_fail"));
    pair.a.nft(&faults::stop_dropping("tt_blackout"));
    client.wait_for(Duration::from_secs(60), |l| l.starts_with("conn "));
    let server_line = srv.wait_for(Duration::from_secs(30), |l| l.starts_with("conn "));
    tracer.wait_for_events(Duration::from_secs(30), "server close", 1, |e| {
        e.netns == pair.b.inode && e.is("LAST_ACK", "CLOSE")
    });
    let sender = Mib::between(&before, &pair.b.tcp_counters());
    let finished = tracer.stop();
    let report = finished.report();
    let resent: Vec<String> = parse_events(&finished.stdout)
        .iter()
        .filter(|e| e.event == "retransmit")
        .map(|e| format!("{} {}", e.ts_ns, e.raw["detail"]))
        .collect();
    let truth = &parse_conns(std::slice::from_ref(&server_line))[0];
    let (timeout, fast, other) = causes(&report);
    let reports_failures = tracepoint_reports_failures();
    eprintln!(
        "measured: {} retransmissions failed locally; tcptrace causes timeout {timeout}, fast {fast}, other \
         {other}; server tcpi_total_retrans {}; sender namespace: {sender}; tracepoint reports failures: \
         {reports_failures}; unseen {}; events {}",
        sender.get("TcpExt:TCPRetransFail"),
        truth.retrans,
        report["retransmits"]["unseen"],
        report["events"]
    );
    let k = |name| sender.get(name);
    assert!(k("TcpExt:TCPRetransFail") >= failures, "{sender}");
    assert_eq!(u64::from(truth.retrans), k("Tcp:RetransSegs"), "the kernel counts failed ones in both");
    // Once the fault and the blackout are gone, the ACKs that come back can
    // start a fast recovery (seen here: one fast retransmission in a run);
    // the sender's own counters say how many.
    let classified = k("TcpExt:TCPFastRetrans") + k("TcpExt:TCPSlowStartRetrans") + k("TcpExt:TCPTimeouts");
    let other_expected = k("Tcp:RetransSegs")
        .checked_sub(classified)
        .unwrap_or_else(|| panic!("the sender classified more than it counted: {sender}"));
    // No ACK reaches the sender while the fault is on, so every failed
    // attempt is the RTO timer's (counted in TCPTimeouts before it fails).
    // Before 6.17 the tracepoint never fires for a failed attempt: tcptrace
    // then counts it from the kernel's total, as unseen (docs/ARCHITECTURE.md).
    let timeout_expected = k("TcpExt:TCPTimeouts") + k("TcpExt:TCPSlowStartRetrans");
    let unseen = unseen(&report);
    if !reports_failures {
        assert!(
            unseen >= k("TcpExt:TCPRetransFail"),
            "failed attempts are unseen before 6.17: {unseen}; {sender}"
        );
    }
    let context = format!("{sender}; tcptrace saw {resent:?}");
    let kernel = [timeout_expected, k("TcpExt:TCPFastRetrans"), other_expected];
    assert_accounted("causes", [timeout, fast, other], kernel, unseen, &context);
    let (syn, synack, data, fin) = segments(&report);
    assert_eq!((syn, synack, data, fin), (0, 0, timeout + fast + other, 0));
}

// ---- Retransmit stalls (issue 18): how long each retransmission stalled its
// connection, against what the kernel says about its own timers.

/// The kernel's tick (one jiffy) in µs: the resolution of `rcv_tstamp`, of
/// `icsk_rto` and of the timers. The coarse clocks tick once a jiffy.
fn jiffy_us() -> u64 {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `res` is a valid, writable timespec.
    assert_eq!(unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) }, 0);
    (res.tv_nsec as u64).div_ceil(1000)
}

/// `rto` (ms) and `backoff` of the first socket `ss -tin` lists in `ns`
/// with these filters (`backoff` is left out by ss when 0).
fn ss_rto_backoff(ns: &NetNs, filter: &[&str]) -> Option<(u64, u64)> {
    let mut args = vec!["-tinH"];
    args.extend_from_slice(filter);
    let out = ns.sh("ss", &args);
    let field = |name: &str| {
        out.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<f64>().ok())
    };
    let rto = field("rto:")?;
    Some((rto.round() as u64, field("backoff:").map_or(0, |b| b as u64)))
}

/// The stall fields of a `retransmit` event line: (stall_us, cause, rto_us, backoff).
fn stall_of(e: &Ev) -> (u64, String, u64, u64) {
    let n = |k: &str| e.raw[k].as_u64().unwrap_or_else(|| panic!("no {k} in {}", e.raw));
    (n("stall_us"), e.raw["stall_cause"].as_str().unwrap().to_string(), n("rto_us"), n("backoff"))
}

/// How late the timer softirq of an emulated (TCG) guest may run beyond
/// what the kernel's timer wheel allows, when the host deschedules the
/// vCPU thread: seen 14 ms past the bound below in CI's 5.10 guest (a first
/// RTO of 304 ms fired after 364 ms). Not the kernel's doing; still well
/// under the doubling the tests tell apart.
const GUEST_TIMER_LATENCY_US: u64 = 25_000;

/// Whether a timer that ran `stall_us` late or early still fired for `rto_us`:
/// never before it (one jiffy for rounding), and at most the timer wheel's
/// granularity after it (12.5% of the timeout), plus two jiffies and a
/// guest's timer latency.
fn fired_for(stall_us: u64, rto_us: u64, jiffy: u64) -> bool {
    stall_us + jiffy >= rto_us && stall_us <= rto_us + rto_us / 8 + 2 * jiffy + GUEST_TIMER_LATENCY_US
}

#[test]
fn timeout_stalls_follow_the_kernels_backoff_from_a_routes_rto_min() {
    require_root();
    let port = 8110;
    let pair = Pair::new("stlto");
    let (addr, mut srv) = server_on_b(&pair, port, &[]);
    // The sender's route to the client: rto_min 300 ms (the veth RTT is tens
    // of µs, so the RTO is rto_min plus srtt/8, rounded up to a jiffy).
    pair.b.sh("ip", &["route", "add", &format!("{}/32", pair.a4), "dev", &pair.b_dev, "rto_min", "300ms"]);
    pair.b.sysctl("net.ipv4.tcp_early_retrans", "0");
    pair.a.nft(&faults::drop_all_data_from(port));
    let before = pair.b.tcp_counters();
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", &port.to_string()]);
    let mut client = connected_client(&pair.a, addr, &["--count", "1", "--mode", "B", "--arg", "1000000"]);
    // Sample the sender socket's rto/backoff as the test's own reading while
    // the RTOs fire (0.3 + 0.6 + 1.2 s).
    let rtos = 4;
    let filter = ["sport", "=", ":8110"];
    let mut sampled: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sampled.last().is_none_or(|&(_, b)| b < rtos) && Instant::now() < deadline {
        if let Some(s) = ss_rto_backoff(&pair.b, &filter)
            && sampled.last() != Some(&s)
        {
            sampled.push(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pair.a.nft(&faults::stop_dropping("tt_blackout"));
    client.wait_for(Duration::from_secs(60), |l| l.starts_with("conn "));
    srv.wait_for(Duration::from_secs(30), |l| l.starts_with("conn "));
    tracer.wait_for_events(Duration::from_secs(30), "server close", 1, |e| {
        e.netns == pair.b.inode && e.is("LAST_ACK", "CLOSE")
    });
    let finished = tracer.stop();
    let report = finished.report();
    let events = parse_events(&finished.stdout);
    let sender = Mib::between(&before, &pair.b.tcp_counters());
    let jiffy = jiffy_us();
    // The timer's resends: one per expiry, backoff 0, 1, 2, ... up to the
    // one that got through (the segments resent after the blackout, once
    // ACKs return, stall for about nothing and are left out by their tiny
    // stall). An expiry whose resend the kernel gave up before counting it
    // (the original still in a host queue: `-EBUSY`, in
    // TCPSpuriousRtxHostQueues; too much of the socket's memory in host
    // queues: `-EAGAIN`) sends nothing and shows no event, yet backs off:
    // seen once in CI, on a loaded host. The kernel's counters tell how many
    // there were: every expiry is in TCPTimeouts, every resend in
    // RetransSegs, and every other resend in TCPSlowStartRetrans or
    // TCPFastRetrans (no tail loss probes: tcp_early_retrans is 0).
    let fired: Vec<(u64, String, u64, u64)> = events
        .iter()
        .filter(|e| e.event == "retransmit" && e.netns == pair.b.inode)
        .map(stall_of)
        .filter(|(stall, cause, _, backoff)| cause == "timeout" && *stall >= 100_000 && *backoff <= rtos)
        .collect();
    eprintln!(
        "measured: ss (rto ms, backoff) samples {sampled:?}; jiffy {jiffy} µs; sender namespace: {sender}"
    );
    for (stall, _, rto, backoff) in &fired {
        eprintln!(
            "measured: RTO with backoff {backoff}: stall {:.1} ms, icsk_rto {:.1} ms; kernel's schedule {} ms",
            *stall as f64 / 1e3,
            *rto as f64 / 1e3,
            300u64 << backoff
        );
    }
    eprintln!("measured: report stalls {}", report["retransmits"]["stalls"]);
    let k = |name| sender.get(name);
    assert_eq!(k("TcpExt:TCPLossProbes"), 0, "{sender}");
    let held_by_kernel =
        (k("TcpExt:TCPTimeouts") + k("TcpExt:TCPSlowStartRetrans") + k("TcpExt:TCPFastRetrans"))
            .checked_sub(k("Tcp:RetransSegs"))
            .unwrap_or_else(|| panic!("more resends than expiries and recovery sent: {sender}"));
    let held = (rtos + 1).saturating_sub(fired.len() as u64);
    assert!(
        held <= held_by_kernel,
        "{held} of the expiries up to backoff {rtos} showed no resend, the kernel gave up {held_by_kernel}: {fired:?}; {sender}"
    );
    assert!(fired.len() >= 3, "at least three RTOs seen: {fired:?}");
    // The first RTO is rto_min plus srtt/8, rounded up to a jiffy: 304 ms
    // on the host (srtt tens of µs), 308 ms in a TCG guest (srtt of ms);
    // tolerance 10% above rto_min. Each expiry doubles it, whether or not
    // it resent. The test's own reading agrees.
    let rto0 = fired[0].2 >> fired[0].3;
    assert!((300_000..=330_000).contains(&rto0), "first RTO {rto0} µs, rto_min 300 ms: {fired:?}");
    if let Some(&(rto_ms, _)) = sampled.iter().find(|(_, b)| *b == 0) {
        assert!(
            (rto_ms * 1000).abs_diff(rto0) < 1000,
            "ss rto {rto_ms} ms before the first expiry, event {rto0} µs"
        );
    }
    // Each resend stalled for the RTOs since the one before it (or since
    // the last ACK, just before the first expiry): one RTO when every
    // expiry resent, the sum of the held ones' too otherwise.
    let mut previous: Option<u64> = None;
    for (stall, _, rto, backoff) in &fired {
        assert!(previous.is_none_or(|p| p < *backoff), "backoff grows with each expiry: {fired:?}");
        assert_eq!(*rto, rto0 << backoff, "icsk_rto doubles: {fired:?}");
        let first = previous.map_or(0, |p| p + 1);
        let expected: u64 = (first..=*backoff).map(|b| rto0 << b).sum();
        assert!(
            fired_for(*stall, expected, jiffy),
            "stall {stall} µs for RTOs of {expected} µs since backoff {first}: {fired:?}"
        );
        previous = Some(*backoff);
    }
    // The test's own reading: after expiry k the socket shows backoff k+1
    // and the doubled RTO; each agrees with the event of that expiry.
    let after: Vec<&(u64, u64)> = sampled.iter().filter(|(_, b)| *b >= 1).collect();
    assert!(!after.is_empty(), "ss saw the backoff: {sampled:?}");
    for &&(rto_ms, backoff) in &after {
        let Some(event) = fired.iter().find(|e| e.3 + 1 == backoff) else { continue };
        // ss prints the RTO in ms (`%g`), the event in µs.
        assert!(
            (rto_ms * 1000).abs_diff(event.2 * 2) < 1000,
            "ss rto {rto_ms} ms after expiry {backoff}: {fired:?}"
        );
    }
    let timeout = &report["retransmits"]["stalls"]["timeout"];
    assert!(timeout["max"].as_u64().unwrap() >= 1_200_000, "{timeout}");
    let dest = &report["retransmits"]["stall_destinations"][0];
    // The server's accepted socket is named by tcp_sendmsg_locked; without
    // that hook (6.1, 6.12: a note says so) it keeps the listener's owner,
    // unknown here (the listener predates tracing).
    let no_owner_hook = report["notes"].as_array().is_some_and(|notes| {
        notes.iter().any(|n| n.as_str().is_some_and(|n| n.contains("tcp_sendmsg_locked")))
    });
    if !no_owner_hook {
        assert_eq!(dest["comm"], "ttserver", "{dest}");
    }
    assert!(dest["max_backoff"].as_u64().unwrap() >= 2, "{dest}");
}

/// Fast retransmit stalls of a run with random loss (checked by
/// `causes_under_random_data_loss_...`, whose counts equal the kernel's):
/// one stall per retransmitted skb, each within a round trip of the last ACK.
fn check_fast_stalls(events: &[Ev], report: &Value, server_lines: &[String]) {
    let rtt_max = server_lines
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("rtt=")))
        .map(|v| v.parse::<u64>().unwrap())
        .max()
        .expect("rtt= in the server's lines");
    let jiffy = jiffy_us();
    let fast: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "retransmit")
        .map(stall_of)
        .filter(|s| s.1 == "fast")
        .map(|s| s.0)
        .collect();
    let s = &report["retransmits"]["stalls"];
    eprintln!(
        "measured: {} fast retransmit stalls, p50 {} µs, p99 {} µs, max {} µs; tcpi_rtt (largest) {rtt_max} µs; \
         jiffy {jiffy} µs; report stalls {s}",
        fast.len(),
        s["fast"]["p50"],
        s["fast"]["p99"],
        s["fast"]["max"]
    );
    // One stall per retransmitted skb (an skb may carry several segments).
    assert_eq!(s["fast"]["count"].as_u64().unwrap_or(0), fast.len() as u64);
    // A fast retransmit is mostly sent on the (duplicate) ACK that reveals
    // the loss: the time since the last ACK is within a round trip, at the
    // jiffy resolution of rcv_tstamp. Some (probably resent by RACK's
    // reordering timer in CA_Recovery, without a new ACK) go one or two
    // jiffies after the last (measured: 1 or 2 of about 40 per run, 6.9 and
    // 8.0 ms at HZ=250). Tolerances: 90% within tcpi_rtt + 1 jiffy, all
    // within tcpi_rtt + 3.
    let near = fast.iter().filter(|&&us| us <= rtt_max + jiffy).count();
    assert!(
        near * 10 >= fast.len() * 9,
        "{near} of {} fast stalls within tcpi_rtt + 1 jiffy: {fast:?}",
        fast.len()
    );
    let bound = rtt_max + 3 * jiffy;
    let over: Vec<&u64> = fast.iter().filter(|&&us| us > bound).collect();
    assert!(over.is_empty(), "fast stalls above tcpi_rtt + 3 jiffies ({bound} µs): {over:?}");
}

#[test]
fn a_dropped_syn_stalls_for_the_syn_retry_interval() {
    require_root();
    let pair = Pair::new("stlsyn");
    let port = 8112;
    let (addr, _srv) = server_on_b(&pair, port, &[]);
    pair.b.nft(&faults::drop_first_syn(port));
    let mut tracer = Tracer::events_in(&pair.both(), &["--port", &port.to_string()]);
    // The test's own reading of the SYN's retry interval: the client's
    // TCP_INFO right after its connect() sent the SYN (an outside reader
    // such as ss had to catch the socket within that first second, which a
    // slow 5.10 guest did not always leave it).
    let mut client = Held::start(
        client_command(&pair.a, addr, &["--count", "1", "--mode", "C", "--print-syn-sent"]),
        "syn-sent ",
    );
    let syn_sent = client.seen.last().cloned().expect("the syn-sent line");
    let field = |name: &str| {
        syn_sent
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {syn_sent:?}"))
    };
    assert_eq!(field("state="), 2, "TCP_INFO right after connect(): SYN_SENT");
    assert_eq!(field("backoff="), 0, "read before the first resend");
    let rto_ms = field("rto_us=") / 1000;
    client.line("conn ");
    tracer.wait_for_events(Duration::from_secs(10), "closes", 2, |e| e.new.as_deref() == Some("CLOSE"));
    let finished = tracer.stop();
    let report = finished.report();
    let events = parse_events(&finished.stdout);
    let syn_sent_at = events.iter().find(|e| e.is("CLOSE", "SYN_SENT")).expect("SYN_SENT").ts_ns;
    let resent = events.iter().find(|e| e.event == "retransmit").expect("the SYN retransmit");
    let (stall, cause, ..) = stall_of(resent);
    let observed_us = (resent.ts_ns - syn_sent_at) / 1000;
    let jiffy = jiffy_us();
    eprintln!(
        "measured: SYN stall {:.1} ms; SYN_SENT to the resend {:.1} ms; kernel's retry interval (TCP_INFO rto) {rto_ms} ms",
        stall as f64 / 1e3,
        observed_us as f64 / 1e3
    );
    assert_eq!(cause, "syn");
    assert_eq!(stall, observed_us, "the stall is the time in SYN_SENT before the resend");
    assert!(fired_for(stall, rto_ms * 1000, jiffy), "stall {stall} µs, retry interval {rto_ms} ms");
    assert_eq!(report["retransmits"]["stalls"]["syn"]["count"], 1, "{}", report["retransmits"]["stalls"]);
}
