//! The root-only integration tests on the host kernel, one test at a time,
//! each in its own process, with background noise (`ttnoise`) running for
//! the whole run so that every count is proven exact on a busy host.
//!
//! `--shuffle` runs the tests in a random order (seeded; the seed is printed
//! and `--seed` replays an order), which proves that no test depends on
//! what another left behind; after each test the runner checks that it left
//! nothing behind (namespaces, processes, host nftables tables and sysctls).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::vm::{TestBinary, build_tests};

/// How the integration run is shaped.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    pub filter: Option<&'a str>,
    /// Random order with this seed.
    pub shuffle: Option<u64>,
    /// Background connection attempts per second (0: no noise).
    pub noise_rate: u64,
    /// A test still running after this long fails (and is killed).
    pub test_timeout: Duration,
    /// Run tcptrace in summary mode (`TCPTRACE_SUMMARIES=1`) instead of the
    /// full stream (one event per transition, the default): the suite runs
    /// in both, with the same expectations (tests/src/lib.rs, `summaries`).
    pub summaries: bool,
}

/// Connection attempts per second of the background noise by default: about
/// 2-4 % of what a storm reaches on the 2-core machines (BENCHMARKS.md), so
/// thousands of foreign events per second pass every tracer the tests run.
pub const DEFAULT_NOISE_RATE: u64 = 600;

/// The tcptrace setting (environment, inherited by every tcptrace a test
/// starts) of summary mode.
const SUMMARIES: &str = "TCPTRACE_SUMMARIES";

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let binaries = build_tests()?;
    let mut tests = list(&binaries, opts.filter)?;
    if tests.is_empty() {
        bail!("no integration test matches {:?}", opts.filter);
    }
    if let Some(seed) = opts.shuffle {
        shuffle(&mut tests, seed);
        eprintln!(
            "xtask: {} tests in a random order, seed {seed} (replay: --shuffle --seed {seed})",
            tests.len()
        );
    }
    let tcptrace = root.join("target/release/tcptrace");
    let release = root.join("target/release");
    let mut noise = (opts.noise_rate > 0).then(|| Noise::start(&release, opts.noise_rate)).transpose()?;

    let mut failed = Vec::new();
    for (i, (binary, test)) in tests.iter().enumerate() {
        eprintln!("\n--- [{}/{}] {}::{test}", i + 1, tests.len(), binary.name);
        let started = Instant::now();
        let before = HostState::capture();
        let mark = format!("{}-{i}", std::process::id());
        let (mut ok, pid) = run_one(root, binary, test, &tcptrace, &mark, opts)?;
        if let Some(leak) = before.left_behind(pid, &mark) {
            eprintln!("xtask: {test} did not leave the host as it found it: {leak}");
            ok = false;
        }
        eprintln!(
            "--- {}::{test}: {} in {:.1} s",
            binary.name,
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(format!("{}::{test}", binary.name));
        }
        if let Some(noise) = noise.as_mut() {
            noise.check_alive()?;
        }
    }
    if let Some(noise) = noise.take() {
        eprintln!("xtask: {}", noise.stop()?);
    }
    let passed = tests.len() - failed.len();
    for name in &failed {
        eprintln!("FAILED: {name}");
    }
    // The plain closing line CI reads.
    println!("integration: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        bail!("{} integration test(s) failed", failed.len());
    }
    Ok(())
}

/// Every (binary, test) pair, in cargo's order (binaries by name, tests as
/// listed), that matches `filter`.
fn list<'a>(binaries: &'a [TestBinary], filter: Option<&str>) -> Result<Vec<(&'a TestBinary, String)>> {
    let mut tests = Vec::new();
    for binary in binaries {
        let out = Command::new(&binary.path)
            .args(["--list", "--format", "terse"])
            .output()
            .with_context(|| format!("listing {}", binary.path.display()))?;
        if !out.status.success() {
            bail!("{} --list failed ({})", binary.path.display(), out.status);
        }
        for test in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_suffix(": test")) {
            let id = format!("{}::{test}", binary.name);
            if filter.is_none_or(|f| id.contains(f)) {
                tests.push((binary, test.to_string()));
            }
        }
    }
    Ok(tests)
}

/// Fisher-Yates with SplitMix64: a reproducible order for a seed.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// A seed for `--shuffle` without `--seed`: the clock.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}

