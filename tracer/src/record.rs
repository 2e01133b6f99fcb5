//! `tcptrace record -o FILE` and `tcptrace report FILE`.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufReader, BufWriter},
    path::Path,
};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;
use tracer_ebpf::flags;

use crate::{
    cgroup::CgroupNames,
    cli::{RecordArgs, ReportArgs},
    clock::Clock,
    collect::{KernelCounters, Message, UserCounters},
    decode,
    error::EnvError,
    filter::{FilterArgs, OwnerFilter},
    netns::{NetnsFacts, NetnsRegistry},
    pipeline::{Consumer, StreamOptions},
    recording::{Block, Footer, Reader, Writer, header_for_this_host},
    report::{EventCounts, Report, ReportContext},
    run::{self, Sink},
    track::{Limits, Tracker},
};

/// Most distinct cgroup ids remembered for the footer.
const MAX_CGROUPS: usize = 100_000;

/// The recording sink: filters by socket, writes raw records; with
/// `--report`, also feeds the live tracker with exactly what it writes.
struct RecordSink {
    writer: Writer<BufWriter<File>>,
    filters: FilterArgs,
    cgroups: HashSet<u64>,
    live: Option<Consumer>,
}

struct Recorded {
    writer: Writer<BufWriter<File>>,
    cgroups: HashSet<u64>,
    tracker: Option<Tracker>,
}

impl Sink for RecordSink {
    type Output = Result<Recorded>;
    const RAW: bool = true;

    fn consume(mut self, mut rx: mpsc::Receiver<Message>) -> Self::Output {
        while let Some(message) = rx.blocking_recv() {
            match message {
                Message::Raw(pairs) => {
                    let mut kept = Vec::with_capacity(pairs.len());
                    for (raw, event) in pairs {
                        if !self.filters.matches(&event) {
                            continue;
                        }
                        if raw.flags & flags::OWNED_BY_USER != 0 && self.cgroups.len() < MAX_CGROUPS {
                            self.cgroups.insert(raw.cgroup_id);
                        }
                        self.writer.event(&raw).context("writing the recording")?;
                        kept.push(event);
                    }
                    if let Some(live) = self.live.as_mut() {
                        live.handle_events(&kept);
                    }
                }
                Message::ListedTimeWait(listed) => {
                    let listed: Vec<_> = listed
                        .into_iter()
                        .filter(|s| self.filters.matches_socket(s.netns, &s.tuple))
                        .collect();
                    self.writer.listed(&listed).context("writing the recording")?;
                    if let Some(live) = self.live.as_mut() {
                        live.listed(listed);
                    }
                }
                Message::Events(_) | Message::Tick { .. } => {}
            }
        }
        Ok(Recorded { writer: self.writer, cgroups: self.cgroups, tracker: self.live.map(Consumer::finish) })
    }
}

/// Current facts of every namespace the registry knows (for the footer).
fn facts_now(
    registry: &mut NetnsRegistry,
    inodes: impl IntoIterator<Item = u32>,
) -> HashMap<u32, NetnsFacts> {
    inodes.into_iter().filter_map(|ns| Some((ns, registry.current(ns)?))).collect()
}

