//! `tcptrace check`: everything tcptrace needs, one line each with OK, WARN
//! or FAIL and the fix. Exit status 0 when nothing failed (warnings mean a
//! feature is unavailable), 2 otherwise.

use std::{fmt, path::Path};

use anyhow::Result;
use aya::Btf;
use tracer_common::KernelConfig;

use crate::{
    host::cgroup,
    kernel::{self, Feature, btf, env},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    pub what: String,
    pub detail: String,
    /// How to fix it (empty when OK).
    pub fix: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {}: {}", self.status, self.what, self.detail)?;
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}

fn ok(what: &str, detail: impl Into<String>) -> Check {
    Check { status: Status::Ok, what: what.into(), detail: detail.into(), fix: String::new() }
}

fn warn(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { status: Status::Warn, what: what.into(), detail: detail.into(), fix: fix.into() }
}

fn fail(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { status: Status::Fail, what: what.into(), detail: detail.into(), fix: fix.into() }
}

/// Runs every check; stops early only where later checks cannot run.
pub fn run_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    match env::effective_caps() {
        Ok(caps) => {
            let missing = env::missing_caps(caps, &[env::CAP_BPF, env::CAP_PERFMON]);
            if missing.is_empty() {
                checks.push(ok("privileges", "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) present"));
            } else {
                let names: Vec<_> = missing.iter().map(|&c| env::cap_name(c)).collect();
                checks.push(fail(
                    "privileges",
                    format!("missing {}", names.join(", ")),
                    "run as root (sudo)",
                ));
            }
            if env::has_cap(caps, env::CAP_SYS_ADMIN) && env::has_cap(caps, env::CAP_SYS_PTRACE) {
                checks.push(ok(
                    "namespaces",
                    "CAP_SYS_ADMIN and CAP_SYS_PTRACE present: per-namespace settings and counters readable",
                ));
            } else if env::has_cap(caps, env::CAP_SYS_ADMIN) {
                // The same sentence as the report's note.
                let why = env::capability_notes(caps).join("; ");
                checks.push(warn("namespaces", why, "grant CAP_SYS_PTRACE, or run as root"));
            } else {
                checks.push(warn(
                    "namespaces",
                    "no CAP_SYS_ADMIN: namespaces cannot be entered (setns), so port ranges, TCP counters \
                     and TIME_WAIT sockets existing at start are unknown",
                    "grant CAP_SYS_ADMIN, or run as root",
                ));
            }
        }
        Err(e) => checks.push(fail("privileges", format!("cannot read capabilities: {e}"), "check /proc")),
    }

    let btf_path = Path::new(btf::VMLINUX_BTF);
    if !btf_path.exists() {
        checks.push(fail(
            "BTF",
            format!("no {}", btf_path.display()),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ));
        return checks;
    }
    let kernel_btf = match btf::KernelBtf::load(btf_path) {
        Ok(b) => {
            checks.push(ok("BTF", format!("{} parsed", btf_path.display())));
            b
        }
        Err(e) => {
            checks.push(fail("BTF", format!("{e:#}"), "use a kernel with valid BTF"));
            return checks;
        }
    };

    let missing = kernel_btf.missing_essentials();
    if !missing.is_empty() {
        checks.push(fail("kernel", btf::too_old(&missing), format!("use {} or newer", btf::MINIMUM_KERNEL)));
        return checks;
    }

    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let timers = btf::timer_functions(&kallsyms);
    if timers.tw_timer_handler != 0 && timers.reqsk_timer_handler != 0 {
        checks.push(ok("kallsyms", "tw_timer_handler and reqsk_timer_handler visible"));
    } else {
        checks.push(warn(
            "kallsyms",
            format!(
                "timer callbacks hidden: TIME_WAIT and SYN_RECV tracking unavailable: {}",
                env::kallsyms_hidden_here()
            ),
            "grant CAP_SYSLOG (or run as root)",
        ));
    }

    let config = match btf::kernel_config(&kernel_btf, timers, 0) {
        Ok(c) => {
            checks.push(ok("struct offsets", "every kernel struct member found in BTF"));
            c
        }
        Err(e) => {
            checks.push(fail("struct offsets", format!("{e:#}"), "this kernel is not supported"));
            return checks;
        }
    };

    if let Some(note) = kernel::cookie_note(&config) {
        checks.push(warn("helper bpf_get_socket_cookie", note, "upgrade the kernel for this feature"));
    }

    let plan = match kernel::plan(&kernel_btf, timers) {
        Ok(plan) => plan,
        Err(e) => {
            checks.push(fail("tracefs", format!("{e:#}"), "mount -t tracefs nodev /sys/kernel/tracing"));
            return checks;
        }
    };
    let tracefs_problem = plan.skipped.iter().find(|(_, why)| why.contains("tracefs"));
    if let Some((_, why)) = tracefs_problem {
        checks.push(warn("tracefs", why.clone(), "run as root, or grant CAP_DAC_READ_SEARCH"));
    } else if plan.mounted_tracefs {
        checks.push(warn("tracefs", "was not mounted; tcptrace mounted it", "none needed"));
    } else {
        checks.push(ok("tracefs", "mounted"));
    }
    for (spec, why) in &plan.skipped {
        let what = format!("hook {}", spec.hook);
        if spec.feature == Feature::Core {
            checks.push(fail(&what, why.clone(), format!("use {} or newer", btf::MINIMUM_KERNEL)));
        } else {
            checks.push(warn(&what, why.clone(), skipped_fix(why)));
        }
    }

    // Then the maps and every program through the verifier (verify_programs),
    // with memory for them first: kernels before 5.11 charge RLIMIT_MEMLOCK.
    if let Some(err) = env::raise_memlock() {
        if !kernel_btf.charges_memlock() {
            checks.push(ok(
                "memlock",
                format!("RLIMIT_MEMLOCK not raised ({err}), not needed: BPF memory is charged to the cgroup"),
            ));
        } else {
            checks.push(warn(
                "memlock",
                format!("cannot raise RLIMIT_MEMLOCK ({err}); BPF maps may fail on this kernel"),
                "raise it (ulimit -l unlimited) or grant CAP_SYS_RESOURCE",
            ));
        }
    }
    match verify_programs(&config, &plan) {
        Err(e) => {
            checks.push(fail("BPF maps", format!("{e:#}"), "run as root; check the bpf() syscall is allowed"))
        }
        Ok(verified) => {
            checks.push(ok("BPF maps", "ring buffer and arrays created"));
            for (spec, result) in verified {
                let what = format!("program {} ({})", spec.program, spec.hook);
                match result {
                    Ok(()) => checks.push(ok(&what, "verified and loaded")),
                    Err(e) => checks.push(fail(&what, crate::error::one_line(&e), "see RUST_LOG=debug")),
                }
            }
            checks.push(summary_mode_check(&config, &plan));
        }
    }

    match std::fs::read_to_string("/proc/mounts").ok().and_then(|m| cgroup::cgroup2_mount(&m)) {
        Some(path) => checks.push(ok("cgroup v2", format!("mounted at {}", path.display()))),
        None => checks.push(warn("cgroup v2", "not mounted: cgroup paths unavailable", "mount cgroup2")),
    }
    checks
}

