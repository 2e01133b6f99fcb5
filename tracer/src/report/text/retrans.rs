//! The retransmits section of the text report.

use std::fmt::Write as _;

use super::quantiles;
use crate::{
    report::{Report, retrans::StallRowOut},
    stats::human_us,
};

pub(super) fn retransmits(out: &mut String, report: &Report) {
    let r = &report.retransmits;
    let s = &r.segments;
    let total = s.syn + s.synack + s.data + s.fin;
    if total == 0 && r.timeouts == 0 && r.unseen == 0 {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "retransmits: {total} segments ({} SYN, {} SYN-ACK, {} data, {} FIN); causes: {} timeout, {} fast \
         recovery, {} other; {} connections killed by timeout",
        s.syn, s.synack, s.data, s.fin, r.causes.timeout, r.causes.fast, r.causes.other, r.timeouts
    );
    if r.unseen > 0 {
        let _ = writeln!(
            out,
            "  WARNING: {} more retransmitted segments were counted by the kernel (tcpi_total_retrans) but \
             seen by no event: not in the figures above; each connection's count includes them",
            r.unseen
        );
    }
    super::accept::drops_beside(out, report, false);
    let p = &r.per_connection;
    if p.count > 0 {
        let _ =
            writeln!(out, "  per connection: {} ({} connections)", quantiles(p, |n| n.to_string()), p.count);
    }
    if !r.stalls.is_empty() {
        let _ = writeln!(out, "  stalls (time each retransmission's connection had waited):");
        for (cause, s) in &r.stalls {
            let _ = writeln!(out, "    {cause:<8} {} ({} skbs resent)", quantiles(s, human_us), s.count);
        }
    }
    for (title, rows) in [("most retransmits", &r.top), ("killed by retransmission timeout", &r.killed)] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {title}:");
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<26} {:<26} {:>6} {:>9} {:>9}  {:<12} WORKLOAD",
            "PID", "COMM", "NETNS", "LOCAL", "REMOTE", "RETRANS", "STALLED", "MAXSTALL", "STATE"
        );
        for c in rows {
            let (pid, comm) = c.owner.cells();
            let _ = writeln!(
                out,
                "  {:>7} {:<16} {:>10} {:<26} {:<26} {:>6} {:>9} {:>9}  {:<12} {}",
                pid,
                comm,
                c.netns,
                c.local,
                c.remote,
                c.retransmits,
                human_us(c.stall_total_us),
                human_us(c.stall_max_us),
                c.state,
                c.owner.workload_cell()
            );
        }
    }
    for (title, rows) in [
        ("worst stalls by destination", &r.stall_destinations),
        ("worst stalls by process", &r.stall_processes),
    ] {
        stall_rows(out, title, rows);
    }
}

fn stall_rows(out: &mut String, title: &str, rows: &[StallRowOut]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {title}:");
    let _ = writeln!(
        out,
        "  {:>7} {:<16} {:>10} {:<26} {:>7} {:>9} {:>9} {:>9} {:>7}  CAUSES",
        "PID", "COMM", "NETNS", "REMOTE", "STALLS", "P50", "P99", "MAX", "BACKOFF"
    );
    for row in rows {
        let (pid, comm) = row.owner.cells();
        let causes: Vec<String> = row.by_cause.iter().map(|(c, s)| format!("{c} {}", s.count)).collect();
        let s = &row.stall;
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<26} {:>7} {:>9} {:>9} {:>9} {:>7}  {}",
            pid,
            comm,
            row.netns.map_or_else(|| "-".to_string(), |n| n.to_string()),
            row.remote.as_deref().unwrap_or("-"),
            s.count,
            human_us(s.p50),
            human_us(s.p99),
            human_us(s.max),
            row.max_backoff,
            causes.join(", ")
        );
    }
}
