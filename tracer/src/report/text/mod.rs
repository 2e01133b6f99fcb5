//! The report for people: tables, percentiles and log-scale ASCII histograms.

mod accept;
mod ends;
mod retrans;
mod synrecv;
#[cfg(test)]
mod tests;
mod timewait;

use std::fmt::Write as _;

use super::Report;
use crate::{
    report::diagnose::Severity,
    stats::{Histo, Summary, human_us},
};

const BAR_WIDTH: u64 = 40;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, report);
    diagnoses(&mut out, report);
    connections(&mut out, report);
    ends::connection_ends(&mut out, report);
    ends::stuck(&mut out, report);
    synrecv::syn_recv(&mut out, report);
    accept::accept_queue(&mut out, report);
    accept::drops(&mut out, report);
    timewait::time_wait(&mut out, report);
    timewait::connect_errors(&mut out, report);
    retrans::retransmits(&mut out, report);
    states(&mut out, report);
    closers(&mut out, report);
    histograms(&mut out, report);
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn header(out: &mut String, report: &Report) {
    let e = &report.events;
    let _ = writeln!(out, "tcptrace report: {:.1} s", report.duration_s);
    let skipped = if e.recursion_misses > 0 {
        format!("; {} skipped by the kernel (recursion)", e.recursion_misses)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "events: {} seen, {} received, {} lost; {} decoded, {} undecodable{skipped}",
        e.seen, e.received, e.lost, e.decoded, e.decode_errors
    );
    if e.lost + e.decode_errors > 0 {
        let _ = writeln!(
            out,
            "WARNING: {} events were lost; the numbers below undercount. Retry with a larger \
             --ring-buffer-size or on a less loaded host.",
            e.lost + e.decode_errors
        );
    }
    if e.recursion_misses > 0 {
        let programs: Vec<String> =
            e.recursion_misses_by_program.iter().map(|(program, n)| format!("{program} {n}")).collect();
        let _ = writeln!(
            out,
            "WARNING: the kernel skipped {} runs of tcptrace's programs because the same program was \
             already running on that CPU ({}); any event those runs would have produced is lost, and \
             the numbers below may undercount.",
            e.recursion_misses,
            programs.join(", ")
        );
    }
    let full: Vec<String> = report
        .limits
        .iter()
        .filter(|t| t.evicted > 0)
        .map(|t| {
            format!(
                "{}{} {} (cap {})",
                if t.at_least { "at least " } else { "" },
                t.evicted,
                t.title(),
                t.cap
            )
        })
        .collect();
    if !full.is_empty() {
        let _ = writeln!(
            out,
            "WARNING: memory caps reached, left out: {}; the numbers below undercount them.",
            full.join(", ")
        );
    }
}

fn diagnoses(out: &mut String, report: &Report) {
    if report.diagnoses.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", "=".repeat(100));
    for d in &report.diagnoses {
        let tag = match d.severity {
            Severity::Critical => "CRITICAL",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
        };
        let _ = writeln!(out, "{tag}: {}", d.summary);
        for line in d.detail.lines() {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "{}", "=".repeat(100));
    }
}

fn connections(out: &mut String, report: &Report) {
    let c = &report.connections;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "connections: {} opened, {} closed ({} were open before tracing), {} still open",
        c.opened, c.closed, c.preexisting, report.live_sockets
    );
    let _ = writeln!(
        out,
        "  who closed first: {} here (active close), {} the peer, {} both at once",
        c.active_close_local, c.active_close_remote, c.simultaneous_close
    );
    let _ = writeln!(out, "  went on to TIME_WAIT: {}", c.time_wait);
    if c.evicted > 0 {
        let _ = writeln!(out, "  evicted at the memory cap: {}", c.evicted);
    }
}

fn states(out: &mut String, report: &Report) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "dwell per state", "count", "min", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, s) in &report.states.0 {
        if s.count == 0 {
            let _ = writeln!(out, "  {name:<14} {:>8}", 0);
            continue;
        }
        let _ = writeln!(
            out,
            "  {name:<14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            s.count,
            human_us(s.min),
            human_us(s.mean as u64),
            human_us(s.p50),
            human_us(s.p90),
            human_us(s.p99),
            human_us(s.p999),
            human_us(s.max)
        );
    }
    let _ = writeln!(
        out,
        "  (SYN_RECV_CHILD: the accepted socket's own SYN_RECV, from the final ACK to ESTABLISHED; \
         not the SYN_RECV that ss shows)"
    );
}

fn closers(out: &mut String, report: &Report) {
    if report.active_closers.is_empty() {
        return;
    }
    table_heading(
        out,
        "active closers (the side that closes first holds the TIME_WAIT)",
        format_args!(
            "  {:>7} {:<16} {:>10} {:<20} {:<26} {:>7} {:>9}  {:<24}  CGROUP",
            "PID", "COMM", "NETNS", "LOCAL", "REMOTE", "CLOSES", "TIME_WAIT", "WORKLOAD"
        ),
    );
    for row in &report.active_closers {
        let (pid, comm) = row.owner.cells();
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<20} {:<26} {:>7} {:>9}  {:<24}  {}",
            pid,
            comm,
            row.netns,
            row.local,
            row.remote,
            row.closes,
            row.time_wait,
            row.owner.workload_cell(),
            row.cgroup.as_deref().unwrap_or("-")
        );
    }
}

fn histograms(out: &mut String, report: &Report) {
    for (name, histo) in &report.histograms {
        if histo.is_empty() {
            continue;
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{name} ({} samples)", histo.len());
        bars(out, histo);
    }
}

/// A table's blank line, title and column names.
fn table_heading(out: &mut String, title: &str, columns: std::fmt::Arguments<'_>) {
    let _ = writeln!(out);
    let _ = writeln!(out, "{title}");
    let _ = writeln!(out, "{columns}");
}

/// `p50 .., p90 .., p99 .., max ..` of a summary, each value as `unit` writes it.
fn quantiles(s: &Summary, unit: impl Fn(u64) -> String) -> String {
    format!("p50 {}, p90 {}, p99 {}, max {}", unit(s.p50), unit(s.p90), unit(s.p99), unit(s.max))
}

/// One line per power-of-two bucket: range, bar, count.
pub fn bars(out: &mut String, histo: &Histo) {
    let buckets = histo.log2_buckets();
    let peak = buckets.iter().map(|b| b.2).max().unwrap_or(0).max(1);
    for (low, high, count) in buckets {
        let width = (count * BAR_WIDTH).div_ceil(peak);
        let range = format!("{} - {}", human_us(low), human_us(high));
        let _ = writeln!(out, "  {range:>19} |{:<40}| {count}", "#".repeat(width as usize));
    }
}
