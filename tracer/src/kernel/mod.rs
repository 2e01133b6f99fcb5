//! Loading and attaching the kernel programs, and detaching them again.
//!
//! Order matters (see docs/ARCHITECTURE.md): [`Probes::load`] creates the maps
//! and verifies the programs; the caller then starts draining the ring buffer;
//! only then [`Probes::attach`] makes the hooks live, so that no event is
//! produced before a consumer exists. Links are owned by file descriptors and
//! never pinned: dropping [`Probes`] (or the process dying, even by SIGKILL)
//! detaches everything.

pub mod btf;
pub mod env;
pub mod info;

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Program, ProgramError, ProgramFd, TracePoint},
};
use tracer_common::{KernelConfig, names};

use crate::error::EnvError;

/// The kernel object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// BTF-enabled tracepoint (`tp_btf`), by tracepoint name. No tracefs needed.
    Btf(&'static str),
    /// Classic tracepoint, by category and name (tracefs needed).
    TracePoint(&'static str, &'static str),
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Btf(name) => write!(f, "tp_btf/{name}"),
            Hook::TracePoint(cat, name) => write!(f, "tracepoint/{cat}/{name}"),
        }
    }
}

/// What a program is for: when its hook is missing, that capability is
/// reported as unavailable instead of failing the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// State transitions: without them there is nothing to do.
    Core,
    Resets,
    Owners,
    Retransmits,
    Errors,
    /// TIME_WAIT and SYN_RECV lifetimes via timer tracepoints.
    Timers,
    ConnectErrors,
    /// accept(): the accept-queue wait and the accepting process.
    Accepts,
    /// TCP segments the kernel drops, with its reason (`kfree_skb`, 5.17+).
    Drops,
}

#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    pub program: &'static str,
    pub hook: Hook,
    pub feature: Feature,
}

const fn spec(program: &'static str, hook: Hook, feature: Feature) -> ProgramSpec {
    ProgramSpec { program, hook, feature }
}

/// Every program tcptrace may attach (retransmit: one of two variants).
pub const PROGRAMS: &[ProgramSpec] = &[
    spec("tcptrace_state", Hook::Btf("inet_sock_set_state"), Feature::Core),
    spec("tcptrace_send_reset", Hook::Btf("tcp_send_reset"), Feature::Resets),
    spec("tcptrace_receive_reset", Hook::Btf("tcp_receive_reset"), Feature::Resets),
    spec("tcptrace_sendmsg", Hook::Btf("tcp_sendmsg_locked"), Feature::Owners),
    spec("tcptrace_sk_error", Hook::Btf("inet_sk_error_report"), Feature::Errors),
    spec("tcptrace_retransmit", Hook::Btf("tcp_retransmit_skb"), Feature::Retransmits),
    spec("tcptrace_retransmit_legacy", Hook::Btf("tcp_retransmit_skb"), Feature::Retransmits),
    spec("tcptrace_synack", Hook::Btf("tcp_retransmit_synack"), Feature::Retransmits),
    spec("tcptrace_timer_start", Hook::Btf("timer_start"), Feature::Timers),
    spec("tcptrace_timer_expire", Hook::Btf("timer_expire_entry"), Feature::Timers),
    spec("tcptrace_timer_expire_exit", Hook::Btf("timer_expire_exit"), Feature::Timers),
    spec("tcptrace_timer_cancel", Hook::Btf("timer_cancel"), Feature::Timers),
    spec("tcptrace_connect_enter", Hook::TracePoint("syscalls", "sys_enter_connect"), Feature::ConnectErrors),
    spec("tcptrace_connect_exit", Hook::TracePoint("syscalls", "sys_exit_connect"), Feature::ConnectErrors),
    spec("tcptrace_accept4_exit", Hook::TracePoint("syscalls", "sys_exit_accept4"), Feature::Accepts),
    spec("tcptrace_accept_exit", Hook::TracePoint("syscalls", "sys_exit_accept"), Feature::Accepts),
    spec("tcptrace_drop", Hook::Btf("kfree_skb"), Feature::Drops),
];

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// See `KernelConfig::wakeup_bytes`.
    pub wakeup_bytes: u64,
    /// Load and attach the empty program of each selected hook instead
    /// ([`empty_program`]): the benchmark's calibration.
    pub calibrate_empty: bool,
    /// `KernelConfig::ablate`: work the programs leave out (benchmark only).
    pub ablate: u32,
    /// Every event is shown or recorded (`--events`, `record`): each carries
    /// the task's comm and cgroup (`KernelConfig::task_in_every_event`), not
    /// only those whose task owns the socket.
    pub every_event_shown: bool,
    /// Summary mode (`KernelConfig::summaries`): a socket's transitions
    /// reach userspace together. Never with `every_event_shown`.
    pub summaries: bool,
}

