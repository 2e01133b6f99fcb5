//! `cargo xtask vm-test [--quick] [KERNEL...]`: the integration tests on other
//! kernels, each booted in QEMU (TCG: this machine has no KVM).
//!
//! How (docs/KERNELS.md has the matrix and the results):
//! - kernels are Debian packages (`linux-image-<version>-amd64-unsigned`, with
//!   BTF), fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
//!   `target/vm/kernels/` (never installed on the host); `busybox depmod`
//!   builds their `modules.dep`;
//! - a busybox initramfs loads the modules the tests need (Debian builds 9p,
//!   veth, nf_tables, ... as modules), mounts the host's root read-only over
//!   9p under a tmpfs overlay, mounts /proc, /sys, /dev, /run, tracefs, bpffs
//!   and cgroup2, and chroots into it: the guest runs the host's own `ip`,
//!   `nft`, `ss`, `bpftool`, `tmux` and the freshly built binaries;
//! - the binaries are copied to `target/vm/snapshot` first, so that a build on
//!   the host while a VM runs cannot change them underneath it;
//! - each test runs alone (`--exact`, its own time limit) between marker lines
//!   on the serial console, which this side parses; init powers the VM off and
//!   the last marker carries the exit status out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Kernels of a full run, as Debian version prefixes. 5.10 is Debian 11's
/// (bullseye, through a private apt configuration: `bullseye_apt`).
const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1", "6.12"];

/// Host packages a VM run needs on top of `cargo xtask setup`.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];

/// Guest modules, loaded in dependency order (from `modules.dep`); those
/// built into a kernel are skipped. `optional`: may not exist at all.
pub(crate) struct Module {
    name: &'static str,
    optional: bool,
}

pub(crate) const fn module(name: &'static str, optional: bool) -> Module {
    Module { name, optional }
}

const MODULES: &[Module] = &[
    // libcrc32c (nf_tables) looks up a crc32c implementation when it loads;
    // there is no modprobe in the guest to autoload one (6.1).
    module("crc32c_generic", true),
    // The host's root filesystem (virtio-pci is a module on 6.1).
    module("virtio_pci", false),
    module("9pnet_virtio", false),
    module("9p", false),
    module("overlay", false),
    // Test namespaces are joined by veth pairs.
    module("veth", false),
    // Fault injection (tests/src/faults.rs): tables, sets, `numgen random`.
    module("nf_tables", false),
    module("nft_numgen", false),
    // Counters (`counter`, named ones in the blackout rulesets): part of
    // nf_tables on 6.1 and later, a module of its own on 5.10.
    module("nft_counter", true),
    // Named counters (`counter name "dropped"`, the blackout rulesets).
    module("nft_objref", true),
    // `reject with icmp type host-unreachable` (tests/tests/ends.rs).
    module("nf_reject_ipv4", true),
    module("nf_reject_ipv6", true),
    module("nft_reject", true),
    module("nft_reject_inet", true),
    // A slow link (`tc qdisc ... tbf`, timewait tests): a module on 5.10.
    module("sch_tbf", true),
    // `ss` in the tests and tcptrace's own sock_diag snapshot of TIME_WAIT.
    module("inet_diag", false),
    module("tcp_diag", false),
];

/// The `--quick` subset (`binary::test`): one test per hook family, chosen to
/// catch what differs between kernels (program loading and verification,
/// tracepoint arguments, struct offsets, the child-socket event order).
const QUICK: &[&str] = &[
    // Every program verified and loaded, degraded hooks reported.
    "cli::check_passes_here_and_names_every_program",
    // What this kernel lacks is a warning and a note, not a failure.
    "cli::a_hook_this_kernel_lacks_is_a_warning_and_a_note",
    // State transitions of both sides, exactly once and in order.
    "pipeline::every_transition_once_in_order_ipv4",
    "pipeline::sigterm_prints_report_and_detaches_everything",
    // Owners and closers.
    "tracker::every_connection_has_the_right_active_closer_and_process",
    // tcp_retransmit_skb (the variant depends on the kernel).
    "retransmits::data_loss_retransmits_match_the_kernel_per_connection",
    "retransmits::a_dropped_syn_is_one_syn_retransmit_and_a_second_in_syn_sent",
    // Retransmit stalls: icsk_rto, icsk_backoff, rcv_tstamp offsets and HZ.
    "retransmits::timeout_stalls_follow_the_kernels_backoff_from_a_routes_rto_min",
    "retransmits::a_dropped_syn_stalls_for_the_syn_retry_interval",
    // Request-socket timers and tcp_retransmit_synack.
    "synrecv::lost_final_ack_costs_one_synack_retransmit_and_a_second",
    // End reasons: the CLOSE's facts (SO_LINGER, unread bytes, probes,
    // user timeout offsets) and the resets around it.
    "ends::resets_name_who_reset_and_why",
    "ends::timeouts_name_the_limit_that_expired",
    // Timewait timers, timer_cancel, connect() errors.
    "timewait::early_ends_reuse_and_reset_are_classified",
    "timewait::port_exhaustion_is_diagnosed",
    // accept() exits (the descriptor-to-socket walk), the listener's queue
    // offsets, and kfree_skb's packet parsing (or its absence before 5.17).
    "accept::a_slow_acceptor_shows_as_the_wait_from_handshake_to_accept",
    "accept::the_accept_queue_depth_and_limit_match_ss",
    "ends::orderly_closes_refusals_and_unreachable_hosts",
];

