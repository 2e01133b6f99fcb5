//! `cargo xtask dist`: the release artifacts in `target/dist/`, for the
//! person with an incident who copies one file to a host and runs it.
//!
//! Layout (`vm-test --dist` depends on it):
//! - `<triple>/tcptrace`: static (musl, no PT_INTERP, no dynamic section),
//!   stripped, the kernel programs embedded; checked here (`dist/elf.rs`);
//! - `<triple>/peers/{ttserver,ttclient}`: the test peers, built the same
//!   way, not packaged;
//! - `tcptrace-<version>-<arch>.tar.gz` (binary, man pages, README),
//! - `tcptrace-<version>-<debarch>.oci.tar`: the OCI image, the binary alone
//!   (`dist/image.rs`), checked by reading it back;
//!   `tcptrace_<version>_<debarch>.deb` (Maintainer from `DEBFULLNAME` and
//!   `DEBEMAIL`), `SHA256SUMS` over what this run built (`dist/package.rs`);
//! - with `--check-deb`: the amd64 .deb installed and `tcptrace check` run in
//!   a clean Debian root (`dist/debroot.rs`).

mod debroot;
mod elf;
pub mod image;
mod package;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

/// Static release binaries are built for these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The kernel's and Rust's name (tarball names, qemu-user binaries).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's architecture name.
    pub fn deb_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    fn host() -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == env::consts::ARCH)
    }

    /// A command that runs `binary` (built for this architecture) here:
    /// directly on its own architecture, else under qemu-user.
    fn runner(self, binary: &Path) -> Command {
        if Arch::host() == Some(self) {
            Command::new(binary)
        } else {
            let mut cmd = Command::new(format!("qemu-{}-static", self.name()));
            cmd.arg(binary);
            cmd
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Architectures to build (repeatable; default: all).
    #[arg(long = "arch", value_enum)]
    pub arch: Vec<Arch>,
    /// Then install the amd64 .deb in a clean Debian root (debootstrap, cached
    /// in target/dist/debroot) and run `tcptrace check` from it.
    #[arg(long)]
    pub check_deb: bool,
}

pub fn dist_dir(root: &Path) -> PathBuf {
    root.join("target/dist")
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    let mut arches = if args.arch.is_empty() { Arch::ALL.to_vec() } else { args.arch.clone() };
    arches.dedup();
    if args.check_deb && !arches.contains(&Arch::X86_64) {
        bail!("--check-deb installs the amd64 .deb: build it too (--arch x86_64)");
    }
    // qemu-user runs the binaries of the other architecture (--version,
    // --help, man pages); `file` describes what was built.
    setup::install_packages(&["qemu-user-static", "file"])?;

    let dist = dist_dir(root);
    let mut built = Vec::new();
    for &arch in &arches {
        let started = Instant::now();
        let dir = build_static(root, arch)?;
        built.push(Built::inspect(arch, &dir, started.elapsed().as_secs())?);
    }

    let man = dist.join("man");
    generate_man(&built[0], &man)?;
    let version = env!("CARGO_PKG_VERSION");
    let mut artifacts = Vec::new();
    for b in &built {
        artifacts.push(PathBuf::from(b.arch.triple()).join("tcptrace"));
        artifacts.push(package::tarball(&dist, b.arch, version, &man)?);
        artifacts.push(package::deb(&dist, b.arch, version, &man)?);
        let binary = dist.join(b.arch.triple()).join("tcptrace");
        let archive = image::build(&dist, b.arch, version, &binary)?;
        image::check(&dist, &archive, b.arch, &binary)?;
        if b.arch == Arch::X86_64
            && cfg!(target_arch = "x86_64")
            && let Some(scraped) = image::run_and_scrape(&dist, b.arch, version)?
        {
            eprintln!("  image runs as the DaemonSet does and serves /metrics: {scraped}");
        }
        artifacts.push(PathBuf::from(image::archive_name(b.arch, version)));
    }
    package::sha256sums(&dist, &artifacts)?;

    eprintln!("\n==> dist: {}", dist.display());
    for b in &built {
        b.print();
    }
    for a in &artifacts {
        let size = fs::metadata(dist.join(a)).map(|m| m.len()).unwrap_or(0);
        eprintln!("  {:>10}  {}", size, a.display());
    }
    eprintln!("  SHA256SUMS: `sha256sum -c` passed");
    if args.check_deb {
        debroot::check(&dist, &dist.join(package::deb_name(Arch::X86_64, version)))?;
    }
    Ok(())
}

/// Builds `tcptrace` and the test peers for `arch` (release, static, stripped;
/// see [`static_target_env`]), checks that each is a static executable of
/// that architecture, and copies them to `target/dist/<triple>/`
/// (`tcptrace`, `peers/{ttserver,ttclient}`), which it returns.
pub fn build_static(root: &Path, arch: Arch) -> Result<PathBuf> {
    let triple = arch.triple();
    eprintln!("\n==> dist: building tcptrace and the test peers for {triple} (static, stripped)");
    let mut cargo = Command::new(crate::cargo_bin());
    cargo
        .current_dir(root)
        .args(["build", "--release", "--target", triple, "-p", "tracer", "-p", "tcptrace-tests"])
        .args(["--bin", "tcptrace", "--bin", "ttserver", "--bin", "ttclient"]);
    let status = static_target_env(&mut cargo, arch).status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build for {triple} failed ({status})");
    }
    let from = root.join("target").join(triple).join("release");
    let dir = dist_dir(root).join(triple);
    fs::create_dir_all(dir.join("peers"))?;
    for (name, to) in
        [("tcptrace", "tcptrace"), ("ttserver", "peers/ttserver"), ("ttclient", "peers/ttclient")]
    {
        let (src, dst) = (from.join(name), dir.join(to));
        elf::check_static(&src, arch)?;
        fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(dir)
}

/// The environment of a `cargo build|test --target <triple>` that makes
/// static executables for `arch`. Anything else built for that target (the
/// integration test binaries of `vm-test --dist`) should use it too: other
/// flags would make cargo rebuild the target's dependencies each time.
///
/// Linking: rust-lld with the target's self-contained musl crt and libc
/// (shipped with the rustup target), so no cross C toolchain is needed.
/// `relocation-model=static` makes a plain static executable (no dynamic
/// section; a static-pie would carry one and `ldd` would call it "statically
/// linked" rather than "not a dynamic executable"). These settings go in the
/// per-target variables `CARGO_TARGET_<TRIPLE>_{LINKER,RUSTFLAGS}` so that
/// they reach neither the host's build scripts nor the nightly BPF build
/// that tracer/build.rs runs (aya-build, bpfel target, its own RUSTFLAGS).
pub fn static_target_env(cargo: &mut Command, arch: Arch) -> &mut Command {
    let var = arch.triple().to_uppercase().replace('-', "_");
    cargo
        .env(format!("CARGO_TARGET_{var}_LINKER"), "rust-lld")
        .env(
            format!("CARGO_TARGET_{var}_RUSTFLAGS"),
            "-C link-self-contained=yes -C relocation-model=static -C strip=symbols -C debuginfo=0",
        )
        // Either would replace the per-target flags above.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
}

/// What was built for one architecture, and the evidence that it runs.
struct Built {
    arch: Arch,
    binary: PathBuf,
    secs: u64,
    size: u64,
    file: String,
    ldd: String,
    version: String,
}

impl Built {
    fn inspect(arch: Arch, dir: &Path, secs: u64) -> Result<Built> {
        let binary = dir.join("tcptrace");
        let size = fs::metadata(&binary)?.len();
        let file = setup::output(Command::new("file").arg("-b").arg(&binary))?.trim().to_string();
        // ldd exits 1 for a static binary; its words are what we want.
        let ldd = Command::new("ldd").arg(&binary).output().context("running ldd")?;
        let ldd = String::from_utf8_lossy(&[ldd.stdout, ldd.stderr].concat()).trim().to_string();
        if !ldd.contains("not a dynamic executable") {
            bail!("ldd {}: {ldd:?}, expected \"not a dynamic executable\"", binary.display());
        }
        let version = setup::output(arch.runner(&binary).arg("--version"))?.trim().to_string();
        if !version.contains("bpf sha256:") {
            bail!("{} --version: {version:?} names no BPF object hash", binary.display());
        }
        let help = setup::output(arch.runner(&binary).arg("--help"))?;
        if !help.contains("Usage: tcptrace") {
            bail!("{} --help did not print the usage", binary.display());
        }
        Ok(Built { arch, binary, secs, size, file, ldd, version })
    }

    fn print(&self) {
        let how = if Arch::host() == Some(self.arch) { "natively" } else { "under qemu-user" };
        eprintln!("  {}: built in {} s, {} bytes", self.binary.display(), self.secs, self.size);
        eprintln!("    file: {}", self.file);
        eprintln!("    ldd: {}", self.ldd);
        eprintln!("    --version ({how}): {}", self.version);
    }
}

/// The man pages, from the first binary built (`tcptrace man`), into `out`.
fn generate_man(built: &Built, out: &Path) -> Result<()> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    setup::run(built.arch.runner(&built.binary).arg("man").arg("--out").arg(out))
}