/// Creates the maps under `config` and lets the verifier see every selected
/// program: that proves the program types, helpers and the ring buffer work
/// here. Nothing is attached. Each program with its result; an error when
/// the maps (or aya's BTF) are not to be had.
fn verify_programs<'p>(
    config: &KernelConfig,
    plan: &'p kernel::Plan,
) -> Result<Vec<(&'p kernel::ProgramSpec, Result<()>)>> {
    let mut ebpf = kernel::load_object(config, 1 << 20)?;
    let btf = Btf::from_sys_fs().map_err(|e| anyhow::anyhow!("aya cannot read BTF: {e}"))?;
    Ok(plan.selected.iter().map(|spec| (spec, kernel::load_program(&mut ebpf, spec, &btf))).collect())
}

/// The programs again as `--summaries` loads them: the mode is a load-time
/// constant, so the verifier sees other code (its branches are pruned when
/// off). One line: the programs that fail, or none.
fn summary_mode_check(config: &KernelConfig, plan: &kernel::Plan) -> Check {
    let what = "summary mode (--summaries)";
    let verified = match verify_programs(&KernelConfig { summaries: 1, ..*config }, plan) {
        Ok(verified) => verified,
        Err(e) => return warn(what, format!("{e:#}"), "run without --summaries"),
    };
    let failed: Vec<String> = verified
        .into_iter()
        .filter_map(|(spec, result)| {
            result.err().map(|e| format!("{}: {}", spec.program, crate::error::one_line(&e)))
        })
        .collect();
    if failed.is_empty() {
        ok(what, "every program verified and loaded")
    } else {
        warn(what, failed.join("; "), "run without --summaries")
    }
}

/// The fix for a hook left out, from the reason it was left out.
fn skipped_fix(why: &str) -> &'static str {
    if why.contains("CAP_SYSLOG") || why.contains("kptr_restrict") {
        "grant CAP_SYSLOG (or run as root)"
    } else if why.contains("tracefs") {
        "run as root, or grant CAP_DAC_READ_SEARCH"
    } else {
        "upgrade the kernel for this feature"
    }
}

/// Prints the checks; returns whether all passed (warnings allowed). A
/// closed stdout (`tcptrace check | head`) ends the listing quietly.
pub fn check() -> Result<bool> {
    use std::io::Write as _;
    let checks = run_checks();
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warns = checks.iter().filter(|c| c.status == Status::Warn).count();
    let mut out = std::io::stdout().lock();
    let printed = checks.iter().try_for_each(|c| writeln!(out, "{c}")).and_then(|()| {
        writeln!(
            out,
            "{}: {} checks, {fails} failed, {warns} warnings",
            if worst == Status::Fail { "NOT READY" } else { "READY" },
            checks.len()
        )
    });
    match printed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(worst != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_status_what_and_fix() {
        assert_eq!(ok("BTF", "parsed").to_string(), "OK    BTF: parsed");
        assert_eq!(
            warn("kallsyms", "hidden", "sysctl kernel.kptr_restrict=0").to_string(),
            "WARN  kallsyms: hidden (fix: sysctl kernel.kptr_restrict=0)"
        );
        assert!(Status::Fail > Status::Warn && Status::Warn > Status::Ok);
    }
}
