//! From the tracker's state to a [`Snapshot`]: which metric says what, with
//! which labels. Counters are the tracker's cumulative totals (the tracker
//! never forgets a count, so they are monotonic); gauges are its current
//! state.

use std::{collections::HashMap, sync::Arc};

use prometheus_client::{metrics::MetricType, registry::Unit};

use super::{
    Buckets, COUNT_BOUNDS, Family, Labels, SECONDS_BOUNDS, Series, Snapshot, Value,
    budget::{Budget, Measure, OTHER},
};
use crate::{
    event::{Owner, errno_name},
    host::netns::PortRanges,
    pipeline::collect::{KernelCounters, UserCounters},
    stats::Histo,
    track::{
        DWELL_STATES, Tracker, endpoint,
        retrans::StallCause,
        synrecv::{ListenerRow, RequestDrop},
        timewait::TwEnd,
    },
    workload::resolve::Workloads,
};

/// Microseconds (the tracker's unit) to seconds.
const US: f64 = 1e-6;

/// Builds snapshots; keeps the label budgets between them.
pub struct MetricsBuilder {
    top: usize,
    user: Arc<UserCounters>,
    budgets: HashMap<&'static str, Budget>,
    port_ranges: PortRanges,
    /// Names the `workload` label of per-process series (empty without).
    workloads: Option<Workloads>,
}

impl MetricsBuilder {
    /// `top`: series per labelled family before `other` (the budget).
    /// `user`: the collector's counters, read at each snapshot.
    pub fn new(top: usize, port_ranges: PortRanges, user: Arc<UserCounters>) -> Self {
        Self { top, user, budgets: HashMap::new(), port_ranges, workloads: None }
    }

    /// Per-process series get a `workload` label (unit, container, pod).
    pub fn with_workloads(mut self, workloads: Workloads) -> Self {
        self.workloads = Some(workloads);
        self
    }

    pub fn snapshot(&mut self, tracker: &Tracker, kernel: &KernelCounters) -> Snapshot {
        let mut out = Out::default();
        self.events(&mut out, kernel);
        self.connections(&mut out, tracker);
        self.time_wait(&mut out, tracker);
        self.syn_recv(&mut out, tracker);
        self.retransmits(&mut out, tracker);
        self.accept_queue(&mut out, tracker);
        self.drops(&mut out, tracker);
        self.health(&mut out, tracker, kernel);
        Snapshot { families: out.families }
    }

