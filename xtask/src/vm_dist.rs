//! `cargo xtask vm-test --dist [--arch arm64] [KERNEL...]`: proof that the
//! static binaries stand alone. Each kernel boots an initramfs that holds
//! only static busybox, the static (musl) `tcptrace`, the test peers and the
//! integration test binaries of the bare subset, plus the kernel's own
//! modules: no host root over 9p, no host libc, no iproute2 or nftables, no
//! tracefs or bpffs mounted for tcptrace. Init mounts what any Linux host
//! has (/proc, /sys, /dev, a tmpfs /run and /tmp, cgroup2) and nothing else.
//!
//! The tests are the same code as on the host; their harness uses its
//! rtnetlink path (`tests/src/rtnl.rs`) where there is no iproute2. Tests that
//! need `nft`, `ss` or `bpftool` cannot run here and are not in [`BARE`].
//! `host` as a kernel runs the same binaries on the host's own kernel.
//!
//! arm64: `qemu-system-aarch64 -M virt` (TCG), a Debian arm64 kernel and
//! arm64 busybox from a private apt configuration (`apt.rs`), never the
//! host's. The marker protocol and the summary are vm.rs's.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    apt::{self, PrivateApt, Suite, run_quiet},
    dist::{self, Arch},
    vm::{self, Cpio, Kernel, MARK, Module, Planned, Run, module, shell_quote},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestArch {
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

/// The bare subset (`binary::test`): what runs without iproute2, nftables
/// and `ss`. Of vm.rs's `QUICK`, the retransmit, SYN-ACK-retransmit, early
/// TIME_WAIT end and port exhaustion tests are missing: they inject faults
/// with nftables or take their ground truth from `ss`; and the SIGTERM test,
/// whose ground truth for "everything detached" is `bpftool`.
const BARE: &[&str] = &[
    // Every program verified and loaded; a missing hook is a warning.
    "cli::check_passes_here_and_names_every_program",
    "cli::a_hook_this_kernel_lacks_is_a_warning_and_a_note",
    // State transitions of both sides, exactly once and in order.
    "pipeline::every_transition_once_in_order_ipv4",
    // Owners and closers.
    "tracker::every_connection_has_the_right_active_closer_and_process",
    // SYN_RECV dwell (request sockets) without faults.
    "synrecv::defer_accept_dwell_matches_the_first_byte_delay",
    // TIME_WAIT: creation and overflow against the kernel's counter.
    "timewait::time_wait_overflow_matches_the_kernel_counter",
];

/// Modules the bare subset needs (Debian builds them as modules).
const MODULES: &[Module] = &[
    // Test namespaces are joined by veth pairs.
    module("veth", false),
    // tcptrace's sock_diag snapshot of sockets open before tracing.
    module("inet_diag", false),
    module("tcp_diag", false),
];

/// `host`: the host's own kernel, without a VM (see [`run_on_host`]).
const DEFAULT_KERNELS_X86: &[&str] = &["host", "5.10", "6.1", "6.12"];
/// bookworm (and its security updates) has 6.1 for arm64.
const DEFAULT_KERNELS_ARM64: &[&str] = &["6.1"];

const VCPUS: &str = "2";
const MEMORY: &str = "3G";
/// Booting, loading modules and `tcptrace check` (measured: 7-10 s, both
/// architectures), with room for a loaded machine.
const BOOT_BUDGET: Duration = Duration::from_secs(300);

impl GuestArch {
    fn dist(self) -> Arch {
        match self {
            Self::X86_64 => Arch::X86_64,
            Self::Arm64 => Arch::Aarch64,
        }
    }

    /// Debian's name of the architecture.
    fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The serial console init and the tests write to.
    fn console(self) -> &'static str {
        match self {
            Self::X86_64 => "ttyS0",
            Self::Arm64 => "ttyAMA0",
        }
    }
}

