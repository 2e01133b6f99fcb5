//! The `"syn_recv"` section: request sockets from SYN to handshake, per
//! listener, with the kernel's own listen-queue counters.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{ReportContext, owner::RowOwner};
use crate::{
    stats::Summary,
    track::{Tracker, synrecv::RequestDrop},
};

/// `/proc/net/netstat` counters quoted per namespace (deltas over the run).
pub const KERNEL_COUNTERS: [&str; 8] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "EmbryonicRsts",
];

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub local: String,
    pub netns: u32,
    #[serde(flatten)]
    pub owner: RowOwner,
    pub completed: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    pub synack_retransmits: u64,
    pub dwell: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamespaceCounters {
    pub netns: u32,
    #[serde(flatten)]
    pub deltas: BTreeMap<&'static str, i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SynRecvSection {
    /// SYN arrival to child socket (handshake complete), microseconds.
    pub dwell: Summary,
    /// Request sockets seen being created.
    pub created: u64,
    pub completed: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    /// Request sockets alive at the end.
    pub current: usize,
    pub synack_retransmits: u64,
    /// Children created with no request seen: syncookies (see
    /// `SyncookiesRecv`) or requests from before tracing.
    pub without_request: u64,
    pub evicted: u64,
    pub listeners: Vec<Listener>,
    pub kernel_counters: Vec<NamespaceCounters>,
}

fn drop_map(source: &foldhash::HashMap<RequestDrop, u64>) -> BTreeMap<&'static str, u64> {
    RequestDrop::ALL.iter().map(|d| (d.name(), source.get(d).copied().unwrap_or(0))).collect()
}

pub fn build(tracker: &Tracker, ctx: &mut ReportContext) -> SynRecvSection {
    let s = &tracker.synrecv;
    let mut listeners: Vec<Listener> = s
        .listeners
        .iter()
        .map(|(_, row)| Listener {
            local: row.local.to_string(),
            netns: row.netns,
            owner: row.owner.into(),
            completed: row.completed,
            dropped: drop_map(&row.dropped),
            synack_retransmits: row.synack_retransmits,
            dwell: row.dwell.summary(),
        })
        .collect();
    listeners.sort_by(|a, b| {
        let total = |l: &Listener| l.completed + l.dropped.values().sum::<u64>();
        total(b).cmp(&total(a)).then_with(|| a.local.cmp(&b.local)).then_with(|| a.netns.cmp(&b.netns))
    });
    // Listeners beyond the cap (in memory) and the listing limit: one last row.
    let overflow = s.listeners.overflow();
    let mut keys = s.listeners.overflowed_keys();
    let mut other = Listener {
        local: String::new(),
        netns: 0,
        owner: RowOwner::Unknown,
        completed: overflow.completed,
        dropped: drop_map(&overflow.dropped),
        synack_retransmits: overflow.synack_retransmits,
        dwell: overflow.dwell.summary(),
    };
    if listeners.len() > super::timewait::MAX_LISTED {
        other.dwell = Summary::default();
        for l in listeners.drain(super::timewait::MAX_LISTED..) {
            keys += 1;
            other.completed += l.completed;
            other.synack_retransmits += l.synack_retransmits;
            for (reason, n) in l.dropped {
                *other.dropped.entry(reason).or_default() += n;
            }
        }
    }
    if keys > 0 {
        other.local = super::timewait::other_label(keys, s.listeners.overflow_count_saturated(), "listeners");
        listeners.push(other);
    }

    let namespaces: BTreeSet<u32> =
        s.listeners.iter().map(|(_, r)| r.netns).chain(tracker.listener_namespaces()).collect();
    let kernel_counters = namespaces
        .into_iter()
        .filter_map(|ns| {
            let now = ctx.netns.current(ns)?;
            let deltas = KERNEL_COUNTERS
                .iter()
                .map(|&c| (c, ctx.netns.delta(ns, &now, &format!("TcpExt:{c}"))))
                .collect();
            Some(NamespaceCounters { netns: ns, deltas })
        })
        .collect();

    SynRecvSection {
        dwell: s.dwell.summary(),
        created: s.created,
        completed: s.completed,
        dropped: drop_map(&s.dropped),
        current: s.current(),
        synack_retransmits: s.synack_retransmits,
        without_request: s.children_without_request,
        evicted: s.evicted,
        listeners,
        kernel_counters,
    }
}
