//! The final report: one value built from the tracker's state, rendered as
//! text for people ([`text`]) or as one JSON line for machines (`serde`).

pub mod accept;
pub mod diagnose;
pub mod drops;
pub mod ends;
pub mod owner;
pub mod retrans;
pub mod stuck;
pub mod synrecv;
pub mod text;
pub mod timewait;

use std::collections::BTreeMap;

use serde::{Serialize, Serializer, ser::SerializeMap};

use self::{
    owner::RowOwner,
    retrans::RetransSection,
    synrecv::SynRecvSection,
    timewait::{ConnectError, TimeWaitSection},
};
use crate::{
    event::Owner,
    host::netns::NetnsRegistry,
    pipeline::collect::{KernelCounters, UserCounters},
    report::diagnose::Diagnosis,
    stats::{Histo, Summary},
    track::{Anomalies, ConnCounters, DWELL_STATES, Tracker, endpoint, retrans::StallCause},
    workload::resolve::Workloads,
};

/// What building a report needs from the host besides the tracker.
pub struct ReportContext {
    /// Cgroup ids to paths and workloads (units, containers, pods).
    pub workloads: Workloads,
    /// Namespace facts at start (for counter deltas) and now.
    pub netns: NetnsRegistry,
}

/// Event accounting. At the end of a run `seen == received + lost` holds
/// exactly (the programs are detached before the last drain), and
/// `received == decoded + decode_errors` (all three counted separately by
/// the collector, so the integration tests check it). Runs the kernel
/// skipped (`recursion_misses`) never reached a program, so they are outside
/// both equations: lost events of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Records the kernel programs produced: one per event in the full
    /// stream (the default), in summary mode (`--summaries`) one per
    /// socket's summary or request's bundle, each holding several events.
    pub seen: u64,
    /// Events lost because the ring buffer was full (counted in the kernel).
    pub lost: u64,
    /// Events read by userspace.
    pub received: u64,
    /// Records that passed validation and went on to the tracker.
    pub decoded: u64,
    /// Records userspace could not decode (counted, not used).
    pub decode_errors: u64,
    /// Kernel reads that failed: while filling an event (fields left zero),
    /// or before one (the event was not sent).
    pub read_errors: u64,
    /// Summary mode: sockets whose transitions went one event each because
    /// the kernel's table of pending sockets was full (nothing lost).
    #[serde(default)]
    pub summary_fallbacks: u64,
    /// Runs of tcptrace's programs that the kernel skipped because the same
    /// program was already running on that CPU (`bpf_prog_info`'s
    /// `recursion_misses`, what `bpftool prog show` prints). A skipped run
    /// never reaches the program, so it is in none of the counts above; each
    /// may have been an event, so they count as lost.
    pub recursion_misses: u64,
    /// `recursion_misses` by program (tcptrace's program names), only the
    /// programs with skipped runs.
    pub recursion_misses_by_program: BTreeMap<String, u64>,
    /// Programs whose skipped runs the kernel does not report (before Linux
    /// 5.12): not in `recursion_misses`, which then may undercount.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recursion_misses_unknown: Vec<String>,
    /// Numbers built on these events may undercount (something was lost,
    /// undecodable or skipped by the kernel): the text report says so in a
    /// WARNING line.
    pub lossy: bool,
}

impl EventCounts {
    pub fn new(kernel: &KernelCounters, user: &UserCounters) -> Self {
        let mut counts = Self {
            seen: kernel.seen,
            lost: kernel.lost,
            received: user.received(),
            decoded: user.decoded(),
            decode_errors: user.decode_errors(),
            read_errors: kernel.read_errors,
            summary_fallbacks: kernel.summary_fallbacks,
            recursion_misses: kernel.recursion_misses(),
            recursion_misses_by_program: kernel
                .recursion
                .iter()
                .filter_map(|p| Some((p.program.clone(), p.misses.filter(|n| *n > 0)?)))
                .collect(),
            recursion_misses_unknown: kernel.recursion_unknown().map(str::to_string).collect(),
            lossy: false,
        };
        counts.lossy = counts.is_lossy();
        counts
    }

    /// Whether numbers built on these events may be incomplete.
    pub fn is_lossy(&self) -> bool {
        self.lost > 0 || self.decode_errors > 0 || self.recursion_misses > 0
    }

