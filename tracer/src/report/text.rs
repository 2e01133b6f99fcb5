//! The report for people.

use std::fmt::Write as _;

use super::Report;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let e = &report.events;
    let _ = writeln!(out, "tcptrace report: {:.1} s", report.duration_s);
    let _ = writeln!(
        out,
        "events: {} seen, {} received, {} lost{}",
        e.seen,
        e.received,
        e.lost,
        if e.decode_errors > 0 { format!(", {} undecodable", e.decode_errors) } else { String::new() }
    );
    if e.lossy() {
        let _ = writeln!(
            out,
            "WARNING: {} events were lost; the numbers below undercount. Retry with a larger \
             --ring-buffer-size or on a less loaded host.",
            e.lost + e.decode_errors
        );
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
