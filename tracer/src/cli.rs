//! Command line (clap derive). Parsing only: commands live in their modules.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::pipeline::filter::FilterArgs;

/// `tcptrace --version`: the package version, the commit the binary was built
/// from ("unknown" outside a git checkout) and the sha256 of the kernel
/// programs' object embedded in it (both from build.rs), so that a binary
/// copied to a host names exactly what it loads into the kernel.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TCPTRACE_COMMIT"),
    ", bpf sha256:",
    env!("TCPTRACE_BPF_SHA256"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version = VERSION,
    about = "Trace TCP connection lifecycles with eBPF: states, SYN_RECV, TIME_WAIT, retransmits",
    long_about = "Trace TCP connection lifecycles with eBPF.\n\n\
        tcptrace follows every TCP socket on the host from connect/accept to close and reports \
        how long connections spend in each state, who closes first, how many sockets sit in \
        TIME_WAIT, and retransmits, as latency histograms. Needs root (CAP_BPF and CAP_PERFMON)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at startup; boxing would only add noise")]
pub enum Command {
    /// Trace live until the duration ends, Ctrl-C or SIGTERM, then print a report.
    #[command(after_help = "Examples:\n  \
        sudo tcptrace run --duration 30s\n  \
        sudo tcptrace run --events                 # one line per transition, Ctrl-C to stop\n  \
        sudo tcptrace run --format json --duration 1m > report.json")]
    Run(RunArgs),
    /// Check everything tcptrace needs on this host (privileges, BTF, hooks,
    /// program types), one line each with OK/WARN/FAIL and the fix.
    #[command(after_help = "Exit status: 0 when tcptrace can run (warnings mean a feature is \
        unavailable), 2 when a check failed.\n\nExample:\n  sudo tcptrace check")]
    Check,
    /// Record the raw event stream, with the context a report needs, to a
    /// file; `tcptrace report FILE` turns it into the report later.
    #[command(after_help = "Examples:\n  \
        sudo tcptrace record -o incident.tcptrace --duration 5m\n  \
        sudo tcptrace record -o web.tcptrace --port 443\n  \
        tcptrace report incident.tcptrace --format json")]
    Record(RecordArgs),
    /// Print the report of a recording, exactly as the live run would have
    /// (no privileges needed). Filters apply to the replay.
    #[command(after_help = "Examples:\n  \
        tcptrace report incident.tcptrace\n  \
        tcptrace report incident.tcptrace --events --comm nginx")]
    Report(ReportArgs),
    /// Reproduce an incident in two throwaway network namespaces (own client,
    /// server, nftables rules and sysctls, all removed afterwards) and trace it.
    #[command(after_help = "Examples:\n  \
        sudo tcptrace demo time-wait\n  \
        sudo tcptrace demo syn-recv --events\n  \
        sudo tcptrace demo retransmits --format json")]
    Demo(DemoArgs),
    /// Trace continuously and expose counters, gauges and histograms on
    /// /metrics in the Prometheus (OpenMetrics) text format.
    #[command(after_help = "Label values beyond --top per metric are summed into a series \
        labelled \"other\", so cardinality stays bounded however many peers the host sees.\n\n\
        Examples:\n  \
        sudo tcptrace serve                                  # http://127.0.0.1:9464/metrics\n  \
        sudo tcptrace serve --listen 0.0.0.0:9464 --port 443\n\n\
        Prometheus scrape config:\n  \
        - job_name: tcptrace\n    static_configs: [{targets: ['HOST:9464']}]")]
    Serve(ServeArgs),
    /// Write the man pages (tcptrace.1 and one per command) to a directory.
    #[command(hide = true)]
    Man {
        /// Output directory.
        #[arg(long, default_value = "target/man")]
        out: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Which incident.
    #[arg(value_enum, default_value_t = crate::commands::demo::Scenario::TimeWait)]
    pub scenario: crate::commands::demo::Scenario,

    /// How long to trace it.
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stream one line per event too.
    #[arg(long, short = 'e')]
    pub events: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to serve /metrics on.
    #[arg(long, short = 'l', value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,

    /// Series per labelled metric before the rest is summed into "other".
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top: u16,

    /// How often the metrics are brought up to date.
    #[arg(long, short = 'i', value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,

    /// Stop after this long (default: until Ctrl-C or SIGTERM).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub thresholds: Thresholds,

    #[command(flatten)]
    pub filters: FilterArgs,

    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Where to write the recording.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: std::path::PathBuf,

    /// Also print the live report at the end (the one `tcptrace report FILE`
    /// reproduces).
    #[arg(long)]
    pub report: bool,

    /// Format of that report.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stop after this long (e.g. 30s, 5m; a bare number is seconds).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub thresholds: Thresholds,

    #[command(flatten)]
    pub filters: FilterArgs,

    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A file written by `tcptrace record`.
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stream one line per event before the report, as `run --events` would.
    #[arg(long, short = 'e')]
    pub events: bool,

    #[command(flatten)]
    pub thresholds: Thresholds,

    #[command(flatten)]
    pub filters: FilterArgs,
}

pub use crate::output::Format;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Stop after this long (e.g. 30s, 5m, 1h30m; a bare number is seconds).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stream one line per event (state transition, ...) before the report.
    #[arg(long, short = 'e')]
    pub events: bool,

    /// Refresh the live summary this often (on a terminal it is redrawn in
    /// place; otherwise, and with --format json, one line per interval).
    #[arg(long, short = 'i', value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,

    /// No live summary: only the event stream (if asked) and the final report.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Also write every histogram, per interval, in the HdrHistogram interval
    /// log format (for HdrHistogram's plotting tools).
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub thresholds: Thresholds,

    #[command(flatten)]
    pub filters: FilterArgs,

    #[command(flatten)]
    pub tuning: Tuning,
}

