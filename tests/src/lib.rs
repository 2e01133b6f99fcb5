//! Helpers for tcptrace's integration tests: throwaway network namespaces
//! joined by veth pairs, sysctls and nftables inside them, the real
//! `tcptrace` binary under test, and its JSON output.
//!
//! Every resource is a guard that removes itself on drop, also when a test
//! panics. Tests panic with context rather than return `Result`.
#![allow(clippy::unwrap_used, reason = "test helpers: a panic with context is the failure report")]

pub mod background;
pub mod bpfobj;
pub mod events;
pub mod faults;
pub mod netns;
pub mod packet;
pub mod peer;
pub mod procs;
pub mod seccomp;
pub mod tracer;

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// Runs a command, panics with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
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

/// `TCPTRACE_TEST_SLOW=1`: this machine is much slower than the ones the
/// tolerances were measured on (`cargo xtask vm-test` sets it: QEMU without
/// KVM runs 10-30x slower). Only tolerances on wall-clock latencies that
/// depend on CPU speed (process start-up, scheduling, userspace work) widen;
/// counts and intervals timed by the kernel (RTO, TIME_WAIT) stay as strict.
pub fn slow_machine() -> bool {
    std::env::var_os("TCPTRACE_TEST_SLOW").is_some_and(|v| v == "1")
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
