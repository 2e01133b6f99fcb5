//! `cargo xtask bench`: storms with and without tcptrace (A/B interleaved),
//! loss, per-program kernel cost, userspace CPU and memory, replay
//! throughput and memory at scale. Results go to BENCHMARKS.md between
//! generated-section markers; the hand-written analysis around them stays.

mod memory;
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
    /// Where the results go.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: std::path::PathBuf,
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
    };
    let mut results = report::Results::default();
    for topology in [Topology::Veth, Topology::Loopback] {
        results.storms.push((topology, storm::ab_rounds(&tools, topology, args.rounds, args.seconds)?));
    }
    eprintln!("bench: consumer stopped for 1 s under a storm");
    results.burst = Some(storm::stopped_consumer(&tools, args.seconds.max(3.0), 1.0)?);
    eprintln!("bench: kernel cost per program");
    results.kernel = storm::kernel_cost(&tools, args.seconds)?;
    eprintln!("bench: replay throughput");
    let recording = root.join("target/bench-storm.tcptrace");
    results.replay = Some(replay::replay(&tools, &recording, args.seconds, args.rounds.max(3))?);
    let _ = std::fs::remove_file(&recording);
    eprintln!("bench: memory with {} concurrent connections", args.connections);
    results.memory.push(memory::live_sockets(&tools, args.connections)?);
    eprintln!("bench: memory with {} TIME_WAIT sockets", args.connections);
    results.memory.push(memory::time_wait(&tools, args.connections)?);

    let generated = report::render(&results, &args);
    eprintln!("{generated}");
    report::write(&args.out, &generated).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("bench: results written to {}", args.out.display());
    Ok(())
}
