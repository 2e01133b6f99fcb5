//! The TIME_WAIT and connect() error sections of the text report.

use std::fmt::Write as _;

use super::table_heading;
use crate::{report::Report, stats::human_us};

pub(super) fn time_wait(out: &mut String, report: &Report) {
    let tw = &report.time_wait;
    let e = &tw.ended;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "TIME_WAIT: {} now ({} existed at start, age unknown), {} created, ended: {} expired, {} reused, \
         {} reset, {} recycled{}",
        tw.current,
        tw.preexisting,
        tw.created,
        e.expired,
        e.reused,
        e.reset,
        e.recycled,
        if e.purged > 0 { format!(", {} purged (namespace gone)", e.purged) } else { String::new() }
    );
    if tw.lifetime.count > 0 {
        let _ = writeln!(
            out,
            "  lifetime: p50 {}, max {} ({} measured; expiry is 60 s plus timer-wheel slack)",
            human_us(tw.lifetime.p50),
            human_us(tw.lifetime.max),
            tw.lifetime.count
        );
    }
    if tw.overflow.kernel > 0 || tw.overflow.closes_without_time_wait > 0 {
        let _ = writeln!(
            out,
            "  skipped TIME_WAIT (tcp_max_tw_buckets): {} (kernel counter), {} seen closing",
            tw.overflow.kernel, tw.overflow.closes_without_time_wait
        );
    }
    if tw.by_destination.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:>10} {:<20} {:<26} {:<6} {:>7} {:>7} {:>6} {:>9}  CLOSERS",
        "NETNS", "LOCAL", "REMOTE", "SIDE", "COUNT", "PORTS", "USED", "CREATED/s"
    );
    for d in &tw.by_destination {
        let closers: Vec<String> = d
            .closers
            .iter()
            .map(|c| {
                let (_, comm) = c.owner.cells();
                let workload = c.owner.workload().map_or_else(String::new, |w| format!(" ({})", w.label));
                match c.owner.pid() {
                    Some(pid) => format!("{comm}[{pid}]{workload} x{}", c.count),
                    None => format!("{comm} x{}", c.count),
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:>10} {:<20} {:<26} {:<6} {:>7} {:>7} {:>6} {:>9.1}  {}",
            d.netns,
            d.local,
            d.remote,
            d.side,
            d.count,
            d.port_range.map_or_else(|| "-".into(), |r| r.to_string()),
            d.utilization.map_or_else(|| "-".into(), |u| format!("{:.0}%", 100.0 * u)),
            d.created_per_s,
            closers.join(", ")
        );
    }
}

pub(super) fn connect_errors(out: &mut String, report: &Report) {
    if report.connect_errors.is_empty() {
        return;
    }
    table_heading(
        out,
        "connect() errors",
        format_args!(
            "  {:>7} {:<16} {:>10} {:<26} {:<14} {:<14} {:>7}  WORKLOAD",
            "PID", "COMM", "NETNS", "REMOTE", "ERRNO", "CLASS", "COUNT"
        ),
    );
    for e in &report.connect_errors {
        let (pid, comm) = e.owner.cells();
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<26} {:<14} {:<14} {:>7}  {}",
            pid,
            comm,
            e.netns,
            e.remote,
            e.errno,
            e.class.map_or("-", |c| c.name()),
            e.count,
            e.owner.workload_cell()
        );
    }
}
