//! The accept-queue and kernel-drop sections of the text report.

use std::fmt::Write as _;

use super::quantiles;
use crate::{
    report::{Report, drops::DropRowOut},
    stats::human_us,
};

pub(super) fn accept_queue(out: &mut String, report: &Report) {
    let a = &report.accept_queue;
    if a.accepted == 0 && a.listeners.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Accept queue (handshake complete to accept()): {} accepted, {} still waiting{}",
        a.accepted,
        a.waiting,
        if a.unmatched > 0 {
            format!(", {} accepted without a handshake seen", a.unmatched)
        } else {
            String::new()
        }
    );
    if a.wait.count > 0 {
        let _ = writeln!(out, "  wait: {}", quantiles(&a.wait, human_us));
    }
    let _ = writeln!(
        out,
        "  {:<26} {:>10} {:>7} {:<16} {:>9} {:>9} {:>9} {:>9} {:>7}  WORKLOAD",
        "LISTENER", "NETNS", "PID", "COMM", "ACCEPTED", "WAIT p50", "p99", "QUEUE MAX", "LIMIT"
    );
    for l in &a.listeners {
        let (pid, comm) = l.owner.cells();
        let wait = |v: u64| if l.wait.count > 0 { human_us(v) } else { "-".into() };
        let _ = writeln!(
            out,
            "  {:<26} {:>10} {:>7} {:<16} {:>9} {:>9} {:>9} {:>9} {:>7}  {}",
            l.local,
            l.netns,
            pid,
            comm,
            l.accepted,
            wait(l.wait.p50),
            wait(l.wait.p99),
            l.queue_max,
            l.queue_limit.map_or_else(|| "-".into(), |n| n.to_string()),
            l.owner.workload_cell(),
        );
    }
}

pub(super) fn drops(out: &mut String, report: &Report) {
    let d = &report.drops;
    if !d.available || d.segments == 0 {
        return;
    }
    let _ = writeln!(out);
    let _ =
        writeln!(out, "Kernel drops (TCP segments thrown away, with the kernel's reason): {}", d.segments);
    for r in &d.by_reason {
        let meaning = r.meaning.map_or_else(String::new, |m| format!(": {m}"));
        let _ = writeln!(out, "  {:>8} {}{meaning}", r.segments, r.reason);
    }
    let _ = writeln!(
        out,
        "  {:<22} {:>10} {:<30} {:>8} {:>6} {:>6}  FROM (e.g.)",
        "REASON", "NETNS", "DESTINATION", "SEGMENTS", "SYN", "RST"
    );
    for row in &d.rows {
        let _ = writeln!(
            out,
            "  {:<22} {:>10} {:<30} {:>8} {:>6} {:>6}  {}",
            row.reason, row.netns, row.destination, row.segments, row.syn, row.rst, row.source
        );
    }
}

/// Whether a drop row's segments were going to one of the SYN_RECV
/// section's listeners (final ACKs of an overflowing queue, SYNs).
fn toward_listener(report: &Report, row: &DropRowOut) -> bool {
    let Ok(to) = row.destination.parse::<std::net::SocketAddr>() else { return false };
    report.syn_recv.listeners.iter().any(|l| {
        // A listener on the wildcard address takes every address's port.
        l.netns == row.netns
            && l.local.parse::<std::net::SocketAddr>().is_ok_and(|local| {
                local.port() == to.port() && (local.ip() == to.ip() || local.ip().is_unspecified())
            })
    })
}

/// The drop rows that explain a section, on one line after it: those toward
/// its listeners (SYN_RECV), or the losses that others resend (retransmits).
pub(super) fn drops_beside(out: &mut String, report: &Report, listeners: bool) {
    let rows: Vec<String> = report
        .drops
        .rows
        .iter()
        .filter(|r| {
            if listeners {
                toward_listener(report, r)
            } else {
                !toward_listener(report, r) && r.reason != "NO_SOCKET"
            }
        })
        .map(|r| format!("{} {} x{}", r.reason, r.destination, r.segments))
        .collect();
    if rows.is_empty() {
        return;
    }
    let title = if listeners {
        "kernel drops toward these listeners"
    } else {
        "kernel drops on the way (what was resent)"
    };
    let _ = writeln!(out, "  {title}: {}", rows.join(", "));
}
