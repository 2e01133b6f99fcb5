//! `cargo xtask dist --check-deb`: the amd64 .deb on a clean Debian root.
//! debootstrap (minbase, bookworm) builds the root once, cached in
//! `target/dist/debroot`; `dpkg -i` installs the package in it and
//! `tcptrace check` runs from it against this host's kernel.
//!
//! The chroot needs /proc and /sys (with /sys/fs/bpf, /sys/kernel/tracing and
//! the cgroup mounts under it). They are mounted inside a private mount
//! namespace (`unshare --mount --propagation private`), so they exist only for
//! the chroot's processes and are gone when the last of them exits, whatever
//! way it ends; nothing can be left mounted on the host.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Written after debootstrap succeeded: a root without it is incomplete.
const COMPLETE: &str = ".tcptrace-debootstrap-complete";

/// Inside the private mount namespace: mount what the chroot needs, then
/// replace this shell by the chroot. `$1` is the root. The cached root may
/// hold the package from an earlier run: purged first, so that every run
/// installs it afresh.
const SCRIPT: &str = r#"set -e
mount -t proc proc "$1/proc"
mount --rbind /sys "$1/sys"
exec chroot "$1" /bin/sh -ec '
dpkg --purge tcptrace
test ! -e /usr/bin/tcptrace
dpkg -i /tmp/tcptrace.deb
dpkg-query -W -f="installed: \${Package} \${Version} \${Architecture} (\${Status})\n" tcptrace
test -f /usr/share/man/man1/tcptrace-run.1.gz
echo "man page: /usr/share/man/man1/tcptrace-run.1.gz"
echo "binary: $(command -v tcptrace)"
tcptrace --version
tcptrace check
'"#;

pub fn check(dist: &Path, deb: &Path) -> Result<()> {
    if env::consts::ARCH != "x86_64" {
        bail!("--check-deb runs the amd64 package in a chroot: it needs an x86_64 host");
    }
    let root = dist.join("debroot");
    bootstrap(&root)?;
    eprintln!("\n==> dist: {} in a clean Debian {SUITE} root ({})", deb.display(), root.display());
    fs::copy(deb, root.join("tmp/tcptrace.deb")).context("copying the .deb into the root")?;
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", SCRIPT, "sh"])
        .arg(&root)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .status()
        .context("running unshare")?;
    let leftover = mounts_under(&root)?;
    if !leftover.is_empty() {
        bail!("mounts left under {}: {}", root.display(), leftover.join(", "));
    }
    if !status.success() {
        bail!("install or `tcptrace check` in the Debian root failed ({status})");
    }
    eprintln!("dist: the .deb installs on a clean Debian {SUITE} root and `tcptrace check` passes there");
    Ok(())
}

fn bootstrap(root: &Path) -> Result<()> {
    if root.join(COMPLETE).exists() {
        return Ok(());
    }
    setup::install_packages(&["debootstrap"])?;
    if root.exists() {
        // A run that stopped half-way: never delete through a mount.
        let mounted = mounts_under(root)?;
        if !mounted.is_empty() {
            bail!("{} has mounts under it ({}); unmount them first", root.display(), mounted.join(", "));
        }
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    eprintln!("\n==> dist: debootstrap --variant=minbase {SUITE} into {} (once; cached)", root.display());
    let started = Instant::now();
    setup::run(Command::new("debootstrap").args(["--variant=minbase", SUITE]).arg(root).arg(MIRROR))?;
    fs::write(root.join(COMPLETE), "")?;
    eprintln!("dist: Debian root ready in {} s", started.elapsed().as_secs());
    Ok(())
}

/// Mount points at or under `root` in this (the host's) mount namespace.
fn mounts_under(root: &Path) -> Result<Vec<String>> {
    let root: PathBuf = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&root))
        .map(str::to_string)
        .collect())
}
