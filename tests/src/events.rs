//! tcptrace's JSON event lines and the test peers' `conn ...` lines, parsed.

use std::net::SocketAddr;

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

/// One `"type":"event"` line of `tcptrace run --format json --events`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Ev {
    #[serde(default)]
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
    /// The whole line, for fields the struct does not name.
    #[serde(skip)]
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

/// The events of the socket life that `at` (one of `events`) belongs to:
/// those with its namespace and cookie, from just after the `-> CLOSE`
/// before it through its own next `-> CLOSE`, in order. A cookie names one
/// socket at a time: a socket that connects again keeps it, and on kernels
/// whose tracing programs have no socket cookies (5.10) it is the socket's
/// address, masked, which a later socket takes over once the first is freed.
pub fn socket_life<'a>(events: &'a [Ev], at: &Ev) -> Vec<&'a Ev> {
    let mut life = Vec::new();
    let mut found = false;
    for e in events.iter().filter(|e| e.netns == at.netns && e.cookie == at.cookie) {
        life.push(e);
        found |= std::ptr::eq(e, at);
        if e.new.as_deref() == Some("CLOSE") {
            if found {
                break;
            }
            life.clear();
        }
    }
    assert!(found, "socket_life: the event is not one of the events given");
    life
}

/// Socket lives by the kernel address of the socket (the `sock` field, the
/// same for every tcptrace process, unlike a cookie where the kernel has
/// none: see [`socket_life`]) and the life's number at that address, from 0.
pub fn lives_by_address(events: &[Ev]) -> std::collections::BTreeMap<(String, usize), Vec<&Ev>> {
    let mut lives = std::collections::BTreeMap::new();
    let mut count: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut open: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.event == "state") {
        let sock = e.raw["sock"].as_str().unwrap_or_else(|| panic!("no sock in {}", e.raw)).to_string();
        let n = *open.entry(sock.clone()).or_insert_with(|| {
            let next = count.entry(sock.clone()).or_default();
            *next += 1;
            *next - 1
        });
        lives.entry((sock.clone(), n)).or_insert_with(Vec::new).push(e);
        if e.new.as_deref() == Some("CLOSE") {
            open.remove(&sock);
        }
    }
    lives
}

pub fn parse_events(lines: &[String]) -> Vec<Ev> {
    typed_lines(lines, "event", |ev: &mut Ev, raw| ev.raw = raw)
}

/// The stdout lines that are JSON objects of `"type": kind`, as `T`; `keep_raw`
/// stores the whole object in it. Panics on such a line that is not a `T`.
fn typed_lines<T: DeserializeOwned>(lines: &[String], kind: &str, keep_raw: fn(&mut T, Value)) -> Vec<T> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == kind)
        .map(|v| {
            let mut typed = T::deserialize(&v).unwrap_or_else(|e| panic!("{kind} line {v}: {e}"));
            keep_raw(&mut typed, v);
            typed
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LifecycleLine {
    #[serde(default)]
    pub event: String,
    pub outcome: Option<String>,
    pub duration_us: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u64,
    pub pid: Option<u64>,
    pub comm: Option<String>,
    /// The whole line, for fields the struct does not name.
    #[serde(skip)]
    pub raw: Value,
}

pub fn parse_lifecycle(lines: &[String]) -> Vec<LifecycleLine> {
    typed_lines(lines, "lifecycle", |line: &mut LifecycleLine, raw| line.raw = raw)
}
