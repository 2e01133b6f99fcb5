//! The `"connection_ends"` section: why connections ended, overall, by
//! the state a peer's reset hit, and by process and peer.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{owner::RowOwner, timewait::beyond_listing};
use crate::track::{Tracker, end::EndReason, endpoint};

#[derive(Debug, Clone, Serialize)]
pub struct EndsSection {
    /// Closed connections by reason: every reason, zeros included, so
    /// that the keys are stable.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Orderly closes and failures (every reason but the three orderly ones).
    pub orderly: u64,
    pub failed: u64,
    /// Resets by the peer by the state they hit (`ESTABLISHED`, ...).
    pub reset_by_peer_in: BTreeMap<&'static str, u64>,
    /// Connections open at the end of the run (no end yet).
    pub still_open: u64,
    /// By process, peer and reason: failures first, then by count.
    pub rows: Vec<EndRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndRow {
    #[serde(flatten)]
    pub owner: RowOwner,
    pub netns: u32,
    pub local: String,
    pub remote: String,
    pub reason: EndReason,
    pub count: u64,
}

pub fn build(tracker: &Tracker) -> EndsSection {
    let ends = &tracker.ends;
    let by_reason = ends.iter().map(|(r, n)| (r.name(), n)).collect();
    let failed = ends.iter().filter(|(r, _)| r.is_failure()).map(|(_, n)| n).sum();
    let orderly = ends.iter().filter(|(r, _)| !r.is_failure()).map(|(_, n)| n).sum();
    let reset_by_peer_in = ends.reset_by_peer_states().map(|(s, n)| (s.name(), n)).collect();
    let mut rows: Vec<EndRow> = tracker
        .end_rows
        .iter()
        .map(|(key, count)| EndRow {
            owner: key.owner.into(),
            netns: key.netns,
            local: endpoint(&key.local),
            remote: endpoint(&key.remote),
            reason: key.reason,
            count: *count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.reason
            .is_failure()
            .cmp(&a.reason.is_failure())
            .then_with(|| b.count.cmp(&a.count))
            .then_with(|| a.reason.cmp(&b.reason))
            .then_with(|| a.remote.cmp(&b.remote))
            .then_with(|| a.owner.pid().cmp(&b.owner.pid()))
            .then_with(|| a.local.cmp(&b.local))
    });
    // Rows beyond the cap (in memory) and beyond the listing limit: one
    // last row, so that every end stays counted.
    if let Some((label, count)) = beyond_listing(&mut rows, |r| r.count, &tracker.end_rows) {
        rows.push(EndRow {
            owner: RowOwner::Label(label),
            netns: 0,
            local: String::new(),
            remote: String::new(),
            reason: EndReason::Unknown,
            count,
        });
    }
    EndsSection { by_reason, orderly, failed, reset_by_peer_in, still_open: tracker.still_open(), rows }
}
