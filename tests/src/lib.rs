//! Helpers for tcptrace's integration tests: throwaway network namespaces
//! joined by veth pairs, sysctls and nftables inside them, the real
//! `tcptrace` binary under test, and its JSON output.
//!
//! Every resource is a guard that removes itself on drop, also when a test
//! panics. Tests panic with context rather than return `Result`.
#![allow(clippy::unwrap_used, reason = "test helpers: a panic with context is the failure report")]

pub mod background;
pub mod bpfobj;
pub mod cgroups;
pub mod events;
pub mod faults;
pub mod http;
pub mod netns;
pub mod packet;
pub mod peer;
pub mod peers;
pub mod procs;
pub mod rtnl;
pub mod seccomp;
pub mod tracer;

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

/// Runs a command, panics with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_checked(&mut cmd)
}

/// Runs a command to its end, panics with its output when it fails.
pub fn run_checked(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Integration tests load BPF programs: they need root. Panics otherwise, so
/// that a missing privilege is a visible failure, not a silent skip.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "integration tests need root (CAP_BPF, CAP_NET_ADMIN): run `cargo xtask test`");
}

/// Whether a type or function of this name is in the running kernel's BTF
/// (ground truth: its string table holds every name, NUL-terminated).
pub fn kernel_btf_has_name(name: &str) -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("reading /sys/kernel/btf/vmlinux");
    let needle = format!("\0{name}\0");
    btf.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Whether tracing programs get socket cookies here (Linux 5.12+): the
/// kernel function behind `bpf_get_socket_cookie` for them is in its BTF.
/// Where not, tcptrace names full sockets by their address, masked with a
/// value of its own per process.
pub fn kernel_has_socket_cookies() -> bool {
    kernel_btf_has_name("bpf_get_socket_ptr_cookie")
}

/// Whether the kernel gives its reason for dropping a packet (Linux 5.17+:
/// `enum skb_drop_reason` and the `kfree_skb` tracepoint's `reason`).
pub fn kernel_has_drop_reasons() -> bool {
    kernel_btf_has_name("SKB_DROP_REASON_NO_SOCKET")
}

/// The segments of the report's `drops` row for `reason` toward
/// `destination` in `netns` (0 without one).
pub fn dropped(report: &serde_json::Value, netns: u64, reason: &str, destination: &str) -> u64 {
    report["drops"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no drops rows: {}", report["drops"]))
        .iter()
        .filter(|r| r["netns"] == netns && r["reason"] == reason && r["destination"] == destination)
        .map(|r| r["segments"].as_u64().unwrap_or(0))
        .sum()
}

/// `kernel.bpf_stats_enabled` on while it lives, then as it was.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn on() -> Self {
        let was = std::fs::read_to_string(Self::PATH).expect("reading kernel.bpf_stats_enabled");
        std::fs::write(Self::PATH, "1").expect("setting kernel.bpf_stats_enabled");
        Self(was.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// `TCPTRACE_TEST_SLOW=1`: this machine is much slower than the ones the
/// tolerances were measured on (`cargo xtask vm-test` sets it: QEMU without
/// KVM runs 10-30x slower). Only tolerances on wall-clock latencies that
/// depend on CPU speed (process start-up, scheduling, userspace work) widen;
/// counts and intervals timed by the kernel (RTO, TIME_WAIT) stay as strict.
pub fn slow_machine() -> bool {
    std::env::var_os("TCPTRACE_TEST_SLOW").is_some_and(|v| v == "1")
}

/// The mode tcptrace runs in: `TCPTRACE_SUMMARIES=1` (inherited by every
/// tcptrace a test starts) makes each socket's transitions reach userspace
/// together (summary mode, `--summaries`); otherwise one event per
/// transition (the full stream, the default). `cargo xtask test` runs the
/// integration tests in both modes: every number of the reports must be
/// the same in both; only the count of ring-buffer records differs.
pub fn summaries() -> bool {
    std::env::var_os("TCPTRACE_SUMMARIES").is_some_and(|v| v == "1")
}

/// Ring-buffer records that one connection between two traced sockets gives
/// at least, closed without TIME_WAIT: in the full stream its 10 state
/// transitions (5 per socket); in summary mode one summary per socket, and
/// one record of the listener's request: its start, its child's LISTEN ->
/// SYN_RECV and its end.
pub fn records_per_connection() -> u64 {
    if summaries() { 3 } else { 10 }
}

/// Path of a binary of this workspace: `$TCPTRACE_BIN` for tcptrace, else the
/// target directory these tests were built in.
pub fn workspace_binary(name: &str) -> PathBuf {
    if name == "tcptrace"
        && let Some(path) = std::env::var_os("TCPTRACE_BIN")
    {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build -p tracer`) or run `cargo xtask test`",
        path.display()
    );
    path
}

/// The lines of a child's output, read on their own thread, as a channel
/// that the test can wait on with a timeout.
pub fn line_channel(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Spawns `command` with `stdin`, its stdout as a [`line_channel`] and its
/// stderr inherited.
pub(crate) fn spawn_with_lines(command: &mut Command, stdin: Stdio) -> (Child, Receiver<String>) {
    command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    (child, line_channel(stdout))
}

/// Receives lines, each appended to `seen`, until one satisfies `pred`, for
/// `timeout` at most: that line, or `None` on timeout or when the sender is
/// gone.
pub(crate) fn recv_until(
    lines: &Receiver<String>,
    seen: &mut Vec<String>,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        seen.push(line.clone());
        if pred(&line) {
            return Some(line);
        }
    }
}

/// Polls `child` every `poll` until it exits: its status, or `None` if it is
/// still running after `timeout`.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration, poll: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(poll);
    }
}
