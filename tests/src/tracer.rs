//! The real `tcptrace` binary, started and stopped like a user would.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    events::{Ev, parse_events},
    netns::NetNs,
    workspace_binary,
};

/// `args` followed by `--netns <inode>` for each of `namespaces`: tcptrace
/// restricted to them.
pub fn args_in(args: &[&str], namespaces: &[&NetNs]) -> Vec<String> {
    let netns = namespaces.iter().flat_map(|ns| ["--netns".to_string(), ns.inode.to_string()]);
    args.iter().map(ToString::to_string).chain(netns).collect()
}

/// A running `tcptrace`, killed on drop if the test did not stop it.
pub struct Tracer {
    child: Option<Child>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Stdout lines received so far.
    pub seen: Vec<String>,
}

/// What a stopped tracer left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Finished {
    /// Stdout lines that parse as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.stdout.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The final `"type":"report"` object.
    pub fn report(&self) -> Value {
        self.json()
            .into_iter()
            .rev()
            .find(|v| v["type"] == "report")
            .unwrap_or_else(|| panic!("no report in output; stderr:\n{}", self.stderr))
    }
}

impl Tracer {
    /// Starts `tcptrace <args>` and waits until it says it is tracing.
    pub fn start(args: &[impl AsRef<OsStr>]) -> Self {
        Self::start_command(Command::new(workspace_binary("tcptrace")), args)
    }

    /// `tcptrace run --format json --events <extra>`, restricted to
    /// `namespaces`.
    pub fn events_in(namespaces: &[&NetNs], extra: &[&str]) -> Self {
        let mut args = args_in(&["run", "--format", "json", "--events"], namespaces);
        args.extend(extra.iter().map(ToString::to_string));
        Self::start(&args)
    }

    pub fn start_command(mut command: Command, args: &[impl AsRef<OsStr>]) -> Self {
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start tcptrace: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let lines = crate::line_channel(stdout);
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stderr_pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line.starts_with("tcptrace: tracing") {
                        let _ = ready_tx.send(());
                    }
                    stderr.lock().unwrap().push_str(&line);
                    line.clear();
                }
                let mut rest = String::new();
                let _ = reader.read_to_string(&mut rest);
                stderr.lock().unwrap().push_str(&rest);
            });
        }
        let mut tracer = Self { child: Some(child), lines, stderr, seen: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(status) = tracer.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("tcptrace exited early ({status}): {}", tracer.stderr());
                    }
                }
                Err(_) => panic!("tcptrace did not start tracing: {}", tracer.stderr()),
            }
        }
        tracer
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads stdout until `done` has returned true for a line (it sees every
    /// new line once, in order); panics after `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, what: &str, mut done: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let finished = done(&line);
                    self.seen.push(line);
                    if finished {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                // The lines seen are what a rare CI failure leaves to read:
                // show the last of them, not only their count.
                Err(_) => panic!(
                    "timed out waiting for {what} ({} lines so far; the last of them:\n{}\n); stderr:\n{}",
                    self.seen.len(),
                    self.seen[self.seen.len().saturating_sub(60)..].join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Waits until `n` event lines match `pred`.
    pub fn wait_for_events(&mut self, timeout: Duration, what: &str, n: usize, pred: impl Fn(&Ev) -> bool) {
        let mut count = 0;
        self.wait_until(timeout, what, |line| {
            count += parse_events(&[line.to_string()]).iter().filter(|e| pred(e)).count();
            count >= n
        });
    }

    /// Sends `signal`, waits for exit (60 s at most) and collects all output.
    pub fn stop_with(mut self, signal: i32) -> Finished {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = crate::wait_exit(&mut child, Duration::from_secs(60), Duration::from_millis(20))
            .unwrap_or_else(|| panic!("tcptrace did not exit after signal {signal}"));
        // The stdout thread ends at EOF; collect everything it read.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        // Give the stderr thread a moment to finish after EOF.
        thread::sleep(Duration::from_millis(50));
        Finished { status, stdout: std::mem::take(&mut self.seen), stderr: self.stderr() }
    }

    pub fn stop(self) -> Finished {
        self.stop_with(libc::SIGTERM)
    }

    /// Waits for the process to end by itself (e.g. `--duration`).
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let mut child = self.child.take().unwrap();
        let Some(status) = crate::wait_exit(&mut child, timeout, Duration::from_millis(20)) else {
            let _ = child.kill();
            panic!("tcptrace did not exit within {timeout:?}; stderr:\n{}", self.stderr());
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        thread::sleep(Duration::from_millis(50));
        Finished { status, stdout: std::mem::take(&mut self.seen), stderr: self.stderr() }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