/// Tests never run in a VM, with the reason (reported as skipped).
const EXCLUDED: &[(&str, &str)] = &[];

/// Guest resources: 2 vCPUs, 3 GiB. The vCPUs share one host thread
/// (`tcg,thread=single`): with a thread per vCPU, attaching a tracepoint
/// program patches kernel text (int3, then the jump) while the other vCPU
/// runs it, and multi-threaded TCG can execute the stale int3 after the
/// kernel has finished patching: seen as `Oops: int3` in `enqueue_timer`
/// (the `timer_start` tracepoint) and a panic on 6.12. Round-robin vCPUs
/// cannot race like that.
const VCPUS: &str = "2";
const MEMORY: &str = "3G";
/// Time for booting, loading modules and `tcptrace check`, on top of the tests' own limits.
const BOOT_BUDGET: Duration = Duration::from_secs(180);

#[derive(clap::Args)]
pub struct Args {
    /// Kernels: a version prefix (5.10, 6.1, 6.12: the newest Debian package of
    /// that version, from the host's suites or else bullseye's) or a package
    /// name (linux-image-6.1.0-56-amd64-unsigned). Default: 5.10, 6.1 and 6.12.
    /// With --dist also `host` (the host's kernel, no VM; the default there:
    /// host, 5.10, 6.1, 6.12; arm64: 6.1).
    pub kernels: Vec<String>,
    /// Only the core subset (what `cargo xtask test`, and so CI, runs): about
    /// a minute per kernel once booted.
    #[arg(long)]
    pub quick: bool,
    /// Only tests whose `binary::name` contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Time limit of each test inside the VM, in seconds.
    #[arg(long, default_value_t = 300)]
    pub test_timeout: u64,
    /// The static (musl) binaries alone in a busybox initramfs: no host root,
    /// no iproute2/nftables; the bare subset of tests (xtask/src/vm_dist.rs).
    #[arg(long)]
    pub dist: bool,
    /// Guest architecture; arm64 (qemu-system-aarch64, TCG) implies --dist.
    #[arg(long, value_enum, default_value_t = crate::vm_dist::GuestArch::X86_64)]
    pub arch: crate::vm_dist::GuestArch,
}

pub fn run(root: &Path, args: &Args) -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("vm-test installs packages and exports / to the VMs read-only: run as root");
    }
    if args.dist || args.arch != crate::vm_dist::GuestArch::X86_64 {
        return crate::vm_dist::run(root, args);
    }
    crate::setup::install_packages(HOST_PACKAGES)?;
    let specs: Vec<String> = if !args.kernels.is_empty() {
        args.kernels.clone()
    } else {
        DEFAULT_KERNELS.iter().map(|s| (*s).to_string()).collect()
    };

    crate::step("build: tcptrace (release) and the integration tests");
    crate::cargo(&["build", "--release", "-p", "tracer"])?;
    let binaries = build_tests()?;
    let release = binaries
        .first()
        .and_then(|b| b.path.parent())
        .and_then(Path::parent)
        .context("no integration test binaries built")?
        .to_path_buf();
    let vm_dir = release.parent().unwrap_or(&release).join("vm");
    let plan = plan(&binaries, args)?;
    if plan.iter().all(|t| t.skip.is_some()) {
        bail!("no test selected");
    }
    let snapshot = snapshot(&release, &binaries, &vm_dir.join("snapshot"))?;

    let mut results = Vec::new();
    for spec in &specs {
        let (package, apt) = resolve_kernel(root, spec)?;
        crate::step(&format!("kernel {package}"));
        let kernel = fetch_kernel(&package, apt.as_ref(), &vm_dir.join("kernels"))?;
        let run_dir = vm_dir.join("runs").join(&kernel.release);
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let runner = runner_script(root, &snapshot, &plan, args.test_timeout);
        let initramfs = run_dir.join("initramfs.cpio");
        build_initramfs(&kernel, &runner, &initramfs)?;
        let selected = plan.iter().filter(|t| t.skip.is_none()).count() as u64;
        let budget = BOOT_BUDGET + Duration::from_secs(selected * (args.test_timeout + 20));
        let run = Run {
            kernel: &kernel,
            initramfs,
            console_log: run_dir.join("console.log"),
            kernel_log: run_dir.join("kernel.log"),
            budget,
            stall: Duration::from_secs(args.test_timeout + 60),
        };
        let result = boot(&run, &plan)?;
        results.push(result);
    }

    summarize("vm-test", &results, &vm_dir)
}