    /// Series of a labelled family, within its budget.
    fn bounded<V: Measure>(
        &mut self,
        family: &'static str,
        names: &[&'static str],
        rows: impl IntoIterator<Item = (Vec<String>, V)>,
    ) -> Vec<(Labels, V)> {
        let top = self.top;
        self.budgets.entry(family).or_insert_with(|| Budget::new(top)).apply(names, rows)
    }

    fn events(&mut self, out: &mut Out, kernel: &KernelCounters) {
        let user = &self.user;
        out.counter("tcptrace_events_seen", "Events the kernel programs produced.", kernel.seen);
        out.counter(
            "tcptrace_events_lost",
            "Events dropped in the kernel because the ring buffer was full; non-zero means every other figure undercounts.",
            kernel.lost,
        );
        out.counter("tcptrace_events_received", "Events read from the ring buffer.", user.received());
        out.counter(
            "tcptrace_events_undecodable",
            "Records that failed validation (counted, not used).",
            user.decode_errors(),
        );
        out.counter(
            "tcptrace_event_read_errors",
            "Kernel reads that failed: while filling an event (fields left zero), or before one (the event was not sent).",
            kernel.read_errors,
        );
        out.labelled(
            "tcptrace_recursion_misses",
            "Runs of a tcptrace program the kernel skipped because it was already running on that CPU (bpf_prog_info.recursion_misses); each may have been an event, lost and not in tcptrace_events_seen; non-zero means figures may undercount. No series for a program whose count the kernel does not report (before Linux 5.12).",
            None,
            MetricType::Counter,
            kernel
                .recursion
                .iter()
                .filter_map(|p| Some((vec![("program", p.program.clone())], Value::Counter(p.misses?))))
                .collect(),
        );
    }

    fn connections(&mut self, out: &mut Out, t: &Tracker) {
        let c = &t.counters;
        out.gauge("tcptrace_live_sockets", "Sockets tracked now.", t.live() as f64);
        out.counter(
            "tcptrace_connections_opened",
            "Sockets opened while tracing (connect() or accept seen), failed attempts included.",
            c.opened,
        );
        out.counter("tcptrace_connections_closed", "Socket records ended at CLOSE.", c.closed);
        out.counter_by(
            "tcptrace_closes",
            "Closed connections by which side sent the first FIN.",
            "initiator",
            &[
                ("local", c.active_close_local),
                ("remote", c.active_close_remote),
                ("both", c.simultaneous_close),
            ],
        );
        out.counter_by(
            "tcptrace_resets",
            "RST segments on tracked connections.",
            "direction",
            &[("sent", c.reset_sent), ("received", c.reset_received)],
        );
        let reasons: Vec<(&str, u64)> = t.ends.iter().map(|(r, n)| (r.name(), n)).collect();
        out.counter_by(
            "tcptrace_connection_ends",
            "Closed connections by why they ended (orderly close by who was first, refused, reset by peer, reset sent and why, timeouts by kind, unreachable).",
            "reason",
            &reasons,
        );
        let mut wl = self.workloads.take();
        let failures: Vec<_> = t
            .end_rows
            .iter()
            .filter(|(k, _)| k.reason.is_failure())
            .map(|(k, n)| {
                let labels = vec![
                    k.netns.to_string(),
                    endpoint(&k.remote),
                    comm(k.owner),
                    workload(&mut wl, k.owner),
                    k.reason.name().to_string(),
                ];
                (labels, *n)
            })
            .collect();
        let series =
            self.bounded("connection_failures", &["netns", "remote", "comm", "workload", "reason"], failures);
        out.counter_series(
            "tcptrace_connection_failures",
            "Connections that ended in a failure (any reason but an orderly close), by peer, process and reason; ephemeral ports are not labels.",
            series,
        );
        let stuck = t.stuck(t.now_ns, t.stuck_after_ns);
        let by_state: Vec<(&str, u64)> =
            crate::track::stuck::count_by_state(&stuck).iter().map(|(s, n)| (s.name(), *n)).collect();
        out.gauge_by(
            "tcptrace_stuck_sockets",
            "Sockets in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for --stuck-after or longer (or since before tracing); CLOSE_WAIT that lasts is an application that never closes.",
            "state",
            &by_state,
        );
        out.counter_by(
            "tcptrace_evicted",
            "Records dropped because a table reached its cap (figures from them are lost).",
            "table",
            &[("sockets", c.evicted), ("time_wait", t.timewait.evicted), ("syn_recv", t.synrecv.evicted)],
        );

        let closers: Vec<_> = t
            .closers
            .iter()
            .map(|(k, r)| {
                let who = [comm(k.owner), workload(&mut wl, k.owner)];
                (
                    vec![
                        k.netns.to_string(),
                        endpoint(&k.local),
                        endpoint(&k.remote),
                        who[0].clone(),
                        who[1].clone(),
                    ],
                    r.closes,
                )
            })
            .collect();
        let overflow = (vec![OTHER.to_string(); 5], t.closers.overflow().closes);
        let series = self.bounded(
            "closers",
            &["netns", "local", "remote", "comm", "workload"],
            closers.into_iter().chain([overflow]),
        );
        out.counter_series(
            "tcptrace_active_closes",
            "Connections this host closed first (so it holds their TIME_WAIT), by process and peer; ephemeral ports are not labels.",
            series,
        );

        let errors: Vec<_> = t
            .connect_errors
            .iter()
            .map(|(k, n)| {
                let labels = vec![
                    k.netns.to_string(),
                    endpoint(&k.remote),
                    comm(k.owner),
                    workload(&mut wl, k.owner),
                    errno_name(k.errno),
                ];
                (labels, *n)
            })
            .collect();
        self.workloads = wl;
        let overflow = (vec![OTHER.to_string(); 5], *t.connect_errors.overflow());
        let series = self.bounded(
            "connect_errors",
            &["netns", "remote", "comm", "workload", "errno"],
            errors.into_iter().chain([overflow]),
        );
        out.counter_series(
            "tcptrace_connect_errors",
            "Failed connect() calls by process, destination and errno (EADDRNOTAVAIL: no free local port).",
            series,
        );

        let dwell = DWELL_STATES
            .iter()
            .zip(&t.dwell)
            .map(|((_, name), h)| (vec![("state", (*name).to_string())], Value::Histogram(seconds(h))))
            .collect();
        out.labelled(
            "tcptrace_state_dwell",
            "Time connections spent in each TCP state (SYN_RECV_CHILD is the child socket's microseconds, not the request socket: see tcptrace_syn_recv_dwell).",
            Some(Unit::Seconds),
            MetricType::Histogram,
            dwell,
        );
        out.labelled(
            "tcptrace_connection_lifetime",
            "Whole connection lifetime, first state to CLOSE.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            vec![(vec![], Value::Histogram(seconds(&t.lifetime)))],
        );
    }

    fn time_wait(&mut self, out: &mut Out, t: &Tracker) {
        let tw = &t.timewait;
        out.gauge(
            "tcptrace_time_wait_sockets",
            "TIME_WAIT sockets now, including those that existed before tracing.",
            tw.current() as f64,
        );
        let rows: Vec<_> = tw
            .destinations
            .iter()
            .map(|(k, r)| {
                let range = if k.client_side { self.port_ranges.size(k.netns) } else { None };
                (
                    vec![k.netns.to_string(), endpoint(&k.local), endpoint(&k.remote)],
                    (r.current, r.created, range),
                )
            })
            .collect();
        let overflow = tw.destinations.overflow();
        let names = ["netns", "local", "remote"];
        // One count per row, and the overflow's as the "other" row.
        let column = |pick: fn(&(u64, u64, _)) -> u64, other: u64| {
            rows.iter().map(move |(l, r)| (l.clone(), pick(r))).chain([(vec![OTHER.into(); 3], other)])
        };
        let series = self.bounded("time_wait_by_destination", &names, column(|r| r.0, overflow.current));
        out.gauge_series(
            "tcptrace_time_wait_sockets_by_destination",
            "TIME_WAIT sockets now per local address and destination (ephemeral ports folded), born while tracing.",
            series,
        );
        let series = self.bounded("time_wait_created", &names, column(|r| r.1, overflow.created));
        out.counter_series(
            "tcptrace_time_wait_created",
            "TIME_WAIT sockets created per local address and destination.",
            series,
        );
        // A ratio per destination has no meaningful sum: only admitted rows.
        let utilization = rows.iter().filter_map(|(l, (n, _, range))| {
            range.filter(|r| *r > 0).map(|r| (l.clone(), *n as f64 / f64::from(r)))
        });
        let series: Vec<_> = self
            .bounded("time_wait_utilization", &names, utilization)
            .into_iter()
            .filter(|(labels, _)| labels.iter().any(|(_, v)| v != OTHER))
            .collect();
        out.labelled(
            "tcptrace_time_wait_port_utilization",
            "TIME_WAIT sockets toward a destination over the size of ip_local_port_range: at 1, connect() to it fails with EADDRNOTAVAIL.",
            Some(Unit::Other("ratio".into())),
            MetricType::Gauge,
            gauges(series),
        );

        let ended: Vec<(&str, u64)> = TwEnd::ALL
            .iter()
            .map(|e| {
                let n = match e {
                    TwEnd::Expired => tw.ended.expired,
                    TwEnd::Reused => tw.ended.reused,
                    TwEnd::Reset => tw.ended.reset,
                    TwEnd::Recycled => tw.ended.recycled,
                    TwEnd::Purged => tw.ended.purged,
                };
                (e.name(), n)
            })
            .collect();
        out.counter_by(
            "tcptrace_time_wait_ended",
            "TIME_WAIT sockets that ended, by how: expired (the 60 s timer), reused (port taken by a new connection), reset, recycled, purged (namespace gone).",
            "how",
            &ended,
        );
        let lifetime = tw
            .lifetime_by_end
            .iter()
            .map(|(end, h)| (vec![("how", end.name().to_string())], Value::Histogram(seconds(h))))
            .collect();
        out.labelled(
            "tcptrace_time_wait_lifetime",
            "How long TIME_WAIT sockets born while tracing lasted, by how they ended.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            lifetime,
        );
    }

    fn syn_recv(&mut self, out: &mut Out, t: &Tracker) {
        let s = &t.synrecv;
        out.gauge(
            "tcptrace_syn_recv_request_sockets_all",
            "Request sockets (SYN_RECV in ss) now.",
            s.current() as f64,
        );
        let names = ["netns", "listener", "comm", "workload"];
        let mut alive = s.current_by_listener();
        let mut wl = self.workloads.take();
        let mut identity: Vec<(Vec<String>, &ListenerRow, u64)> = s
            .listeners
            .iter()
            .map(|(key, r)| {
                let now = alive.remove(key).map_or(0, |(_, _, n)| n);
                let labels =
                    vec![r.netns.to_string(), r.local.to_string(), comm(r.owner), workload(&mut wl, r.owner)];
                (labels, r, now)
            })
            .collect();
        self.workloads = wl;
        identity.sort_by(|a, b| a.0.cmp(&b.0));
        // Listeners whose requests have not completed or dropped yet have no row.
        let waiting = alive.into_values().map(|(netns, local, n)| {
            (vec![netns.to_string(), local.to_string(), String::new(), String::new()], n)
        });
        let current = identity.iter().map(|(l, _, n)| (l.clone(), *n)).chain(waiting);
        let series = self.bounded("syn_recv_current", &names, current);
        out.gauge_series(
            "tcptrace_syn_recv_request_sockets",
            "Request sockets (SYN received, handshake not complete) now, per listener.",
            series,
        );
        let completed = identity.iter().map(|(l, r, _)| (l.clone(), r.completed));
        let series = self.bounded("syn_recv_completed", &names, completed);
        out.counter_series("tcptrace_syn_recv_completed", "Handshakes completed per listener.", series);
        let retrans = identity.iter().map(|(l, r, _)| (l.clone(), r.synack_retransmits));
        let series = self.bounded("synack_retransmits", &names, retrans);
        out.counter_series(
            "tcptrace_synack_retransmits",
            "SYN-ACK retransmits per listener (the client's final ACK did not arrive in time).",
            series,
        );
        let dwell = identity.iter().map(|(l, r, _)| (l.clone(), seconds(&r.dwell)));
        let series = self.bounded("syn_recv_dwell", &names, dwell);
        out.seconds_series(
            "tcptrace_syn_recv_dwell",
            "Time from SYN to completed handshake (the SYN_RECV that ss shows), per listener.",
            series,
        );
        let dropped = identity.iter().flat_map(|(l, r, _)| {
            RequestDrop::ALL.iter().filter_map(move |d| {
                let n = r.dropped.get(d).copied().unwrap_or(0);
                (n > 0).then(|| {
                    let mut labels = l.clone();
                    labels.push(d.name().to_string());
                    (labels, n)
                })
            })
        });
        let series =
            self.bounded("syn_recv_dropped", &["netns", "listener", "comm", "workload", "reason"], dropped);
        out.counter_series(
            "tcptrace_syn_recv_dropped",
            "Request sockets that never became connections, per listener and reason.",
            series,
        );
    }

    fn retransmits(&mut self, out: &mut Out, t: &Tracker) {
        let r = &t.retrans;
        let seg = r.segments;
        let kinds = [("syn", seg.syn), ("synack", seg.synack), ("data", seg.data), ("fin", seg.fin)];
        out.counter_by("tcptrace_retransmitted_segments", "Segments sent again, by kind.", "kind", &kinds);
        let causes = [("timeout", r.causes.timeout), ("fast", r.causes.fast), ("other", r.causes.other)];
        out.counter_by(
            "tcptrace_retransmit_causes",
            "Retransmitted segments by cause: timeout (sent in CA_Loss after a retransmission timeout, SYNs included, and SYN-ACKs resent by their timer), fast (CA_Recovery), other (tail loss probes).",
            "cause",
            &causes,
        );
        out.counter(
            "tcptrace_retransmitted_segments_unseen",
            "Retransmitted segments the kernel counted (tcpi_total_retrans) that no event showed: in no kind or cause above.",
            r.unseen,
        );
        out.counter(
            "tcptrace_retransmission_timeouts",
            "Connections killed because retransmissions went unanswered (ETIMEDOUT).",
            r.timeouts,
        );
        out.labelled(
            "tcptrace_retransmits_per_connection",
            "Retransmitted segments per closed connection (zeros included).",
            None,
            MetricType::Histogram,
            vec![(vec![], Value::Histogram(Buckets::from_hdr(r.per_connection.inner(), &COUNT_BOUNDS, 1.0)))],
        );
        self.retransmit_stalls(out, t);
    }

    /// How long each retransmission stalled its connection: by cause, per
    /// destination and per process name (docs/ARCHITECTURE.md, "Retransmit stalls").
    fn retransmit_stalls(&mut self, out: &mut Out, t: &Tracker) {
        let r = &t.retrans;
        out.labelled(
            "tcptrace_retransmit_stall",
            "How long each retransmission's connection had waited (since the last ACK or its previous retransmission, a SYN since connect()), by cause: timeout, fast, syn, synack, probe.",
            Some(Unit::Seconds),
            MetricType::Histogram,
            StallCause::ALL
                .iter()
                .map(|c| (vec![("cause", c.name().to_string())], Value::Histogram(seconds(r.stalls.get(*c)))))
                .collect(),
        );
        let mut wl = self.workloads.take();
        let mut dests: Vec<(Vec<String>, Buckets)> = r
            .stall_dests
            .iter()
            .map(|(k, row)| {
                let labels = vec![
                    k.netns.to_string(),
                    endpoint(&k.remote),
                    comm(row.owner),
                    workload(&mut wl, row.owner),
                ];
                (labels, seconds(&row.stalls.all()))
            })
            .collect();
        self.workloads = wl;
        dests.sort_by(|a, b| a.0.cmp(&b.0));
        let series =
            self.bounded("retransmit_stall_destination", &["netns", "remote", "comm", "workload"], dests);
        out.seconds_series(
            "tcptrace_retransmit_stall_by_destination",
            "Retransmission stalls (all causes) per destination (server side: the client's address).",
            series,
        );
        let mut by_comm: HashMap<String, Buckets> = HashMap::new();
        for (key, row) in &r.stall_procs {
            let h = seconds(&row.stalls.all());
            by_comm.entry(key.comm.to_lossy_string()).and_modify(|b| b.add(&h)).or_insert(h);
        }
        let mut procs: Vec<(Vec<String>, Buckets)> = by_comm.into_iter().map(|(c, h)| (vec![c], h)).collect();
        procs.sort_by(|a, b| a.0.cmp(&b.0));
        let series = self.bounded("retransmit_stall_process", &["comm"], procs);
        out.seconds_series(
            "tcptrace_retransmit_stall_by_process",
            "Retransmission stalls (all causes) per process name.",
            series,
        );
    }
}

/// The `workload` label of an owner: its workload's label, empty when
/// unknown (or without a resolver).
fn workload(workloads: &mut Option<Workloads>, owner: Option<Owner>) -> String {
    match (workloads, owner) {
        (Some(w), Some(o)) => w.of_process(o.cgroup, o.pid).map(|w| w.label()).unwrap_or_default(),
        _ => String::new(),
    }
}

fn comm(owner: Option<Owner>) -> String {
    owner.map(|o| o.comm.to_lossy_string()).unwrap_or_default()
}

fn seconds(h: &Histo) -> Buckets {
    Buckets::from_hdr(h.inner(), &SECONDS_BOUNDS, US)
}

fn counters(series: Vec<(Labels, u64)>) -> Vec<(Labels, Value)> {
    series.into_iter().map(|(l, v)| (l, Value::Counter(v))).collect()
}

/// Numbers as gauges (a number's weight is its value).
fn gauges<V: Measure>(series: Vec<(Labels, V)>) -> Vec<(Labels, Value)> {
    series.into_iter().map(|(l, v)| (l, Value::Gauge(v.weight()))).collect()
}

#[derive(Default)]
struct Out {
    families: Vec<Family>,
}

impl Out {
    fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.labelled(name, help, None, MetricType::Counter, vec![(vec![], Value::Counter(value))]);
    }