/// The empty program on `hook` (`tracer-ebpf/src/probes/empty.rs`), which
/// `--calibrate-empty` attaches in place of the real one.
pub fn empty_program(hook: Hook) -> Option<&'static str> {
    Some(match hook {
        Hook::Btf("inet_sock_set_state") => "tcptrace_empty_state",
        Hook::Btf("tcp_send_reset") => "tcptrace_empty_send_reset",
        Hook::Btf("tcp_receive_reset") => "tcptrace_empty_receive_reset",
        Hook::Btf("tcp_sendmsg_locked") => "tcptrace_empty_sendmsg",
        Hook::Btf("inet_sk_error_report") => "tcptrace_empty_sk_error",
        Hook::Btf("tcp_retransmit_skb") => "tcptrace_empty_retransmit",
        Hook::Btf("tcp_retransmit_synack") => "tcptrace_empty_synack",
        Hook::Btf("timer_start") => "tcptrace_empty_timer_start",
        Hook::Btf("timer_expire_entry") => "tcptrace_empty_timer_expire",
        Hook::Btf("timer_expire_exit") => "tcptrace_empty_timer_expire_exit",
        Hook::Btf("timer_cancel") => "tcptrace_empty_timer_cancel",
        Hook::TracePoint("syscalls", "sys_enter_connect") => "tcptrace_empty_connect_enter",
        Hook::TracePoint("syscalls", "sys_exit_connect") => "tcptrace_empty_connect_exit",
        Hook::TracePoint("syscalls", "sys_exit_accept4") => "tcptrace_empty_accept4_exit",
        Hook::TracePoint("syscalls", "sys_exit_accept") => "tcptrace_empty_accept_exit",
        Hook::Btf("kfree_skb") => "tcptrace_empty_drop",
        _ => return None,
    })
}

/// The maps userspace reads. Owned separately from the programs so that they
/// outlive detaching: the final drain happens after the hooks are gone.
pub struct Maps {
    pub events: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    /// Log records of the kernel programs (aya-log), forwarded to `log`.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// A second file descriptor of every loaded program: it keeps the program
    /// loaded (not attached) after [`Probes::detach`], so that its final
    /// `recursion_misses` can be read then; closing it unloads the program.
    pub programs: Vec<LoadedProgram>,
    /// Summary mode: the sockets' steps still pending in the kernel, read
    /// once tracing has stopped (`tracer_common::RawSummary`).
    pub pending: Option<aya::maps::HashMap<MapData, u64, tracer_common::RawSummary>>,
}

/// One loaded program, by the name in [`PROGRAMS`].
pub struct LoadedProgram {
    pub name: &'static str,
    pub fd: ProgramFd,
}

impl LoadedProgram {
    /// See [`info::program_stats`].
    pub fn stats(&self) -> std::io::Result<info::ProgramStats> {
        use std::os::fd::AsFd as _;
        info::program_stats(self.fd.as_fd())
    }
}

pub struct Probes {
    ebpf: Option<Ebpf>,
    btf: Btf,
    selected: Vec<ProgramSpec>,
    /// Programs attached so far, in order.
    pub attached: Vec<ProgramSpec>,
    /// Capabilities unavailable on this host, one human sentence each.
    pub notes: Vec<String>,
    /// Whether this process mounted tracefs.
    pub mounted_tracefs: bool,
}

fn tracefs_has(category: &str, name: &str) -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|root| Path::new(root).join("events").join(category).join(name).is_dir())
}

