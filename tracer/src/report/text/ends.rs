//! "Why connections ended": the reasons with their counts, the states the
//! peer's resets hit, and the top failing processes and peers; and the
//! sockets stuck in a closing state.

use std::fmt::Write as _;

use super::table_heading;
use crate::report::Report;

/// Rows of the process x peer table shown here (JSON has them all).
const SHOWN: usize = 10;

pub(super) fn connection_ends(out: &mut String, report: &Report) {
    let e = &report.connection_ends;
    if e.orderly + e.failed == 0 {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "why connections ended: {} orderly, {} failed ({} still open)",
        e.orderly, e.failed, e.still_open
    );
    for row in crate::track::end::EndReason::ALL {
        let n = e.by_reason.get(row.name()).copied().unwrap_or(0);
        if n == 0 {
            continue;
        }
        let mut line = format!("  {n:>9}  {}", row.describe());
        if row == crate::track::end::EndReason::ResetByPeer && !e.reset_by_peer_in.is_empty() {
            let states: Vec<String> = e.reset_by_peer_in.iter().map(|(s, n)| format!("{n} in {s}")).collect();
            line.push_str(&format!(" ({})", states.join(", ")));
        }
        let _ = writeln!(out, "{line}");
    }
    let failing: Vec<_> = e.rows.iter().filter(|r| r.reason.is_failure()).take(SHOWN).collect();
    if failing.is_empty() {
        return;
    }
    table_heading(
        out,
        "failed connections by process and peer",
        format_args!(
            "  {:>7} {:<16} {:>10} {:<22} {:<26} {:<22} {:>7}  WORKLOAD",
            "PID", "COMM", "NETNS", "LOCAL", "REMOTE", "REASON", "COUNT"
        ),
    );
    for r in failing {
        let (pid, comm) = r.owner.cells();
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<22} {:<26} {:<22} {:>7}  {}",
            pid,
            comm,
            r.netns,
            r.local,
            r.remote,
            r.reason.name(),
            r.count,
            r.owner.workload_cell()
        );
    }
}

/// "stuck sockets": those in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for
/// `--stuck-after` or longer, or since before tracing.
pub(super) fn stuck(out: &mut String, report: &Report) {
    let s = &report.stuck;
    if s.rows.is_empty() {
        return;
    }
    let counts: Vec<String> = s.by_state.iter().map(|(state, n)| format!("{n} {state}")).collect();
    table_heading(
        out,
        &format!(
            "stuck sockets ({} s or more in the state, or since before tracing): {}",
            s.after_s,
            counts.join(", ")
        ),
        format_args!(
            "  {:>7} {:<16} {:>10} {:<22} {:<26} {:<10} {:>7} {:>9} {:>7}  WORKLOAD",
            "PID", "COMM", "NETNS", "LOCAL", "REMOTE", "STATE", "COUNT", "OLDEST", "BEFORE"
        ),
    );
    for r in s.rows.iter().take(SHOWN) {
        let (pid, comm) = r.owner.cells();
        let oldest = if r.before_tracing > 0 {
            format!(">={:.0}s", r.oldest_s)
        } else {
            format!("{:.0}s", r.oldest_s)
        };
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:>10} {:<22} {:<26} {:<10} {:>7} {:>9} {:>7}  {}",
            pid,
            comm,
            r.netns,
            r.local,
            r.remote,
            r.state,
            r.count,
            oldest,
            r.before_tracing,
            r.owner.workload_cell()
        );
    }
}