/// Prints each kernel's summary; fails naming the kernels that failed.
pub(crate) fn summarize(what: &str, results: &[KernelResult], vm_dir: &Path) -> Result<()> {
    crate::step(&format!("{what} summary"));
    let mut failing = Vec::new();
    for result in results {
        print!("{}", result.summary());
        if !result.passed() {
            failing.push(result.kernel.clone());
        }
    }
    if !failing.is_empty() {
        bail!("{what} failed on {} (logs in {})", failing.join(", "), vm_dir.join("runs").display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Host side: packages, kernels, binaries
// ---------------------------------------------------------------------------

use crate::apt::{PrivateApt, Suite, run_quiet};

fn apt_update() -> Result<()> {
    run_quiet(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))
        .map(drop)
}

/// Sort key of a Debian kernel version: its numbers in order
/// (`6.12.117+deb12` -> 6, 12, 117, 12).
pub(crate) fn version_key(version: &str) -> Vec<u64> {
    version.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// The newest `linux-image-<version>-amd64-unsigned` whose version is `spec`
/// or starts with `spec` followed by `.`, `-` or `+` (not cloud or rt).
fn pick_kernel_package(spec: &str, names: &str) -> Option<String> {
    pick_kernel_package_for(spec, names, "amd64")
}

/// The same for another Debian architecture (`arm64`).
pub(crate) fn pick_kernel_package_for(spec: &str, names: &str, arch: &str) -> Option<String> {
    let suffix = format!("-{arch}-unsigned");
    names
        .lines()
        .map(str::trim)
        .filter_map(|name| {
            let version = name.strip_prefix("linux-image-")?.strip_suffix(suffix.as_str())?;
            if version.contains("cloud") || version.contains("rt") {
                return None;
            }
            let rest = version.strip_prefix(spec)?;
            (rest.is_empty() || rest.starts_with(['.', '-', '+'])).then(|| (version_key(version), name))
        })
        .max()
        .map(|(_, name)| name.to_string())
}

/// Debian 11's kernels (5.10), which the host's bookworm suites lack: a
/// private apt configuration for bullseye and bullseye-security.
pub(crate) fn bullseye_apt(root: &Path) -> Result<PrivateApt> {
    PrivateApt::new(
        root,
        "bullseye-amd64",
        "amd64",
        &[
            Suite { uri: crate::apt::DEBIAN, name: "bullseye" },
            Suite { uri: crate::apt::DEBIAN_SECURITY, name: "bullseye-security" },
        ],
    )
}

/// The package for `spec`, and the private apt configuration to download it
/// with when the host's own suites lack it (`None`: the host's apt).
pub(crate) fn resolve_kernel(root: &Path, spec: &str) -> Result<(String, Option<PrivateApt>)> {
    let query = || run_quiet(Command::new("apt-cache").args(["pkgnames", "linux-image-"]));
    let pick = |names: &str| {
        if spec.starts_with("linux-image-") {
            names.lines().any(|n| n.trim() == spec).then(|| spec.to_string())
        } else {
            pick_kernel_package(spec, names)
        }
    };
    if let Some(name) = pick(&query()?) {
        return Ok((name, None));
    }
    let bullseye = bullseye_apt(root)?;
    if let Some(name) = pick(&bullseye.package_names("linux-image-")?) {
        return Ok((name, Some(bullseye)));
    }
    apt_update()?;
    if let Some(name) = pick(&query()?) {
        return Ok((name, None));
    }
    if spec.starts_with("linux-image-") {
        // Let apt-get download say what is wrong with it.
        return Ok((spec.to_string(), None));
    }
    bail!(
        "no Debian kernel package linux-image-{spec}*-amd64-unsigned in the host's suites or bullseye \
         (see `apt-cache search linux-image`)"
    )
}

/// An unpacked kernel package.
pub(crate) struct Kernel {
    pub package: String,
    /// `uname -r` of the kernel, e.g. 6.1.0-56-amd64.
    pub release: String,
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join("boot").join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads and unpacks `package` under `cache` once; later runs reuse it.
pub(crate) fn fetch_kernel(package: &str, apt: Option<&PrivateApt>, cache: &Path) -> Result<Kernel> {
    let root = cache.join(package);
    let marker = root.join(".unpacked");
    if let Ok(release) = fs::read_to_string(&marker) {
        return Ok(Kernel { package: package.to_string(), release: release.trim().to_string(), root });
    }
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    eprintln!("xtask: downloading {package}");
    let deb = match apt {
        Some(apt) => apt.download(package, &debs)?,
        None => {
            // As root, apt would warn that its sandbox user cannot write here.
            run_quiet(
                Command::new("apt-get")
                    .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
                    .current_dir(&debs),
            )?;
            crate::apt::find_deb(&debs, package)?
        }
    };
    eprintln!("xtask: unpacking {}", deb.display());
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let _ = fs::remove_file(&deb);
    let releases: Vec<String> = fs::read_dir(root.join("lib/modules"))
        .with_context(|| format!("{package} has no lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let [release] = releases.as_slice() else {
        bail!("{package}: expected one kernel in lib/modules, found {releases:?}");
    };
    let kernel = Kernel { package: package.to_string(), release: release.clone(), root };
    if !kernel.vmlinuz().exists() {
        bail!("{package} has no {}", kernel.vmlinuz().display());
    }
    // Debian generates modules.dep at install time, not in the package.
    eprintln!("xtask: generating modules.dep for {release}");
    run_quiet(Command::new("busybox").arg("depmod").arg("-b").arg(&kernel.root).arg(release))?;
    fs::write(&marker, release)?;
    Ok(kernel)
}

/// One integration test binary (`tests/tests/<name>.rs`).
pub(crate) struct TestBinary {
    pub name: String,
    pub path: PathBuf,
}

/// Builds the integration tests and returns their executables.
pub(crate) fn build_tests() -> Result<Vec<TestBinary>> {
    let out = Command::new(crate::cargo_bin())
        .args(["test", "--release", "-p", "tcptrace-tests", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed ({})", out.status);
    }
    let mut binaries: Vec<TestBinary> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"kind\":[\"test\"]"))
        .filter_map(|l| {
            let target = &l[l.find("\"target\":{")?..];
            let name = json_string(target, "name")?;
            let path = json_string(l, "executable")?;
            Some(TestBinary { name, path: PathBuf::from(path) })
        })
        .collect();
    binaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(binaries)
}

/// The first string value of `"key":"..."` in a line of cargo's JSON (no
/// escapes expected in target names and paths).
pub(crate) fn json_string(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = text[start..].find('"')?;
    let value = &text[start..start + len];
    (!value.contains('\\')).then(|| value.to_string())
}

/// One test of the plan: run it, or skip it and say why.
pub(crate) struct Planned {
    pub binary: String,
    pub test: String,
    /// Path of the binary in the snapshot.
    pub path: PathBuf,
    pub skip: Option<String>,
}

impl Planned {
    pub fn id(&self) -> String {
        format!("{}::{}", self.binary, self.test)
    }
}

fn plan(binaries: &[TestBinary], args: &Args) -> Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for binary in binaries {
        let listing = run_quiet(Command::new(&binary.path).args(["--list", "--format", "terse"]))?;
        for test in listing.lines().filter_map(|l| l.strip_suffix(": test")) {
            let id = format!("{}::{test}", binary.name);
            let skip = if let Some((_, why)) = EXCLUDED.iter().find(|(t, _)| *t == id) {
                Some((*why).to_string())
            } else if args.quick && !QUICK.contains(&id.as_str()) {
                Some("not in the --quick subset".to_string())
            } else if args.filter.as_deref().is_some_and(|f| !id.contains(f)) {
                Some("filtered out".to_string())
            } else {
                None
            };
            let path = binary.path.file_name().map_or_else(PathBuf::new, PathBuf::from);
            plan.push(Planned { binary: binary.name.clone(), test: test.to_string(), path, skip });
        }
    }
    if args.quick {
        for id in QUICK {
            if !plan.iter().any(|t| t.id() == *id) {
                bail!(
                    "the --quick subset names {id}, which no test binary has (update QUICK in xtask/src/vm.rs)"
                );
            }
        }
    }
    Ok(plan)
}

/// Copies tcptrace, the test peers (ttserver, ttclient, ttnoise, ttstorm) and
/// the test binaries to `dir/release` (the tests find the peers next to
/// their own `deps/`).
fn snapshot(release: &Path, binaries: &[TestBinary], dir: &Path) -> Result<PathBuf> {
    let to = dir.join("release");
    let _ = fs::remove_dir_all(&to);
    fs::create_dir_all(to.join("deps")).with_context(|| format!("creating {}", to.display()))?;
    for name in ["tcptrace", "ttserver", "ttclient", "ttnoise", "ttstorm"] {
        fs::copy(release.join(name), to.join(name))
            .with_context(|| format!("copying {}", release.join(name).display()))?;
    }
    for binary in binaries {
        let name = binary.path.file_name().context("test binary without a name")?;
        fs::copy(&binary.path, to.join("deps").join(name))
            .with_context(|| format!("copying {}", binary.path.display()))?;
    }
    Ok(to)
}

// ---------------------------------------------------------------------------
// Guest side: init, runner, initramfs
// ---------------------------------------------------------------------------

/// Marker that starts every line this side parses.
pub(crate) const MARK: &str = "@@VMTEST";

/// PID 1 in the initramfs (busybox sh): modules, mounts, chroot, poweroff.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
# The kernel logs to ttyS1 (a file on the host), the tests to ttyS0.
exec </dev/null >/dev/ttyS0 2>&1
fatal() { echo "@@VMTEST FATAL $*"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in /modules/*.ko; do
  [ -e "$m" ] || continue
  insmod "$m" || fatal "insmod ${m##*/} failed"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host \
  || fatal "cannot mount the host's root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || fatal "cannot mount the overlay root"
R=/newroot
mount -t proc proc $R/proc || fatal "mount /proc"
mount -t sysfs sysfs $R/sys || fatal "mount /sys"
mount -t devtmpfs devtmpfs $R/dev || fatal "mount /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts || fatal "mount /dev/pts"
mount -t tmpfs tmpfs $R/dev/shm
# Fresh /run: ip netns keeps its namespaces in /run/netns.
mount -t tmpfs -o mode=0755 tmpfs $R/run || fatal "mount /run"
mount -t tracefs tracefs $R/sys/kernel/tracing || fatal "mount tracefs"
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t bpf bpf $R/sys/fs/bpf || fatal "mount bpffs"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fatal "mount cgroup2"
# Loopback of the root namespace (a host has it up; tests that talk to a
# local server, e.g. Prometheus, use it).
chroot $R ip link set lo up || fatal "loopback up"
cp /runner.sh $R/run/vm-test.sh
chroot $R /bin/sh /run/vm-test.sh
echo "@@VMTEST DONE rc=$?"
sync
poweroff -f
"#;

pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script run in the chroot (the host's /bin/sh): `tcptrace check`, then
/// every selected test alone, each between BEGIN/END markers.
fn runner_script(root: &Path, snapshot: &Path, plan: &[Planned], timeout: u64) -> String {
    let tcptrace = snapshot.join("tcptrace");
    let mut s = String::new();
    let _ = write!(
        s,
        r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=xterm LANG=C.UTF-8 RUST_BACKTRACE=0
export TCPTRACE_BIN={bin}
# Wall-clock tolerances that depend on CPU speed (TCG is 10-30x slower).
export TCPTRACE_TEST_SLOW=1
cd {root} || exit 125
echo "{MARK} KERNEL $(uname -r)"
echo "{MARK} CHECK-BEGIN"
"$TCPTRACE_BIN" check 2>&1
echo "{MARK} CHECK-END rc=$?"
failed=0
t() {{
  dmesg -C 2>/dev/null
  echo "{MARK} BEGIN $1"
  timeout -k 10 {timeout} "$2" --exact "$3" --test-threads=1 --color never 2>&1
  rc=$?
  echo "{MARK} END $1 rc=$rc"
  if [ $rc -ne 0 ]; then
    failed=1
    dmesg --level=emerg,alert,crit,err,warn 2>/dev/null | tail -n 40 | sed 's/^/kernel: /'
  fi
}}
"#,
        bin = shell_quote(&tcptrace.to_string_lossy()),
        root = shell_quote(&root.to_string_lossy()),
    );
    append_test_lines(&mut s, plan, &snapshot.join("deps"));
    s
}

/// The runner script's tail: a `t ID BINARY TEST` line (the script's `t`
/// function) per planned test, binaries in `deps`, then `exit $failed`.
pub(crate) fn append_test_lines(s: &mut String, plan: &[Planned], deps: &Path) {
    for t in plan.iter().filter(|t| t.skip.is_none()) {
        let path = deps.join(&t.path);
        let _ = writeln!(
            s,
            "t {} {} {}",
            shell_quote(&t.id()),
            shell_quote(&path.to_string_lossy()),
            shell_quote(&t.test)
        );
    }
    s.push_str("exit $failed\n");
}

/// Name -> (path relative to the modules dir, dependencies), from modules.dep.
fn modules_dep(kernel: &Kernel) -> Result<BTreeMap<String, (String, Vec<String>)>> {
    let path = kernel.modules().join("modules.dep");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((module, deps)) = line.split_once(':') else { continue };
        let deps = deps.split_whitespace().map(module_name).collect();
        map.insert(module_name(module), (module.to_string(), deps));
    }
    Ok(map)
}

/// `kernel/net/9p/9pnet_virtio.ko.xz` -> `9pnet_virtio`.
pub(crate) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The modules to load, dependencies first, as paths relative to the modules dir.
fn module_order(kernel: &Kernel) -> Result<Vec<String>> {
    module_order_of(kernel, MODULES)
}

/// The same for another list of modules.
pub(crate) fn module_order_of(kernel: &Kernel, modules: &[Module]) -> Result<Vec<String>> {
    let deps = modules_dep(kernel)?;
    let builtin = fs::read_to_string(kernel.modules().join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some((path, requires)) = deps.get(name) {
            for dep in requires {
                visit(dep, deps, seen, order);
            }
            order.push(path.clone());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for m in modules {
        if deps.contains_key(m.name) {
            visit(m.name, &deps, &mut seen, &mut order);
        } else if !builtin.contains(m.name) && !m.optional {
            bail!("{} has no module {} (neither loadable nor built in)", kernel.package, m.name);
        }
    }
    Ok(order)
}

/// Reads a module file, decompressed.
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<(&str, &[&str])> = if name.ends_with(".xz") {
        Some(("busybox", &["xz", "-dc"]))
    } else if name.ends_with(".gz") {
        Some(("busybox", &["gzip", "-dc"]))
    } else if name.ends_with(".zst") {
        Some(("zstd", &["-dc"]))
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some((program, args)) => {
            let out = Command::new(program)
                .args(args)
                .arg(path)
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("running {program} to decompress {}", path.display()))?;
            if !out.status.success() {
                bail!(
                    "cannot decompress {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out.stdout)
        }
    }
}

fn build_initramfs(kernel: &Kernel, runner: &str, out: &Path) -> Result<()> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "host", "rw", "newroot", "modules"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (package busybox-static)")?;
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("runner.sh", 0o644, runner.as_bytes());
    for (i, path) in module_order(kernel)?.iter().enumerate() {
        let data = read_module(&kernel.modules().join(path))?;
        cpio.file(&format!("modules/{i:03}-{}.ko", module_name(path)), 0o644, &data);
    }
    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

/// A `newc` cpio archive, the format the kernel unpacks as an initramfs.
#[derive(Default)]
pub(crate) struct Cpio {
    data: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, body: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), body);
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

// ---------------------------------------------------------------------------
// Booting and reading the console
// ---------------------------------------------------------------------------

/// QEMU, killed if this side gives up (or errors out) first.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    TimedOut,
    Ignored,
    /// Never reported: the VM died or gave up before it.
    NotRun,
}

struct TestResult {
    id: String,
    outcome: Outcome,
    secs: f64,
    skip: Option<String>,
}

pub(crate) struct KernelResult {
    pub kernel: String,
    package: String,
    tests: Vec<TestResult>,
    /// WARN/FAIL lines of `tcptrace check`: what degrades on this kernel.
    check: Vec<String>,
    /// Why the VM run itself failed (boot, modules, time limit), if it did.
    error: Option<String>,
    wall: Duration,
}

impl KernelResult {
    fn count(&self, outcome: Outcome) -> usize {
        self.tests.iter().filter(|t| t.skip.is_none() && t.outcome == outcome).count()
    }

    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self
                .tests
                .iter()
                .all(|t| t.skip.is_some() || matches!(t.outcome, Outcome::Passed | Outcome::Ignored))
    }

    pub fn summary(&self) -> String {
        let skipped = self.tests.iter().filter(|t| t.skip.is_some()).count() + self.count(Outcome::Ignored);
        let failed =
            self.count(Outcome::Failed) + self.count(Outcome::TimedOut) + self.count(Outcome::NotRun);
        let mut s = format!(
            "\n{} ({}): {} passed, {failed} failed, {skipped} skipped in {}\n",
            self.kernel,
            self.package,
            self.count(Outcome::Passed),
            human(self.wall.as_secs_f64()),
        );
        if let Some(error) = &self.error {
            let _ = writeln!(s, "  VM ERROR: {error}");
        }
        for line in &self.check {
            let _ = writeln!(s, "  tcptrace check: {line}");
        }
        for t in &self.tests {
            let status = match (&t.skip, t.outcome) {
                (Some(_), _) => "skipped",
                (None, Outcome::Passed) => "ok",
                (None, Outcome::Failed) => "FAILED",
                (None, Outcome::TimedOut) => "TIMEOUT",
                (None, Outcome::Ignored) => "ignored",
                (None, Outcome::NotRun) => "NOT RUN",
            };
            match &t.skip {
                Some(why) => {
                    // A quick or filtered run lists only what it ran.
                    if !why.starts_with("not in the --quick") && why != "filtered out" {
                        let _ = writeln!(s, "  {status:<8} {} ({why})", t.id);
                    }
                }
                None => {
                    let _ = writeln!(s, "  {status:<8} {:<90} {:>7}", t.id, human(t.secs));
                }
            }
        }
        s
    }
}

fn human(secs: f64) -> String {
    if secs >= 60.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!("{secs:.1}s")
    }
}

/// Removes terminal escape sequences and control characters (the firmware
/// clears the screen on the serial line).
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Files and limits of one VM run.
pub(crate) struct Run<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: PathBuf,
    /// ttyS0: what init and the tests print (also echoed here).
    pub console_log: PathBuf,
    /// ttyS1: the kernel's own log.
    pub kernel_log: PathBuf,
    /// The whole run.
    pub budget: Duration,
    /// Silence on the console this long means the guest is stuck.
    pub stall: Duration,
}

