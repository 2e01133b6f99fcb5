//! The `"time_wait"` and `"connect_errors"` sections and the diagnoses built
//! on them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{ReportContext, owner::RowOwner};
use crate::{
    event::errno_name,
    host::netns::NetnsFacts,
    report::diagnose::{self, ConnectFailures, DestinationFigures, Diagnosis, NetnsSettings},
    stats::Summary,
    track::{
        Tracker,
        end::EndReason,
        endpoint,
        rows::BoundedRows,
        timewait::{Ended, TwEnd},
    },
};

/// Rows listed per table; the rest are summed in a final row.
pub const MAX_LISTED: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct CloserCount {
    #[serde(flatten)]
    pub owner: RowOwner,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    pub netns: u32,
    pub local: String,
    pub remote: String,
    /// `client`: this side connected, its ephemeral ports are at stake;
    /// `server`: this side accepted (no ephemeral port per connection).
    pub side: &'static str,
    /// TIME_WAIT sockets alive now.
    pub count: u64,
    pub created: u64,
    /// Size of the namespace's ephemeral port range.
    pub port_range: Option<u32>,
    /// `count / port_range` (client side only).
    pub utilization: Option<f64>,
    /// Creations per second over the last minute.
    pub created_per_s: f64,
    pub closers: Vec<CloserCount>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Overflow {
    /// `TCPTimeWaitOverflow` increase over the run, summed over namespaces.
    pub kernel: i64,
    /// Connections that closed actively but got no timewait socket.
    pub closes_without_time_wait: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeWaitSection {
    pub current: u64,
    pub created: u64,
    /// Listed at start (sock_diag); their age is unknown.
    pub preexisting: u64,
    pub ended: Ended,
    /// Ends of timewait sockets born before tracing (not in `lifetime`).
    pub ended_unknown_birth: u64,
    /// Birth to end, microseconds, for those born while tracing.
    pub lifetime: Summary,
    pub lifetime_by_end: BTreeMap<&'static str, Summary>,
    pub by_destination: Vec<Destination>,
    pub overflow: Overflow,
    pub evicted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectError {
    #[serde(flatten)]
    pub owner: RowOwner,
    pub netns: u32,
    pub remote: String,
    pub errno: String,
    /// The end class the errno stands for (as `connection_ends` names it),
    /// when it names one.
    pub class: Option<EndReason>,
    pub count: u64,
}

/// `"(other: N more ...)"`: the label of a row that sums keys beyond the
/// table's cap or the listing limit.
pub fn other_label(keys: u64, at_least: bool, what: &str) -> String {
    format!("(other: {}{keys} more {what})", if at_least { "at least " } else { "" })
}

/// Takes the rows beyond [`MAX_LISTED`] off `rows` (sorted, largest first)
/// and adds them to what `table` summed beyond its cap: the label and count
/// of one last row, so that every event stays counted; None when nothing
/// is beyond either.
pub fn beyond_listing<T, K: std::hash::Hash + Eq + Clone>(
    rows: &mut Vec<T>,
    count: impl Fn(&T) -> u64,
    table: &BoundedRows<K, u64>,
) -> Option<(String, u64)> {
    let mut keys = table.overflowed_keys();
    let mut total = *table.overflow();
    if rows.len() > MAX_LISTED {
        for row in rows.drain(MAX_LISTED..) {
            keys += 1;
            total += count(&row);
        }
    }
    (total > 0).then(|| (other_label(keys, table.overflow_count_saturated(), "rows"), total))
}

pub fn connect_errors(tracker: &Tracker) -> Vec<ConnectError> {
    let mut rows: Vec<ConnectError> = tracker
        .connect_errors
        .iter()
        .map(|(key, count)| ConnectError {
            owner: key.owner.into(),
            netns: key.netns,
            remote: key.remote.to_string(),
            errno: errno_name(key.errno),
            class: EndReason::of_connect_errno(key.errno),
            count: *count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.remote.cmp(&b.remote))
            .then_with(|| a.owner.pid().cmp(&b.owner.pid()))
    });
    // Rows beyond the cap (in memory) and beyond the listing limit are summed
    // in one last row: every failure stays counted.
    if let Some((label, count)) = beyond_listing(&mut rows, |r| r.count, &tracker.connect_errors) {
        rows.push(ConnectError {
            owner: RowOwner::Unknown,
            netns: 0,
            remote: label,
            errno: "-".into(),
            class: None,
            count,
        });
    }
    rows
}

pub fn build(tracker: &mut Tracker, ctx: &mut ReportContext) -> (TimeWaitSection, Vec<Diagnosis>) {
    let now = tracker.now_ns;
    let tw = &mut tracker.timewait;
    let namespaces: BTreeSet<u32> = tw.destinations.iter().map(|(k, _)| k.netns).collect();
    let facts: HashMap<u32, NetnsFacts> =
        namespaces.iter().filter_map(|&ns| Some((ns, ctx.netns.current(ns)?))).collect();

    let mut by_destination = Vec::new();
    let keys: Vec<_> = tw.destinations.iter().map(|(k, _)| *k).collect();
    for key in keys {
        let Some(row) = tw.destinations.row_if_present(&key) else { continue };
        if row.current == 0 && row.created == 0 {
            continue;
        }
        let range = facts.get(&key.netns).and_then(|f| f.port_range_size());
        let utilization =
            if key.client_side { range.map(|r| row.current as f64 / f64::from(r)) } else { None };
        let mut closers: Vec<CloserCount> = row
            .closers
            .iter()
            .map(|(owner, count)| CloserCount { owner: (*owner).into(), count: *count })
            .collect();
        if row.other_closers > 0 {
            closers.push(CloserCount { owner: RowOwner::Label("(other)".into()), count: row.other_closers });
        }
        closers.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.owner.pid().cmp(&b.owner.pid())));
        let rate = row.rate.per_second(now);
        by_destination.push(Destination {
            netns: key.netns,
            local: endpoint(&key.local),
            remote: endpoint(&key.remote),
            side: if key.client_side { "client" } else { "server" },
            count: row.current,
            created: row.created,
            port_range: range,
            utilization: utilization.map(|u| (u * 1000.0).round() / 1000.0),
            created_per_s: (rate * 10.0).round() / 10.0,
            closers,
        });
    }
    by_destination.sort_by(|a, b| {
        b.utilization
            .unwrap_or(0.0)
            .total_cmp(&a.utilization.unwrap_or(0.0))
            .then_with(|| b.count.cmp(&a.count))
            .then_with(|| a.remote.cmp(&b.remote))
    });
    // Kernel counters of every namespace seen with TCP activity.
    let mut settings = Vec::new();
    let mut overflow_total = 0;
    for (&ns, f) in &facts {
        let delta = ctx.netns.delta(ns, f, "TcpExt:TCPTimeWaitOverflow").max(0);
        overflow_total += delta;
        settings.push(NetnsSettings {
            netns: ns,
            tw_reuse: f.tw_reuse,
            max_tw_buckets: f.max_tw_buckets,
            tw_overflow: delta,
        });
    }

    let figures: Vec<DestinationFigures> = by_destination
        .iter()
        .take(MAX_LISTED)
        .map(|d| DestinationFigures {
            netns: d.netns,
            local: d.local.clone(),
            remote: d.remote.clone(),
            count: d.count,
            port_range: facts.get(&d.netns).and_then(|f| f.port_range),
            created_per_s: d.created_per_s,
            client_side: d.side == "client",
            // Diagnoses are prose the text report prints as they are: names
            // escaped from their raw bytes, never raw control characters.
            top_closer: d
                .closers
                .first()
                .map(|c| (c.owner.pid(), c.owner.comm_text().unwrap_or_default(), c.count)),
            closers: d.closers.len(),
        })
        .collect();
    let failures: Vec<ConnectFailures> = tracker
        .connect_errors
        .iter()
        .filter(|(k, _)| k.errno == libc::EADDRNOTAVAIL as u32)
        .map(|(k, n)| ConnectFailures {
            netns: k.netns,
            remote: k.remote.to_string(),
            pid: k.owner.map(|o| o.pid),
            comm: k.owner.map(|o| o.comm.to_string()).unwrap_or_default(),
            eaddrnotavail: *n,
        })
        .collect();
    settings.sort_by_key(|s| s.netns);
    let diagnoses = diagnose::diagnose(&figures, &failures, &settings);
    other_destinations(tracker, &mut by_destination, now);

    let tw = &tracker.timewait;
    let section = TimeWaitSection {
        current: tw.current(),
        created: tw.created,
        preexisting: tw.preexisting_count,
        ended: tw.ended,
        ended_unknown_birth: tw.ended_unknown_birth,
        lifetime: tw.lifetime.summary(),
        lifetime_by_end: tw
            .lifetime_by_end
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(end, h)| (TwEnd::name(*end), h.summary()))
            .collect(),
        by_destination,
        overflow: Overflow {
            kernel: overflow_total,
            closes_without_time_wait: tracker.counters.time_wait_skipped,
        },
        evicted: tw.evicted,
    };
    (section, diagnoses)
}

/// Folds destinations beyond the listing limit, and the overflow row of
/// destinations beyond the cap, into one last `(other: ...)` row.
fn other_destinations(tracker: &mut Tracker, by_destination: &mut Vec<Destination>, now: u64) {
    let table = &mut tracker.timewait.destinations;
    let saturated = table.overflow_count_saturated();
    let mut keys = table.overflowed_keys();
    let overflow = table.overflow().clone();
    let mut rate = overflow.rate.clone();
    let mut other = Destination {
        netns: 0,
        local: String::new(),
        remote: String::new(),
        side: "-",
        count: overflow.current,
        created: overflow.created,
        port_range: None,
        utilization: None,
        created_per_s: rate.per_second(now),
        closers: Vec::new(),
    };
    if by_destination.len() > MAX_LISTED {
        for d in by_destination.drain(MAX_LISTED..) {
            keys += 1;
            other.count += d.count;
            other.created += d.created;
            other.created_per_s += d.created_per_s;
        }
    }
    if other.count == 0 && other.created == 0 {
        return;
    }
    other.created_per_s = (other.created_per_s * 10.0).round() / 10.0;
    other.remote = other_label(keys, saturated, "destinations");
    by_destination.push(other);
}
