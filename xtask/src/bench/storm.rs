//! Connection storms: throughput without and with tcptrace (A/B
//! interleaved), events lost, the kernel programs' cost, tcptrace's CPU and
//! memory, and exact loss accounting with the consumer stopped.

use std::{net::SocketAddr, path::PathBuf, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tcptrace_tests::netns::{NetNs, Pair};

use super::proc::{Lines, Tcptrace, TracerRun, output, parse_storm};

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
}

/// Fresh namespaces and a server for one run (a run never inherits the
/// previous run's TIME_WAIT sockets).
struct Arena {
    client: NetNs,
    _server_ns: Option<NetNs>,
    _server: Lines,
    target: SocketAddr,
}

impl Arena {
    fn new(tools: &Tools, topology: Topology) -> Result<Self> {
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
            let mut c = ns.command(&tools.ttstorm);
            c.args(["serve", "--listen", &target.to_string()]);
            c
        })?;
        server.wait_for(Duration::from_secs(10), "storm server", |l| l.starts_with("listening"))?;
        Ok(Self { client, _server_ns: server_ns, _server: server, target })
    }

    /// Connections per second over `seconds`.
    fn storm(&self, tools: &Tools, seconds: f64) -> Result<f64> {
        let out = output(self.client.command(&tools.ttstorm).args([
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

const TRACE_ARGS: [&str; 4] = ["run", "--format", "json", "--quiet"];

/// One A/B pair's measurements.
#[derive(Debug, Clone)]
pub struct Round {
    pub without: f64,
    pub with: f64,
    pub tracer: TracerRun,
}

pub fn ab_rounds(tools: &Tools, topology: Topology, rounds: usize, seconds: f64) -> Result<Vec<Round>> {
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
        out.push(Round { without, with, tracer });
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

pub fn kernel_cost(tools: &Tools, seconds: f64) -> Result<Vec<ProgramCost>> {
    let arena = Arena::new(tools, Topology::Veth)?;
    sysctl("kernel.bpf_stats_enabled", "1")?;
    let result = (|| {
        let tracer = Tcptrace::start(&tools.tcptrace, &TRACE_ARGS)?;
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
