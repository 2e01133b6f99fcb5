//! The `"retransmits"` section.

use serde::Serialize;

use crate::{
    stats::Summary,
    track::{
        Tracker,
        retrans::{Causes, ConnRow, LISTED, Segments},
    },
};

#[derive(Debug, Clone, Serialize)]
pub struct ConnOut {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// For the text report: escaped from the raw bytes.
    #[serde(skip)]
    pub comm_text: Option<String>,
    pub netns: u32,
    pub local: String,
    pub remote: String,
    pub retransmits: u32,
    pub state: &'static str,
}

impl From<&ConnRow> for ConnOut {
    fn from(r: &ConnRow) -> Self {
        Self {
            pid: r.pid,
            comm: r.comm.clone(),
            comm_text: r.comm_text.clone(),
            netns: r.netns,
            local: r.local.to_string(),
            remote: r.remote.to_string(),
            retransmits: r.retransmits,
            state: r.state.name(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RetransSection {
    pub segments: Segments,
    /// Why segments were resent: retransmission timeout, fast recovery, other.
    pub causes: Causes,
    /// Connections killed by retransmission timeout (ETIMEDOUT).
    pub timeouts: u64,
    /// Retransmits per connection opened and closed while tracing, zeros included.
    pub per_connection: Summary,
    /// Connections with the most retransmits (closed or still open).
    pub top: Vec<ConnOut>,
    /// Connections killed by retransmission timeout.
    pub killed: Vec<ConnOut>,
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
        timeouts: r.timeouts,
        per_connection: r.per_connection.summary(),
        top: top.iter().map(ConnOut::from).collect(),
        killed: r.killed.iter().map(ConnOut::from).collect(),
    }
}
