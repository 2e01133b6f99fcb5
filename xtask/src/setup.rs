//! `cargo xtask setup`: idempotent machine setup.

use std::{
    env, fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages the tests and tools use:
/// bpftool (program listing in tests), nftables (fault injection),
/// iproute2 (namespaces, veth), libcap2-bin (capsh: reduced-privilege tests),
/// procps (sysctl), tmux (the live view in a real terminal), prometheus (scrapes
/// `tcptrace serve` in its integration test).
/// `libbpf-tools` (tcpstates) and `bpftrace` are the peers `cargo xtask bench`
/// measures beside tcptrace.
const PACKAGES: &[&str] = &[
    "bpftool",
    "nftables",
    "iproute2",
    "libcap2-bin",
    "procps",
    "tmux",
    "prometheus",
    "libbpf-tools",
    "bpftrace",
    // The OCI image (`cargo xtask dist`, dist/image.rs).
    "buildah",
];

const BPF_LINKER_VERSION: &str = "0.13";

pub fn all() -> Result<()> {
    packages()?;
    python_tools()?;
    rust_src()?;
    bpf_linker()?;
    musl_targets()?;
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Tools from PyPI: kubernetes-validate (the Kubernetes manifests,
/// xtask/src/deploy.rs), pinned.
fn python_tools() -> Result<()> {
    let have = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing {} from PyPI", crate::deploy::KUBERNETES_VALIDATE);
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", crate::deploy::KUBERNETES_VALIDATE]))
}

fn packages() -> Result<()> {
    install_packages(PACKAGES)
}

/// Installs those of `list` that are not installed yet (Debian packages).
pub fn install_packages(list: &[&str]) -> Result<()> {
    let missing: Vec<&str> = list.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    // Another apt run (a second checkout's setup) may hold the lock: wait.
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The nightly toolchain's `rust-src` (the kernel programs are built with
/// `-Z build-std=core`) and `clippy` (`cargo xtask test` lints them for the
/// BPF target).
fn rust_src() -> Result<()> {
    const COMPONENTS: [&str; 2] = ["rust-src", "clippy"];
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (rust-src, clippy)");
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]));
    }
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    for component in COMPONENTS {
        if installed.lines().any(|l| l.starts_with(component)) {
            continue;
        }
        eprintln!("xtask: adding {component} to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// The musl targets of the toolchain that builds tcptrace (`cargo xtask
/// dist`: static binaries). Their rust-std ships musl's libc and crt objects
/// ("self-contained"), and rustc ships rust-lld, so linking needs no C cross
/// toolchain.
fn musl_targets() -> Result<()> {
    const TARGETS: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];
    // No --toolchain: rustup uses RUSTUP_TOOLCHAIN, which the cargo running
    // this xtask set, so the targets go to the toolchain that builds.
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let missing: Vec<&str> =
        TARGETS.into_iter().filter(|t| !installed.lines().any(|l| l.trim() == *t)).collect();
    if !missing.is_empty() {
        eprintln!("xtask: adding Rust targets {}", missing.join(" "));
        run(Command::new("rustup").args(["target", "add"]).args(&missing))?;
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

/// bpf-linker links LLVM dynamically and this machine has no system LLVM of
/// rustc's major version: point it at rustc's own libLLVM, with an rpath so
/// that the binary finds it at run time.
fn bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let version = output(Command::new("rustc").arg("-vV"))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in `rustc -vV`")?
        .to_string();
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let sysroot_lib = sysroot.join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("libLLVM.so.{major}")) || n.starts_with(&format!("libLLVM-{major}"))
            })
        })
        .with_context(|| format!("no libLLVM {major} in {}", sysroot_lib.display()))?;
    let prefix = env::temp_dir().join(format!("tcptrace-llvm-{major}"));
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (about a minute)"
    );
    run(Command::new(crate::cargo_bin())
        .args([
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            &format!("~{BPF_LINKER_VERSION}"),
        ])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", sysroot_lib.display())))?;
    if !bpf_linker_ok() {
        bail!("bpf-linker installed but `bpf-linker --version` does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}
