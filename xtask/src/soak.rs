//! `cargo xtask soak [--secs N]`: the memory soak of tests/tests/reliability.rs
//! (`soak_memory_stays_flat_under_connection_storm_and_churn`) run for
//! minutes instead of the 45 s the test suite gives it. It storms short
//! connections from ever new processes toward 200 addresses while sampling
//! tcptrace's VmRSS, and fails when memory still grows after the warm-up
//! (criterion in the test and in docs/RELIABILITY.md).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{cargo, cargo_bin};

#[derive(Args)]
pub struct SoakArgs {
    /// How long to storm and sample, in seconds (at least 30).
    #[arg(long, default_value_t = 300)]
    pub secs: u64,
    /// Caps for tcptrace as TCPTRACE_DEBUG_LIMITS takes them
    /// (`sockets=N,time_wait=N,requests=N,rows=N`), or `builtin` for its own
    /// (then memory grows until the built-in caps, and the soak shows it).
    #[arg(long)]
    pub limits: Option<String>,
}

pub fn soak(root: &Path, args: SoakArgs) -> Result<()> {
    if args.secs < 30 {
        bail!("--secs: at least 30 (the first third is warm-up)");
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak loads BPF programs and creates network namespaces: run as root");
    }
    cargo(&["build", "--release", "-p", "tracer", "-p", "tcptrace-tests"])?;
    let mut test = Command::new(cargo_bin());
    test.args(["test", "--release", "-p", "tcptrace-tests", "--test", "reliability", "--"])
        .args(["--exact", "soak_memory_stays_flat_under_connection_storm_and_churn"])
        .args(["--nocapture", "--test-threads=1"])
        .env("TCPTRACE_BIN", root.join("target/release/tcptrace"))
        .env("TCPTRACE_SOAK_SECS", args.secs.to_string());
    if let Some(limits) = &args.limits {
        test.env("TCPTRACE_SOAK_LIMITS", limits);
    }
    eprintln!("\n==> soak: {} s of connection storm, VmRSS sampled every second", args.secs);
    let status = test.status().context("running the soak test")?;
    if !status.success() {
        bail!("soak failed ({status})");
    }
    Ok(())
}
