//! The final report: one value built from the tracker's state, rendered as
//! text for people ([`text`]) or as one JSON line for machines (`serde`).

pub mod retrans;
pub mod synrecv;
pub mod text;
pub mod timewait;

use serde::{Serialize, Serializer, ser::SerializeMap};

use self::{
    retrans::RetransSection,
    synrecv::SynRecvSection,
    timewait::{ConnectError, TimeWaitSection},
};
use crate::{
    cgroup::CgroupNames,
    collect::{KernelCounters, UserCounters},
    diagnose::Diagnosis,
    event::Owner,
    netns::NetnsRegistry,
    stats::{Histo, Summary},
    track::{Anomalies, ConnCounters, DWELL_STATES, Tracker, endpoint},
};

/// What building a report needs from the host besides the tracker.
pub struct ReportContext {
    pub cgroups: CgroupNames,
    /// Namespace facts at start (for counter deltas) and now.
    pub netns: NetnsRegistry,
}

/// Event accounting: `seen == received + lost` when nothing is left unread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Events the kernel programs produced.
    pub seen: u64,
    /// Events lost because the ring buffer was full (counted in the kernel).
    pub lost: u64,
    /// Events read by userspace.
    pub received: u64,
    /// Records userspace could not decode (counted, not used).
    pub decode_errors: u64,
    /// Kernel reads that failed while filling an event (fields left zero).
    pub read_errors: u64,
}

impl EventCounts {
    pub fn new(kernel: &KernelCounters, user: &UserCounters) -> Self {
        Self {
            seen: kernel.seen,
            lost: kernel.lost,
            received: user.received(),
            decode_errors: user.decode_errors(),
            read_errors: kernel.read_errors,
        }
    }

    /// Whether numbers built on these events may be incomplete.
    pub fn lossy(&self) -> bool {
        self.lost > 0 || self.decode_errors > 0
    }
}

/// Dwell summaries keyed by state name, in lifecycle order (a JSON object).
#[derive(Debug, Clone, Default)]
pub struct StateTable(pub Vec<(&'static str, Summary)>);

impl Serialize for StateTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, summary) in &self.0 {
            map.serialize_entry(name, summary)?;
        }
        map.end()
    }
}

/// One `active_closers` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloserOut {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub netns: u32,
    pub local: String,
    pub remote: String,
    pub closes: u64,
    pub time_wait: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `"report"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub duration_s: f64,
    pub events: EventCounts,
    /// Dwell per state and whole-connection lifetime, microseconds.
    pub states: StateTable,
    pub connections: ConnCounters,
    /// Processes that closed connections first, largest first.
    pub active_closers: Vec<CloserOut>,
    pub anomalies: Anomalies,
    /// Socket records alive at the end of the run.
    pub live_sockets: usize,
    pub syn_recv: SynRecvSection,
    pub time_wait: TimeWaitSection,
    pub retransmits: RetransSection,
    /// connect() failures by process, destination and errno.
    pub connect_errors: Vec<ConnectError>,
    /// What the numbers mean and what to do, most severe first.
    pub diagnoses: Vec<Diagnosis>,
    /// Capabilities unavailable on this host and other caveats.
    pub notes: Vec<String>,
    /// The histograms behind `states`, for the text rendering.
    #[serde(skip)]
    pub histograms: Vec<(&'static str, Histo)>,
}

/// Name of the whole-connection histogram in `states`.
pub const LIFETIME: &str = "lifetime";

impl Report {
    pub fn build(
        duration_s: f64,
        events: EventCounts,
        notes: Vec<String>,
        tracker: &mut Tracker,
        ctx: &mut ReportContext,
    ) -> Self {
        let (time_wait, diagnoses) = timewait::build(tracker, ctx);
        let time_wait_lifetime = tracker.timewait.lifetime.clone();
        let connect_errors = timewait::connect_errors(tracker);
        let syn_recv = synrecv::build(tracker, ctx);
        let retransmits = retrans::build(tracker);
        let syn_recv_dwell = tracker.synrecv.dwell.clone();
        let cgroups = &mut ctx.cgroups;
        let mut histograms: Vec<(&'static str, Histo)> =
            DWELL_STATES.iter().zip(&tracker.dwell).map(|((_, name), h)| (*name, h.clone())).collect();
        histograms.push((LIFETIME, tracker.lifetime.clone()));
        let states = StateTable(histograms.iter().map(|(name, h)| (*name, h.summary())).collect());
        histograms.push(("SYN_RECV (request socket: SYN to handshake)", syn_recv_dwell));
        histograms.push(("TIME_WAIT lifetime", time_wait_lifetime));

        let mut active_closers: Vec<CloserOut> = tracker
            .closers
            .iter()
            .map(|(key, row)| CloserOut {
                pid: key.owner.map(|o| o.pid),
                comm: key.owner.map(|o| o.comm.to_lossy_string()),
                cgroup: key.owner.and_then(|o: Owner| cgroups.path(o.cgroup)),
                netns: key.netns,
                local: endpoint(&key.local),
                remote: endpoint(&key.remote),
                closes: row.closes,
                time_wait: row.time_wait,
            })
            .collect();
        let overflow = tracker.closers.overflow();
        if overflow.closes > 0 {
            active_closers.push(CloserOut {
                pid: None,
                comm: Some(format!("(other: {} more rows)", tracker.closers.overflowed_keys())),
                cgroup: None,
                netns: 0,
                local: String::new(),
                remote: String::new(),
                closes: overflow.closes,
                time_wait: overflow.time_wait,
            });
        }
        active_closers.sort_by(|a, b| {
            b.closes
                .cmp(&a.closes)
                .then_with(|| a.comm.cmp(&b.comm))
                .then_with(|| a.remote.cmp(&b.remote))
                .then_with(|| a.pid.cmp(&b.pid))
                .then_with(|| a.local.cmp(&b.local))
        });

        Self {
            kind: "report",
            duration_s,
            events,
            states,
            connections: tracker.counters,
            active_closers,
            anomalies: tracker.anomalies,
            live_sockets: tracker.live(),
            syn_recv,
            time_wait,
            retransmits,
            connect_errors,
            diagnoses,
            notes,
            histograms,
        }
    }

    pub fn to_json_line(&self) -> String {
        // Serializing plain data cannot fail; keep the line even if it did.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"type\":\"report\",\"error\":\"{e}\"}}"))
    }
}
