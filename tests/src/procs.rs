//! Processes the reliability tests steer: a test peer held at a point until
//! released, tcptrace with its raw stdout bytes, and what `/proc` says about
//! a process (resident memory).

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::workspace_binary;

/// A helper that prints a `ready` line, then waits for a line on stdin (the
/// test's "go on") before finishing; killed on drop if never released.
pub struct Held {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Held {
    /// Starts `command` and waits (30 s at most) for a stdout line starting with `ready`.
    pub fn start(mut command: Command, ready: &str) -> Self {
        let (mut child, lines) = crate::spawn_with_lines(&mut command, Stdio::piped());
        let stdin = child.stdin.take();
        let mut held = Self { child: Some(child), stdin, lines, seen: Vec::new() };
        if crate::recv_until(&held.lines, &mut held.seen, Duration::from_secs(30), |l| l.starts_with(ready))
            .is_none()
        {
            panic!("{command:?}: no '{ready}' line; got {:?}", held.seen);
        }
        held
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Lets it go on (one line on stdin) without waiting for it to exit.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).expect("writing to the helper");
    }

    /// Waits (30 s at most) for a stdout line starting with `prefix`.
    pub fn line(&mut self, prefix: &str) -> String {
        crate::recv_until(&self.lines, &mut self.seen, Duration::from_secs(30), |l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("helper: no '{prefix}' line; got {:?}", self.seen))
    }

    /// [`Held::go`], then [`Held::line`].
    pub fn go_until(&mut self, prefix: &str) -> String {
        self.go();
        self.line(prefix)
    }

    /// Lets it go on, waits for it to exit (60 s at most) and returns every
    /// stdout line it printed.
    pub fn release(mut self) -> Vec<String> {
        let mut stdin = self.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("writing to the helper");
        drop(stdin);
        let mut child = self.child.take().expect("running");
        let status = crate::wait_exit(&mut child, Duration::from_secs(60), Duration::from_millis(10))
            .unwrap_or_else(|| panic!("helper did not finish after release"));
        assert!(status.success(), "helper failed ({status}); output {:?}", self.seen);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tcptrace` with stdout kept as raw bytes (to check what a terminal would
/// receive, invalid UTF-8 included); killed on drop if not stopped.
pub struct RawTracer {
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Arc<Mutex<String>>,
}

/// What a stopped [`RawTracer`] left.
#[derive(Debug)]
pub struct RawFinished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl RawTracer {
    /// Starts `tcptrace <args>` and waits (60 s at most) until it says it is tracing.
    pub fn start(args: &[impl AsRef<OsStr>]) -> Self {
        let mut command = Command::new(workspace_binary("tcptrace"));
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start tcptrace: {e}"));
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            bytes
        });
        let err = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("tcptrace: tracing") {
                        let _ = ready_tx.send(());
                    }
                    stderr.lock().expect("lock").push_str(&(line + "\n"));
                }
            });
        }
        let mut tracer = Self { child: Some(child), stdout: Some(stdout), stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(status) = tracer.child.as_mut().expect("child").try_wait().expect("wait") {
                        panic!("tcptrace exited early ({status}): {}", tracer.stderr.lock().expect("lock"));
                    }
                }
                Err(_) => panic!("tcptrace did not start tracing: {}", tracer.stderr.lock().expect("lock")),
            }
        }
        tracer
    }

    /// Sends `signal`, waits for the exit (60 s at most), returns all output.
    pub fn stop_with(mut self, signal: i32) -> RawFinished {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = crate::wait_exit(&mut child, Duration::from_secs(60), Duration::from_millis(20))
            .unwrap_or_else(|| panic!("tcptrace did not exit after signal {signal}"));
        let stdout = self.stdout.take().expect("reader").join().expect("stdout reader");
        // The stderr reader ends at EOF, right after the exit.
        thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr.lock().expect("lock").clone();
        RawFinished { status, stdout, stderr }
    }
}

impl Drop for RawTracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of a process in kB (`VmRSS` in `/proc/PID/status`).
pub fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Sends `signal` to `pid`; panics if that fails.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2).
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// Waits until `/proc/PID/stat` shows state `state` (e.g. 'T' stopped), 10 s at most.
pub fn wait_for_state(pid: u32, state: char) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 3, after the parenthesised comm (which may contain spaces).
        let now = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if now == Some(state) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} never reached state {state} (now {now:?})");
        thread::sleep(Duration::from_millis(5));
    }
}
