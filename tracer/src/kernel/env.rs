//! What the host must provide before anything is loaded: capabilities, BTF,
//! tracefs, the memlock limit. Each failure is one actionable line.

use std::{ffi::CString, fs, io, path::Path};

use anyhow::{Result, bail};

use crate::error::EnvError;

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_SYSLOG: u32 = 34;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

pub fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH",
        CAP_NET_ADMIN => "CAP_NET_ADMIN",
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_SYS_RESOURCE => "CAP_SYS_RESOURCE",
        CAP_SYSLOG => "CAP_SYSLOG",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
}

/// Whether `caps` (a `CapEff` mask) holds `cap`.
pub fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Effective capability set of this process, from `/proc/self/status`.
pub fn effective_caps() -> io::Result<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status")?)
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// The capabilities tracing needs that `caps` lacks. CAP_SYS_ADMIN covers
/// both CAP_BPF and CAP_PERFMON (and is required before Linux 5.8).
pub fn missing_caps(caps: u64, needed: &[u32]) -> Vec<u32> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    needed
        .iter()
        .copied()
        .filter(|&cap| !(has(cap) || (matches!(cap, CAP_BPF | CAP_PERFMON) && has(CAP_SYS_ADMIN))))
        .collect()
}

pub fn check_privileges() -> Result<()> {
    let caps = effective_caps().map_err(|e| EnvError::new(format!("cannot read capabilities: {e}")))?;
    let missing = missing_caps(caps, &[CAP_BPF, CAP_PERFMON]);
    if !missing.is_empty() {
        let names: Vec<_> = missing.iter().map(|&c| cap_name(c)).collect();
        bail!(EnvError::new(format!(
            "tcptrace needs CAP_BPF and CAP_PERFMON (or root): missing {}; run it with sudo",
            names.join(", ")
        )));
    }
    Ok(())
}

pub fn check_btf(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(EnvError::new(format!(
            "no kernel BTF at {}: tcptrace needs {} or newer built with CONFIG_DEBUG_INFO_BTF=y",
            path.display(),
            super::btf::MINIMUM_KERNEL
        )));
    }
    Ok(())
}

const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

fn tracefs_usable() -> bool {
    TRACEFS_PATHS.iter().any(|p| Path::new(p).join("events").is_dir())
}

/// Where tracefs is mounted according to `/proc/mounts` (whether or not this
/// process may look inside).
pub fn tracefs_mount_point(mounts: &str) -> Option<&str> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "tracefs").then_some(dir)
    })
}

