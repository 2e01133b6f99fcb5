//! `cargo xtask bench`: storms with and without tcptrace (A/B interleaved),
//! loss, per-program kernel cost, userspace CPU and memory, replay
//! throughput and memory at scale. Results go to BENCHMARKS.md between
//! generated-section markers; the hand-written analysis around them stays.

mod memory;
mod peers;
mod proc;
mod replay;
mod report;
mod storm;

use std::path::Path;

use anyhow::{Context as _, Result};

use self::storm::{Tools, Topology};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A/B rounds per topology.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per storm.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Concurrent connections (and TIME_WAIT sockets) for the memory test.
    #[arg(long, default_value_t = 100_000)]
    pub connections: u64,
    /// Smoke run: one short round, 10,000 connections (numbers not meaningful).
    #[arg(long)]
    pub quick: bool,
    /// Leave out the peer tools (tcpstates, bpftrace) from the storm rounds.
    #[arg(long)]
    pub no_peers: bool,
    /// Only these parts (repeatable; default: all). A partial run is for
    /// trying things out: write it elsewhere (`--out`), as the generated
    /// section then lacks the other parts.
    #[arg(long, value_enum)]
    pub only: Vec<Part>,
    /// Where the results go.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: std::path::PathBuf,
}

/// The parts of the benchmark, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Storm rounds: untraced, tcptrace, calibration and peers.
    Storms,
    /// The consumer stopped under a storm.
    Loss,
    /// Kernel cost per program, the calibration's, and the state program's parts.
    Kernel,
    Replay,
    Memory,
}

pub fn bench(root: &Path, mut args: BenchArgs) -> Result<()> {
    if args.quick {
        args.rounds = 1;
        args.seconds = 2.0;
        args.connections = 10_000;
    }
    let tools = Tools {
        tcptrace: root.join("target/release/tcptrace"),
        ttstorm: root.join("target/release/ttstorm"),
        peer_output: root.join("target/bench-peer.out"),
    };
    let peers: &[peers::Peer] = if args.no_peers { &[] } else { &peers::ALL };
    let mut results = report::Results::default();
    let run = |part: Part| args.only.is_empty() || args.only.contains(&part);
    if run(Part::Storms) {
        for topology in [Topology::Veth, Topology::Loopback] {
            results
                .storms
                .push((topology, storm::ab_rounds(&tools, topology, args.rounds, args.seconds, peers)?));
        }
    }
    if run(Part::Loss) {
        eprintln!("bench: consumer stopped for 1 s under a storm");
        results.burst = Some(storm::stopped_consumer(&tools, args.seconds.max(3.0), 1.0)?);
    }
    if run(Part::Kernel) {
        eprintln!("bench: kernel cost per program");
        results.kernel = storm::kernel_cost(&tools, args.seconds, &storm::TRACE_ARGS)?;
        eprintln!("bench: kernel cost of an empty program on each hook (calibration)");
        results.kernel_empty = storm::kernel_cost(&tools, args.seconds, &peers::EMPTY_ARGS)?;
        eprintln!("bench: where the state program's time goes (one part left out per run)");
        results.ablation = storm::ablation(&tools, args.seconds, args.rounds.min(3))?;
    }
    if run(Part::Replay) {
        eprintln!("bench: replay throughput");
        let recording = root.join("target/bench-storm.tcptrace");
        results.replay = Some(replay::replay(&tools, &recording, args.seconds, args.rounds.max(3))?);
        let _ = std::fs::remove_file(&recording);
    }
    if run(Part::Memory) {
        eprintln!("bench: memory with {} concurrent connections", args.connections);
        results.memory.push(memory::live_sockets(&tools, args.connections)?);
        eprintln!("bench: memory with {} TIME_WAIT sockets", args.connections);
        results.memory.push(memory::time_wait(&tools, args.connections)?);
    }

    let generated = report::render(&results, &args);
    eprintln!("{generated}");
    report::write(&args.out, &generated).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("bench: results written to {}", args.out.display());
    Ok(())
}
