//! The tracker thread: every event, in ring-buffer order, through the filters
//! into the tracker; the `--events` stream printed as it goes.

use std::io::{self, BufWriter, Stdout};

use tokio::sync::{mpsc, oneshot};

use crate::{
    cli::Format,
    clock::{self, Clock},
    collect::Message,
    filter::FilterArgs,
    output::events::{EventPrinter, Line},
    track::Tracker,
};

pub struct Consumer {
    pub tracker: Tracker,
    pub filters: FilterArgs,
    pub format: Format,
    /// `--events`: print the stream.
    pub show_events: bool,
    /// Hidden `--all-events`: include internal events (timers, owners).
    pub all_events: bool,
    pub clock: Clock,
    /// Signalled when stdout goes away (e.g. `| head`): tracing stops.
    pub output_closed: Option<oneshot::Sender<()>>,
}

impl Consumer {
    /// Runs until the channel closes (after the collector's final drain) and
    /// returns the tracker with every record accounted for.
    pub fn run(mut self, mut rx: mpsc::Receiver<Message>) -> Tracker {
        let mut printer = self
            .show_events
            .then(|| EventPrinter::new(BufWriter::new(io::stdout()), self.format, self.clock));
        self.tracker.start(clock::monotonic_ns());
        self.tracker.timewait.emit_lifecycle = self.show_events;
        self.tracker.synrecv.emit_lifecycle = self.show_events;
        while let Some(message) = rx.blocking_recv() {
            match message {
                Message::Events(batch) => self.apply(&batch, &mut printer),
                Message::ListedTimeWait(listed) => {
                    let filters = &self.filters;
                    self.tracker.timewait.add_preexisting(
                        listed
                            .into_iter()
                            .filter(|s| filters.matches_socket(s.netns, &s.tuple))
                            .map(|s| (s.netns, s.tuple, s.cookie)),
                    );
                }
            }
            if let Some(p) = printer.as_mut()
                && p.flush().is_err()
            {
                printer = None;
            }
            if printer.is_none()
                && self.show_events
                && let Some(tx) = self.output_closed.take()
            {
                let _ = tx.send(());
            }
        }
        self.tracker.finish();
        if let Some(p) = printer.as_mut() {
            for lifecycle in self.tracker.drain_lifecycle() {
                let _ = p.print(&Line::Lifecycle(lifecycle));
            }
            let _ = p.flush();
        }
        self.tracker
    }

    fn apply(
        &mut self,
        batch: &[crate::event::Event],
        printer: &mut Option<EventPrinter<BufWriter<Stdout>>>,
    ) {
        for event in batch.iter().filter(|e| self.filters.matches(e)) {
            let owner = self.tracker.handle(event);
            let Some(p) = printer.as_mut() else { continue };
            let mut ok = true;
            let wanted = self.tracker.owner_filter.matches(owner.as_ref());
            if wanted && (self.all_events || EventPrinter::<BufWriter<Stdout>>::shows(event)) {
                ok &= p.print(&Line::Event { event, owner: owner.as_ref() }).is_ok();
            }
            for lifecycle in self.tracker.drain_lifecycle() {
                ok &= p.print(&Line::Lifecycle(lifecycle)).is_ok();
            }
            if !ok {
                *printer = None;
            }
        }
    }
}
