//! The tracer's own health: what it costs in the kernel, how full its ring
//! buffer gets, how full its tables are, and what it is.

use prometheus_client::{metrics::MetricType, registry::Unit};

use super::{MetricsBuilder, Out, Value};
use crate::{pipeline::collect::KernelCounters, report::table_use, track::Tracker};

/// Bytes one record takes in the ring buffer: the event and the ring
/// buffer's 8-byte header.
const RECORD_BYTES: u64 = tracer_common::RAW_EVENT_SIZE as u64 + 8;

impl MetricsBuilder {
    pub(super) fn health(&mut self, out: &mut Out, t: &Tracker, kernel: &KernelCounters) {
        // The kernel counts runs and their time only while this is 1.
        let stats_on =
            std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1");
        let per_program = |value: fn(&crate::pipeline::collect::ProgramMisses) -> Value| {
            kernel
                .recursion
                .iter()
                .filter(|_| stats_on)
                .map(|p| (vec![("program", p.program.clone())], value(p)))
                .collect::<Vec<_>>()
        };
        out.labelled(
            "tcptrace_program_runs",
            "Runs of each tcptrace kernel program (bpf_prog_info.run_cnt); only while kernel.bpf_stats_enabled is 1, no series otherwise.",
            None,
            MetricType::Counter,
            per_program(|p| Value::Counter(p.run_cnt)),
        );
        out.labelled(
            "tcptrace_program_run_time",
            "Time spent in each tcptrace kernel program (bpf_prog_info.run_time_ns); divided by tcptrace_program_runs_total, the cost per run. Only while kernel.bpf_stats_enabled is 1.",
            Some(Unit::Seconds),
            MetricType::Counter,
            per_program(|p| Value::FloatCounter(p.run_time_ns as f64 * 1e-9)),
        );
        let ring = self.user.ring_bytes.load(std::sync::atomic::Ordering::Relaxed);
        if ring > 0 {
            let peak = self.user.take_drain_peak() * RECORD_BYTES;
            out.gauge(
                "tcptrace_ring_buffer_peak_fill_ratio",
                "The fullest the ring buffer was found at a drain since the last update (records waiting x their size / its size); near 1, events are about to be lost.",
                (peak as f64 / ring as f64).min(1.0),
            );
            out.gauge("tcptrace_ring_buffer_size_bytes", "The ring buffer's size.", ring as f64);
        }
        let tables = table_use(t);
        let by_table = |value: fn(&crate::report::TableUse) -> Value| {
            tables.iter().map(|u| (vec![("table", u.table.to_string())], value(u))).collect::<Vec<_>>()
        };
        out.labelled(
            "tcptrace_table_entries",
            "Entries in each of the tracker's capped tables (records and report rows) now.",
            None,
            MetricType::Gauge,
            by_table(|u| Value::Gauge(u.used as f64)),
        );
        out.labelled(
            "tcptrace_table_capacity",
            "The cap of each of the tracker's tables (TCPTRACE_MAX_* environment variables).",
            None,
            MetricType::Gauge,
            by_table(|u| Value::Gauge(u.cap as f64)),
        );
        out.labelled(
            "tcptrace_table_evictions",
            "Records dropped (oldest first) or rows summed into an (other) row because a table was full; what they held is missing from the figures.",
            None,
            MetricType::Counter,
            by_table(|u| Value::Counter(u.evicted)),
        );
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.labelled(
            "tcptrace_build_info",
            "Always 1: the tcptrace version and the kernel it traces, as labels.",
            None,
            MetricType::Gauge,
            vec![(
                vec![("version", crate::cli::VERSION.to_string()), ("kernel", kernel_release)],
                Value::Gauge(1.0),
            )],
        );
    }
}
