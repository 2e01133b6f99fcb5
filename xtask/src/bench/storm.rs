//! Connection storms: throughput without and with tcptrace (A/B
//! interleaved), events lost, the kernel programs' cost, tcptrace's CPU and
//! memory, and exact loss accounting with the consumer stopped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tcptrace_tests::netns::{NetNs, Pair};

use super::{
    peers::{self, Peer, PeerRun},
    proc::{Lines, Tcptrace, TracerRun, output, parse_storm},
};

/// Where the storm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Client and server in two namespaces joined by a veth pair.
    Veth,
    /// Client and server in one namespace, over its loopback.
    Loopback,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Self::Veth => "veth (two namespaces)",
            Self::Loopback => "loopback (one namespace)",
        }
    }
}

pub struct Tools {
    pub tcptrace: PathBuf,
    pub ttstorm: PathBuf,
    /// Where a peer tool's output goes during its run (removed after).
    pub peer_output: PathBuf,
}

/// Fresh namespaces and a server for one run (a run never inherits the
/// previous run's TIME_WAIT sockets).
struct Arena {
    client: NetNs,
    _server_ns: Option<NetNs>,
    _server: Lines,
    target: SocketAddr,
    /// The CPU client and server are pinned to, if any.
    cpu: Option<usize>,
}