impl Probes {
    /// Checks the environment, computes offsets, creates maps and loads (verifies)
    /// every program this kernel supports. Nothing is attached yet.
    pub fn load(options: &ProbeOptions) -> Result<(Self, Maps)> {
        env::check_privileges()?;
        let btf_path = Path::new(btf::VMLINUX_BTF);
        env::check_btf(btf_path)?;
        let kernel_btf = btf::KernelBtf::load(btf_path).map_err(|e| EnvError::new(format!("{e:#}")))?;
        let missing = kernel_btf.missing_essentials();
        if !missing.is_empty() {
            return Err(EnvError::new(btf::too_old(&missing)).into());
        }
        crate::drop_reason::set(kernel_btf.enumerators("skb_drop_reason"));
        let charges_memlock = kernel_btf.charges_memlock();
        let memlock = env::raise_memlock();
        if let Some(err) = &memlock
            && !charges_memlock
        {
            eprintln!(
                "tcptrace: warning: cannot raise RLIMIT_MEMLOCK ({err}); harmless here: this kernel \
                 charges BPF memory to the cgroup (Linux 5.11+)"
            );
        }
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let timers = btf::timer_functions(&kallsyms);
        let mut config: KernelConfig = btf::kernel_config(&kernel_btf, timers, options.wakeup_bytes)
            .map_err(|e| EnvError::new(format!("{e:#}")))?;
        config.ablate = options.ablate;
        config.task_in_every_event = u32::from(options.every_event_shown);
        config.summaries = u32::from(options.summaries && !options.every_event_shown);

        let plan = plan(&kernel_btf, timers)?;
        let mounted_tracefs = plan.mounted_tracefs;
        if let Some(missing) = plan.skipped.iter().find(|(spec, _)| spec.feature == Feature::Core) {
            return Err(EnvError::new(missing.1.clone()).into());
        }
        let mut notes: Vec<String> = Vec::new();
        for (_, note) in &plan.skipped {
            if !notes.contains(note) {
                notes.push(note.clone());
            }
        }
        notes.extend(cookie_note(&config).map(String::from));
        notes.extend(env::capability_notes(env::effective_caps().unwrap_or(u64::MAX)));
        let mut selected = plan.selected;
        if options.calibrate_empty {
            for spec in &mut selected {
                spec.program = empty_program(spec.hook)
                    .ok_or_else(|| anyhow!("no empty program for {} (--calibrate-empty)", spec.hook))?;
            }
        }

        let mut ebpf = load_object(&config, options.ring_buffer_bytes).map_err(|e| match &memlock {
            Some(err) if charges_memlock => {
                EnvError::new(format!("{}: {}", crate::error::one_line(&e), env::memlock_too_low(err))).into()
            }
            _ => e,
        })?;
        let btf = Btf::from_sys_fs().map_err(|e| EnvError::new(format!("cannot read kernel BTF: {e}")))?;
        let mut programs = Vec::with_capacity(selected.len());
        for spec in &selected {
            load_program(&mut ebpf, spec, &btf)?;
            let fd = program_mut(&mut ebpf, spec)?
                .fd()
                .map_err(anyhow::Error::from)
                .and_then(|fd| Ok(fd.try_clone()?))
                .with_context(|| format!("duplicating the file descriptor of {}", spec.program))?;
            programs.push(LoadedProgram { name: spec.program, fd });
        }
        let events = ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| anyhow!("no {} map in the kernel object", names::EVENTS))?;
        let stats = ebpf
            .take_map(names::STATS)
            .ok_or_else(|| anyhow!("no {} map in the kernel object", names::STATS))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::debug!("kernel log forwarding unavailable: {err}");
                None
            }
        };
        let pending = match (config.summaries, ebpf.take_map(names::PENDING)) {
            (1, Some(map)) => Some(aya::maps::HashMap::try_from(map).context("PENDING map")?),
            _ => None,
        };
        let maps = Maps {
            events: RingBuf::try_from(events).context("EVENTS map")?,
            stats: PerCpuArray::try_from(stats).context("STATS map")?,
            logger,
            programs,
            pending,
        };
        let probes = Self { ebpf: Some(ebpf), btf, selected, attached: Vec::new(), notes, mounted_tracefs };
        Ok((probes, maps))
    }

    /// Attaches every loaded program, then turns them all on at once. On
    /// failure, detaches those already attached and names the one that failed.
    pub fn attach(&mut self) -> Result<()> {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Err(anyhow!("programs already detached"));
        };
        for spec in self.selected.clone() {
            if let Err(err) = attach_program(ebpf, &spec, &self.btf) {
                self.detach();
                return Err(err);
            }
            self.attached.push(spec);
        }
        if let Err(err) = self.set_tracing(true) {
            self.detach();
            return Err(err);
        }
        Ok(())
    }

    /// Turns every program on or off with one map update: hooks are attached
    /// and detached one by one, but events start and stop at one instant, so
    /// that no connection is seen by some hooks and not others.
    fn set_tracing(&mut self, on: bool) -> Result<()> {
        let ebpf = self.ebpf.as_mut().ok_or_else(|| anyhow!("programs already detached"))?;
        let map = ebpf.map_mut(names::CONTROL).ok_or_else(|| anyhow!("no {} map", names::CONTROL))?;
        let mut control: Array<&mut MapData, u32> = Array::try_from(map).context("CONTROL map")?;
        control.set(0, u32::from(on), 0).context("switching tracing")?;
        Ok(())
    }

    /// Whether a program for `feature` was selected for loading.
    pub fn selected_feature(&self, feature: Feature) -> bool {
        self.selected.iter().any(|s| s.feature == feature)
    }

    /// Whether a program for `feature` is attached.
    pub fn attached_feature(&self, feature: Feature) -> bool {
        self.attached.iter().any(|s| s.feature == feature)
    }

    /// Kernel ids of the loaded programs (for `bpf_stats` and tests).
    pub fn program_ids(&self) -> Vec<(&'static str, u32)> {
        let Some(ebpf) = self.ebpf.as_ref() else { return Vec::new() };
        self.selected
            .iter()
            .filter_map(|spec| {
                let info = ebpf.program(spec.program)?.info().ok()?;
                Some((spec.program, info.id()))
            })
            .collect()
    }

    /// Stops every program at once, then detaches them and closes their file
    /// descriptors (a program is unloaded once [`Maps::programs`] lets go of
    /// it too). Maps handed out stay usable.
    pub fn detach(&mut self) {
        if self.ebpf.is_some()
            && let Err(err) = self.set_tracing(false)
        {
            log::warn!("could not stop the programs before detaching: {err:#}");
        }
        self.attached.clear();
        drop(self.ebpf.take());
    }
}

