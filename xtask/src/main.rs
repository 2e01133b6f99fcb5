//! Developer tasks: `cargo xtask setup | run | man | bench | test | vm-test | dist`.
//!
//! Everything a fresh machine needs is installed by `setup`, idempotently:
//! Debian packages, the nightly `rust-src` component (the kernel programs are
//! built with `-Z build-std=core`), and bpf-linker built against rustc's own
//! LLVM (see docs/KERNEL-FACTS.md §7 for why).

mod apt;
mod bench;
mod deploy;
mod dist;
mod integration;
mod rules;
mod setup;
mod soak;
mod vm;
mod vm_dist;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Set up, build tcptrace (release) and run it: `cargo xtask run -- run --duration 10s`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Generate the man pages (target/man); with --install, also copy them to
    /// /usr/local/share/man/man1.
    Man {
        #[arg(long)]
        install: bool,
    },
    /// Set up, build, and measure throughput overhead, loss, kernel and
    /// userspace cost and memory at scale; results go to BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Set up, build, and run the memory soak (connection storm, VmRSS
    /// sampled; fails on growth after warm-up) for --secs seconds.
    Soak(soak::SoakArgs),
    /// Set up, then run lints, unit tests and the root-only integration tests.
    Test {
        /// Only run tests whose name contains this (passed to the test harness).
        filter: Option<String>,
        /// Skip clippy and rustfmt checks.
        #[arg(long)]
        no_lint: bool,
        /// Skip the quick kernel matrix in QEMU (`vm-test --quick`) that
        /// follows the host's tests.
        #[arg(long)]
        no_vm: bool,
        /// Run the integration tests in a random order (the seed is printed).
        #[arg(long)]
        shuffle: bool,
        /// With --shuffle: the order of an earlier run.
        #[arg(long, requires = "shuffle")]
        seed: Option<u64>,
        /// The modes tcptrace runs the integration tests in: the full
        /// stream (its default, one event per transition), the experimental
        /// summary mode (`--summaries`), or both, the full stream first.
        #[arg(long, value_enum, default_value_t = Modes::Both)]
        mode: Modes,
        /// Background connections per second between two namespaces of the
        /// noise generator during the integration tests (0: none).
        #[arg(long, default_value_t = integration::DEFAULT_NOISE_RATE)]
        noise: u64,
    },
    /// Set up, then run the integration tests in QEMU on other kernels
    /// (Debian 5.10, 6.1 and 6.12; see docs/KERNELS.md).
    VmTest(vm::Args),
    /// Set up, then build the release artifacts in target/dist: static
    /// stripped tcptrace per architecture, tarballs, .debs, SHA256SUMS.
    Dist(dist::Args),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match cli.task {
        Task::Setup => setup::all(),
        Task::Run { args } => {
            setup::all()?;
            cargo(&["build", "--release", "-p", "tracer"])?;
            let bin = root.join("target/release/tcptrace");
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                bail!("tcptrace exited with {status}");
            }
            Ok(())
        }
        Task::Man { install } => {
            setup::all()?;
            cargo(&["build", "--release", "-p", "tracer"])?;
            let out = root.join("target/man");
            let status = Command::new(root.join("target/release/tcptrace"))
                .args(["man", "--out"])
                .arg(&out)
                .status()
                .context("running tcptrace man")?;
            if !status.success() {
                bail!("tcptrace man failed");
            }
            if install {
                let dest = Path::new("/usr/local/share/man/man1");
                std::fs::create_dir_all(dest)?;
                for entry in std::fs::read_dir(&out)? {
                    let path = entry?.path();
                    if let Some(name) = path.file_name() {
                        std::fs::copy(&path, dest.join(name))?;
                    }
                }
                eprintln!("xtask: man pages installed in {}", dest.display());
            }
            Ok(())
        }
        Task::Bench(args) => {
            setup::all()?;
            cargo(&["build", "--release", "-p", "tracer", "-p", "tcptrace-tests", "--bins"])?;
            bench::bench(&root, args)
        }
        Task::Soak(args) => setup::all().and_then(|()| soak::soak(&root, args)),
        Task::Test { filter, no_lint, no_vm, shuffle, seed, mode, noise } => {
            setup::all()?;
            let opts = integration::Options {
                filter: filter.as_deref(),
                shuffle: shuffle.then(|| seed.unwrap_or_else(integration::fresh_seed)),
                noise_rate: noise,
                test_timeout: std::time::Duration::from_secs(600),
                summaries: false,
            };
            test(&root, &opts, mode, no_lint)?;
            if no_vm || filter.is_some() {
                return Ok(());
            }
            step("kernel matrix: the core tests on other kernels in QEMU (vm-test --quick)");
            let args = vm::Args {
                kernels: Vec::new(),
                quick: true,
                filter: None,
                test_timeout: 300,
                dist: false,
                arch: vm_dist::GuestArch::X86_64,
            };
            vm::run(&root, &args)?;
            step(
                "release artifacts: static binaries, tarballs, .debs for both architectures; the .deb in a clean Debian root",
            );
            dist::run(&root, &dist::Args { arch: Vec::new(), check_deb: true })?;
            step(
                "the static x86_64 binary alone: bare initramfs on the matrix kernels, and on this host (vm-test --dist)",
            );
            vm::run(&root, &vm::Args { dist: true, kernels: Vec::new(), filter: None, ..args })?;
            step("the static aarch64 binary alone in an arm64 guest (vm-test --arch arm64)");
            vm::run(&root, &vm::Args { arch: vm_dist::GuestArch::Arm64, dist: true, ..args })?;
            step(
                "all tests passed: on the host, in the kernel matrix, and the static binaries of both architectures",
            );
            Ok(())
        }
        Task::VmTest(args) => {
            setup::all()?;
            vm::run(&root, &args)
        }
        Task::Dist(args) => {
            setup::all()?;
            dist::run(&root, &args)
        }
    }
}