    /// A counter with a series per label set.
    fn counter_series(&mut self, name: &'static str, help: &'static str, series: Vec<(Labels, u64)>) {
        self.labelled(name, help, None, MetricType::Counter, counters(series));
    }

    /// A histogram of durations (seconds) with a series per label set.
    fn seconds_series(&mut self, name: &'static str, help: &'static str, series: Vec<(Labels, Buckets)>) {
        let series = series.into_iter().map(|(l, h)| (l, Value::Histogram(h))).collect();
        self.labelled(name, help, Some(Unit::Seconds), MetricType::Histogram, series);
    }

    /// A gauge with a series per label set.
    fn gauge_series<V: Measure>(&mut self, name: &'static str, help: &'static str, series: Vec<(Labels, V)>) {
        self.labelled(name, help, None, MetricType::Gauge, gauges(series));
    }

    /// A counter with one label: a series per value of the label.
    fn counter_by(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: &[(&str, u64)],
    ) {
        let series =
            values.iter().map(|&(value, n)| (vec![(label, value.to_string())], Value::Counter(n))).collect();
        self.labelled(name, help, None, MetricType::Counter, series);
    }

    fn gauge_by(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: &[(&str, u64)],
    ) {
        let series = values
            .iter()
            .map(|&(value, n)| (vec![(label, value.to_string())], Value::Gauge(n as f64)))
            .collect();
        self.labelled(name, help, None, MetricType::Gauge, series);
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.labelled(name, help, None, MetricType::Gauge, vec![(vec![], Value::Gauge(value))]);
    }

    fn labelled(
        &mut self,
        name: &'static str,
        help: &'static str,
        unit: Option<Unit>,
        kind: MetricType,
        series: Vec<(Labels, Value)>,
    ) {
        let series = series.into_iter().map(|(labels, value)| Series { labels, value }).collect();
        self.families.push(Family { name, help, unit, kind, series });
    }
}

mod health;
mod queues;
#[cfg(test)]
mod tests;