    /// The note for programs whose skipped runs the kernel does not report.
    pub fn recursion_unknown_note(&self) -> Option<String> {
        (!self.recursion_misses_unknown.is_empty()).then(|| {
            format!(
                "the kernel does not report how often it skipped {} (recursion_misses, Linux >= 5.12): \
                 events lost that way are not counted",
                self.recursion_misses_unknown.join(", ")
            )
        })
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
            "connection_ends" => "connection-end rows (process x peer x reason)",
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
    let (excluded, excluded_cap, excluded_evicted) = tracker.excluded_usage();
    let tw = &tracker.timewait;
    let sr = &tracker.synrecv;
    let mut tables = vec![
        record("sockets", limits.max_sockets, tracker.live(), tracker.counters.evicted),
        record("time_wait", tw.max_records(), tw.current() as usize, tw.evicted),
        record("requests", sr.max_records(), sr.current(), sr.evicted),
        record("handshake_children", sr.max_records(), sr.children_waiting(), sr.children_evicted),
        record("filtered_out", excluded_cap, excluded, excluded_evicted),
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
    let n = &tracker.end_rows;
    tables.push(rows("connection_ends", n.cap(), n.len(), n.overflowed_keys(), n.overflow_count_saturated()));
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
    #[serde(flatten)]
    pub owner: RowOwner,
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
    /// Why connections ended.
    pub connection_ends: ends::EndsSection,
    /// Sockets stuck in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK.
    pub stuck: stuck::StuckSection,
    /// Processes that closed connections first, largest first.
    pub active_closers: Vec<CloserOut>,
    pub anomalies: Anomalies,
    /// Socket records alive at the end of the run.
    pub live_sockets: usize,
    /// Every capped table: cap, use at the end, evictions.
    pub limits: Vec<TableUse>,
    pub syn_recv: SynRecvSection,
    /// Handshake-complete children waiting for accept(), per listener.
    pub accept_queue: accept::AcceptSection,
    /// TCP segments the kernel dropped, by reason.
    pub drops: drops::DropsSection,
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
        mut notes: Vec<String>,
        tracker: &mut Tracker,
        ctx: &mut ReportContext,
    ) -> Self {
        notes.extend(events.recursion_unknown_note());
        let (time_wait, mut diagnoses) = timewait::build(tracker, ctx);
        let time_wait_lifetime = tracker.timewait.lifetime.clone();
        let connect_errors = timewait::connect_errors(tracker);
        let syn_recv = synrecv::build(tracker, ctx);
        let accept_queue = accept::build(tracker);
        diagnoses.extend(accept::diagnoses(&accept_queue));
        // Drop reasons come with their names from the kernel's BTF; a
        // drop seen proves the hook too (a recording without the names).
        let drops_available = !crate::drop_reason::table().is_empty() || tracker.drops.total > 0;
        if !drops_available && !notes.iter().any(|n| n == crate::kernel::DROPS_WITHOUT_REASONS) {
            notes.push(crate::kernel::DROPS_WITHOUT_REASONS.to_string());
        }
        let drops = drops::build(tracker, drops_available);
        diagnoses.extend(drops::diagnoses(&drops));
        let retransmits = retrans::build(tracker);
        diagnoses.extend(retrans::diagnoses(&retransmits));
        let (stuck, stuck_diagnoses) = stuck::build(tracker);
        diagnoses.extend(stuck_diagnoses);
        let connection_ends = ends::build(tracker);
        diagnoses.extend(ends::diagnoses(&connection_ends));
        diagnoses.sort_by_key(|d| std::cmp::Reverse(d.severity));
        let syn_recv_dwell = tracker.synrecv.dwell.clone();
        let cgroups = &mut ctx.workloads;
        let mut histograms: Vec<(&'static str, Histo)> =
            DWELL_STATES.iter().zip(&tracker.dwell).map(|((_, name), h)| (*name, h.clone())).collect();
        histograms.push((LIFETIME, tracker.lifetime.clone()));
        let states = StateTable(histograms.iter().map(|(name, h)| (*name, h.summary())).collect());
        histograms.push(("SYN_RECV (request socket: SYN to handshake)", syn_recv_dwell));
        histograms.push(("TIME_WAIT lifetime", time_wait_lifetime));
        for cause in StallCause::ALL {
            let h = tracker.retrans.stalls.get(cause);
            if !h.is_empty() {
                histograms.push((cause.stall_title(), h.clone()));
            }
        }

        let mut active_closers: Vec<CloserOut> = tracker
            .closers
            .iter()
            .map(|(key, row)| CloserOut {
                owner: key.owner.into(),
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
                .then_with(|| a.owner.comm().cmp(&b.owner.comm()))
                .then_with(|| a.remote.cmp(&b.remote))
                .then_with(|| a.owner.pid().cmp(&b.owner.pid()))
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
                owner: RowOwner::Label(label),
                cgroup: None,
                netns: 0,
                local: String::new(),
                remote: String::new(),
                closes: overflow.closes,
                time_wait: overflow.time_wait,
            });
        }

        let mut report = Self {
            kind: "report",
            duration_s,
            events,
            states,
            connections: tracker.counters,
            connection_ends,
            stuck,
            active_closers,
            anomalies: tracker.anomalies,
            live_sockets: tracker.live(),
            limits: table_use(tracker),
            syn_recv,
            accept_queue,
            drops,
            time_wait,
            retransmits,
            connect_errors,
            diagnoses,
            notes,
            histograms,
        };
        for owner in report.owners_mut() {
            owner.place(&mut ctx.workloads);
        }
        report
    }

    /// Every row's owner, to name their workloads in one pass.
    fn owners_mut(&mut self) -> Vec<&mut RowOwner> {
        let mut owners: Vec<&mut RowOwner> = Vec::new();
        owners.extend(self.active_closers.iter_mut().map(|r| &mut r.owner));
        owners.extend(self.connection_ends.rows.iter_mut().map(|r| &mut r.owner));
        owners.extend(self.stuck.rows.iter_mut().map(|r| &mut r.owner));
        owners.extend(self.syn_recv.listeners.iter_mut().map(|r| &mut r.owner));
        owners.extend(self.accept_queue.listeners.iter_mut().map(|r| &mut r.owner));
        for d in &mut self.time_wait.by_destination {
            owners.extend(d.closers.iter_mut().map(|c| &mut c.owner));
        }
        owners.extend(self.connect_errors.iter_mut().map(|r| &mut r.owner));
        let r = &mut self.retransmits;
        owners.extend(r.top.iter_mut().chain(r.killed.iter_mut()).map(|c| &mut c.owner));
        owners.extend(
            r.stall_destinations.iter_mut().chain(r.stall_processes.iter_mut()).map(|c| &mut c.owner),
        );
        owners
    }

    pub fn to_json_line(&self) -> String {
        // Serializing plain data cannot fail; keep the line even if it did.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"type\":\"report\",\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::pipeline::collect::ProgramMisses;

    fn misses(program: &str, misses: Option<u64>) -> ProgramMisses {
        ProgramMisses { program: program.into(), misses, run_cnt: 0, run_time_ns: 0 }
    }

    fn counts(kernel: &KernelCounters, received: u64) -> EventCounts {
        let user = UserCounters::default();
        user.received.store(received, Ordering::Relaxed);
        user.decoded.store(received, Ordering::Relaxed);
        EventCounts::new(kernel, &user)
    }

    #[test]
    fn recursion_misses_are_lost_events_outside_seen() {
        let kernel = KernelCounters {
            seen: 10,
            submitted: 10,
            recursion: vec![
                misses("tcptrace_state", Some(2)),
                misses("tcptrace_sendmsg", Some(0)),
                misses("tcptrace_timer_start", Some(3)),
            ],
            ..Default::default()
        };
        let e = counts(&kernel, 10);
        // Nothing the programs produced went missing...
        assert_eq!((e.seen, e.received, e.lost, e.decoded), (10, 10, 0, 10));
        assert_eq!(e.seen, e.received + e.lost);
        // ... but 5 runs never happened: lossy.
        assert_eq!(e.recursion_misses, 5);
        assert!(e.lossy && e.is_lossy());
        let by: Vec<(&str, u64)> =
            e.recursion_misses_by_program.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(by, [("tcptrace_state", 2), ("tcptrace_timer_start", 3)], "only non-zero programs");
        assert!(e.recursion_misses_unknown.is_empty());
        assert_eq!(e.recursion_unknown_note(), None);

        let json: serde_json::Value = serde_json::to_value(&e).expect("json");
        assert_eq!(json["recursion_misses"], 5);
        assert_eq!(json["recursion_misses_by_program"]["tcptrace_timer_start"], 3);
        assert!(json.get("recursion_misses_unknown").is_none(), "{json}");
        assert_eq!(json["lossy"], true);
    }

    #[test]
    fn no_loss_of_any_kind_is_not_lossy() {
        let kernel = KernelCounters {
            seen: 4,
            submitted: 4,
            recursion: vec![misses("tcptrace_state", Some(0))],
            ..Default::default()
        };
        let e = counts(&kernel, 4);
        assert!(!e.lossy && !e.is_lossy());
        assert_eq!(e.recursion_misses, 0);
        let json: serde_json::Value = serde_json::to_value(&e).expect("json");
        assert_eq!(json["recursion_misses"], 0);
        assert_eq!(json["recursion_misses_by_program"], serde_json::json!({}));
        // Each kind of loss alone makes the counts lossy.
        for e in [
            EventCounts { lost: 1, ..Default::default() },
            EventCounts { decode_errors: 1, ..Default::default() },
            EventCounts { recursion_misses: 1, ..Default::default() },
        ] {
            assert!(e.is_lossy(), "{e:?}");
        }
    }

    #[test]
    fn unknown_recursion_misses_are_named_not_zero() {
        let kernel = KernelCounters {
            recursion: vec![misses("tcptrace_state", None), misses("tcptrace_sendmsg", Some(1))],
            ..Default::default()
        };
        let e = counts(&kernel, 0);
        assert_eq!(e.recursion_misses, 1, "the known ones");
        assert_eq!(e.recursion_misses_unknown, ["tcptrace_state"]);
        let note = e.recursion_unknown_note().expect("a note");
        assert!(note.contains("tcptrace_state") && note.contains("not counted"), "{note}");
        let json: serde_json::Value = serde_json::to_value(&e).expect("json");
        assert_eq!(json["recursion_misses_unknown"], serde_json::json!(["tcptrace_state"]));
    }
}