/// `cargo xtask test --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Modes {
    Both,
    Summaries,
    FullStream,
}

fn test(root: &Path, opts: &integration::Options, modes: Modes, no_lint: bool) -> Result<()> {
    if !no_lint {
        step("lint: rustfmt");
        cargo(&["fmt", "--all", "--check"])?;
        step("lint: clippy");
        cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
        step("lint: clippy (kernel programs and tracer-common, BPF target)");
        clippy_ebpf()?;
    }
    // The integration tests drive the release binary, like users do.
    step("build: tcptrace (release) and test peers");
    cargo(&["build", "--release", "-p", "tracer"])?;
    let filter_args: Vec<&str> = opts.filter.into_iter().collect();

    step("unit tests (no privileges needed)");
    let mut args = vec!["test", "-p", "tracer", "-p", "tracer-common", "-p", "xtask", "--"];
    args.extend(&filter_args);
    cargo(&args)?;

    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("integration tests load BPF programs and create network namespaces: run as root");
    }
    for (mode, summaries) in [(Modes::FullStream, false), (Modes::Summaries, true)] {
        if modes != Modes::Both && modes != mode {
            continue;
        }
        let name = if summaries { "summary mode" } else { "the full stream" };
        step(&format!("integration tests in {name} (root, real kernel, one at a time, background noise on)"));
        integration::run(root, &integration::Options { summaries, ..*opts })?;
    }
    step("all tests passed");
    Ok(())
}

/// Clippy on the kernel programs and the ABI crate they share with userspace
/// (which must compile for the BPF target too), built the way aya-build builds them
/// (tracer/build.rs): nightly, for the BPF target, `-Z build-std=core`, and
/// `bpf_target_arch` set to the host's architecture (aya-ebpf reads it).
/// aya's own xtask (`xtask/src/clippy.rs`) lints its BPF crates the same way.
fn clippy_ebpf() -> Result<()> {
    let args = [
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "tracer-ebpf",
        "--package",
        "tracer-common",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ];
    let status = Command::new("rustup")
        .args(args)
        .env("RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH))
        // The stable toolchain's variables (set by `cargo xtask`) must not leak
        // into the nightly build, as aya-build also makes sure.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("rustup run nightly cargo clippy")?;
    if !status.success() {
        bail!("clippy on tracer-ebpf and tracer-common (BPF target) failed ({status})");
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

pub fn cargo_bin() -> PathBuf {
    env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(cargo_bin()).args(args).status().with_context(|| format!("cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    // xtask/ lives directly under the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