/// `program` in `ns`, pinned to `cpu` when one is given (taskset execs it:
/// same pid).
fn in_ns(ns: &NetNs, program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        None => ns.command(program),
        Some(cpu) => {
            let mut c = ns.command("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
    }
}

/// For the kernel cost runs: the storm (client and server) on this CPU,
/// tcptrace's userspace on [`TRACER_CPU`]. Per-event cost is then measured
/// without the second CPU's programs contending for the ring buffer's lock
/// and the cache lines of the maps, and without tcptrace's consumer
/// competing with the storm: far less noise between runs, which the
/// one-part-at-a-time comparison needs.
pub const STORM_CPU: usize = 1;
pub const TRACER_CPU: usize = 0;

impl Arena {
    fn new(tools: &Tools, topology: Topology) -> Result<Self> {
        Self::pinned(tools, topology, None)
    }

    fn pinned(tools: &Tools, topology: Topology, cpu: Option<usize>) -> Result<Self> {
        let (client, server_ns, target) = match topology {
            Topology::Veth => {
                let pair = Pair::new("bench");
                let target = SocketAddr::new(pair.b4.into(), 9000);
                (pair.a, Some(pair.b), target)
            }
            Topology::Loopback => (NetNs::new("bench"), None, SocketAddr::from(([127, 0, 0, 1], 9000))),
        };
        let ns = server_ns.as_ref().unwrap_or(&client);
        let mut server = Lines::spawn({
            let mut c = in_ns(ns, &tools.ttstorm, cpu);
            c.args(["serve", "--listen", &target.to_string()]);
            c
        })?;
        server.wait_for(Duration::from_secs(10), "storm server", |l| l.starts_with("listening"))?;
        Ok(Self { client, _server_ns: server_ns, _server: server, target, cpu })
    }

    /// Connections per second over `seconds`.
    fn storm(&self, tools: &Tools, seconds: f64) -> Result<f64> {
        let out = output(in_ns(&self.client, &tools.ttstorm, self.cpu).args([
            "storm",
            "--connect",
            &self.target.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]))?;
        let (n, errors, secs) = parse_storm(out.trim())?;
        if errors > n / 100 {
            bail!("storm: {errors} failed connections out of {n}");
        }
        Ok(n as f64 / secs)
    }
}

/// Lets the kernel finish tearing down the previous run's namespaces (their
/// TIME_WAIT sockets are purged by a worker) before the next run measures.
fn settle() {
    thread::sleep(Duration::from_secs(2));
}

pub const TRACE_ARGS: [&str; 4] = ["run", "--format", "json", "--quiet"];

/// One round's measurements: the storm without tracing, with tcptrace, and
/// with each peer tool.
#[derive(Debug, Clone)]
pub struct Round {
    pub without: f64,
    pub with: f64,
    pub tracer: TracerRun,
    /// Each peer's storm rate and run, in the order run.
    pub peers: Vec<(Peer, f64, PeerRun)>,
}

/// Rounds of: the storm untraced (A), traced by tcptrace (B), then traced by
/// each of `peers`, each run in fresh namespaces.
pub fn ab_rounds(
    tools: &Tools,
    topology: Topology,
    rounds: usize,
    seconds: f64,
    peers: &[Peer],
) -> Result<Vec<Round>> {
    let mut out = Vec::new();
    for round in 1..=rounds {
        let arena = Arena::new(tools, topology)?;
        let without = arena.storm(tools, seconds)?;
        drop(arena);
        settle();

        let arena = Arena::new(tools, topology)?;
        let tracer = Tcptrace::start(&tools.tcptrace, &TRACE_ARGS)?;
        let with = arena.storm(tools, seconds)?;
        let tracer = tracer.stop()?;
        drop(arena);
        settle();
        eprintln!(
            "bench: {} round {round}/{rounds}: {without:.0} conn/s without, {with:.0} with ({:.1}%), events {}",
            topology.name(),
            100.0 * with / without,
            tracer.report["events"]
        );

        let mut peer_runs = Vec::new();
        for &peer in peers {
            let arena = Arena::new(tools, topology)?;
            let running = peers::Running::start(peer, &tools.tcptrace, &tools.peer_output)?;
            let rate = arena.storm(tools, seconds)?;
            let run = running.stop()?;
            drop(arena);
            settle();
            eprintln!(
                "bench: {} round {round}/{rounds}: {rate:.0} conn/s with {} ({:.1}%), cpu {:.2} s, lost {}",
                topology.name(),
                peer.name(),
                100.0 * rate / without,
                run.cpu_s,
                run.lost
            );
            peer_runs.push((peer, rate, run));
        }
        out.push(Round { without, with, tracer, peers: peer_runs });
    }
    Ok(out)
}

/// Mean cost of each program under a storm (`kernel.bpf_stats_enabled`).
#[derive(Debug, Clone)]
pub struct ProgramCost {
    pub name: String,
    pub run_cnt: u64,
    pub mean_ns: f64,
}

/// With `args`: tcptrace's own programs ([`TRACE_ARGS`]) or the empty ones
/// ([`peers::EMPTY_ARGS`]).
/// The storm runs on [`STORM_CPU`], tcptrace on [`TRACER_CPU`].
pub fn kernel_cost(tools: &Tools, seconds: f64, args: &[&str]) -> Result<Vec<ProgramCost>> {
    let arena = Arena::pinned(tools, Topology::Veth, Some(STORM_CPU))?;
    sysctl("kernel.bpf_stats_enabled", "1")?;
    let result = (|| {
        let mut pinned = vec!["-c".to_string(), TRACER_CPU.to_string(), tools.tcptrace.display().to_string()];
        pinned.extend(args.iter().map(|a| (*a).to_string()));
        let pinned: Vec<&str> = pinned.iter().map(String::as_str).collect();
        let tracer = Tcptrace::start(Path::new("taskset"), &pinned)?;
        arena.storm(tools, seconds)?;
        let listing = output(Command::new("bpftool").args(["prog", "show", "--json"]))?;
        let pid = tracer.0.pid();
        tracer.stop()?;
        programs_of(&listing, pid)
    })();
    sysctl("kernel.bpf_stats_enabled", "0")?;
    drop(arena);
    settle();
    result
}

/// What leaving one part of the per-event work out saves the state program.
#[derive(Debug, Clone)]
pub struct Ablated {
    pub part: String,
    /// Mean ns of the state program without the part, one per repetition.
    pub without_ns: Vec<f64>,
    /// Mean ns of the full program in the runs on either side, averaged, one
    /// per repetition.
    pub full_ns: Vec<f64>,
}

impl Ablated {
    /// Median over the repetitions of (full - without).
    pub fn saving_ns(&self) -> f64 {
        let mut d: Vec<f64> = self.full_ns.iter().zip(&self.without_ns).map(|(f, w)| f - w).collect();
        d.sort_by(f64::total_cmp);
        match d.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => d[n / 2],
            n => (d[n / 2 - 1] + d[n / 2]) / 2.0,
        }
    }
}

