//! `tcptrace record -o FILE` and `tcptrace report FILE`.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufReader, BufWriter},
    path::Path,
};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;
use tracer_common::flags;

use crate::{
    cli::{RecordArgs, ReportArgs, Thresholds},
    commands::run::{self, Sink},
    error::EnvError,
    host::cgroup::CgroupNames,
    host::clock::Clock,
    host::netns::{NetnsFacts, NetnsRegistry},
    pipeline::Message,
    pipeline::collect::{KernelCounters, UserCounters},
    pipeline::decode,
    pipeline::filter::{FilterArgs, OwnerFilter},
    pipeline::{Consumer, StreamOptions},
    record_file::{self, Block, Footer, Reader, Writer, header_for_this_host},
    report::{EventCounts, Report, ReportContext},
    track::{Limits, Tracker},
    workload::resolve::Workloads,
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
                Message::Listed(listed) => {
                    let listed: Vec<_> = listed
                        .into_iter()
                        .filter(|s| self.filters.matches_socket(s.netns, &s.tuple))
                        .collect();
                    self.writer.listed(&listed).context("writing the recording")?;
                    if let Some(live) = self.live.as_mut() {
                        live.listed(listed);
                    }
                }
                Message::Events(_) | Message::Pending(_) | Message::Tick { .. } => {}
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
        let thresholds = args.thresholds;
        let mut header_notes = Vec::new();
        let mut baseline = HashMap::new();
        let (written, mut end) = run::session(
            &args.tuning,
            true,
            &args.filters,
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
                    let mut tracker = Tracker::new(Limits::from_env(), start.timers_available);
                    thresholds.apply(&mut tracker);
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
        let skipped = match end.kernel.recursion_misses() {
            0 => String::new(),
            n => format!(", {n} runs skipped by the kernel (recursion)"),
        };
        let footer = Footer {
            ended_ns: end.ended_ns,
            duration_s: end.elapsed.as_secs_f64(),
            kernel: end.kernel.into(),
            received: end.user.received(),
            decoded: Some(end.user.decoded()),
            decode_errors: end.user.decode_errors(),
            netns: facts_now(&mut end.registry, inodes),
            cgroups: cgroup_ids.into_iter().filter_map(|id| Some((id, cgroups.path(id)?))).collect(),
        };
        writer.finish(&footer).context("writing the recording")?;
        eprintln!(
            "tcptrace: recorded {events} events in {:.1} s to {} ({} lost in the kernel{skipped})",
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
    thresholds: Thresholds,
    stream: Option<(crate::output::Format, bool)>,
) -> Result<Report> {
    // First pass: the footer (needed for cgroup filters and the report).
    let mut reader = open(path)?;
    reader.skip_to_footer()?;
    let footer = reader.footer.clone().ok_or_else(|| EnvError::new("recording has no footer"))?;
    let header = reader.header.clone();
    crate::drop_reason::set(header.drop_reasons.clone());

    let mut owner_filter = OwnerFilter::recorded(filters, &footer.cgroups).map_err(EnvError::new)?;
    let mut tracker = Tracker::new(Limits::from_env(), header.timers_available);
    std::mem::swap(&mut tracker.owner_filter, &mut owner_filter);
    thresholds.apply(&mut tracker);
    let clock = Clock::with_offset_ns(i128::from(header.realtime_minus_monotonic_ns));
    let (format, show_events) = stream.unwrap_or((crate::output::Format::Text, false));
    let stream = StreamOptions { format, show_events, all_events: false, clock };
    let mut consumer = Consumer::new(tracker, filters.clone(), stream, header.started_ns);

    let mut reader = open(path)?;
    while let Some(block) = reader.next_block()? {
        match block {
            Block::Events(raws) => {
                // Every record was validated when it was recorded (the reader
                // checks only lengths): one that does not decode now means a
                // damaged file, and dropping it would undercount unannounced.
                let events = raws
                    .iter()
                    .map(decode::decode_raw)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| record_file::corrupt(format!("recorded event: {e}")))?;
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
    // Ages (stuck sockets) are as of the end of the recording.
    tracker.tick(footer.ended_ns);
    let kernel: KernelCounters = footer.kernel.clone().into();
    let user = UserCounters::default();
    user.received.store(footer.received, std::sync::atomic::Ordering::Relaxed);
    // Recordings made before `decoded` was stored: what those versions reported.
    let decoded = footer.decoded.unwrap_or(footer.received.saturating_sub(footer.decode_errors));
    user.decoded.store(decoded, std::sync::atomic::Ordering::Relaxed);
    user.decode_errors.store(footer.decode_errors, std::sync::atomic::Ordering::Relaxed);
    let events = EventCounts::new(&kernel, &user);
    let mut notes = notes.to_vec();
    if footer.kernel.recursion.is_none() {
        notes.push(
            "this recording was made before tcptrace counted the runs the kernel skipped \
             (recursion_misses): events lost that way, if any, are not counted"
                .to_string(),
        );
    }
    let mut ctx = ReportContext {
        workloads: Workloads::new(CgroupNames::recorded(footer.cgroups.clone()), None),
        netns: NetnsRegistry::recorded(baseline.clone(), footer.netns.clone()),
    };
    Report::build(footer.duration_s, events, notes, tracker, &mut ctx)
}

pub fn report(args: ReportArgs) -> Result<()> {
    let report = replay(&args.file, &args.filters, args.thresholds, Some((args.format, args.events)))?;
    run::print_report(&report, args.format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_file::RecordedCounters;

    fn footer(decoded: Option<u64>) -> Footer {
        Footer {
            ended_ns: 10,
            duration_s: 1.0,
            kernel: RecordedCounters { seen: 12, submitted: 10, lost: 2, read_errors: 0, recursion: None },
            received: 10,
            decoded,
            decode_errors: 1,
            netns: HashMap::new(),
            cgroups: HashMap::new(),
        }
    }

    fn counts(footer: &Footer) -> (u64, u64, u64, u64) {
        let mut tracker = Tracker::new(Limits::default(), true);
        let e = report_from(&mut tracker, &[], footer, &HashMap::new()).events;
        (e.seen, e.received, e.decoded, e.decode_errors)
    }

    #[test]
    fn a_recorded_event_that_does_not_decode_fails_the_replay() {
        let path =
            std::env::temp_dir().join(format!("tcptrace-unit-{}-garbled.tcptrace", std::process::id()));
        let header = header_for_this_host(0, 0, true, vec![], vec![], HashMap::new());
        let mut writer = Writer::new(File::create(&path).expect("create"), &header).expect("header");
        let mut raw = tracer_common::RawEvent::ZERO;
        raw.kind = tracer_common::kind::STATE;
        raw.family = tracer_common::AF_INET;
        raw.old_state = 7;
        raw.new_state = 2;
        writer.event(&raw).expect("event");
        raw.kind = 200;
        writer.event(&raw).expect("event");
        writer.finish(&footer(Some(2))).expect("footer");
        let result = replay(&path, &FilterArgs::default(), Thresholds::default(), None);
        let _ = std::fs::remove_file(&path);
        let err = format!("{:#}", result.expect_err("a garbled event must fail the replay"));
        assert!(
            err.contains("not a valid tcptrace recording: recorded event: unknown event kind 200"),
            "{err}"
        );
    }

    #[test]
    fn a_replay_reports_the_recorded_counts_as_they_were_counted() {
        assert_eq!(counts(&footer(Some(9))), (12, 10, 9, 1));
        // Not derived: a file whose counts disagree shows it (and the
        // integration tests' `received == decoded + decode_errors` would fail).
        assert_eq!(counts(&footer(Some(7))), (12, 10, 7, 1));
        // Recordings from before `decoded` was stored.
        assert_eq!(counts(&footer(None)), (12, 10, 9, 1));
    }
}