/// Runs one test in its own process, as cargo test would from the package
/// directory; false when it failed or ran past the timeout. Also returns
/// the test process's pid.
fn run_one(
    root: &Path,
    binary: &TestBinary,
    test: &str,
    tcptrace: &Path,
    mark: &str,
    opts: &Options,
) -> Result<(bool, u32)> {
    let timeout = opts.test_timeout;
    let mut command = Command::new(&binary.path);
    if opts.summaries {
        command.env(SUMMARIES, "1");
    } else {
        command.env_remove(SUMMARIES);
    }
    let mut child = command
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env("TCPTRACE_BIN", tcptrace)
        .env(MARK, mark)
        .current_dir(root.join("tests"))
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", binary.path.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status.success(), pid));
        }
        if Instant::now() >= deadline {
            eprintln!("xtask: {test} still running after {} s: killed", timeout.as_secs());
            let _ = child.kill();
            let _ = child.wait();
            return Ok((false, pid));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// What a test may change on the host and must put back: host nftables
/// tables and host TCP sysctls; and what it may create and must remove:
/// network namespaces (`NetNs` names them `tt<test pid>-...`) and processes
/// (its children inherit `TCPTRACE_TEST_MARK`).
#[derive(PartialEq, Eq)]
struct HostState {
    nft_tables: String,
    sysctls: Vec<(String, String)>,
}

/// Host sysctls the tests' faults and scenarios set (in their own
/// namespaces: the host's must stay as they were).
const HOST_SYSCTLS: &[&str] = &[
    "net/ipv4/ip_local_port_range",
    "net/ipv4/tcp_tw_reuse",
    "net/ipv4/tcp_fin_timeout",
    "net/ipv4/tcp_synack_retries",
    "net/ipv4/tcp_syncookies",
    "net/ipv4/tcp_retries2",
    "net/ipv4/tcp_max_tw_buckets",
    "net/core/somaxconn",
    "kernel/bpf_stats_enabled",
];

const MARK: &str = "TCPTRACE_TEST_MARK";

impl HostState {
    fn capture() -> Self {
        let nft_tables = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let sysctls = HOST_SYSCTLS
            .iter()
            .map(|k| {
                let v = std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default();
                (k.to_string(), v.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .collect();
        Self { nft_tables, sysctls }
    }

    /// What the test run as `pid` with `mark` left behind, once its helpers
    /// had time to go (a killed process is reaped, a namespace unlinked).
    fn left_behind(&self, pid: u32, mark: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut what = Vec::new();
            let now = Self::capture();
            if now.nft_tables != self.nft_tables {
                what.push(format!("host nftables tables {:?} -> {:?}", self.nft_tables, now.nft_tables));
            }
            for ((k, before), (_, after)) in self.sysctls.iter().zip(&now.sysctls) {
                if before != after {
                    what.push(format!("host {k} {before:?} -> {after:?}"));
                }
            }
            let prefix = format!("tt{pid}-");
            let netns: Vec<String> = std::fs::read_dir("/run/netns")
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let netns: Vec<String> = netns.into_iter().filter(|n| n.starts_with(&prefix)).collect();
            if !netns.is_empty() {
                what.push(format!("network namespaces {netns:?}"));
            }
            let marker = format!("{MARK}={mark}");
            let procs: Vec<String> = std::fs::read_dir("/proc")
                .map(|d| {
                    d.flatten()
                        .filter(|e| {
                            e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                        })
                        .filter(|e| {
                            std::fs::read(e.path().join("environ"))
                                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                        })
                        .map(|e| {
                            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                            format!("{} {}", e.file_name().to_string_lossy(), comm.trim())
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !procs.is_empty() {
                what.push(format!("processes {procs:?}"));
            }
            if what.is_empty() {
                return None;
            }
            if Instant::now() >= deadline {
                return Some(what.join("; "));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The background noise process (tests/src/bin/ttnoise.rs).
struct Noise {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Noise {
    fn start(release: &Path, rate: u64) -> Result<Self> {
        let path: PathBuf = release.join("ttnoise");
        let mut child = Command::new(&path)
            .args(["--rate", &rate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("ttnoise stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines.recv_timeout(Duration::from_secs(60)).context("ttnoise did not get ready")?;
        if !ready.starts_with("ready") {
            bail!("ttnoise: unexpected first line {ready:?}");
        }
        eprintln!("xtask: background noise on: {rate} connections/s between two namespaces ({ready})");
        Ok(Self { child, stdin, lines })
    }

    /// The noise must run for the whole suite: a run whose noise died proves
    /// nothing about a busy host.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the background noise (ttnoise) exited during the run ({status})");
        }
        Ok(())
    }

    /// Stops it (stdin closes) and returns its closing line.
    fn stop(mut self) -> Result<String> {
        self.check_alive()?;
        drop(self.stdin.take());
        let line = self.lines.recv_timeout(Duration::from_secs(30)).context("ttnoise did not stop")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("ttnoise failed ({status}): {line}");
        }
        Ok(line)
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        // On an early error: SIGTERM lets it delete its namespaces.
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle;

    #[test]
    fn shuffle_is_a_reproducible_permutation() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b, "same seed, same order");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>(), "a permutation");
        assert_ne!(a, (0..50).collect::<Vec<_>>(), "actually shuffled");
        let mut c: Vec<u32> = (0..50).collect();
        shuffle(&mut c, 8);
        assert_ne!(a, c, "another seed, another order");
    }
}
