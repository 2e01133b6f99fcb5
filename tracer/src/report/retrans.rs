//! The `"retransmits"` section.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    report::{diagnose, owner::RowOwner},
    stats::Summary,
    track::{
        Tracker, endpoint,
        retrans::{Causes, ConnRow, LISTED, Segments, StallCause, StallHistos, StallRow},
        timewait::DestKey,
    },
};

/// Stall summaries (µs) by cause, the causes with none left out.
pub type StallsOut = BTreeMap<&'static str, Summary>;

fn stalls_out(h: &StallHistos) -> StallsOut {
    StallCause::ALL
        .iter()
        .filter(|c| !h.get(**c).is_empty())
        .map(|c| (c.name(), h.get(*c).summary()))
        .collect()
}

/// A destination or a process with its retransmissions' stalls.
#[derive(Debug, Clone, Serialize)]
pub struct StallRowOut {
    #[serde(flatten)]
    pub owner: RowOwner,
    /// Destination rows: the namespace and the peer (server side: its
    /// address, the ephemeral port left out); null in process rows.
    pub netns: Option<u32>,
    pub remote: Option<String>,
    /// All causes together, µs.
    pub stall: Summary,
    pub by_cause: StallsOut,
    /// Most RTO backoffs in a row seen on a timeout retransmission (the
    /// kernel's `icsk_backoff` before that expiry's own increment).
    pub max_backoff: u8,
}

impl StallRowOut {
    fn new(owner: RowOwner, dest: Option<&DestKey>, row: &StallRow) -> Self {
        Self {
            owner,
            netns: dest.map(|d| d.netns),
            remote: dest.map(|d| endpoint(&d.remote)),
            stall: row.stalls.all().summary(),
            by_cause: stalls_out(&row.stalls),
            max_backoff: row.max_backoff,
        }
    }
}

/// The rows with the largest p99 stall first (then the most stalls).
fn worst(mut rows: Vec<StallRowOut>) -> Vec<StallRowOut> {
    rows.sort_by(|a, b| {
        b.stall.p99.cmp(&a.stall.p99).then(b.stall.count.cmp(&a.stall.count)).then(a.remote.cmp(&b.remote))
    });
    rows.truncate(LISTED);
    rows
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnOut {
    #[serde(flatten)]
    pub owner: RowOwner,
    pub netns: u32,
    pub local: String,
    pub remote: String,
    pub retransmits: u32,
    pub state: &'static str,
    /// Its retransmissions' stalls: sum and largest, µs.
    pub stall_total_us: u64,
    pub stall_max_us: u64,
}

impl From<&ConnRow> for ConnOut {
    fn from(r: &ConnRow) -> Self {
        Self {
            owner: r.owner.into(),
            netns: r.netns,
            local: r.local.to_string(),
            remote: r.remote.to_string(),
            retransmits: r.retransmits,
            state: r.state.name(),
            stall_total_us: r.stall_total_us,
            stall_max_us: r.stall_max_us,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RetransSection {
    pub segments: Segments,
    /// Why segments were resent: retransmission timeout, fast recovery, other.
    pub causes: Causes,
    /// Segments the kernel counted as retransmitted (`tcpi_total_retrans` of
    /// the connections seen at a retransmit or at their close) that no event
    /// showed: in neither `segments` nor `causes` (docs/RELIABILITY.md).
    pub unseen: u64,
    /// Connections killed by retransmission timeout (ETIMEDOUT).
    pub timeouts: u64,
    /// Retransmits per connection opened and closed while tracing, zeros included.
    pub per_connection: Summary,
    /// Connections with the most retransmits (closed or still open).
    pub top: Vec<ConnOut>,
    /// Connections killed by retransmission timeout.
    pub killed: Vec<ConnOut>,
    /// How long each retransmission stalled its connection, µs, by cause
    /// (docs/ARCHITECTURE.md, "Retransmit stalls").
    pub stalls: StallsOut,
    /// Destinations and processes with the worst stalls (p99 first).
    pub stall_destinations: Vec<StallRowOut>,
    pub stall_processes: Vec<StallRowOut>,
    /// Destinations or processes whose stalls were not kept (row cap).
    pub stall_rows_dropped: u64,
}

/// Destinations whose retransmissions stalled them long (diagnose.rs).
pub fn diagnoses(section: &RetransSection) -> Vec<diagnose::Diagnosis> {
    let rows: Vec<diagnose::StallFigures> = section
        .stall_destinations
        .iter()
        .map(|d| diagnose::StallFigures {
            netns: d.netns.unwrap_or(0),
            remote: d.remote.clone().unwrap_or_default(),
            pid: d.owner.pid(),
            comm: d.owner.comm_text().unwrap_or_default(),
            count: d.stall.count,
            p99_us: d.stall.p99,
            max_us: d.stall.max,
            timeouts: d.by_cause.get("timeout").map_or(0, |s| s.count),
            max_backoff: d.max_backoff,
        })
        .collect();
    diagnose::retransmit_stalls(&rows)
}

pub fn build(tracker: &Tracker) -> RetransSection {
    let r = &tracker.retrans;
    let mut top = r.top();
    top.extend(tracker.live_retransmitters());
    top.sort_by(|a, b| b.retransmits.cmp(&a.retransmits).then_with(|| a.local.cmp(&b.local)));
    top.truncate(LISTED);
    RetransSection {
        segments: r.segments,
        causes: r.causes,
        unseen: r.unseen,
        timeouts: r.timeouts,
        per_connection: r.per_connection.summary(),
        top: top.iter().map(ConnOut::from).collect(),
        killed: r.killed.iter().map(ConnOut::from).collect(),
        stalls: stalls_out(&r.stalls),
        stall_destinations: worst(
            r.stall_dests.iter().map(|(k, row)| StallRowOut::new(row.owner.into(), Some(k), row)).collect(),
        ),
        stall_processes: worst(
            r.stall_procs.values().map(|row| StallRowOut::new(row.owner.into(), None, row)).collect(),
        ),
        stall_rows_dropped: r.stall_rows_dropped,
    }
}