/// The state program's mean in one pinned kernel-cost run with `part` left
/// out ("none": the full program).
fn state_ns(tools: &Tools, seconds: f64, part: &str) -> Result<f64> {
    let mut args: Vec<&str> = TRACE_ARGS.to_vec();
    if part != "none" {
        args.extend(["--ablate", part]);
    }
    let costs = kernel_cost(tools, seconds, &args)?;
    let state = costs
        .iter()
        .find(|c| c.name == "tcptrace_state")
        .ok_or_else(|| anyhow::anyhow!("no tcptrace_state in the kernel cost"))?;
    eprintln!("bench: without {part}: state program {:.0} ns mean over {}", state.mean_ns, state.run_cnt);
    Ok(state.mean_ns)
}

/// Each part of the per-event work (`tracer_common::ablate`) left out alone
/// (`tcptrace run --ablate PART`), in turn with runs of the full program:
/// full, without A, full, without B, ..., full; a part's saving is the mean
/// of the full runs on either side minus its run, and the median of that
/// over `reps` repetitions.
pub fn ablation(tools: &Tools, seconds: f64, reps: usize) -> Result<Vec<Ablated>> {
    let mut out: Vec<Ablated> = tracer_common::ablate::NAMES
        .iter()
        .map(|(n, _)| Ablated { part: (*n).to_string(), without_ns: Vec::new(), full_ns: Vec::new() })
        .collect();
    for _ in 0..reps {
        let mut before = state_ns(tools, seconds, "none")?;
        for a in &mut out {
            let without = state_ns(tools, seconds, &a.part)?;
            let after = state_ns(tools, seconds, "none")?;
            a.without_ns.push(without);
            a.full_ns.push((before + after) / 2.0);
            before = after;
        }
    }
    Ok(out)
}

fn programs_of(listing: &str, pid: i32) -> Result<Vec<ProgramCost>> {
    let all: Value = serde_json::from_str(listing).context("parsing bpftool output")?;
    let mut costs: Vec<ProgramCost> = all
        .as_array()
        .into_iter()
        .flatten()
        // Debian's bpftool lists no pids: the names say whose they are (the
        // benchmark runs one tcptrace at a time).
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("tcptrace")))
        .map(|p| {
            let run_cnt = p["run_cnt"].as_u64().unwrap_or(0);
            let run_time = p["run_time_ns"].as_u64().unwrap_or(0);
            ProgramCost {
                name: p["name"].as_str().unwrap_or("?").to_string(),
                run_cnt,
                mean_ns: if run_cnt > 0 { run_time as f64 / run_cnt as f64 } else { 0.0 },
            }
        })
        .collect();
    if costs.is_empty() {
        bail!("bpftool lists no tcptrace program (tcptrace pid {pid})");
    }
    costs.sort_by_key(|c| std::cmp::Reverse(c.run_cnt));
    Ok(costs)
}

fn sysctl(key: &str, value: &str) -> Result<()> {
    output(Command::new("sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(drop)
}

/// The consumer stopped (SIGSTOP) for `stop_s` in the middle of a storm.
#[derive(Debug, Clone)]
pub struct Burst {
    pub seen: u64,
    pub received: u64,
    pub lost: u64,
    pub stop_s: f64,
}

pub fn stopped_consumer(tools: &Tools, seconds: f64, stop_s: f64) -> Result<Burst> {
    let arena = Arena::new(tools, Topology::Veth)?;
    let tracer = Tcptrace::start(&tools.tcptrace, &TRACE_ARGS)?;
    let pid = tracer.0.pid();
    let stopper = thread::spawn(move || {
        thread::sleep(Duration::from_secs_f64((seconds - stop_s) / 2.0));
        // SAFETY: signals to our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        thread::sleep(Duration::from_secs_f64(stop_s));
        unsafe { libc::kill(pid, libc::SIGCONT) };
    });
    arena.storm(tools, seconds)?;
    let _ = stopper.join();
    let run = tracer.stop()?;
    drop(arena);
    settle();
    let e = &run.report["events"];
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    Ok(Burst { seen: n("seen"), received: n("received"), lost: n("lost"), stop_s })
}