/// Classic tracepoints are attached by id, read from tracefs. Mounts it when
/// missing; returns whether this call mounted it. Mounting needs
/// CAP_SYS_ADMIN; a tracefs mounted but closed to this user (mode 0700, not
/// root) is an error too: callers leave the classic tracepoints out.
pub fn ensure_tracefs() -> Result<bool> {
    if tracefs_usable() {
        return Ok(false);
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if let Some(dir) = tracefs_mount_point(&mounts) {
        let err = fs::read_dir(Path::new(dir).join("events")).err();
        bail!(EnvError::new(format!(
            "tracefs at {dir} is not accessible ({}): it is mode 0700, run as root (uid 0) or with \
             CAP_DAC_READ_SEARCH",
            err.map_or_else(|| "no events directory".to_string(), |e| e.to_string())
        )));
    }
    let target = TRACEFS_PATHS[0];
    let c = |s: &str| CString::new(s).map_err(|e| EnvError::new(e.to_string()));
    let (source, dir, fstype) = (c("nodev")?, c(target)?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings, null data pointer.
    let rc = unsafe { libc::mount(source.as_ptr(), dir.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!(EnvError::new(format!(
            "tracefs is not mounted and mounting it at {target} failed ({err}; needs CAP_SYS_ADMIN); \
             run: mount -t tracefs nodev {target}"
        )));
    }
    Ok(true)
}

fn read_sysctl(path: &str) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Why `/proc/kallsyms` hides kernel addresses from this process, and what to
/// do. `kallsyms_show_value()`: with kptr_restrict=0 everyone sees them when
/// perf_event_paranoid <= 1, else only holders of CAP_SYSLOG; with
/// kptr_restrict=1 only CAP_SYSLOG; with 2 nobody.
pub fn kallsyms_hidden_reason(kptr_restrict: Option<i64>, perf_paranoid: Option<i64>, caps: u64) -> String {
    match (kptr_restrict, perf_paranoid) {
        (Some(k), _) if k >= 2 => {
            "kernel.kptr_restrict=2 hides kernel addresses from everyone (set it to 1, and run tcptrace with \
             CAP_SYSLOG)"
                .to_string()
        }
        (Some(k), Some(p)) if !has_cap(caps, CAP_SYSLOG) && (k == 1 || p > 1) => format!(
            "/proc/kallsyms shows kernel addresses only to CAP_SYSLOG here (kernel.kptr_restrict={k}, \
             kernel.perf_event_paranoid={p}): run tcptrace with CAP_SYSLOG"
        ),
        _ => "tw_timer_handler/reqsk_timer_handler not found in /proc/kallsyms".to_string(),
    }
}

/// [`kallsyms_hidden_reason`] for this process and host.
pub fn kallsyms_hidden_here() -> String {
    kallsyms_hidden_reason(
        read_sysctl("/proc/sys/kernel/kptr_restrict"),
        read_sysctl("/proc/sys/kernel/perf_event_paranoid"),
        effective_caps().unwrap_or(0),
    )
}

/// What works less well with the capabilities this process has, one note
/// each (tracing itself needs only CAP_BPF and CAP_PERFMON).
pub fn capability_notes(caps: u64) -> Vec<String> {
    let mut notes = Vec::new();
    if !has_cap(caps, CAP_SYS_ADMIN) {
        notes.push(
            "no CAP_SYS_ADMIN: tcptrace cannot enter network namespaces (setns), so their port ranges, \
             TCP counters and the TIME_WAIT sockets that existed at start are unknown; port-exhaustion \
             figures, listen-queue counters and pre-existing TIME_WAIT counts are missing from the report"
                .to_string(),
        );
    } else if !has_cap(caps, CAP_SYS_PTRACE) {
        notes.push(
            "no CAP_SYS_PTRACE: network namespaces found only through other processes \
             (/proc/PID/ns/net of more privileged processes, e.g. containers not listed in /run/netns) \
             cannot be entered, so their port ranges and TCP counters are unknown"
                .to_string(),
        );
    }
    notes
}

/// The running kernel's (major, minor) version, from uname(2).
pub fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: utsname is plain data filled by the syscall.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: Vec<u8> = uts.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    parse_release(&String::from_utf8_lossy(&release))
}

pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Why maps could not be created on a kernel that charges BPF memory to
/// RLIMIT_MEMLOCK when raising the limit failed with `err`, and the fix.
pub fn memlock_too_low(err: &io::Error) -> String {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscall with a valid pointer.
    let now = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0 {
        if limit.rlim_cur == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", limit.rlim_cur / 1024)
        }
    } else {
        "unknown".to_string()
    };
    format!(
        "this kernel charges BPF memory to RLIMIT_MEMLOCK (before Linux 5.11), which is {now} here and \
         could not be raised ({err}): raise it (ulimit -l unlimited; systemd: LimitMEMLOCK=infinity) or \
         grant CAP_SYS_RESOURCE"
    )
}

/// Lifts RLIMIT_MEMLOCK for kernels before 5.11, where BPF memory counts
/// against it. Newer kernels account BPF memory to the cgroup instead, so a
/// failure here (no CAP_SYS_RESOURCE) is only worth a warning.
pub fn raise_memlock() -> Option<io::Error> {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } == 0 {
        None
    } else {
        Some(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn parses_effective_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn finds_the_tracefs_mount() {
        let mounts = "sysfs /sys sysfs rw 0 0\nnodev /sys/kernel/tracing tracefs rw,relatime 0 0\n";
        assert_eq!(tracefs_mount_point(mounts), Some("/sys/kernel/tracing"));
        assert_eq!(tracefs_mount_point("sysfs /sys sysfs rw 0 0\n"), None);
    }

    #[test]
    fn kallsyms_reasons_name_the_sysctl_or_the_capability() {
        let syslog = 1u64 << CAP_SYSLOG;
        assert!(kallsyms_hidden_reason(Some(2), Some(2), syslog).contains("kptr_restrict=2"));
        let r = kallsyms_hidden_reason(Some(0), Some(2), 0);
        assert!(r.contains("CAP_SYSLOG") && r.contains("perf_event_paranoid=2"), "{r}");
        assert!(kallsyms_hidden_reason(Some(1), Some(1), 0).contains("CAP_SYSLOG"));
        assert!(kallsyms_hidden_reason(Some(0), Some(1), 0).contains("not found"));
        assert!(kallsyms_hidden_reason(Some(1), Some(2), syslog).contains("not found"));
    }

    #[test]
    fn notes_what_is_missing_without_optional_capabilities() {
        assert!(capability_notes(u64::MAX).is_empty());
        let notes = capability_notes((1 << CAP_BPF) | (1 << CAP_PERFMON));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("no CAP_SYS_ADMIN: "), "{notes:?}");
        let notes = capability_notes((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_ADMIN));
        assert!(notes.len() == 1 && notes[0].starts_with("no CAP_SYS_PTRACE: "), "{notes:?}");
    }

    #[test]
    fn names_exactly_the_missing_capabilities() {
        let root = 0x1ff_ffff_ffffu64;
        assert!(missing_caps(root, &[CAP_BPF, CAP_PERFMON]).is_empty());
        assert_eq!(missing_caps(0, &[CAP_BPF, CAP_PERFMON]), vec![CAP_BPF, CAP_PERFMON]);
        assert_eq!(missing_caps(1 << CAP_BPF, &[CAP_BPF, CAP_PERFMON]), vec![CAP_PERFMON]);
        // CAP_SYS_ADMIN implies both, but not CAP_NET_ADMIN.
        assert_eq!(
            missing_caps(1 << CAP_SYS_ADMIN, &[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]),
            vec![CAP_NET_ADMIN]
        );
    }
}