/// Which programs this host can run, and why the others are left out.
pub struct Plan {
    pub selected: Vec<ProgramSpec>,
    /// Programs left out, with a sentence saying why.
    pub skipped: Vec<(ProgramSpec, String)>,
    pub mounted_tracefs: bool,
}

/// Chooses the programs for this kernel: hooks that exist, the retransmit
/// variant matching the tracepoint's arity, timer programs only when the
/// timer callbacks are visible in kallsyms.
pub fn plan(kernel_btf: &btf::KernelBtf, timers: btf::TimerFunctions) -> Result<Plan> {
    let mut plan = Plan { selected: Vec::new(), skipped: Vec::new(), mounted_tracefs: false };
    let retransmit_args = kernel_btf.tracepoint_args("tcp_retransmit_skb");
    for spec in PROGRAMS {
        match spec.program {
            "tcptrace_retransmit" if retransmit_args != Some(3) => continue,
            "tcptrace_retransmit_legacy" if retransmit_args == Some(3) => continue,
            // Before 5.17 the tracepoint has no reason: nothing to tell.
            "tcptrace_drop" if kernel_btf.tracepoint_args("kfree_skb").is_some_and(|n| n < 3) => {
                plan.skipped.push((*spec, DROPS_WITHOUT_REASONS.to_string()));
                continue;
            }
            _ => {}
        }
        let present = match spec.hook {
            Hook::Btf(name) => kernel_btf.tracepoint_args(name).is_some(),
            Hook::TracePoint(cat, name) => match env::ensure_tracefs() {
                Ok(mounted) => {
                    plan.mounted_tracefs |= mounted;
                    tracefs_has(cat, name)
                }
                Err(err) => {
                    // Only optional features use classic tracepoints.
                    let why = format!(
                        "{} unavailable: {}",
                        feature_name(spec.feature),
                        crate::error::one_line(&err)
                    );
                    plan.skipped.push((*spec, why));
                    continue;
                }
            },
        };
        if !present {
            let why = format!("{} unavailable: this kernel has no {}", feature_name(spec.feature), spec.hook);
            plan.skipped.push((*spec, why));
            continue;
        }
        if spec.feature == Feature::Timers
            && (timers.tw_timer_handler == 0 || timers.reqsk_timer_handler == 0)
        {
            let why =
                format!("TIME_WAIT and SYN_RECV lifetimes unavailable: {}", env::kallsyms_hidden_here());
            plan.skipped.push((*spec, why));
            continue;
        }
        plan.selected.push(*spec);
    }
    Ok(plan)
}

