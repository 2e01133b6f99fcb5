//! What the host must provide before anything is loaded: capabilities, BTF,
//! tracefs, the memlock limit. Each failure is one actionable line.

use std::{ffi::CString, fs, io, path::Path};

use anyhow::{Result, bail};

use crate::error::EnvError;

/// Capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

pub fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_NET_ADMIN => "CAP_NET_ADMIN",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
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
            "no kernel BTF at {}: tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            path.display()
        )));
    }
    Ok(())
}

const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

fn tracefs_mounted() -> bool {
    TRACEFS_PATHS.iter().any(|p| Path::new(p).join("events").is_dir())
}

/// Classic tracepoints are attached by id, read from tracefs. Mounts it when
/// missing; returns whether this call mounted it.
pub fn ensure_tracefs() -> Result<bool> {
    if tracefs_mounted() {
        return Ok(false);
    }
    let target = TRACEFS_PATHS[0];
    let c = |s: &str| CString::new(s).map_err(|e| EnvError::new(e.to_string()));
    let (source, dir, fstype) = (c("nodev")?, c(target)?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings, null data pointer.
    let rc = unsafe { libc::mount(source.as_ptr(), dir.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!(EnvError::new(format!(
            "tracefs is not mounted and mounting it at {target} failed ({err}); \
             run: mount -t tracefs nodev {target}"
        )));
    }
    Ok(true)
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