pub fn run(root: &Path, args: &vm::Args) -> Result<()> {
    let arch = args.arch;
    let qemu_package = match arch {
        GuestArch::X86_64 => "qemu-system-x86",
        GuestArch::Arm64 => "qemu-system-arm",
    };
    // busybox-static on the host: depmod and xz for the kernel packages.
    crate::setup::install_packages(&[qemu_package, "busybox-static"])?;
    let vm_dir = root.join("target/vm");

    let specs: Vec<String> = if !args.kernels.is_empty() {
        args.kernels.clone()
    } else {
        let defaults = if arch == GuestArch::Arm64 { DEFAULT_KERNELS_ARM64 } else { DEFAULT_KERNELS_X86 };
        defaults.iter().map(|s| (*s).to_string()).collect()
    };

    let native = arch.dist().triple().starts_with(std::env::consts::ARCH);
    if !native && specs.iter().any(|s| s == "host") {
        bail!(
            "`host` is this machine's {} kernel: it cannot run the {} binaries",
            std::env::consts::ARCH,
            arch.debian()
        );
    }
    crate::step(&format!("build: static tcptrace, peers and integration tests ({})", arch.dist().triple()));
    let dist_dir = dist::build_static(root, arch.dist())?;
    let binaries = build_static_tests(root, arch.dist())?;
    let plan = plan(&binaries, args)?;

    let apt = match arch {
        GuestArch::X86_64 => None,
        GuestArch::Arm64 => Some(PrivateApt::new(
            root,
            "bookworm-arm64",
            "arm64",
            &[
                Suite { uri: apt::DEBIAN, name: "bookworm" },
                Suite { uri: apt::DEBIAN_SECURITY, name: "bookworm-security" },
            ],
        )?),
    };
    let busybox = match &apt {
        None => fs::read("/bin/busybox").context("reading /bin/busybox (package busybox-static)")?,
        Some(apt) => guest_busybox(apt, &vm_dir.join("arm64"))?,
    };
    let guest = Guest {
        arch,
        busybox,
        dist_dir,
        binaries: &binaries,
        plan: &plan,
        runner: runner_script(&plan, args.test_timeout, Path::new("/t"), true),
    };
    let mut results = Vec::new();
    for spec in &specs {
        if spec == "host" {
            results.push(run_on_host(&guest, &vm_dir, args.test_timeout)?);
            continue;
        }
        let kernel = match &apt {
            None => {
                let (package, kernel_apt) = vm::resolve_kernel(root, spec)?;
                crate::step(&format!("kernel {package} (--dist)"));
                vm::fetch_kernel(&package, kernel_apt.as_ref(), &vm_dir.join("kernels"))?
            }
            Some(apt) => {
                let package = resolve_foreign_kernel(apt, spec, arch.debian())?;
                crate::step(&format!("kernel {package} (--dist, {})", arch.debian()));
                vm::fetch_kernel(&package, Some(apt), &vm_dir.join("kernels"))?
            }
        };
        let run_dir = vm_dir.join("runs").join(format!("{}-dist", kernel.release));
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let initramfs = run_dir.join("initramfs.cpio");
        build_initramfs(&guest, &kernel, &initramfs)?;
        let selected = plan.iter().filter(|t| t.skip.is_none()).count() as u64;
        let run = Run {
            kernel: &kernel,
            initramfs,
            console_log: run_dir.join("console.log"),
            kernel_log: run_dir.join("kernel.log"),
            budget: BOOT_BUDGET + Duration::from_secs(selected * (args.test_timeout + 20)),
            stall: Duration::from_secs(args.test_timeout + 60),
        };
        let qemu = qemu_command(arch, &run);
        results.push(vm::boot_with(
            &run,
            &plan,
            qemu,
            &format!("TCG, {}, {VCPUS} vCPUs, {MEMORY}", arch.debian()),
        )?);
    }

    vm::summarize("vm-test --dist", &results, &vm_dir)
}

/// Builds the integration tests for `arch`'s musl target; returns
/// (binary name, executable) pairs.
fn build_static_tests(root: &Path, arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    let triple = arch.triple();
    let mut cmd = Command::new(crate::cargo_bin());
    cmd.args([
        "test",
        "--release",
        "--target",
        triple,
        "-p",
        "tcptrace-tests",
        "--no-run",
        "--message-format=json",
    ])
    .current_dir(root)
    .stderr(Stdio::inherit());
    // The same linker and flags as the dist binaries: the test binaries are
    // static too, and cargo reuses the dependencies build_static built.
    dist::static_target_env(&mut cmd, arch);
    let out = cmd.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests for {triple} failed ({})", out.status);
    }
    let mut binaries: Vec<(String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"kind\":[\"test\"]"))
        .filter_map(|l| {
            let name = vm::json_string(&l[l.find("\"target\":{")?..], "name")?;
            Some((name, PathBuf::from(vm::json_string(l, "executable")?)))
        })
        .collect();
    binaries.sort();
    Ok(binaries)
}

/// The selected tests. Their binaries may be foreign (arm64): they are not
/// asked for their test list; a name that no longer exists fails in the VM.
fn plan(binaries: &[(String, PathBuf)], args: &vm::Args) -> Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for id in BARE {
        let (binary, test) = id.split_once("::").context("test ids are binary::test")?;
        let path = binaries
            .iter()
            .find(|(name, _)| name == binary)
            .and_then(|(_, path)| path.file_name())
            .with_context(|| {
                format!("no test binary {binary} for {id} (update BARE in xtask/src/vm_dist.rs)")
            })?;
        let skip =
            args.filter.as_deref().is_some_and(|f| !id.contains(f)).then(|| "filtered out".to_string());
        plan.push(Planned {
            binary: binary.to_string(),
            test: test.to_string(),
            path: PathBuf::from(path),
            skip,
        });
    }
    if plan.iter().all(|t| t.skip.is_some()) {
        bail!("no test selected");
    }
    Ok(plan)
}

