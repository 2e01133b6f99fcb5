//! The userspace pipeline's ceiling: a storm recorded with `tcptrace record`,
//! then replayed by `tcptrace report` pinned to one core (read, decode,
//! track, histograms, report), several times.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tcptrace_tests::netns::Pair;

use super::{
    proc::{Lines, Tcptrace, output},
    storm::Tools,
};

#[derive(Debug, Clone)]
pub struct Replay {
    pub events: u64,
    pub file_bytes: u64,
    /// Events per wall-clock second, one per replay.
    pub rates: Vec<f64>,
    /// CPU seconds of each replay.
    pub cpu_s: Vec<f64>,
}

pub fn replay(tools: &Tools, file: &Path, seconds: f64, runs: usize) -> Result<Replay> {
    {
        let pair = Pair::new("rec");
        let target = SocketAddr::new(pair.b4.into(), 9000);
        let mut server = Lines::spawn({
            let mut c = pair.b.command(&tools.ttstorm);
            c.args(["serve", "--listen", &target.to_string()]);
            c
        })?;
        server.wait_for(Duration::from_secs(10), "server", |l| l.starts_with("listening"))?;
        let file_arg = file.display().to_string();
        let recorder =
            Tcptrace::start(&tools.tcptrace, &["record", "-o", &file_arg, "--report", "--format", "json"])?;
        output(pair.a.command(&tools.ttstorm).args([
            "storm",
            "--connect",
            &target.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]))?;
        recorder.stop()?;
    }
    let file_bytes = std::fs::metadata(file)?.len();
    let (mut rates, mut cpu_s, mut events) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let start = Instant::now();
        let mut replay = Lines::spawn({
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(&tools.tcptrace).args(["report"]).arg(file).args(["--format", "json"]);
            c
        })?;
        let (ok, cpu, _) = replay.wait_rusage()?;
        let wall = start.elapsed().as_secs_f64();
        let lines = replay.rest();
        if !ok {
            bail!("tcptrace report failed: {lines:?}");
        }
        let report = lines.iter().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        events = report.and_then(|r| r["events"]["received"].as_u64()).unwrap_or(0);
        if events == 0 {
            bail!("the replay reported no events: {lines:?}");
        }
        rates.push(events as f64 / wall);
        cpu_s.push(cpu);
    }
    Ok(Replay { events, file_bytes, rates, cpu_s })
}
