//! The tracker thread: every event, in ring-buffer order, through the filters
//! into the tracker; the `--events` stream printed as it goes. The same
//! consumer replays recordings (`tcptrace report FILE`).

pub mod collect;
pub mod decode;
pub mod filter;
pub mod summary;

use std::io::{self, BufWriter, Stdout};

use tokio::sync::{mpsc, oneshot};

use crate::{
    event::{Event, TcpState},
    host::clock::Clock,
    host::snapshot::ListedSocket,
    metrics::{SharedSnapshot, build::MetricsBuilder},
    output::hdrlog::HdrLog,
    output::live::{LiveMode, LiveView},
    output::{
        Format,
        events::{EventPrinter, Line},
    },
    pipeline::collect::KernelCounters,
    pipeline::filter::FilterArgs,
    track::Tracker,
    workload::resolve::Workloads,
};

/// What flows from the collector side to the tracker thread, in order.
#[derive(Debug)]
pub enum Message {
    /// Kernel events, in ring-buffer order.
    Events(Vec<Event>),
    /// The same, each also as the kernel wrote it (recording mode): decoded
    /// once here, written by the recorder, applied by the tracker.
    Raw(Vec<(tracer_common::RawEvent, Event)>),
    /// TIME_WAIT sockets and sockets in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK
    /// listed at start (sock_diag, owners from /proc), sent once.
    Listed(Vec<ListedSocket>),
    /// Summary mode, before a tick: the kernel's pending entries as read
    /// then (`Tracker::set_pending`).
    Pending(Vec<tracer_common::RawSummary>),
    /// Every `--interval`: time goes on (grace periods end, the live view
    /// refreshes) even when no event arrives.
    Tick { now_ns: u64, kernel: KernelCounters },
}

pub struct Consumer {
    tracker: Tracker,
    live: Option<LiveView>,
    hdr_log: Option<HdrLog>,
    metrics: Option<(MetricsBuilder, SharedSnapshot)>,
    filters: FilterArgs,
    /// `--events`: print the stream.
    show_events: bool,
    /// Hidden `--all-events`: include internal events (timers, owners).
    all_events: bool,
    printer: Option<EventPrinter<BufWriter<Stdout>>>,
    /// Signalled when stdout goes away (e.g. `| head`): tracing stops.
    output_closed: Option<oneshot::Sender<()>>,
    /// Summary mode: TIME_WAIT births put back before their socket's CLOSE.
    time_wait_order: Option<summary::TimeWaitOrder>,
}

/// How the stream is shown.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    pub format: Format,
    pub show_events: bool,
    pub all_events: bool,
    pub clock: Clock,
}

impl Consumer {
    /// `started_ns`: CLOCK_MONOTONIC at the start of tracing (rates count from there).
    pub fn new(mut tracker: Tracker, filters: FilterArgs, stream: StreamOptions, started_ns: u64) -> Self {
        tracker.start(started_ns);
        tracker.timewait.emit_lifecycle = stream.show_events;
        tracker.synrecv.emit_lifecycle = stream.show_events;
        tracker.emit_lifecycle = stream.show_events;
        let printer = stream.show_events.then(|| {
            EventPrinter::new(BufWriter::new(io::stdout()), stream.format, stream.clock)
                .with_workloads(Workloads::discover(&filters.kubelet_logs))
        });
        Self {
            tracker,
            live: None,
            hdr_log: None,
            metrics: None,
            filters,
            show_events: stream.show_events,
            all_events: stream.all_events,
            printer,
            output_closed: None,
            time_wait_order: None,
        }
    }

    /// Summary mode: events arrive as the kernel's summaries give them
    /// (see [`summary::TimeWaitOrder`]).
    pub fn with_summaries(mut self, on: bool) -> Self {
        self.time_wait_order = on.then(summary::TimeWaitOrder::new);
        self
    }

    pub fn notify_when_output_closes(&mut self, tx: oneshot::Sender<()>) {
        self.output_closed = Some(tx);
    }

    /// Shows a summary at every tick.
    pub fn with_live_view(mut self, view: LiveView) -> Self {
        self.live = (view.mode() != LiveMode::Off).then_some(view);
        self
    }

    /// Writes the histograms at every tick (`--hdr-log`).
    pub fn with_hdr_log(mut self, log: HdrLog) -> Self {
        self.hdr_log = Some(log);
        self
    }

    /// Rebuilds the Prometheus snapshot at every tick (`tcptrace serve`).
    pub fn with_metrics(mut self, builder: MetricsBuilder, shared: SharedSnapshot) -> Self {
        self.metrics = Some((builder, shared));
        self
    }

