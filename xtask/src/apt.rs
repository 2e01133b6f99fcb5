//! Debian packages from suites or architectures the host's apt does not use
//! (bullseye's 5.10 kernels, arm64 kernels and busybox), downloaded through a
//! private apt configuration under `target/vm/apt/<name>/`: its own source
//! list, package lists and cache. The host's `/etc/apt` and its package state
//! are never touched; nothing is installed, only `.deb` files fetched.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian's archive and its security archive (the host's mirror).
pub const DEBIAN: &str = "http://deb.debian.org/debian";
pub const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";

/// One suite of one archive, e.g. (`DEBIAN`, "bullseye").
pub struct Suite {
    pub uri: &'static str,
    pub name: &'static str,
}

/// A private apt configuration: `arch` packages from `suites`.
pub struct PrivateApt {
    dir: PathBuf,
    arch: String,
}

impl PrivateApt {
    /// Writes the configuration under `root/target/vm/apt/<name>` and
    /// refreshes its package lists (once per process is enough; lists older
    /// than a day are refreshed, newer ones reused).
    pub fn new(root: &Path, name: &str, arch: &str, suites: &[Suite]) -> Result<Self> {
        let dir = root.join("target/vm/apt").join(name);
        for sub in ["lists/partial", "cache/archives/partial", "etc/preferences.d", "etc/apt.conf.d"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources: String = suites
            .iter()
            .map(|s| {
                format!(
                    "deb [arch={arch} signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {} main\n",
                    s.uri, s.name
                )
            })
            .collect();
        let list = dir.join("etc/sources.list");
        let changed = fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        fs::write(&list, &sources)?;
        fs::write(dir.join("etc/status"), "")?;
        let apt = Self { dir, arch: arch.to_string() };
        let fresh = fs::metadata(apt.dir.join("lists/lock"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() < 24 * 3600);
        if changed || !fresh {
            eprintln!(
                "xtask: apt-get update ({name}: {arch}, {})",
                suites.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            );
            apt.run(&["update", "-q"])?;
        }
        Ok(apt)
    }

    /// An apt command under this configuration only.
    fn command(&self, program: &str) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new(program);
        for opt in [
            format!("Dir::Etc::SourceList={}", d("etc/sources.list")),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::Etc::Preferences={}", d("etc/preferences")),
            format!("Dir::Etc::PreferencesParts={}", d("etc/preferences.d")),
            format!("Dir::Etc::Parts={}", d("etc/apt.conf.d")),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::State::status={}", d("etc/status")),
            format!("Dir::Cache={}", d("cache")),
            format!("APT::Architecture={}", self.arch),
            format!("APT::Architectures={}", self.arch),
            // As root, apt would warn that its sandbox user cannot write here.
            "APT::Sandbox::User=root".to_string(),
        ] {
            cmd.args(["-o", &opt]);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command("apt-get");
        cmd.args(args);
        run_quiet(&mut cmd)
    }

    /// Every package name starting with `prefix` that these suites have.
    pub fn package_names(&self, prefix: &str) -> Result<String> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["pkgnames", prefix]);
        run_quiet(&mut cmd)
    }

    /// Downloads `package` (the newest version these suites have) into `dir`
    /// and returns the `.deb`'s path.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let mut cmd = self.command("apt-get");
        cmd.args(["download", "-q", package]).current_dir(dir);
        run_quiet(&mut cmd)?;
        find_deb(dir, package)
    }
}

/// The `<package>_*.deb` that `apt-get download` left in `dir`.
pub fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb in {}", dir.display()))
}

/// Runs `cmd`, returns its stdout; on failure, an error with its last
/// stderr line.
pub fn run_quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::piped()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim();
        bail!("{cmd:?} failed ({}): {last}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
