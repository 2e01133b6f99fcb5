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

/// Event accounting. At the end of a run `seen == received + lost` holds
/// exactly (the programs are detached before the last drain), and
/// `received == decoded + decode_errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Events the kernel programs produced.
    pub seen: u64,
    /// Events lost because the ring buffer was full (counted in the kernel).
    pub lost: u64,
    /// Events read by userspace.
    pub received: u64,
    /// Records that passed validation and went on to the tracker.
    pub decoded: u64,
    /// Records userspace could not decode (counted, not used).
    pub decode_errors: u64,
    /// Kernel reads that failed while filling an event (fields left zero).
    pub read_errors: u64,
    /// Numbers built on these events may undercount (something was lost or
    /// undecodable): the text report says so in a WARNING line.
    pub lossy: bool,
}

impl EventCounts {
    pub fn new(kernel: &KernelCounters, user: &UserCounters) -> Self {
        let (received, decode_errors) = (user.received(), user.decode_errors());
        let mut counts = Self {
            seen: kernel.seen,
            lost: kernel.lost,
            received,
            // Every record read is either decoded or counted as undecodable
            // (collect.rs), so the difference is what the tracker got.
            decoded: received.saturating_sub(decode_errors),
            decode_errors,
            read_errors: kernel.read_errors,
            lossy: false,
        };
        counts.lossy = counts.is_lossy();
        counts
    }

    /// Whether numbers built on these events may be incomplete.
    pub fn is_lossy(&self) -> bool {
        self.lost > 0 || self.decode_errors > 0
    }
}

/// One capped table of the tracker: how full it is and what did not fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableUse {
    pub table: &'static str,
    pub cap: usize,
    /// Entries at the end of the run.
    pub used: usize,
    /// Records dropped at the cap (oldest first), or for report rows the
    /// distinct keys that got no row of their own (summed in an `(other)` row).
    pub evicted: u64,
    /// `evicted` is a lower bound (report rows whose overflowed keys outgrew
    /// the memory kept to count them).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub at_least: bool,
}

impl TableUse {
    /// Human name for the text report.
    pub fn title(&self) -> &'static str {
        match self.table {
            "sockets" => "socket records",
            "time_wait" => "TIME_WAIT records",
            "requests" => "SYN_RECV request records",
            "handshake_children" => "accepted sockets awaiting their request",
            "filtered_out" => "sockets left out by --pid/--comm/--cgroup",
            "active_closers" => "active-closer rows (process x peer)",
            "connect_errors" => "connect() error rows",
            "time_wait_destinations" => "TIME_WAIT destination rows",
            "listeners" => "listener rows",
            other => other,
        }
    }
}

/// Every table with its cap, use and evictions.
pub fn table_use(tracker: &Tracker) -> Vec<TableUse> {
    let limits = tracker.limits();
    let record = |table, cap, used, evicted| TableUse { table, cap, used, evicted, at_least: false };
    let (ignored, ignored_evicted) = tracker.ignored_usage();
    let tw = &tracker.timewait;
    let sr = &tracker.synrecv;
    let mut tables = vec![
        record("sockets", limits.max_sockets, tracker.live(), tracker.counters.evicted),
        record("time_wait", tw.max_records(), tw.current() as usize, tw.evicted),
        record("requests", sr.max_records(), sr.current(), sr.evicted),
        record("handshake_children", sr.max_records(), sr.children_waiting(), sr.children_evicted),
        record("filtered_out", limits.max_time_wait + limits.max_requests, ignored, ignored_evicted),
    ];
    let rows = |table, cap: usize, used: usize, evicted: u64, at_least: bool| TableUse {
        table,
        cap,
        used,
        evicted,
        at_least,
    };
    let c = &tracker.closers;
    tables.push(rows("active_closers", c.cap(), c.len(), c.overflowed_keys(), c.overflow_count_saturated()));
    let e = &tracker.connect_errors;
    tables.push(rows("connect_errors", e.cap(), e.len(), e.overflowed_keys(), e.overflow_count_saturated()));
    let d = &tw.destinations;
    tables.push(rows(
        "time_wait_destinations",
        d.cap(),
        d.len(),
        d.overflowed_keys(),
        d.overflow_count_saturated(),
    ));
    let l = &sr.listeners;
    tables.push(rows("listeners", l.cap(), l.len(), l.overflowed_keys(), l.overflow_count_saturated()));
    tables
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
    /// For the text report: the name escaped from its raw bytes (`\x1b`,
    /// `\xff`), as the event stream shows it.
    #[serde(skip)]
    pub comm_text: Option<String>,
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
    /// Every capped table: cap, use at the end, evictions.
    pub limits: Vec<TableUse>,
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
                comm_text: key.owner.map(|o| o.comm.to_string()),
                cgroup: key.owner.and_then(|o: Owner| cgroups.path(o.cgroup)),
                netns: key.netns,
                local: endpoint(&key.local),
                remote: endpoint(&key.remote),
                closes: row.closes,
                time_wait: row.time_wait,
            })
            .collect();
        active_closers.sort_by(|a, b| {
            b.closes
                .cmp(&a.closes)
                .then_with(|| a.comm.cmp(&b.comm))
                .then_with(|| a.remote.cmp(&b.remote))
                .then_with(|| a.pid.cmp(&b.pid))
                .then_with(|| a.local.cmp(&b.local))
        });
        // Processes x peers beyond the cap: one last row.
        let overflow = tracker.closers.overflow();
        if overflow.closes > 0 {
            let label = timewait::other_label(
                tracker.closers.overflowed_keys(),
                tracker.closers.overflow_count_saturated(),
                "rows",
            );
            active_closers.push(CloserOut {
                pid: None,
                comm: Some(label.clone()),
                comm_text: Some(label),
                cgroup: None,
                netns: 0,
                local: String::new(),
                remote: String::new(),
                closes: overflow.closes,
                time_wait: overflow.time_wait,
            });
        }

        Self {
            kind: "report",
            duration_s,
            events,
            states,
            connections: tracker.counters,
            active_closers,
            anomalies: tracker.anomalies,
            live_sockets: tracker.live(),
            limits: table_use(tracker),
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
