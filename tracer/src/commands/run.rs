//! A tracing session (`run`, `record`): load, attach, hand every event to a
//! sink until told to stop, detach, drain. The sink is the live tracker
//! (`run`) or a recording file (`record`).

use std::{
    io::{self, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

use crate::{
    cli::{Format, RunArgs, Tuning},
    error::EnvError,
    host::clock::{self, Clock},
    host::netns::NetnsRegistry,
    host::snapshot,
    kernel::{Feature, ProbeOptions, Probes},
    output::hdrlog::HdrLog,
    output::live::{LiveMode, LiveView},
    pipeline::collect::{self, Collector, KernelCounters, KernelSources, UserCounters},
    pipeline::filter::OwnerFilter,
    pipeline::{Consumer, Message, StreamOptions},
    report::{self, EventCounts, Report, ReportContext},
    track::{LIMITS_ENV, Limits, Tracker},
    workload::resolve::Workloads,
};

/// Defined here, with the commands, rather than in `track` (pure logic, no
/// I/O): the caps a tracker gets when a command builds one.
impl Limits {
    /// [`Limits::BUILT_IN`], with `TCPTRACE_DEBUG_LIMITS` applied when set
    /// (a bad value is ignored with a warning).
    pub fn from_env() -> Self {
        let Ok(spec) = std::env::var(LIMITS_ENV) else { return Self::BUILT_IN };
        Self::BUILT_IN.with_overrides(&spec).unwrap_or_else(|e| {
            log::warn!("ignoring {LIMITS_ENV}: {e}");
            Self::BUILT_IN
        })
    }
}

/// Where a session's events go; runs on its own thread.
pub trait Sink: Send + 'static {
    type Output: Send + 'static;
    /// Raw records (recording) rather than decoded events.
    const RAW: bool;
    fn consume(self, rx: mpsc::Receiver<Message>) -> Self::Output;
}

impl Sink for Consumer {
    type Output = Tracker;
    const RAW: bool = false;
    fn consume(self, rx: mpsc::Receiver<Message>) -> Tracker {
        self.run(rx)
    }
}

/// What the session knows when it ends.
pub struct SessionEnd {
    pub elapsed: Duration,
    /// CLOCK_MONOTONIC at the start and end of tracing.
    pub started_ns: u64,
    pub ended_ns: u64,
    pub kernel: KernelCounters,
    pub user: Arc<UserCounters>,
    pub registry: NetnsRegistry,
    pub notes: Vec<String>,
    pub stopped_because_output_closed: bool,
}

/// What the sink needs to know before the first event.
pub struct SessionStart {
    pub timers_available: bool,
    pub clock: Clock,
    pub started_ns: u64,
    pub notes: Vec<String>,
    /// Namespace facts at the start.
    pub registry: NetnsRegistry,
    /// The collector's counters (received, undecodable), live.
    pub counters: Arc<UserCounters>,
    /// Summary mode is on (`Tuning::summaries`, not every event shown).
    pub summaries: bool,
}

pub fn block_on<F: std::future::Future<Output = Result<()>>>(future: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Duration,
    Interrupt,
    Terminate,
    OutputClosed,
}

/// Runs a session: `make_sink` builds the sink once the programs are loaded
/// (it learns what this host supports), before anything is attached.
/// `every_event_shown`: see [`ProbeOptions::every_event_shown`].
pub async fn session<S: Sink>(
    tuning: &Tuning,
    every_event_shown: bool,
    filters: &crate::pipeline::filter::FilterArgs,
    duration: Option<Duration>,
    interval: Option<Duration>,
    make_sink: impl FnOnce(&SessionStart, oneshot::Sender<()>) -> Result<S>,
    on_attached: impl FnOnce() -> Result<()>,
) -> Result<(S::Output, SessionEnd)> {
    let ring_bytes = tuning.ring_buffer_size;
    let wakeup_bytes = match tuning.wakeup_fraction {
        0 => 0,
        n => u64::from(ring_bytes / n.max(1)),
    };
    let (mut probes, maps) = Probes::load(&ProbeOptions {
        ring_buffer_bytes: ring_bytes,
        wakeup_bytes,
        calibrate_empty: tuning.calibrate_empty,
        ablate: tuning.ablate,
        every_event_shown,
        summaries: tuning.summaries,
    })?;
    // Counter baselines of every namespace (report deltas are from here).
    let registry =
        tokio::task::spawn_blocking(NetnsRegistry::snapshot).await.context("reading namespaces")?;
    if probes.mounted_tracefs {
        eprintln!("tcptrace: mounted tracefs at /sys/kernel/tracing");
    }
    if let Some(logger) = maps.logger {
        forward_kernel_logs(logger)?;
    }

    // Consumer first, then attach: no event is produced before someone reads.
    let counters = Arc::new(UserCounters::default());
    counters.ring_bytes.store(u64::from(ring_bytes), std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(collect::CHANNEL_BATCHES);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_for_ticks = stop_rx.clone();
    // Ticks and the start-up listing reach the tracker through the
    // collector, behind every event that precedes them.
    let (ordered_tx, ordered_rx) = mpsc::channel(8);
    let mut collector = Collector::new(maps.events, tx, counters.clone(), tuning.drain_interval)?
        .with_ordered(ordered_rx)
        .with_pending(maps.pending);
    if S::RAW {
        collector = collector.raw();
    }
    let collector = tokio::spawn(collector.run(stop_rx));
    let (closed_tx, closed_rx) = oneshot::channel();
    let start = SessionStart {
        timers_available: probes.selected_feature(Feature::Timers),
        clock: Clock::now(),
        started_ns: clock::monotonic_ns(),
        notes: probes.notes.clone(),
        registry,
        counters: counters.clone(),
        summaries: tuning.summaries && !every_event_shown,
    };
    let sink = make_sink(&start, closed_tx)?;
    let sink = std::thread::Builder::new()
        .name("tcptrace-sink".into())
        .spawn(move || sink.consume(rx))
        .context("starting the tracker thread")?;

    // Signals are caught from here on: Ctrl-C always ends with a report.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    if let Err(err) = probes.attach() {
        let _ = stop_tx.send(true);
        return Err(err);
    }
    let started = Instant::now();
    if let Err(err) = on_attached() {
        probes.detach();
        let _ = stop_tx.send(true);
        return Err(err);
    }
    let sources =
        Arc::new(std::sync::Mutex::new(KernelSources { stats: maps.stats, programs: maps.programs }));
    if let Some(every) = interval {
        let (tick_tx, sources, mut stop) = (ordered_tx.clone(), sources.clone(), stop_rx_for_ticks);
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(every);
            timer.tick().await;
            loop {
                tokio::select! {
                    _ = timer.tick() => {}
                    _ = stop.changed() => return,
                }
                let kernel = sources.lock().ok().and_then(|s| s.read().ok()).unwrap_or_default();
                if tick_tx.send(Message::Tick { now_ns: clock::monotonic_ns(), kernel }).await.is_err() {
                    return;
                }
            }
        });
    }
    // TIME_WAIT and possibly stuck sockets that already exist (listed after attaching, so that
    // none falls between the listing and the first event; duplicates are
    // recognised by cookie: the listing reaches the tracker after every
    // event produced before it was taken, see `Collector::with_ordered`).
    // Only the namespaces the filters let through: the others' sockets
    // would be dropped anyway, and listing them can take long on a busy host.
    let mut listing_registry = start.registry.paths_snapshot();
    if !filters.netns.is_empty() {
        listing_registry.retain(|inode| filters.netns.contains(&inode));
    }
    tokio::task::spawn_blocking(move || {
        let listed = snapshot::existing_with_owners(&listing_registry);
        let _ = ordered_tx.blocking_send(Message::Listed(listed));
    });
    eprintln!(
        "tcptrace: tracing ({} programs attached{}); {}",
        probes.attached.len(),
        if probes.notes.is_empty() { String::new() } else { format!(", {} notes", probes.notes.len()) },
        match duration {
            Some(d) => format!("stopping after {}", humantime::format_duration(d)),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    // A sink that never reports closed output drops its sender: wait forever then.
    let output_closed = async {
        if closed_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let stop = tokio::select! {
        _ = sleep => Stop::Duration,
        _ = sigint.recv() => Stop::Interrupt,
        _ = sigterm.recv() => Stop::Terminate,
        _ = output_closed => Stop::OutputClosed,
    };
    log::debug!("stopping: {stop:?}");

    // Detach first so that the final drain sees every event ever produced.
    probes.detach();
    let elapsed = started.elapsed();
    let ended_ns = clock::monotonic_ns();
    let _ = stop_tx.send(true);
    collector.await.context("collector task")??;
    let output = sink.join().map_err(|_| anyhow!("tracker thread panicked"))?;
    // The programs are detached but still loaded (`KernelSources::programs`
    // holds them): their recursion misses are final now.
    let kernel = {
        let mut sources = sources.lock().map_err(|_| anyhow!("kernel counters lock poisoned"))?;
        let kernel = sources.read();
        sources.release_programs();
        kernel?
    };
    let end = SessionEnd {
        elapsed,
        started_ns: start.started_ns,
        ended_ns,
        kernel,
        user: counters,
        registry: start.registry,
        notes: probes.notes.clone(),
        stopped_because_output_closed: stop == Stop::OutputClosed,
    };
    Ok((output, end))
}

/// `tcptrace run`.
pub fn run(args: RunArgs) -> Result<()> {
    run_with(args, || Ok(()))
}

/// `tcptrace run`, calling `on_attached` once every hook is live (the demo
/// starts its traffic there).
pub fn run_with(args: RunArgs, on_attached: impl FnOnce() -> Result<()>) -> Result<()> {
    use crossterm::tty::IsTty;
    let live_mode = if args.quiet || (args.events && args.format == Format::Text) {
        LiveMode::Off
    } else if args.format == Format::Json {
        LiveMode::JsonLines
    } else if io::stdout().is_tty() {
        LiveMode::Terminal
    } else {
        LiveMode::TextLines
    };
    let hdr_log = args.hdr_log.clone();
    block_on(async move {
        let owner_filter = owner_filter(&args.filters)?;
        let stream_of = |start: &SessionStart| StreamOptions {
            format: args.format,
            show_events: args.events,
            all_events: args.tuning.all_events,
            clock: start.clock,
        };
        let filters = args.filters.clone();
        let interval = (live_mode != LiveMode::Off || hdr_log.is_some()).then_some(args.interval);
        let (mut tracker, end) = session(
            &args.tuning,
            args.events,
            &args.filters,
            args.duration,
            interval,
            |start: &SessionStart, closed| {
                let mut tracker = Tracker::new(Limits::from_env(), start.timers_available);
                tracker.owner_filter = owner_filter;
                args.thresholds.apply(&mut tracker);
                let view =
                    LiveView::new(live_mode, start.clock, start.started_ns, start.registry.paths_snapshot());
                let mut consumer = Consumer::new(tracker, filters, stream_of(start), start.started_ns)
                    .with_live_view(view)
                    .with_summaries(start.summaries);
                if let Some(path) = &hdr_log {
                    let log = HdrLog::create(path, start.clock, start.started_ns)
                        .map_err(|e| EnvError::new(format!("cannot create {}: {e}", path.display())))?;
                    consumer = consumer.with_hdr_log(log);
                }
                consumer.notify_when_output_closes(closed);
                Ok(consumer)
            },
            on_attached,
        )
        .await?;
        if end.stopped_because_output_closed {
            return Ok(());
        }
        let events = EventCounts::new(&end.kernel, &end.user);
        // Ages (stuck sockets) are as of the end of the run, not the last event.
        tracker.tick(end.ended_ns);
        let mut ctx =
            ReportContext { workloads: Workloads::discover(&args.filters.kubelet_logs), netns: end.registry };
        let report = Report::build(end.elapsed.as_secs_f64(), events, end.notes, &mut tracker, &mut ctx);
        print_report(&report, args.format)
    })
}

/// `--pid`/`--comm`/`--cgroup`, resolved on this host.
pub fn owner_filter(filters: &crate::pipeline::filter::FilterArgs) -> Result<OwnerFilter> {
    let cgroup_root =
        std::fs::read_to_string("/proc/mounts").ok().and_then(|m| crate::host::cgroup::cgroup2_mount(&m));
    Ok(OwnerFilter::new(filters, cgroup_root.as_deref()).map_err(EnvError::new)?)
}

/// Forwards aya-log records of the kernel programs to the `log` crate.
fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> Result<()> {
    // SAFETY: the logger owns its ring buffer fd for as long as it lives.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("registering the kernel log buffer: {e}"))?;
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

pub fn print_report(report: &Report, format: Format) -> Result<()> {
    let text = match format {
        Format::Json => report.to_json_line() + "\n",
        Format::Text => report::text::render(report),
    };
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}
