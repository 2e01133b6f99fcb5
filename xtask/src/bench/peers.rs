//! The tools a user would pick instead of tcptrace, and the calibration (an
//! empty program on each of tcptrace's hooks), run on the same storms
//! in the same interleaved rounds: libbpf-tools `tcpstates` (Debian's
//! `libbpf-tools`, bcc's CO-RE tools) and two bpftrace programs on the same
//! tracepoint, one printing every transition as tcpstates does and one only
//! counting transitions in a kernel map. Each prints to a file, as a user
//! keeping its output would; what each costs is the storm's rate beside the
//! untraced one, the tool's CPU time, and whether it reported lost events.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::proc::Lines;

/// One peer tool, or the calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Not a peer: tcptrace with an empty program on each of its hooks
    /// (`--calibrate-empty`), what the hooks themselves cost.
    EmptyPrograms,
    /// Not a peer: tcptrace in summary mode (`--summaries`: one record per
    /// socket's summary), beside its default full stream.
    Summaries,
    /// `tcpstates` from libbpf-tools: a perf buffer event per transition,
    /// printed with addresses and the time in the previous state.
    Tcpstates,
    /// bpftrace printing each transition (tcpstates' fields, one printf).
    BpftracePrint,
    /// bpftrace counting transitions by (old, new) in a map, printed at exit.
    BpftraceCount,
}

pub const ALL: [Peer; 5] =
    [Peer::EmptyPrograms, Peer::Summaries, Peer::Tcpstates, Peer::BpftracePrint, Peer::BpftraceCount];

/// tcptrace's arguments in the calibration runs.
pub const EMPTY_ARGS: [&str; 5] = ["run", "--format", "json", "--quiet", "--calibrate-empty"];

/// tcptrace's arguments in the summary-mode runs.
const SUMMARIES_ARGS: [&str; 5] = ["run", "--format", "json", "--quiet", "--summaries"];

/// First line a bpftrace program prints: BEGIN runs once every probe is
/// attached.
const READY: &str = "tcptrace-bench-ready";

/// How long a peer may take to stop and print after SIGINT (bpftrace
/// prints its maps then; seconds normally) before it is killed.
const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Self::EmptyPrograms => "calibration: an empty program on each of tcptrace's hooks",
            Self::Summaries => "tcptrace run --summaries (summary mode: one record per socket's transitions)",
            Self::Tcpstates => "tcpstates (libbpf-tools)",
            Self::BpftracePrint => "bpftrace, printing each transition",
            Self::BpftraceCount => "bpftrace, counting transitions in a map",
        }
    }

    fn command(self, tcptrace: &Path) -> Command {
        let bpftrace = |body: &str| {
            let mut c = Command::new("bpftrace");
            c.args(["-e", &format!("BEGIN {{ printf(\"{READY}\\n\"); }} {body}")]);
            c
        };
        match self {
            Self::EmptyPrograms => {
                let mut c = Command::new(tcptrace);
                c.args(EMPTY_ARGS);
                c
            }
            Self::Summaries => {
                let mut c = Command::new(tcptrace);
                c.args(SUMMARIES_ARGS);
                c
            }
            // Line-buffered, as on a terminal (to a file, its stdio would
            // hold the header, so readiness could not be seen).
            Self::Tcpstates => {
                let mut c = Command::new("stdbuf");
                c.args(["-oL", "tcpstates"]);
                c
            }
            Self::BpftracePrint => bpftrace(
                "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { \
                 printf(\"%llx %d %s %d %d %d -> %d\\n\", args->skaddr, pid, comm, \
                 args->sport, args->dport, args->oldstate, args->newstate); }",
            ),
            Self::BpftraceCount => bpftrace(
                "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { \
                 @[args->oldstate, args->newstate] = count(); }",
            ),
        }
    }

    /// Whether `line` of the tool's output says it is tracing (None: the
    /// tool says so on stderr).
    fn is_ready(self, line: &str) -> Option<bool> {
        match self {
            Self::EmptyPrograms | Self::Summaries => None,
            // Its header, printed after the programs are attached.
            Self::Tcpstates => Some(line.starts_with("SKADDR")),
            Self::BpftracePrint | Self::BpftraceCount => Some(line.starts_with(READY)),
        }
    }
}

/// What one run of a peer measured.
#[derive(Debug, Clone)]
pub struct PeerRun {
    pub cpu_s: f64,
    /// Lost events the tool reported (perf buffer losses), 0 if none.
    pub lost: u64,
    /// Transition lines it printed (0 for the counting program; for summary
    /// mode, the records tcptrace received).
    pub lines: u64,
}

/// A running peer, its output going to `out`.
pub struct Running {
    peer: Peer,
    process: Lines,
    out: PathBuf,
}

impl Running {
    /// Starts `peer` and returns once it says it is tracing.
    pub fn start(peer: Peer, tcptrace: &Path, out: &Path) -> Result<Self> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut command = peer.command(tcptrace);
        command.stdout(Stdio::from(file));
        let mut process = Lines::spawn_stdout_to_file(command)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        if peer.is_ready("").is_none() {
            process.wait_for(Duration::from_secs(60), "tcptrace tracing", |l| {
                l.starts_with("stderr: tcptrace: tracing")
            })?;
            return Ok(Self { peer, process, out: out.to_path_buf() });
        }
        loop {
            let text = fs::read_to_string(out).unwrap_or_default();
            if text.lines().any(|l| peer.is_ready(l) == Some(true)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not start within 60 s; output: {text:?}", peer.name());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { peer, process, out: out.to_path_buf() })
    }

    /// SIGINT (both tools stop and print what they hold), then the tool's
    /// CPU time and what it reported.
    pub fn stop(mut self) -> Result<PeerRun> {
        self.process.signal(libc::SIGINT);
        let (_, cpu_s, _) = self.process.wait_rusage_within(Some(STOP_LIMIT))?;
        let stderr = self.process.rest();
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let _ = fs::remove_file(&self.out);
        let mut lost = stderr.iter().map(String::as_str).chain(text.lines()).filter_map(lost_in).sum();
        let lines = match self.peer {
            Peer::BpftraceCount | Peer::EmptyPrograms => 0,
            Peer::Tcpstates | Peer::BpftracePrint => text.lines().filter(|l| l.contains("->")).count() as u64,
            // Its report: the records it received, and lost.
            Peer::Summaries => {
                let events = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .map(|v| v["events"].clone())
                    .find(|e| e.is_object())
                    .unwrap_or_default();
                lost = events["lost"].as_u64().unwrap_or(0);
                events["received"].as_u64().unwrap_or(0)
            }
        };
        Ok(PeerRun { cpu_s, lost, lines })
    }
}

/// The count in a tool's lost-events line: libbpf-tools print "lost N
/// events on CPU #C", bpftrace "Lost N events".
fn lost_in(line: &str) -> Option<u64> {
    let lower = line.to_ascii_lowercase();
    let rest = &lower[lower.find("lost ")? + 5..];
    let (n, after) = rest.split_once(' ')?;
    after.starts_with("events").then(|| n.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_lines_of_both_tools() {
        assert_eq!(lost_in("lost 17 events on CPU #1"), Some(17));
        assert_eq!(lost_in("stderr: Lost 3 events"), Some(3));
        assert_eq!(lost_in("ffff8881 12 ttstorm 9000 0 ESTABLISHED -> FIN_WAIT1"), None);
        assert_eq!(lost_in("lost connection"), None);
    }
}
