//! Builds the kernel programs (`tracer-ebpf`, BPF target, nightly with
//! `-Z build-std=core`) and leaves the object in OUT_DIR for `include_bytes!`.
//! Also names, for `tcptrace --version`, the commit the binary is built from
//! and the sha256 of that exact object, so that a binary copied to a host can
//! be traced back to its source and its kernel programs.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root_dir =
        ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::default(),
    )?;

    // The file `kernel/mod.rs` embeds, hashed after aya-build wrote it.
    let object = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?).join("tracer-ebpf");
    let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=TCPTRACE_BPF_SHA256={hex}");
    println!("cargo:rustc-env=TCPTRACE_COMMIT={}", commit());
    Ok(())
}

/// The abbreviated commit of HEAD, or "unknown" when building outside a git
/// checkout (a source tarball) or without git. Asks cargo to rerun this script
/// when HEAD moves: HEAD itself (a branch switch) and the branch's ref (a
/// commit), in the worktree's or the common git directory.
fn commit() -> String {
    let Some(hash) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_string();
    };
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
            // A file that does not exist would make cargo rerun this script
            // (and so the kernel build) on every build.
            if fs::metadata(&path).is_ok() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    hash
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env::var_os("CARGO_MANIFEST_DIR")?)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}
