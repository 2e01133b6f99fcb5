//! The accept queue per listener and the kernel's TCP drops by reason.

use super::{MetricsBuilder, Out, comm, seconds, workload};
use crate::{drop_reason, track::Tracker};

impl MetricsBuilder {
    pub(super) fn accept_queue(&mut self, out: &mut Out, t: &Tracker) {
        let names = ["netns", "listener", "comm", "workload"];
        let mut wl = self.workloads.take();
        let mut rows: Vec<(Vec<String>, &crate::track::accept::AcceptRow)> = t
            .accepts
            .listeners
            .iter()
            .map(|(key, row)| {
                let identity = t.synrecv.listeners.get(key).map_or_else(
                    || vec![String::new(); 4],
                    |l| {
                        vec![
                            l.netns.to_string(),
                            l.local.to_string(),
                            comm(l.owner),
                            workload(&mut wl, l.owner),
                        ]
                    },
                );
                (identity, row)
            })
            .collect();
        self.workloads = wl;
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let wait =
            rows.iter().filter(|(_, r)| !r.wait.is_empty()).map(|(l, r)| (l.clone(), seconds(&r.wait)));
        let series = self.bounded("accept_wait", &names, wait);
        out.seconds_series(
            "tcptrace_accept_wait",
            "Time from a completed handshake to accept() returning the connection, per listener: a slow acceptor fills the accept queue.",
            series,
        );
        let max = rows.iter().map(|(l, r)| (l.clone(), u64::from(r.depth_max)));
        let series = self.bounded("accept_queue_max", &names, max);
        out.gauge_series(
            "tcptrace_accept_queue_max",
            "Deepest accept queue seen per listener (children waiting for accept() when a handshake completed, itself included; Recv-Q of ss -lnt).",
            series,
        );
        let limit = rows.iter().filter_map(|(l, r)| Some((l.clone(), u64::from(r.limit?))));
        let series = self.bounded("accept_queue_limit", &names, limit);
        out.gauge_series(
            "tcptrace_accept_queue_limit",
            "The accept queue's limit per listener (listen() backlog capped by net.core.somaxconn; Send-Q of ss -lnt).",
            series,
        );
    }

    pub(super) fn drops(&mut self, out: &mut Out, t: &Tracker) {
        let mut by: std::collections::BTreeMap<(u32, u32), u64> = std::collections::BTreeMap::new();
        for (key, row) in t.drops.rows.iter() {
            *by.entry((key.netns, key.reason)).or_default() += row.segments;
        }
        // Rows beyond the tracker's cap: counted by reason only.
        let listed: u64 = by.values().sum();
        let rows = by
            .into_iter()
            .map(|((netns, reason), n)| (vec![netns.to_string(), drop_reason::name(reason)], n))
            .chain(
                (t.drops.total > listed)
                    .then(|| (vec![String::new(), String::new()], t.drops.total - listed)),
            );
        let series = self.bounded("kernel_drops", &["netns", "reason"], rows);
        out.counter_series(
            "tcptrace_kernel_drops",
            "TCP segments the kernel dropped, by namespace and the kernel's reason (kfree_skb, Linux 5.17+).",
            series,
        );
    }
}
