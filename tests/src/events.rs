//! tcptrace's JSON event lines and the test peers' `conn ...` lines, parsed.

use std::net::SocketAddr;

use serde_json::Value;

/// One `"type":"event"` line of `tcptrace run --format json --events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub event: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u64,
    pub cookie: u64,
    pub ts_ns: u64,
    pub pid: Option<u64>,
    pub comm: Option<String>,
    pub raw: Value,
}

impl Ev {
    pub fn transition(&self) -> Option<(String, String)> {
        Some((self.old.clone()?, self.new.clone()?))
    }

    pub fn is(&self, old: &str, new: &str) -> bool {
        self.old.as_deref() == Some(old) && self.new.as_deref() == Some(new)
    }
}

pub fn parse_events(lines: &[String]) -> Vec<Ev> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "event")
        .map(|v| Ev {
            event: v["event"].as_str().unwrap_or_default().to_string(),
            old: v["old"].as_str().map(str::to_string),
            new: v["new"].as_str().map(str::to_string),
            local: v["local"].as_str().and_then(|s| s.parse().ok()).expect("local address"),
            remote: v["remote"].as_str().and_then(|s| s.parse().ok()).expect("remote address"),
            netns: v["netns"].as_u64().expect("netns"),
            cookie: v["cookie"].as_u64().expect("cookie"),
            ts_ns: v["ts_ns"].as_u64().expect("ts_ns"),
            pid: v["pid"].as_u64(),
            comm: v["comm"].as_str().map(str::to_string),
            raw: v,
        })
        .collect()
}

/// A `conn <local> <remote> <mode> retrans=<n>` line from ttclient/ttserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLine {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub mode: String,
    pub retrans: u32,
}

pub fn parse_conns(lines: &[String]) -> Vec<ConnLine> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "conn" {
                return None;
            }
            Some(ConnLine {
                local: w.next()?.parse().ok()?,
                remote: w.next()?.parse().ok()?,
                mode: w.next()?.to_string(),
                retrans: w.next()?.strip_prefix("retrans=")?.parse().ok()?,
            })
        })
        .collect()
}

pub fn stdout_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// One `"type":"lifecycle"` line (derived by the tracker).
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleLine {
    pub event: String,
    pub outcome: Option<String>,
    pub duration_us: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u64,
    pub pid: Option<u64>,
    pub comm: Option<String>,
    pub raw: Value,
}

pub fn parse_lifecycle(lines: &[String]) -> Vec<LifecycleLine> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "lifecycle")
        .map(|v| LifecycleLine {
            event: v["event"].as_str().unwrap_or_default().to_string(),
            outcome: v["outcome"].as_str().map(str::to_string),
            duration_us: v["duration_us"].as_u64(),
            local: v["local"].as_str().and_then(|s| s.parse().ok()).expect("local address"),
            remote: v["remote"].as_str().and_then(|s| s.parse().ok()).expect("remote address"),
            netns: v["netns"].as_u64().expect("netns"),
            pid: v["pid"].as_u64(),
            comm: v["comm"].as_str().map(str::to_string),
            raw: v,
        })
        .collect()
}
