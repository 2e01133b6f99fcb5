//! Bad input and hostile conditions: one clear line on stderr, exit status 2,
//! never a panic or a backtrace.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::process::{Command, Output};

use tcptrace_tests::{require_root, workspace_binary};

fn tcptrace(args: &[&str]) -> Output {
    Command::new(workspace_binary("tcptrace")).args(args).output().unwrap()
}

/// `tcptrace <args>` (a shell word list) run by capsh as root, but with
/// CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN dropped from the bounding set.
fn tcptrace_without_bpf_caps(args: &str) -> Output {
    let bin = workspace_binary("tcptrace");
    Command::new("capsh")
        .args(["--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c"])
        .arg(format!("exec {} {args}", bin.display()))
        .output()
        .unwrap()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("tcptrace: warning:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line, got: {stderr}");
    assert!(lines[0].starts_with("tcptrace: error: "), "{stderr}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn unknown_flag() {
    assert_one_line_error(&tcptrace(&["run", "--bogus"]), "--bogus");
}

#[test]
fn unknown_command() {
    assert_one_line_error(&tcptrace(&["fly"]), "fly");
}

#[test]
fn bad_duration() {
    assert_one_line_error(&tcptrace(&["run", "--duration", "soon"]), "invalid duration 'soon'");
    assert_one_line_error(&tcptrace(&["run", "--duration", "0"]), "more than zero");
}

#[test]
fn bad_format() {
    assert_one_line_error(&tcptrace(&["run", "--format", "xml"]), "xml");
}

#[test]
fn help_and_version_succeed() {
    let out = tcptrace(&["run", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--duration"));
    assert!(tcptrace(&["--version"]).status.success());
}

/// Without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN (dropped from the bounding set
/// by capsh, as root), tcptrace names the missing capabilities.
#[test]
fn missing_privileges_are_named() {
    require_root();
    let out = tcptrace_without_bpf_caps("run --duration 1s");
    assert_one_line_error(&out, "missing CAP_BPF, CAP_PERFMON");
}

#[test]
fn check_passes_here_and_names_every_program() {
    require_root();
    let out = tcptrace(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.lines().all(|l| l.starts_with("OK") || l.starts_with("WARN") || l.starts_with("READY")),
        "{stdout}"
    );
    assert!(
        stdout.contains("OK    program tcptrace_state (tp_btf/inet_sock_set_state): verified and loaded"),
        "{stdout}"
    );
    assert!(stdout.contains("OK    kallsyms"), "{stdout}");
    // The programs as --summaries loads them (other code for the verifier).
    assert!(
        stdout.contains("OK    summary mode (--summaries): every program verified and loaded"),
        "{stdout}"
    );
}

/// Whether the running kernel's BTF has the tracepoint `name` (ground truth:
/// the type name `btf_trace_<name>` in the BTF string section).
fn kernel_btf_has_tracepoint(name: &str) -> bool {
    tcptrace_tests::kernel_btf_has_name(&format!("btf_trace_{name}"))
}

/// Degradation on older kernels: what the kernel lacks is a warning in
/// `check` and a note in the report, never a failure; where the kernel has
/// it, neither appears. Linux 6.1 and 6.12 have no `tcp:tcp_sendmsg_locked`;
/// 5.10 has no `sock:inet_sk_error_report` either, and gives tracing
/// programs no `bpf_get_socket_cookie` (its function for them,
/// `bpf_get_socket_ptr_cookie`, is then missing from BTF) and no drop
/// reasons (Linux 5.17+). `cargo xtask
/// vm-test` runs this on each kind of kernel.
#[test]
fn a_hook_this_kernel_lacks_is_a_warning_and_a_note() {
    require_root();
    let missing = [
        (
            kernel_btf_has_tracepoint("tcp_sendmsg_locked"),
            "WARN  hook tp_btf/tcp_sendmsg_locked: owner attribution of accepted sockets unavailable",
            "tcp_sendmsg_locked",
        ),
        (
            kernel_btf_has_tracepoint("inet_sk_error_report"),
            "WARN  hook tp_btf/inet_sk_error_report: socket error reports unavailable",
            "inet_sk_error_report",
        ),
        (
            tcptrace_tests::kernel_has_socket_cookies(),
            "WARN  helper bpf_get_socket_cookie: socket cookies unavailable",
            "bpf_get_socket_cookie",
        ),
        (
            tcptrace_tests::kernel_has_drop_reasons(),
            "WARN  hook tp_btf/kfree_skb: kernel drop reasons unavailable",
            "kfree_skb",
        ),
    ];
    let out = tcptrace(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for (present, warning, _) in missing {
        assert_eq!(stdout.contains(warning), !present, "present: {present}: {warning}\n{stdout}");
    }

    let out = tcptrace(&["run", "--duration", "1s", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "report")
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    let notes = report["notes"].as_array().unwrap_or_else(|| panic!("no notes array in {report}"));
    for (present, _, name) in missing {
        let noted = notes.iter().any(|n| n.as_str().is_some_and(|n| n.contains(name)));
        assert_eq!(noted, !present, "present: {present}: {name}\n{report}");
    }
}

#[test]
fn check_fails_without_privileges_with_exit_status_2() {
    require_root();
    let out = tcptrace_without_bpf_caps("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("FAIL  privileges: missing CAP_BPF, CAP_PERFMON (fix: run as root (sudo))"),
        "{stdout}"
    );
    assert!(stdout.contains("NOT READY"), "{stdout}");
}

#[test]
fn report_of_a_missing_or_bad_file_is_one_line() {
    let out = tcptrace(&["report", "/nonexistent/file.tcptrace"]);
    assert_one_line_error(&out, "cannot open /nonexistent/file.tcptrace");
    let garbage = std::env::temp_dir().join(format!("tcptrace-garbage-{}", std::process::id()));
    std::fs::write(&garbage, b"this is not a recording at all").unwrap();
    let out = tcptrace(&["report", garbage.to_str().unwrap()]);
    let _ = std::fs::remove_file(&garbage);
    assert_one_line_error(&out, "not a valid tcptrace recording: wrong magic bytes");
}

#[test]
fn record_needs_an_output_file() {
    assert_one_line_error(&tcptrace(&["record", "--duration", "1s"]), "--output");
}

/// Every command that takes the option, with each kind of bad value.
#[test]
fn every_command_rejects_bad_input_in_one_line() {
    let file = "/nonexistent.tcptrace";
    let commands: [&[&str]; 6] = [
        &["run"],
        &["record", "-o", "/tmp/x.tcptrace"],
        &["report", file],
        &["serve"],
        &["demo"],
        &["check"],
    ];
    for command in commands {
        let with =
            |extra: &[&'static str]| -> Vec<&'static str> { command.iter().chain(extra).copied().collect() };
        assert_one_line_error(&tcptrace(&with(&["--bogus"])), "--bogus");
        if command[0] != "check" && command[0] != "report" {
            assert_one_line_error(&tcptrace(&with(&["--duration", "soon"])), "invalid duration 'soon'");
        }
        if matches!(command[0], "run" | "record" | "report" | "serve") {
            assert_one_line_error(&tcptrace(&with(&["--raddr", "10.0.0.0/33"])), "10.0.0.0/33");
            assert_one_line_error(&tcptrace(&with(&["--laddr", "nowhere"])), "nowhere");
            assert_one_line_error(&tcptrace(&with(&["--port", "70000"])), "70000");
        }
    }
}

#[test]
fn serve_rejects_bad_listen_addresses_and_budgets() {
    assert_one_line_error(&tcptrace(&["serve", "--listen", "localhost"]), "localhost");
    assert_one_line_error(&tcptrace(&["serve", "--top", "0"]), "0");
}

#[test]
fn serve_on_a_taken_port_says_so() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(&tcptrace(&["serve", "--listen", &addr]), &format!("cannot listen on {addr}"));
}