    fn tick(&mut self, now_ns: u64, kernel: KernelCounters) {
        if let Some(order) = self.time_wait_order.as_mut() {
            let mut released = Vec::new();
            order.release_older(now_ns.saturating_sub(summary::BIRTH_WAIT_NS), &mut released);
            self.apply_ordered(&released);
        }
        self.tracker.tick(now_ns);
        if let Some((builder, shared)) = self.metrics.as_mut() {
            shared.replace(builder.snapshot(&self.tracker, &kernel));
        }
        if let Some(log) = self.hdr_log.as_mut()
            && let Err(e) = log.interval(&self.tracker, now_ns)
        {
            log::warn!("--hdr-log: {e}; stopped writing it");
            self.hdr_log = None;
        }
        if let Some(view) = self.live.as_mut() {
            let interval = view.summarize(&mut self.tracker, &kernel, now_ns);
            if view.show(&interval, &mut io::stdout().lock()).is_err() {
                self.live = None;
                if let Some(tx) = self.output_closed.take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Runs until the channel closes (after the collector's final drain) and
    /// returns the tracker with every record accounted for.
    pub fn run(mut self, mut rx: mpsc::Receiver<Message>) -> Tracker {
        while let Some(message) = rx.blocking_recv() {
            self.handle(message);
        }
        self.finish()
    }

    pub fn handle(&mut self, message: Message) {
        match message {
            Message::Events(batch) => self.apply(&batch),
            Message::Raw(pairs) => {
                let events: Vec<Event> = pairs.into_iter().map(|(_, event)| event).collect();
                self.apply(&events);
            }
            Message::Listed(listed) => self.listed(listed),
            Message::Pending(entries) => {
                self.tracker.set_pending(entries.iter().filter_map(summary::pending_socket));
            }
            Message::Tick { now_ns, kernel } => self.tick(now_ns, kernel),
        }
        self.after_message();
    }

    /// A batch of decoded events, as `handle` takes a message of them (the
    /// recorder and replay, which hold the events already).
    pub fn handle_events(&mut self, events: &[Event]) {
        self.apply(events);
        self.after_message();
    }

    /// Flushes the event stream; notices when its reader has gone.
    fn after_message(&mut self) {
        if let Some(p) = self.printer.as_mut()
            && p.flush().is_err()
        {
            self.printer = None;
        }
        if self.printer.is_none()
            && self.show_events
            && let Some(tx) = self.output_closed.take()
        {
            let _ = tx.send(());
        }
    }

    pub fn listed(&mut self, listed: Vec<ListedSocket>) {
        let filters = &self.filters;
        let (time_wait, others): (Vec<ListedSocket>, Vec<ListedSocket>) = listed
            .into_iter()
            .filter(|s| filters.matches_socket(s.netns, &s.tuple))
            .partition(|s| s.state == TcpState::TimeWait.to_u8());
        self.tracker.timewait.add_preexisting(time_wait.into_iter().map(|s| (s.netns, s.tuple, s.cookie)));
        for s in others {
            if let Some(state) = TcpState::from_u8(s.state) {
                self.tracker.adopt_existing(s.netns, s.tuple, s.cookie, state, s.owner);
            }
        }
    }

    /// Counts every record still open and prints the last lifecycle lines.
    pub fn finish(mut self) -> Tracker {
        if let Some(order) = self.time_wait_order.as_mut() {
            let mut released = Vec::new();
            order.release_all(&mut released);
            self.apply_ordered(&released);
        }
        self.tracker.finish();
        if let Some(log) = self.hdr_log.as_mut() {
            let now = self.tracker.now_ns.max(crate::host::clock::monotonic_ns());
            if let Err(e) = log.interval(&self.tracker, now) {
                log::warn!("--hdr-log: {e}");
            }
        }
        if let Some(p) = self.printer.as_mut() {
            for lifecycle in self.tracker.drain_lifecycle() {
                let _ = p.print(&Line::Lifecycle(lifecycle));
            }
            let _ = p.flush();
        }
        self.tracker
    }

    pub fn apply(&mut self, batch: &[Event]) {
        let Some(order) = self.time_wait_order.as_mut() else { return self.apply_ordered(batch) };
        let mut ordered = Vec::with_capacity(batch.len());
        for event in batch {
            order.push(event, &mut ordered);
        }
        self.apply_ordered(&ordered);
    }

    fn apply_ordered(&mut self, batch: &[Event]) {
        for event in batch.iter().filter(|e| self.filters.matches(e)) {
            let owner = self.tracker.handle(event);
            let Some(p) = self.printer.as_mut() else { continue };
            let mut ok = true;
            let wanted = self.tracker.owner_filter.matches(owner.as_ref());
            if wanted && (self.all_events || EventPrinter::<BufWriter<Stdout>>::shows(event)) {
                let stall = self.tracker.last_stall;
                ok &= p.print(&Line::Event { event, owner: owner.as_ref(), stall }).is_ok();
            }
            for lifecycle in self.tracker.drain_lifecycle() {
                ok &= p.print(&Line::Lifecycle(lifecycle)).is_ok();
            }
            if !ok {
                self.printer = None;
            }
        }
    }
}