/// Why `tcptrace_drop` is left out on kernels before 5.17 (`check` warns
/// with it, the report notes it).
pub const DROPS_WITHOUT_REASONS: &str =
    "kernel drop reasons unavailable: this kernel's kfree_skb tracepoint has no reason (Linux 5.17+)";

/// Creates the maps of the kernel object (nothing is verified yet).
pub fn load_object(config: &KernelConfig, ring_buffer_bytes: u32) -> Result<Ebpf> {
    Ok(EbpfLoader::new()
        .override_global(names::CONFIG, config, true)
        .map_max_entries(names::EVENTS, ring_buffer_bytes)
        .load(OBJECT)
        .map_err(|e| EnvError::new(format!("cannot create BPF maps: {e}")))?)
}

/// What `check` warns of and the report notes when full sockets are named by
/// address (`KernelConfig::cookie_mask`); None where the kernel gives
/// tracing programs socket cookies.
pub fn cookie_note(config: &KernelConfig) -> Option<&'static str> {
    (config.cookie_mask != 0).then_some(
        "socket cookies unavailable: this kernel's tracing programs have no bpf_get_socket_cookie \
         (Linux 5.12+); full sockets are named by their address, masked, so the cookie of events is \
         not the kernel's socket cookie (ss -e); counts are unaffected",
    )
}

pub fn feature_name(feature: Feature) -> &'static str {
    match feature {
        Feature::Core => "state transitions",
        Feature::Resets => "reset attribution",
        Feature::Owners => "owner attribution of accepted sockets",
        Feature::Retransmits => "retransmit tracking",
        Feature::Errors => "socket error reports",
        Feature::Timers => "TIME_WAIT and SYN_RECV tracking",
        Feature::ConnectErrors => "connect() error tracking",
        Feature::Accepts => "accept-queue waits",
        Feature::Drops => "kernel drop reasons",
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, spec: &ProgramSpec) -> Result<&'a mut Program> {
    ebpf.program_mut(spec.program)
        .ok_or_else(|| anyhow!("program {} missing from the kernel object", spec.program))
}

pub fn load_program(ebpf: &mut Ebpf, spec: &ProgramSpec, btf: &Btf) -> Result<()> {
    let program = program_mut(ebpf, spec)?;
    let result = match spec.hook {
        Hook::Btf(name) => {
            let p: &mut BtfTracePoint = program.try_into()?;
            p.load(name, btf)
        }
        Hook::TracePoint(..) => {
            let p: &mut TracePoint = program.try_into()?;
            p.load()
        }
    };
    result.map_err(|err| {
        let reason = match &err {
            ProgramError::LoadError { io_error, verifier_log } => {
                log::debug!("verifier log for {}:\n{verifier_log}", spec.program);
                format!("{io_error} (run with RUST_LOG=debug for the verifier log)")
            }
            other => error_chain(other),
        };
        EnvError::new(format!("the kernel refused program {} ({}): {reason}", spec.program, spec.hook)).into()
    })
}

fn attach_program(ebpf: &mut Ebpf, spec: &ProgramSpec, _btf: &Btf) -> Result<()> {
    let program = program_mut(ebpf, spec)?;
    let result = match spec.hook {
        Hook::Btf(_) => {
            let p: &mut BtfTracePoint = program.try_into()?;
            p.attach().map(drop)
        }
        Hook::TracePoint(category, name) => {
            let p: &mut TracePoint = program.try_into()?;
            p.attach(category, name).map(drop)
        }
    };
    result.map_err(|err| {
        EnvError::new(format!("cannot attach {} to {}: {}", spec.program, spec.hook, error_chain(&err)))
            .into()
    })
}

/// An error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calibration covers every hook: a new program's hook needs its empty
    /// program (tracer-ebpf/src/probes/empty.rs) too.
    #[test]
    fn every_hook_has_an_empty_program() {
        for spec in PROGRAMS {
            let empty =
                empty_program(spec.hook).unwrap_or_else(|| panic!("no empty program for {}", spec.hook));
            assert!(empty.starts_with("tcptrace_empty_"), "{empty}");
        }
    }

    /// Each empty program's symbol is in the kernel object (its string table).
    #[test]
    fn empty_programs_are_in_the_object() {
        for spec in PROGRAMS {
            let name = format!("{}\0", empty_program(spec.hook).expect("every hook has one"));
            assert!(
                OBJECT.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} missing from the kernel object"
            );
        }
    }
}
