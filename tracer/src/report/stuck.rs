//! The `"stuck"` section: sockets in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for
//! `--stuck-after` or longer (or since before tracing), by process, peer
//! and state, and the diagnoses they call for.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    diagnose::{Diagnosis, Severity},
    owner::RowOwner,
    timewait::{MAX_LISTED, other_label},
};
use crate::track::{Tracker, endpoint, stuck::count_by_state};

#[derive(Debug, Clone, Serialize)]
pub struct StuckSection {
    /// `--stuck-after`, seconds.
    pub after_s: f64,
    /// Stuck sockets by state (every stuck state, zeros included).
    pub by_state: BTreeMap<&'static str, u64>,
    /// By state, process and peer; largest first.
    pub rows: Vec<StuckOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StuckOut {
    #[serde(flatten)]
    pub owner: RowOwner,
    pub netns: u32,
    pub local: String,
    pub remote: String,
    pub state: &'static str,
    pub count: u64,
    /// The oldest one's time in the state, seconds (at least this much
    /// for those already in it when tracing began).
    pub oldest_s: f64,
    /// How many were in the state before tracing began.
    pub before_tracing: u64,
}

pub fn build(tracker: &Tracker) -> (StuckSection, Vec<Diagnosis>) {
    let stuck = tracker.stuck(tracker.now_ns, tracker.stuck_after_ns);
    let by_state = count_by_state(&stuck).iter().map(|(s, n)| (s.name(), *n)).collect();
    let mut rows: Vec<StuckOut> = stuck
        .into_iter()
        .map(|(key, row)| StuckOut {
            owner: row.owner.into(),
            netns: key.netns,
            local: endpoint(&key.local),
            remote: endpoint(&key.remote),
            state: key.state.name(),
            count: row.count,
            oldest_s: row.oldest_ns as f64 / 1e9,
            before_tracing: row.before_tracing,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| b.oldest_s.total_cmp(&a.oldest_s))
            .then_with(|| a.state.cmp(b.state))
            .then_with(|| a.remote.cmp(&b.remote))
    });
    let diagnoses = diagnoses(&rows, tracker.stuck_after_ns as f64 / 1e9);
    if rows.len() > MAX_LISTED {
        let rest: Vec<StuckOut> = rows.drain(MAX_LISTED..).collect();
        let count = rest.iter().map(|r| r.count).sum();
        rows.push(StuckOut {
            owner: RowOwner::Label(other_label(rest.len() as u64, false, "rows")),
            netns: 0,
            local: String::new(),
            remote: String::new(),
            state: "-",
            count,
            oldest_s: rest.iter().map(|r| r.oldest_s).fold(0.0, f64::max),
            before_tracing: rest.iter().map(|r| r.before_tracing).sum(),
        });
    }
    (StuckSection { after_s: tracker.stuck_after_ns as f64 / 1e9, by_state, rows }, diagnoses)
}

/// A process's sockets in one stuck state: (state, pid, name).
type GroupKey<'a> = (&'a str, Option<u32>, String);

/// Their count, oldest age (s) and peers.
#[derive(Default)]
struct Group {
    count: u64,
    oldest_s: f64,
    peers: Vec<String>,
}

/// One diagnosis per process and stuck state (the rows' peers summed),
/// largest first; at most ten.
pub fn diagnoses(rows: &[StuckOut], after_s: f64) -> Vec<Diagnosis> {
    let mut groups: BTreeMap<GroupKey<'_>, Group> = BTreeMap::new();
    for r in rows {
        let who = r.owner.comm().map_or_else(|| "an unknown process".to_string(), |c| c.into_owned());
        let g = groups.entry((r.state, r.owner.pid(), who)).or_default();
        g.count += r.count;
        g.oldest_s = g.oldest_s.max(r.oldest_s);
        g.peers.push(r.remote.clone());
    }
    let mut out: Vec<(u64, Diagnosis)> = groups
        .into_iter()
        .map(|((state, pid, comm), Group { count, oldest_s: oldest, peers })| {
            let process = match pid {
                Some(pid) => format!("{comm} (pid {pid})"),
                None => comm,
            };
            let peers = if peers.len() > 3 {
                format!("{} and {} more peers", peers[..3].join(", "), peers.len() - 3)
            } else {
                peers.join(", ")
            };
            (count, diagnosis(state, &process, count, oldest, &peers, after_s))
        })
        .collect();
    out.sort_by_key(|(count, _)| std::cmp::Reverse(*count));
    out.into_iter().take(10).map(|(_, d)| d).collect()
}

fn diagnosis(state: &str, process: &str, count: u64, oldest_s: f64, peers: &str, after_s: f64) -> Diagnosis {
    let (severity, meaning, what) = match state {
        "CLOSE_WAIT" => (
            Severity::Warning,
            "the peer closed these connections and the application never called close(): each holds a descriptor and its buffers until the process exits (the kernel never times CLOSE_WAIT out)",
            "find the code path that returns on EOF or an error without closing the socket (`ss -tanp state close-wait` names the process, `ls -l /proc/PID/fd` shows the descriptors growing); close on every path, or set a read deadline so that a dead peer is noticed",
        ),
        "FIN_WAIT2" => (
            Severity::Info,
            "this side shut down its sending side and waits for the peer's FIN; a half-closed socket (shutdown() without close()) is not bound by tcp_fin_timeout",
            "look at the peer's application (it holds its side open); close() here instead of shutdown() lets tcp_fin_timeout (net.ipv4.tcp_fin_timeout) end it",
        ),
        _ => (
            Severity::Info,
            "this side closed after the peer and its FIN is not acknowledged: the peer is gone or the path drops it; it ends after the FIN's retransmissions",
            "check the path to the peer (retransmits toward it, firewalls dropping late segments)",
        ),
    };
    Diagnosis {
        severity,
        summary: format!("{count} sockets of {process} stuck in {state} (oldest {oldest_s:.0} s)"),
        detail: format!(
            "{count} sockets in {state} for {after_s:.0} s or more toward {peers}: {meaning}.\nWhat to do: {what}."
        ),
    }
}
