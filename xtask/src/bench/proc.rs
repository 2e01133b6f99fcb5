//! Processes the benchmark starts and measures: tcptrace itself (CPU time
//! and peak memory from wait4's rusage, resident memory from /proc) and the
//! load generator.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

/// A process whose stdout lines arrive on a channel.
pub struct Lines {
    pub child: Child,
    rx: Receiver<String>,
    pub stdin: Option<ChildStdin>,
    /// Already waited for with wait4 (its pid may belong to someone else now).
    reaped: bool,
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Lines {
    pub fn spawn(mut command: Command) -> Result<Self> {
        command.stdout(Stdio::piped());
        Self::spawn_stdout_to_file(command)
    }

    /// As [`Self::spawn`], with stdout left where `command` sends it (a
    /// file): only stderr lines arrive.
    pub fn spawn_stdout_to_file(mut command: Command) -> Result<Self> {
        command.stdin(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().with_context(|| format!("starting {command:?}"))?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let err_tx = tx.clone();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        // stderr lines too, marked, so that readiness messages can be awaited.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(format!("stderr: {line}"));
            }
        });
        let stdin = child.stdin.take();
        Ok(Self { child, rx, stdin, reaped: false })
    }

    /// The first line satisfying `pred` within `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(line) => {
                    seen.push(line);
                    if seen.len() > 20 {
                        seen.remove(0);
                    }
                }
                Err(_) => bail!("{what} not seen within {timeout:?}; last lines: {seen:?}"),
            }
        }
    }

    /// Every line until the process closes its output.
    pub fn rest(&mut self) -> Vec<String> {
        self.rx.iter().collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for exit with wait4: (exit ok, CPU seconds, peak RSS bytes).
    pub fn wait_rusage(&mut self) -> Result<(bool, f64, u64)> {
        self.wait_rusage_within(None)
    }

    /// [`Self::wait_rusage`], but a process still running after `limit`
    /// is killed (SIGKILL) and then reaped: a peer tool that ignores its
    /// SIGINT (seen once with bpftrace in a storm round) cannot hang the
    /// benchmark. Its exit then counts as failed.
    pub fn wait_rusage_within(&mut self, limit: Option<std::time::Duration>) -> Result<(bool, f64, u64)> {
        self.stdin = None;
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let deadline = limit.map(|l| std::time::Instant::now() + l);
        let rc = loop {
            let flags = if deadline.is_some() { libc::WNOHANG } else { 0 };
            // SAFETY: waiting for our own child, valid pointers.
            let rc = unsafe { libc::wait4(self.pid(), &mut status, flags, &mut usage) };
            if rc != 0 {
                break rc;
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                eprintln!("bench: pid {} did not stop in time: killed", self.pid());
                self.signal(libc::SIGKILL);
                // SAFETY: as above, now blocking: the process is dying.
                break unsafe { libc::wait4(self.pid(), &mut status, 0, &mut usage) };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        if rc < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        self.reaped = true;
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        Ok((ok, secs(usage.ru_utime) + secs(usage.ru_stime), usage.ru_maxrss as u64 * 1024))
    }
}

/// `VmRSS` of a process, in bytes.
pub fn rss_bytes(pid: i32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// A running `tcptrace` (started with the given arguments), ready once it
/// says it is tracing.
pub struct Tcptrace(pub Lines);

/// What a finished tcptrace run measured.
#[derive(Debug, Clone)]
pub struct TracerRun {
    pub report: Value,
    pub cpu_s: f64,
    pub peak_rss: u64,
}

impl Tcptrace {
    pub fn start(bin: &Path, args: &[&str]) -> Result<Self> {
        let mut command = Command::new(bin);
        command.args(args);
        let mut lines = Lines::spawn(command)?;
        lines.wait_for(Duration::from_secs(60), "tcptrace tracing", |l| {
            l.starts_with("stderr: tcptrace: tracing")
        })?;
        Ok(Self(lines))
    }

    /// SIGINT, then the final JSON report and the process's resource usage.
    pub fn stop(mut self) -> Result<TracerRun> {
        self.0.signal(libc::SIGINT);
        let (ok, cpu_s, peak_rss) = self.0.wait_rusage()?;
        let lines = self.0.rest();
        if !ok {
            bail!("tcptrace failed: {lines:?}");
        }
        let report = lines
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "report")
            .ok_or_else(|| anyhow!("no report from tcptrace: {lines:?}"))?;
        Ok(TracerRun { report, cpu_s, peak_rss })
    }
}

/// Runs a command to completion and returns its stdout.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `connections N errors E seconds T` from ttstorm.
pub fn parse_storm(line: &str) -> Result<(u64, u64, f64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        ["connections", n, "errors", e, "seconds", t] => Ok((n.parse()?, e.parse()?, t.parse()?)),
        _ => bail!("unexpected ttstorm output: {line}"),
    }
}