fn boot(run: &Run<'_>, plan: &[Planned]) -> Result<KernelResult> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=single", "-cpu", "max", "-smp", VCPUS, "-m", MEMORY])
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-nic", "none"])
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", run.kernel_log.display()))
        .arg("-kernel")
        .arg(run.kernel.vmlinuz())
        .arg("-initrd")
        .arg(&run.initramfs)
        .args(["-append", "console=ttyS1 panic=-1 mitigations=off"])
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]);
    boot_with(run, plan, qemu, &format!("TCG, {VCPUS} vCPUs, {MEMORY}"))
}

/// Boots `qemu` (its arguments set, its console on stdout) and follows the
/// marker protocol on its console.
pub(crate) fn boot_with(
    run: &Run<'_>,
    plan: &[Planned],
    mut qemu: Command,
    what: &str,
) -> Result<KernelResult> {
    let kernel = run.kernel;
    let started = Instant::now();
    let mut log = fs::File::create(&run.console_log)
        .with_context(|| format!("creating {}", run.console_log.display()))?;
    eprintln!(
        "xtask: booting {} in QEMU ({what}); logs: {}, {}",
        kernel.release,
        run.console_log.display(),
        run.kernel_log.display()
    );
    let program = qemu.get_program().to_string_lossy().into_owned();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let vm = Vm(child);
    let (tx, lines) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(clean(&String::from_utf8_lossy(&line))).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx2.send(format!("qemu: {}", clean(&line))).is_err() {
                break;
            }
        }
    });

    let short = kernel.release.split('-').next().unwrap_or(&kernel.release).to_string();
    let mut tests: Vec<TestResult> = plan
        .iter()
        .map(|t| TestResult { id: t.id(), outcome: Outcome::NotRun, secs: 0.0, skip: t.skip.clone() })
        .collect();
    let mut check = Vec::new();
    let mut in_check = false;
    let mut current: Option<(String, Instant, bool)> = None;
    let mut done = false;
    let mut error = None;
    let deadline = started + run.budget;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left.min(run.stall)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                error = Some(if left <= run.stall {
                    format!("gave up after {} (time limit of this run)", human(run.budget.as_secs_f64()))
                } else {
                    format!(
                        "no output for {}: the guest is stuck (see {})",
                        human(run.stall.as_secs_f64()),
                        run.kernel_log.display()
                    )
                });
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let _ = writeln!(log, "{line}");
        if line.is_empty() {
            continue;
        }
        println!("[{short}] {line}");
        let Some(at) = line.find(MARK) else {
            if in_check && (line.starts_with("WARN") || line.starts_with("FAIL")) {
                check.push(line.clone());
            }
            if let Some((_, _, ignored)) = current.as_mut()
                && line.starts_with("test ")
                && line.ends_with("... ignored")
            {
                *ignored = true;
            }
            continue;
        };
        let mut words = line[at + MARK.len()..].split_whitespace();
        match words.next() {
            Some("CHECK-BEGIN") => in_check = true,
            Some("CHECK-END") => in_check = false,
            Some("BEGIN") => {
                current = words.next().map(|id| (id.to_string(), Instant::now(), false));
            }
            Some("END") => {
                let (Some(id), Some(rc)) = (words.next(), words.next().and_then(|w| w.strip_prefix("rc=")))
                else {
                    continue;
                };
                let (secs, ignored) = match current.take() {
                    Some((cur, at, ignored)) if cur == id => (at.elapsed().as_secs_f64(), ignored),
                    _ => (0.0, false),
                };
                if let Some(t) = tests.iter_mut().find(|t| t.id == id) {
                    t.secs = secs;
                    t.outcome = match rc {
                        "0" if ignored => Outcome::Ignored,
                        "0" => Outcome::Passed,
                        // coreutils timeout: 124 (137 after -k); busybox: 143.
                        "124" | "137" | "143" => Outcome::TimedOut,
                        _ => Outcome::Failed,
                    };
                }
            }
            Some("FATAL") => {
                error = Some(words.collect::<Vec<_>>().join(" "));
            }
            Some("DONE") => {
                done = true;
                break;
            }
            _ => {}
        }
    }
    drop(vm);
    let _ = log.flush();
    if let Some((id, at, _)) = current
        && let Some(t) = tests.iter_mut().find(|t| t.id == id)
    {
        // Running when the VM died or was given up on.
        t.secs = at.elapsed().as_secs_f64();
        t.outcome = Outcome::TimedOut;
    }
    if !done && error.is_none() {
        error = Some(format!(
            "the VM stopped before the tests finished (kernel panic? see {})",
            run.kernel_log.display()
        ));
    }
    Ok(KernelResult {
        kernel: kernel.release.clone(),
        package: kernel.package.clone(),
        tests,
        check,
        error,
        wall: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_matching_kernel_package() {
        let names = "linux-image-6.1.0-47-amd64-unsigned\nlinux-image-6.1.0-56-amd64-unsigned\n\
                     linux-image-6.1.0-56-cloud-amd64-unsigned\nlinux-image-6.1.0-56-rt-amd64-unsigned\n\
                     linux-image-6.12.107+deb12-amd64-unsigned\nlinux-image-6.12.117+deb12-amd64-unsigned\n\
                     linux-image-6.1.0-9-amd64-unsigned\nlinux-image-amd64\n";
        assert_eq!(pick_kernel_package("6.1", names).as_deref(), Some("linux-image-6.1.0-56-amd64-unsigned"));
        assert_eq!(
            pick_kernel_package("6.12", names).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(
            pick_kernel_package("6.12.107", names).as_deref(),
            Some("linux-image-6.12.107+deb12-amd64-unsigned")
        );
        assert_eq!(pick_kernel_package("6.2", names), None);
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(module_name("kernel/net/9p/9pnet_virtio.ko.xz"), "9pnet_virtio");
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko"), "overlay");
        assert_eq!(module_name("kernel/crypto/crc32c-generic.ko"), "crc32c_generic");
    }

    #[test]
    fn reads_cargo_json_strings() {
        let line = r#"{"reason":"compiler-artifact","package_id":"x","target":{"kind":["test"],"name":"cli","src_path":"/a"},"executable":"/t/release/deps/cli-1"}"#;
        assert_eq!(
            json_string(&line[line.find("\"target\":{").unwrap_or(0)..], "name").as_deref(),
            Some("cli")
        );
        assert_eq!(json_string(line, "executable").as_deref(), Some("/t/release/deps/cli-1"));
    }

    #[test]
    fn cleans_console_lines() {
        assert_eq!(clean("\x1bc\x1b[?7l\x1b[2Jtest x ... ok\r"), "test x ... ok");
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut cpio = Cpio::default();
        cpio.dir("bin");
        cpio.file("init", 0o755, b"#!/bin/sh\n");
        let data = cpio.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 4, 0);
        assert!(data.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
