//! Memory at scale: tcptrace's resident memory per tracked live socket (with
//! 100,000+ concurrent connections) and per TIME_WAIT record (100,000+
//! TIME_WAIT sockets), each in a fresh tcptrace, measured as the growth of
//! VmRSS over the idle process divided by what the tracker holds.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use serde_json::Value;
use tcptrace_tests::netns::Pair;

use super::{
    proc::{Lines, Tcptrace, rss_bytes},
    storm::Tools,
};

#[derive(Debug, Clone)]
pub struct Scale {
    /// What was held: "live sockets" or "TIME_WAIT records".
    pub what: &'static str,
    pub count: u64,
    pub idle_rss: u64,
    pub loaded_rss: u64,
}

impl Scale {
    pub fn bytes_each(&self) -> f64 {
        self.loaded_rss.saturating_sub(self.idle_rss) as f64 / self.count.max(1) as f64
    }
}

/// Two namespaces, the client with every port available, two holding or
/// EOF-waiting servers (two service ports: more than 64k tuples).
fn arena(tools: &Tools, server_mode: &str) -> Result<(Pair, Vec<Lines>, String)> {
    let pair = Pair::new("mem");
    pair.a.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
    pair.b.sysctl("net.core.somaxconn", "65535");
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for port in [9001, 9002] {
        let target = SocketAddr::new(pair.b4.into(), port);
        let mut server = Lines::spawn({
            let mut c = pair.b.command(&tools.ttstorm);
            c.args(["serve", "--listen", &target.to_string(), server_mode]);
            c
        })?;
        server.wait_for(Duration::from_secs(10), "server", |l| l.starts_with("listening"))?;
        servers.push(server);
        targets.push(target.to_string());
    }
    Ok((pair, servers, targets.join(",")))
}

fn tracer(tools: &Tools, pair: &Pair) -> Result<(Tcptrace, u64)> {
    let (a, b) = (pair.a.inode.to_string(), pair.b.inode.to_string());
    let mut t = Tcptrace::start(
        &tools.tcptrace,
        &["run", "--format", "json", "--interval", "1s", "--netns", &a, "--netns", &b],
    )?;
    // Idle baseline once the first summary is out (everything allocated at start is in).
    interval(&mut t, Duration::from_secs(10), |_| true)?;
    let idle = rss_bytes(t.0.pid())?;
    Ok((t, idle))
}

/// The first `"type":"interval"` line satisfying `pred`.
fn interval(t: &mut Tcptrace, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    let line = t.0.wait_for(timeout, "interval summary", |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["type"] == "interval" && pred(&v))
    })?;
    serde_json::from_str(&line).context("interval line")
}

pub fn live_sockets(tools: &Tools, connections: u64) -> Result<Scale> {
    let (pair, _servers, targets) = arena(tools, "--hold")?;
    let (mut t, idle_rss) = tracer(tools, &pair)?;
    let mut client = Lines::spawn({
        let mut c = pair.a.command(&tools.ttstorm);
        c.args(["open", "--connect", &targets, "--count", &connections.to_string()]);
        c
    })?;
    client.wait_for(Duration::from_secs(600), "connections open", |l| l.starts_with("open "))?;
    // Both ends of every connection are tracked.
    let want = 2 * connections;
    let summary = interval(&mut t, Duration::from_secs(300), |v| v["live_sockets"].as_u64() >= Some(want))?;
    let loaded_rss = rss_bytes(t.0.pid())?;
    let count = summary["live_sockets"].as_u64().ok_or_else(|| anyhow!("no live_sockets"))?;
    t.stop()?;
    Ok(Scale { what: "live sockets", count, idle_rss, loaded_rss })
}

pub fn time_wait(tools: &Tools, connections: u64) -> Result<Scale> {
    let (pair, _servers, targets) = arena(tools, "--wait-eof")?;
    let (mut t, idle_rss) = tracer(tools, &pair)?;
    // Connect and close at once, client first: one TIME_WAIT each, never many alive.
    let mut client = Lines::spawn({
        let mut c = pair.a.command(&tools.ttstorm);
        c.args(["storm", "--close-first", "--connect", &targets, "--count", &connections.to_string()]);
        c
    })?;
    client.wait_for(Duration::from_secs(600), "storm done", |l| l.starts_with("connections "))?;
    let want = connections * 95 / 100;
    let summary = interval(&mut t, Duration::from_secs(120), |v| {
        v["time_wait"].as_u64() >= Some(want) && v["live_sockets"].as_u64() < Some(1000)
    })?;
    let loaded_rss = rss_bytes(t.0.pid())?;
    let count = summary["time_wait"].as_u64().ok_or_else(|| anyhow!("no time_wait"))?;
    t.stop()?;
    Ok(Scale { what: "TIME_WAIT records", count, idle_rss, loaded_rss })
}
