//! `tcptrace run`: load, attach, trace until told to stop, detach, report.

use std::{
    io::{self, Write},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

use crate::{
    cgroup::CgroupNames,
    cli::{Format, RunArgs},
    clock::Clock,
    collect::{self, Collector, Message, UserCounters},
    error::EnvError,
    filter::OwnerFilter,
    kernel::{Feature, ProbeOptions, Probes},
    netns::NetnsRegistry,
    pipeline::Consumer,
    report::{self, EventCounts, Report, ReportContext},
    snapshot,
    track::{Limits, Tracker},
};

pub fn run(args: RunArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

/// Why tracing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Duration,
    Interrupt,
    Terminate,
    OutputClosed,
}

async fn run_async(args: RunArgs) -> Result<()> {
    let cgroup_root =
        std::fs::read_to_string("/proc/mounts").ok().and_then(|m| crate::cgroup::cgroup2_mount(&m));
    let owner_filter = OwnerFilter::new(&args.filters, cgroup_root.as_deref()).map_err(EnvError::new)?;
    let ring_bytes = args.tuning.ring_buffer_size;
    let wakeup_bytes = match args.tuning.wakeup_fraction {
        0 => 0,
        n => u64::from(ring_bytes / n.max(1)),
    };
    let (mut probes, maps) = Probes::load(&ProbeOptions { ring_buffer_bytes: ring_bytes, wakeup_bytes })?;
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
    let (tx, rx) = mpsc::channel(collect::CHANNEL_BATCHES);
    let (stop_tx, stop_rx) = watch::channel(false);
    let listing_tx = tx.clone();
    let collector = Collector::new(maps.events, tx, counters.clone(), args.tuning.drain_interval)?;
    let collector = tokio::spawn(collector.run(stop_rx));
    let (closed_tx, closed_rx) = oneshot::channel();
    let clock = Clock::now();
    let format = args.format;
    let show_events = args.events;
    let all_events = args.tuning.all_events;
    let timers = probes.selected_feature(Feature::Timers);
    let mut tracker = Tracker::new(Limits::default(), timers);
    tracker.owner_filter = owner_filter;
    let consumer = Consumer {
        tracker,
        filters: args.filters.clone(),
        format,
        show_events,
        all_events,
        clock,
        output_closed: Some(closed_tx),
    };
    let consumer = std::thread::Builder::new()
        .name("tcptrace-track".into())
        .spawn(move || consumer.run(rx))
        .context("starting the tracker thread")?;

    // Signals are caught from here on: Ctrl-C always ends with a report.
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    if let Err(err) = probes.attach() {
        let _ = stop_tx.send(true);
        return Err(err);
    }
    let started = Instant::now();
    // TIME_WAIT sockets that already exist (listed after attaching, so that
    // none falls between the listing and the first event; duplicates are
    // recognised by cookie).
    let listing_registry = registry.paths_snapshot();
    tokio::task::spawn_blocking(move || {
        let listed = snapshot::time_wait_everywhere(&listing_registry);
        let _ = listing_tx.blocking_send(Message::ListedTimeWait(listed));
    });
    eprintln!(
        "tcptrace: tracing ({} programs attached{}); {}",
        probes.attached.len(),
        if probes.notes.is_empty() { String::new() } else { format!(", {} notes", probes.notes.len()) },
        match args.duration {
            Some(d) => format!("stopping after {}", humantime::format_duration(d)),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let sleep = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let stop = tokio::select! {
        _ = sleep => Stop::Duration,
        _ = sigint.recv() => Stop::Interrupt,
        _ = sigterm.recv() => Stop::Terminate,
        _ = closed_rx => Stop::OutputClosed,
    };
    log::debug!("stopping: {stop:?}");

    // Detach first so that the final drain sees every event ever produced.
    probes.detach();
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    collector.await.context("collector task")??;
    let tracker = consumer.join().map_err(|_| anyhow!("tracker thread panicked"))?;
    let kernel = collect::read_kernel_counters(&maps.stats)?;
    if stop == Stop::OutputClosed {
        return Ok(());
    }
    let events = EventCounts::new(&kernel, &counters);
    let mut ctx = ReportContext { cgroups: CgroupNames::discover(), netns: registry };
    let mut tracker = tracker;
    let report = Report::build(elapsed.as_secs_f64(), events, probes.notes.clone(), &mut tracker, &mut ctx);
    print_report(&report, format)
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

fn print_report(report: &Report, format: Format) -> Result<()> {
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
