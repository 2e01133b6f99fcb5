//! `tcptrace serve` scraped by a real Prometheus server (Debian package) on
//! loopback: the series arrive through Prometheus' HTTP API with the values
//! the test's own traffic and the kernel (`ss`) say they must have, and
//! label cardinality stays within `--top`.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcptrace_tests::{
    background::Background,
    faults,
    http::{free_port, http_get, http_get_accepting},
    netns::{NetNs, Pair},
    peers::{client_command, connected_client, server},
    require_root,
    tracer::Tracer,
};

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server with its own config and storage, killed on drop.
struct Prometheus {
    _process: Background,
    web: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `target` every second.
    fn start(target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("tcptrace-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // Prometheus logs to stderr; `sh` turns its readiness line into stdout.
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!(
            "exec prometheus --config.file={} --storage.tsdb.path={} --web.listen-address={web} 2>&1",
            config.display(),
            dir.join("data").display()
        ));
        let mut process = Background::start(command, "");
        process.wait_for(Duration::from_secs(60), |l| l.contains("Server is ready to receive web requests"));
        Self { _process: process, web, dir }
    }

    /// An instant query's result vector: (labels, value).
    fn query(&self, promql: &str) -> Vec<(HashMap<String, String>, f64)> {
        let (status, body) = http_get(self.web, &format!("/api/v1/query?query={}", urlencode(promql)));
        assert_eq!(status, 200, "{promql}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        json["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: {body}"))
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                (labels, r["value"][1].as_str().unwrap().parse().unwrap())
            })
            .collect()
    }

    /// The single value of `promql`, once it equals `expected` (scrapes
    /// arrive every second); panics with the last value after `timeout`.
    fn wait_value(&self, promql: &str, expected: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            let value = result.first().map(|(_, v)| *v);
            if value == Some(expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{promql}: expected {expected}, Prometheus has {result:?}");
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The PromQL of every panel of deploy/grafana/tcptrace.json.
fn dashboard_queries() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/tcptrace.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect()
}

/// ttclient making `count` connections that it holds `hold_ms` and closes first.
fn closing_client(ns: &NetNs, addr: SocketAddr, count: u32, hold_ms: u32) -> Command {
    let mut c = client_command(
        ns,
        addr,
        &["--count", &count.to_string(), "--mode", "C", "--hold", &hold_ms.to_string()],
    );
    c.stdout(std::process::Stdio::null());
    c
}

/// TIME_WAIT sockets `ss` lists in `ns`, by remote port.
fn ss_time_wait_by_port(ns: &NetNs) -> HashMap<u16, u32> {
    let mut by = HashMap::new();
    for line in ns.sh("ss", &["-Htan", "state", "time-wait"]).lines() {
        if let Some(remote) = line.split_whitespace().last().and_then(|r| r.parse::<SocketAddr>().ok()) {
            *by.entry(remote.port()).or_default() += 1;
        }
    }
    by
}

#[test]
fn prometheus_scrapes_time_wait_syn_recv_and_histograms() {
    require_root();
    let pair = Pair::new("prom");
    pair.a.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    let server = |port: u16| server(&pair.b, SocketAddr::new(pair.b4.into(), port), &[]);
    // Four services the client closes on first (TIME_WAIT on its side), and
    // one whose handshakes never complete (request sockets stay in SYN_RECV).
    let expected: [(u16, u32); 4] = [(8080, 6), (8082, 5), (8083, 4), (8084, 3)];
    let _servers: Vec<Background> = [8080, 8082, 8083, 8084, 8081].into_iter().map(server).collect();
    pair.b.nft(&faults::drop_all_but_syn(8081));

    // The dashboard's cost panel needs the kernel's per-program statistics.
    let _stats = tcptrace_tests::BpfStats::on();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (ns_a, ns_b) = (pair.a.inode.to_string(), pair.b.inode.to_string());
    let listen_arg = listen.to_string();
    let tracer = Tracer::start(&[
        "serve",
        "--listen",
        &listen_arg,
        "--top",
        "3",
        "--interval",
        "500ms",
        "--netns",
        &ns_a,
        "--netns",
        &ns_b,
    ]);
    let openmetrics = Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5");
    let (status, body) = http_get_accepting(listen, "/metrics", openmetrics);
    assert_eq!(status, 200);
    assert!(body.ends_with("# EOF\n"), "not OpenMetrics: {body}");
    let prometheus = Prometheus::start(listen);
    prometheus.wait_value("up{job=\"tcptrace\"}", 1.0, Duration::from_secs(30));

    // 8080 first and alone, so that it surely gets its own series; then the
    // other three at once: two more fit under --top 3, one goes to "other".
    let dest = |port: u16| SocketAddr::new(pair.b4.into(), port);
    assert!(closing_client(&pair.a, dest(8080), 6, 300).status().unwrap().success());
    let total_series = "sum(tcptrace_time_wait_sockets_by_destination)";
    prometheus.wait_value(total_series, 6.0, Duration::from_secs(30));
    // The two handshakes that never complete come first: --top 3 admits a
    // listener's request-socket series when it first shows up, so 8081 must
    // have its requests before the other listeners' rows fill the three
    // places (in a slow guest those came first and 8081 went to "other").
    let mut hung = Vec::new();
    for _ in 0..2 {
        hung.push(connected_client(&pair.a, dest(8081), &["--first-write-delay", "120000"]));
    }
    prometheus.wait_value("tcptrace_syn_recv_request_sockets_all", 2.0, Duration::from_secs(30));
    let mut clients: Vec<_> = expected[1..]
        .iter()
        .map(|(port, n)| closing_client(&pair.a, dest(*port), *n, 300).spawn().unwrap())
        .collect();
    for c in &mut clients {
        assert!(c.wait().unwrap().success());
    }
    let total: u32 = expected.iter().map(|(_, n)| n).sum();
    let kernel = ss_time_wait_by_port(&pair.a);
    let kernel_total: u32 = kernel.values().sum();
    assert_eq!(kernel_total, total, "ss shows every TIME_WAIT the client made: {kernel:?}");
    prometheus.wait_value(total_series, f64::from(total), Duration::from_secs(30));

    // Per destination: three named series with the kernel's counts, the rest in "other".
    let series = prometheus.query("tcptrace_time_wait_sockets_by_destination");
    eprintln!("measured: TIME_WAIT series {series:?}; ss {kernel:?}");
    let (named, other): (Vec<_>, Vec<_>) = series.iter().partition(|(l, _)| l["remote"] != "other");
    assert_eq!(named.len(), 3, "--top 3 named series: {series:?}");
    assert_eq!(other.len(), 1, "one other series: {series:?}");
    for (labels, value) in &named {
        let remote: SocketAddr = labels["remote"].parse().unwrap();
        assert_eq!(labels["netns"], ns_a);
        assert_eq!(labels["local"], pair.a4.to_string());
        assert_eq!(*value, f64::from(kernel[&remote.port()]), "{labels:?}");
    }
    assert!(named.iter().any(|(l, _)| l["remote"] == dest(8080).to_string()), "8080 came first: {series:?}");
    let unnamed: u32 = expected
        .iter()
        .filter(|(port, _)| !named.iter().any(|(l, _)| l["remote"] == dest(*port).to_string()))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(other[0].1, f64::from(unnamed));
    let utilization =
        prometheus.query(&format!("tcptrace_time_wait_port_utilization_ratio{{remote=\"{}\"}}", dest(8080)));
    assert_eq!(utilization.first().map(|(_, v)| *v), Some(6.0 / 100.0), "6 of 100 ports: {utilization:?}");

    // Who closed first: the client process, every time.
    prometheus.wait_value("sum(tcptrace_active_closes_total)", f64::from(total), Duration::from_secs(10));
    let closes = prometheus.query("sum by (comm) (tcptrace_active_closes_total)");
    let named_closes: f64 = closes.iter().filter(|(l, _)| l["comm"] == "ttclient").map(|(_, v)| v).sum();
    assert!(named_closes >= f64::from(6), "ttclient has its own series: {closes:?}");

    // Request sockets of the listener that never sees a final ACK, as ss counts them.
    let syn_recv = pair.b.sh("ss", &["-Htan", "state", "syn-recv"]).lines().count();
    assert_eq!(syn_recv, 2, "ss shows both requests");
    prometheus.wait_value(
        &format!("tcptrace_syn_recv_request_sockets{{listener=\"{}\"}}", dest(8081)),
        2.0,
        Duration::from_secs(10),
    );

    // ESTABLISHED lasted the 300 ms the client held each connection, on both
    // sides: nothing at or under 250 ms, everything by 500 ms.
    let sockets = f64::from(2 * total);
    let bucket =
        |le: &str| format!("tcptrace_state_dwell_seconds_bucket{{state=\"ESTABLISHED\",le=\"{le}\"}}");
    prometheus.wait_value(&bucket("0.5"), sockets, Duration::from_secs(10));
    prometheus.wait_value(&bucket("0.25"), 0.0, Duration::from_secs(1));
    prometheus.wait_value(
        "tcptrace_state_dwell_seconds_count{state=\"ESTABLISHED\"}",
        sockets,
        Duration::from_secs(1),
    );
    prometheus.wait_value("tcptrace_events_lost_total", 0.0, Duration::from_secs(1));

    // Why they ended: each connection the client made closed first on its
    // side and second on the server's; every one was accepted (the servers
    // accept at once), none of 8081's handshakes completed.
    let ends = |reason: &str| format!("sum(tcptrace_connection_ends_total{{reason=\"{reason}\"}})");
    prometheus.wait_value(&ends("closed_local_first"), f64::from(total), Duration::from_secs(10));
    prometheus.wait_value(&ends("closed_remote_first"), f64::from(total), Duration::from_secs(1));
    prometheus.wait_value(
        "sum(tcptrace_accept_wait_seconds_count)",
        f64::from(total),
        Duration::from_secs(1),
    );

    // Without an Accept header (curl, promtool): the classic text format,
    // which Prometheus' own linter passes without a remark.
    let (status, classic) = http_get(listen, "/metrics");
    assert_eq!(status, 200);
    assert!(!classic.contains("# EOF"), "{classic}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), classic.as_bytes()).unwrap();
    let linted = promtool.wait_with_output().unwrap();
    let remarks =
        String::from_utf8_lossy(&linted.stdout).into_owned() + &String::from_utf8_lossy(&linted.stderr);
    assert!(linted.status.success() && remarks.trim().is_empty(), "promtool check metrics: {remarks}");

    // Every panel of the Grafana dashboard has data: its queries, with
    // Grafana's interval variables given values, return series here.
    let dashboard = dashboard_queries();
    assert!(dashboard.len() >= 15, "{dashboard:?}");
    for expr in &dashboard {
        let promql = expr.replace("$__rate_interval", "1m").replace("$__range", "5m");
        let deadline = Instant::now() + Duration::from_secs(30);
        while prometheus.query(&promql).is_empty() {
            assert!(Instant::now() < deadline, "dashboard query returns no series: {promql}");
            thread::sleep(Duration::from_millis(250));
        }
    }

    drop(hung);
    let finished = tracer.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
}