/// What the report counts as a finding.
#[derive(Debug, Clone, Copy, Args)]
pub struct Thresholds {
    /// A socket in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK this long is stuck (so
    /// is one already in such a state when tracing starts): listed in the
    /// report and the live view, and diagnosed (CLOSE_WAIT: the application
    /// never closed it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub stuck_after: Duration,
}

impl Default for Thresholds {
    /// As the flags' defaults.
    fn default() -> Self {
        Self { stuck_after: crate::track::stuck::DEFAULT_STUCK_AFTER }
    }
}

impl Thresholds {
    /// Applies them to a tracker.
    pub fn apply(&self, tracker: &mut crate::track::Tracker) {
        tracker.stuck_after_ns = u64::try_from(self.stuck_after.as_nanos()).unwrap_or(u64::MAX);
    }
}

/// Knobs for tests and benchmarks, hidden from --help.
#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Ring buffer size (bytes, power of two, at least one page; K/M suffixes).
    #[arg(long, hide = true, default_value = "8M", value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Userspace drains the ring buffer at least this often.
    #[arg(long, hide = true, default_value = "10ms", value_parser = parse_duration)]
    pub drain_interval: Duration,

    /// The kernel wakes userspace once this share (1/N) of the ring buffer is
    /// filled; 0 wakes it on every event.
    #[arg(long, hide = true, default_value_t = 4)]
    pub wakeup_fraction: u32,

    /// With --events: also show the internal events (timers, owners).
    #[arg(long, hide = true)]
    pub all_events: bool,

    /// Benchmark calibration: attach an empty program to each hook instead of
    /// tcptrace's programs (no events; `cargo xtask bench`).
    #[arg(long, hide = true)]
    pub calibrate_empty: bool,

    /// Benchmark only: leave these pieces of the kernel programs' work out
    /// (comma-separated names of `tracer_common::ablate::NAMES`); the events
    /// then carry zeros there, and the report is meaningless.
    #[arg(long, hide = true, value_parser = parse_ablate, default_value = "")]
    pub ablate: u32,

    /// Summary mode (experimental): each socket's transitions wait in the
    /// kernel and reach userspace together, one record per connection end
    /// on each side, instead of one event per transition. Off by default:
    /// measured, it costs the kernel more per transition and userspace more
    /// memory than the full stream, for the same throughput (BENCHMARKS.md,
    /// "Summary mode"). `--events` and `record` always get the full stream.
    /// The test suite runs in both modes.
    #[arg(long, hide = true, env = "TCPTRACE_SUMMARIES", value_parser = clap::builder::BoolishValueParser::new())]
    pub summaries: bool,
}

fn parse_ablate(list: &str) -> Result<u32, String> {
    let mut bits = 0;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some((_, bit)) = tracer_common::ablate::NAMES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = tracer_common::ablate::NAMES.iter().map(|(n, _)| *n).collect();
            return Err(format!("unknown part {name:?} (known: {})", known.join(", ")));
        };
        bits |= bit;
    }
    Ok(bits)
}

/// Writes `tcptrace.1` and `tcptrace-<command>.1` (clap_mangen).
pub fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![(String::from("tcptrace"), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Renamed so each page's NAME and SYNOPSIS read `tcptrace-run`, as man(1) users expect.
        let name = format!("tcptrace-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out).context("rendering the man page")?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `humantime` durations, plus bare numbers as seconds. Zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("invalid duration '{text}'")),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("invalid duration '{text}': {e} (examples: 10s, 500ms, 5m)"))?,
    };
    if duration.is_zero() {
        return Err(format!("invalid duration '{text}': must be more than zero"));
    }
    Ok(duration)
}

pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        _ => (t, 1),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size '{text}'"))?;
    if !bytes.is_power_of_two() || !(4096..=(1 << 30)).contains(&bytes) {
        return Err(format!("invalid size '{text}': must be a power of two from 4K to 1024M"));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, error::ErrorKind};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcptrace").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_run_with_all_flags() {
        let cli = parse(&["run", "--duration", "1m30s", "--format", "json", "--events"]).expect("valid");
        let Command::Run(run) = cli.command else { panic!("expected run") };
        assert_eq!(run.duration, Some(Duration::from_secs(90)));
        assert_eq!(run.format, Format::Json);
        assert!(run.events);
        assert_eq!(run.tuning.ring_buffer_size, 8 << 20);
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_bad_input_with_usage_errors() {
        for args in [
            &["run", "--duration", "soon"][..],
            &["run", "--duration", "0s"],
            &["run", "--duration", "-3"],
            &["run", "--format", "xml"],
            &["run", "--no-such-flag"],
            &["fly"],
            &["run", "--ring-buffer-size", "3000"],
        ] {
            let err = parse(args).err().unwrap_or_else(|| panic!("{args:?} must fail"));
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn ablate_lists() {
        use tracer_common::ablate;
        assert_eq!(parse_ablate(""), Ok(0));
        assert_eq!(parse_ablate("comm, cgroup"), Ok(ablate::COMM | ablate::CGROUP));
        assert!(parse_ablate("comm,nope").is_err_and(|e| e.contains("\"nope\"")));
        // Every bit has one name.
        let all = ablate::NAMES.iter().fold(0, |acc, (_, bit)| {
            assert_eq!(acc & bit, 0, "bit {bit} named twice");
            acc | bit
        });
        assert_eq!(all.count_ones() as usize, ablate::NAMES.len());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4K"), Ok(4096));
        assert_eq!(parse_ring_size("8M"), Ok(8 << 20));
        assert!(parse_ring_size("1K").is_err());
        assert!(parse_ring_size("12K").is_err());
        assert!(parse_ring_size("x").is_err());
    }
}