pub fn record(args: RecordArgs) -> Result<()> {
    if !(args.filters.pids.is_empty() && args.filters.comms.is_empty() && args.filters.cgroups.is_empty()) {
        return Err(EnvError::new(
            "--pid, --comm and --cgroup need the tracker's attribution: give them to `tcptrace report`",
        )
        .into());
    }
    let file = File::create(&args.output)
        .map_err(|e| EnvError::new(format!("cannot create {}: {e}", args.output.display())))?;
    let filters_text = std::env::args().skip(2).collect::<Vec<_>>();
    let report_format = args.report.then_some(args.format);
    run::block_on(async move {
        let filters = args.filters.clone();
        let mut header_notes = Vec::new();
        let mut baseline = HashMap::new();
        let (written, mut end) = run::session(
            &args.tuning,
            args.duration,
            None,
            |start, _closed| {
                let header = header_for_this_host(
                    start.started_ns,
                    start.clock.offset_ns(),
                    start.timers_available,
                    filters_text,
                    start.notes.clone(),
                    start.registry.baseline.clone(),
                );
                header_notes = header.notes.clone();
                baseline = header.netns.clone();
                let writer = Writer::new(BufWriter::new(file), &header).context("writing the recording")?;
                let live = report_format.map(|format| {
                    let stream =
                        StreamOptions { format, show_events: false, all_events: false, clock: start.clock };
                    let tracker = Tracker::new(Limits::default(), start.timers_available);
                    Consumer::new(tracker, filters.clone(), stream, start.started_ns)
                });
                Ok(RecordSink { writer, filters, cgroups: HashSet::new(), live })
            },
            || Ok(()),
        )
        .await?;
        let Recorded { writer, cgroups: cgroup_ids, tracker } = written?;
        let events = writer.events_written;
        let inodes: Vec<u32> = end.registry.baseline.keys().copied().collect();
        let mut cgroups = CgroupNames::discover();
        let footer = Footer {
            ended_ns: end.ended_ns,
            duration_s: end.elapsed.as_secs_f64(),
            kernel: end.kernel.into(),
            received: end.user.received(),
            decode_errors: end.user.decode_errors(),
            netns: facts_now(&mut end.registry, inodes),
            cgroups: cgroup_ids.into_iter().filter_map(|id| Some((id, cgroups.path(id)?))).collect(),
        };
        writer.finish(&footer).context("writing the recording")?;
        eprintln!(
            "tcptrace: recorded {events} events in {:.1} s to {} ({} lost in the kernel)",
            footer.duration_s,
            args.output.display(),
            footer.kernel.lost
        );
        if let (Some(mut tracker), Some(format)) = (tracker, report_format) {
            // The live report of exactly the recorded stream, built from the
            // same facts the footer holds: `tcptrace report FILE` must print
            // the same thing.
            let report = report_from(&mut tracker, &header_notes, &footer, &baseline);
            run::print_report(&report, format)?;
        }
        Ok(())
    })
}

fn open(path: &Path) -> Result<Reader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| EnvError::new(format!("cannot open {}: {e}", path.display())))?;
    Reader::new(BufReader::new(file))
}

/// Replays a recording into a fresh tracker; returns the report.
pub fn replay(
    path: &Path,
    filters: &FilterArgs,
    stream: Option<(crate::cli::Format, bool)>,
) -> Result<Report> {
    // First pass: the footer (needed for cgroup filters and the report).
    let mut reader = open(path)?;
    reader.skip_to_footer()?;
    let footer = reader.footer.clone().ok_or_else(|| EnvError::new("recording has no footer"))?;
    let header = reader.header.clone();

    let mut owner_filter = OwnerFilter::recorded(filters, &footer.cgroups).map_err(EnvError::new)?;
    let mut tracker = Tracker::new(Limits::default(), header.timers_available);
    std::mem::swap(&mut tracker.owner_filter, &mut owner_filter);
    let clock = Clock::with_offset_ns(i128::from(header.realtime_minus_monotonic_ns));
    let (format, show_events) = stream.unwrap_or((crate::cli::Format::Text, false));
    let stream = StreamOptions { format, show_events, all_events: false, clock };
    let mut consumer = Consumer::new(tracker, filters.clone(), stream, header.started_ns);

    let mut reader = open(path)?;
    while let Some(block) = reader.next_block()? {
        match block {
            Block::Events(raws) => {
                // Validated when the file was read (and when it was recorded).
                let events: Vec<_> = raws.iter().filter_map(|r| decode::decode_raw(r).ok()).collect();
                consumer.handle_events(&events);
            }
            Block::Listed(listed) => consumer.listed(listed),
        }
    }
    let mut tracker = consumer.finish();
    Ok(report_from(&mut tracker, &header.notes, &footer, &header.netns))
}

/// The report of a recorded session: every host fact from the recording.
fn report_from(
    tracker: &mut Tracker,
    notes: &[String],
    footer: &Footer,
    baseline: &HashMap<u32, NetnsFacts>,
) -> Report {
    let kernel: KernelCounters = footer.kernel.into();
    let user = UserCounters::default();
    user.received.store(footer.received, std::sync::atomic::Ordering::Relaxed);
    user.decode_errors.store(footer.decode_errors, std::sync::atomic::Ordering::Relaxed);
    let events = EventCounts::new(&kernel, &user);
    let mut ctx = ReportContext {
        cgroups: CgroupNames::recorded(footer.cgroups.clone()),
        netns: NetnsRegistry::recorded(baseline.clone(), footer.netns.clone()),
    };
    Report::build(footer.duration_s, events, notes.to_vec(), tracker, &mut ctx)
}

pub fn report(args: ReportArgs) -> Result<()> {
    let report = replay(&args.file, &args.filters, Some((args.format, args.events)))?;
    run::print_report(&report, args.format)
}
