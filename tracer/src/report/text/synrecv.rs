//! The SYN_RECV section of the text report.

use std::fmt::Write as _;

use super::quantiles;
use crate::{report::Report, stats::human_us};

pub(super) fn syn_recv(out: &mut String, report: &Report) {
    let s = &report.syn_recv;
    if s.created == 0
        && s.without_request == 0
        && s.kernel_counters.iter().all(|c| c.deltas.values().all(|v| *v == 0))
    {
        return;
    }
    let dropped: u64 = s.dropped.values().sum();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "SYN_RECV (request sockets, SYN to handshake): {} seen, {} established, {} dropped, {} still waiting; \
         {} SYN-ACK retransmits",
        s.created, s.completed, dropped, s.current, s.synack_retransmits
    );
    if s.dwell.count > 0 {
        let _ = writeln!(out, "  dwell: {}", quantiles(&s.dwell, human_us));
    }
    let reasons: Vec<String> =
        s.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    if !reasons.is_empty() {
        let _ = writeln!(out, "  dropped: {}", reasons.join(", "));
    }
    if s.without_request > 0 {
        let _ = writeln!(
            out,
            "  handshakes without a request socket (syncookies, or older than tracing): {}",
            s.without_request
        );
    }
    if !s.listeners.is_empty() {
        let _ = writeln!(
            out,
            "  {:<26} {:>10} {:>7} {:<16} {:>9} {:>7} {:>8} {:>9} {:>9}  WORKLOAD",
            "LISTENER", "NETNS", "PID", "COMM", "ESTABL.", "DROPPED", "SYNACK-RT", "DWELL p50", "p99"
        );
        for l in &s.listeners {
            let (pid, comm) = l.owner.cells();
            let _ = writeln!(
                out,
                "  {:<26} {:>10} {:>7} {:<16} {:>9} {:>7} {:>8} {:>9} {:>9}  {}",
                l.local,
                l.netns,
                pid,
                comm,
                l.completed,
                l.dropped.values().sum::<u64>(),
                l.synack_retransmits,
                if l.dwell.count > 0 { human_us(l.dwell.p50) } else { "-".into() },
                if l.dwell.count > 0 { human_us(l.dwell.p99) } else { "-".into() },
                l.owner.workload_cell(),
            );
        }
    }
    super::accept::drops_beside(out, report, true);
    for c in s.kernel_counters.iter().filter(|c| c.deltas.values().any(|v| *v != 0)) {
        let list: Vec<String> =
            c.deltas.iter().filter(|(_, v)| **v != 0).map(|(k, v)| format!("{k} +{v}")).collect();
        let _ = writeln!(out, "  kernel counters in netns {}: {}", c.netns, list.join(", "));
    }
}