/// The newest `linux-image-<spec>*-<arch>-unsigned` of the private suites.
fn resolve_foreign_kernel(apt: &PrivateApt, spec: &str, arch: &str) -> Result<String> {
    if spec.starts_with("linux-image-") {
        return Ok(spec.to_string());
    }
    vm::pick_kernel_package_for(spec, &apt.package_names("linux-image-")?, arch)
        .with_context(|| format!("no Debian kernel package linux-image-{spec}*-{arch}-unsigned in bookworm"))
}

/// The guest architecture's static busybox (package busybox-static), once.
fn guest_busybox(apt: &PrivateApt, dir: &Path) -> Result<Vec<u8>> {
    let busybox = dir.join("busybox");
    if let Ok(data) = fs::read(&busybox) {
        return Ok(data);
    }
    let deb = apt.download("busybox-static", &dir.join("debs"))?;
    let unpacked = dir.join("busybox-static");
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    fs::copy(unpacked.join("bin/busybox"), &busybox).context("busybox-static has no bin/busybox")?;
    fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))
}

fn qemu_command(arch: GuestArch, run: &Run<'_>) -> Command {
    let mut qemu = match arch {
        GuestArch::X86_64 => {
            let mut q = Command::new("qemu-system-x86_64");
            // ttyS1: the kernel's log, to a file (vm.rs explains thread=single).
            q.args(["-accel", "tcg,thread=single", "-cpu", "max"]);
            q.args(["-serial", "stdio", "-serial"]).arg(format!("file:{}", run.kernel_log.display()));
            q.args(["-append", "console=ttyS1 panic=-1 mitigations=off"]);
            q
        }
        GuestArch::Arm64 => {
            // One PL011 UART: the kernel logs only warnings and worse to it,
            // between the marker lines. pauth-impdef: QEMU's cheap pointer
            // authentication instead of the architected (slow to emulate) one.
            let mut q = Command::new("qemu-system-aarch64");
            q.args(["-M", "virt", "-accel", "tcg,thread=single", "-cpu", "max,pauth-impdef=on"]);
            q.args(["-serial", "stdio"]);
            q.args(["-append", "console=ttyAMA0 loglevel=4 panic=-1"]);
            q
        }
    };
    qemu.args(["-smp", VCPUS, "-m", MEMORY, "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(run.kernel.vmlinuz())
        .arg("-initrd")
        .arg(&run.initramfs);
    qemu
}

/// PID 1 (busybox sh): the mounts every host has, modules, the runner, poweroff.
fn init(console: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/{console} 2>&1
fatal() {{ echo "{MARK} FATAL $*"; poweroff -f; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fatal "mount cgroup2"
for m in /modules/*.ko; do
  [ -e "$m" ] || continue
  insmod "$m" || fatal "insmod ${{m##*/}} failed"
done
ip link set lo up || fatal "loopback up"
sh /runner.sh
echo "{MARK} DONE rc=$?"
sync
poweroff -f
"#
    )
}

/// `tcptrace check` (must exit 0), then each selected test alone between
/// BEGIN/END markers, as vm.rs's runner does.
/// `base`: where `release/` is (`/t` in the guest). On the host
/// (`in_vm` false) the tests take the same iproute2-free path as in the
/// guest, keep their normal tolerances, and the host's kernel log is left
/// alone.
fn runner_script(plan: &[Planned], timeout: u64, base: &Path, in_vm: bool) -> String {
    let env = if in_vm { "export TCPTRACE_TEST_SLOW=1" } else { "export TCPTRACE_TEST_RTNL=1" };
    let base_q = shell_quote(&base.to_string_lossy());
    let mut s = format!(
        r#"export HOME=${{HOME:-/root}} LANG=C.UTF-8 RUST_BACKTRACE=0
export TCPTRACE_BIN={base_q}/release/tcptrace
{env}
in_vm={in_vm}
cd {base_q} || exit 125
echo "{MARK} KERNEL $(uname -r) $(uname -m)"
echo "{MARK} CHECK-BEGIN"
"$TCPTRACE_BIN" check 2>&1
rc=$?
echo "{MARK} CHECK-END rc=$rc"
[ $rc -eq 0 ] || echo "{MARK} FATAL tcptrace check exited with $rc"
failed=0
t() {{
  [ $in_vm = true ] && dmesg -c >/dev/null
  echo "{MARK} BEGIN $1"
  timeout -k 10 {timeout} "$2" --exact "$3" --test-threads=1 --color never 2>&1
  rc=$?
  echo "{MARK} END $1 rc=$rc"
  if [ $rc -ne 0 ]; then
    failed=1
    [ $in_vm = true ] && dmesg | tail -n 40 | sed 's/^/kernel: /'
  fi
}}
"#
    );
    vm::append_test_lines(&mut s, plan, &base.join("release/deps"));
    s
}

/// `host` as a kernel: the same static binaries, laid out as in the guest
/// under `target/vm/dist-host/`, run on the host's own kernel (its image is
/// not available to boot: /boot is empty on these machines), with the same
/// marker protocol and summary.
fn run_on_host(guest: &Guest<'_>, vm_dir: &Path, timeout: u64) -> Result<vm::KernelResult> {
    use std::os::unix::fs::PermissionsExt as _;
    let base = vm_dir.join("dist-host");
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(base.join("release/deps")).with_context(|| format!("creating {}", base.display()))?;
    for (data, at) in guest.files()? {
        let to = base.join(at);
        fs::write(&to, data).with_context(|| format!("writing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    }
    let release = run_quiet(Command::new("uname").arg("-r"))?.trim().to_string();
    let kernel = Kernel { package: "host".to_string(), release: release.clone(), root: PathBuf::new() };
    let run_dir = vm_dir.join("runs").join(format!("host-{release}-dist"));
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let script = run_dir.join("runner.sh");
    fs::write(&script, runner_script(guest.plan, timeout, &base, false))?;
    crate::step(&format!("host kernel {release} (--dist binaries, no VM)"));
    let selected = guest.plan.iter().filter(|t| t.skip.is_none()).count() as u64;
    let run = Run {
        kernel: &kernel,
        initramfs: PathBuf::new(),
        console_log: run_dir.join("console.log"),
        kernel_log: run_dir.join("console.log"),
        budget: Duration::from_secs(60 + selected * (timeout + 20)),
        stall: Duration::from_secs(timeout + 60),
    };
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("sh {} 2>&1; echo \"{MARK} DONE rc=$?\"", shell_quote(&script.to_string_lossy())));
    vm::boot_with(&run, guest.plan, sh, "no VM: the host's kernel")
}

/// What every kernel's initramfs holds besides the kernel's modules.
struct Guest<'a> {
    arch: GuestArch,
    busybox: Vec<u8>,
    dist_dir: PathBuf,
    binaries: &'a [(String, PathBuf)],
    plan: &'a [Planned],
    runner: String,
}

impl Guest<'_> {
    /// tcptrace, the peers and the selected tests' binaries, with their
    /// paths under the base directory.
    fn files(&self) -> Result<Vec<(Vec<u8>, String)>> {
        let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut files = vec![(read(&self.dist_dir.join("tcptrace"))?, "release/tcptrace".to_string())];
        for peer in ["ttserver", "ttclient"] {
            files.push((read(&self.dist_dir.join("peers").join(peer))?, format!("release/{peer}")));
        }
        let used = |name: &String| self.plan.iter().any(|t| t.skip.is_none() && t.binary == *name);
        for (_, path) in self.binaries.iter().filter(|(name, _)| used(name)) {
            let name = path.file_name().context("test binary without a name")?.to_string_lossy();
            files.push((read(path)?, format!("release/deps/{name}")));
        }
        Ok(files)
    }
}

/// busybox, init, runner, modules, and the binaries laid out as the tests
/// expect them: `/t/release/{tcptrace,ttserver,ttclient}` and the test
/// binaries in `/t/release/deps/`.
fn build_initramfs(guest: &Guest<'_>, kernel: &Kernel, out: &Path) -> Result<()> {
    let Guest { arch, busybox, runner, .. } = guest;
    let mut cpio = Cpio::default();
    for dir in
        ["bin", "dev", "proc", "sys", "run", "tmp", "root", "modules", "t", "t/release", "t/release/deps"]
    {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, busybox);
    cpio.file("init", 0o755, init(arch.console()).as_bytes());
    cpio.file("runner.sh", 0o644, runner.as_bytes());
    for (i, path) in vm::module_order_of(kernel, MODULES)?.iter().enumerate() {
        let data = vm::read_module(&kernel.modules().join(path))?;
        cpio.file(&format!("modules/{i:03}-{}.ko", vm::module_name(path)), 0o644, &data);
    }
    for (data, at) in guest.files()? {
        cpio.file(&format!("t/{at}"), 0o755, &data);
    }
    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}
