//! Ring buffer -> bounded channel. Runs on the tokio runtime; the connection
//! tracker runs on its own thread at the other end of the channel.
//!
//! The kernel side wakes us only when the ring buffer fills past a threshold
//! (`BPF_RB_NO_WAKEUP` otherwise: wakeups dominate the cost of tracing), so we
//! also drain on a short timer. When the tracker falls behind, the channel is
//! full, `send` waits, the ring buffer fills and the kernel counts what it
//! cannot store: loss is always counted, never silent.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use serde::{Deserialize, Serialize};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tracer_common::stat;

use crate::{kernel::LoadedProgram, pipeline::Message, pipeline::decode};

/// Events per batch sent to the tracker: amortises channel synchronisation.
pub const BATCH: usize = 1024;
/// Batches in flight: bounds userspace memory between collector and tracker.
pub const CHANNEL_BATCHES: usize = 64;

/// Counters kept by userspace (the kernel keeps its own, see [`KernelCounters`]).
/// Each is counted on its own (`read_batch`), so that `received == decoded +
/// decode_errors` is something the tests check, not a definition.
#[derive(Debug, Default)]
pub struct UserCounters {
    /// Records read from the ring buffer.
    pub received: AtomicU64,
    /// Records that passed validation and went on to the tracker.
    pub decoded: AtomicU64,
    /// Records that failed validation (counted, not passed on).
    pub decode_errors: AtomicU64,
    /// The most records one drain found waiting since this was last taken
    /// ([`Self::take_drain_peak`]): how full the ring buffer got.
    pub drain_peak: AtomicU64,
    /// The ring buffer's size in bytes (0: unknown).
    pub ring_bytes: AtomicU64,
}

impl UserCounters {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// The most records a drain found since the last call, and resets it.
    pub fn take_drain_peak(&self) -> u64 {
        self.drain_peak.swap(0, Ordering::Relaxed)
    }
}

/// Sums over CPUs of the kernel programs' `STATS` map, and the runs of each
/// program that the kernel skipped (its `recursion_misses`).
///
/// A skipped run never reaches the program, so it is in none of `seen`,
/// `submitted` or `lost`: `seen == received + lost` keeps its meaning, and
/// recursion misses are lost events of their own.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelCounters {
    pub seen: u64,
    pub submitted: u64,
    pub lost: u64,
    pub read_errors: u64,
    /// Summary mode: sockets whose transitions went one event each because
    /// the kernel's table of pending sockets was full (`stat::PENDING_FULL`).
    pub summary_fallbacks: u64,
    /// One entry per loaded program, in load order.
    pub recursion: Vec<ProgramMisses>,
}

/// Runs of one program that the kernel skipped because the same program was
/// already running on that CPU (an interrupt or softirq in the middle of it
/// hitting the same hook): `bpf_prog_info.recursion_misses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramMisses {
    /// tcptrace's name of the program (`kernel::PROGRAMS`; the kernel keeps
    /// only its first 15 bytes).
    pub program: String,
    /// `None`: unknown (the kernel does not report it, before Linux 5.12, or
    /// reading it failed).
    pub misses: Option<u64>,
    /// Runs and their total time, counted while `kernel.bpf_stats_enabled`
    /// is 1 (0 otherwise, and in older recordings).
    #[serde(default)]
    pub run_cnt: u64,
    #[serde(default)]
    pub run_time_ns: u64,
}

impl KernelCounters {
    /// Skipped runs of all programs whose count is known.
    pub fn recursion_misses(&self) -> u64 {
        self.recursion.iter().filter_map(|p| p.misses).sum()
    }

    /// Programs whose skipped runs are unknown.
    pub fn recursion_unknown(&self) -> impl Iterator<Item = &str> {
        self.recursion.iter().filter(|p| p.misses.is_none()).map(|p| p.program.as_str())
    }
}

pub fn read_kernel_counters(
    stats: &PerCpuArray<MapData, u64>,
    programs: &[LoadedProgram],
) -> Result<KernelCounters> {
    let sum = |index: u32| -> Result<u64> {
        let values = stats.get(&index, 0).with_context(|| format!("reading STATS[{index}]"))?;
        Ok(values.iter().sum())
    };
    let (seen, lost) = (sum(stat::SEEN)?, sum(stat::LOST)?);
    let recursion = programs
        .iter()
        .map(|p| {
            let stats = p.stats().unwrap_or_else(|err| {
                log::debug!("reading the statistics of {}: {err}", p.name);
                Default::default()
            });
            ProgramMisses {
                program: p.name.to_string(),
                misses: stats.recursion_misses,
                run_cnt: stats.run_cnt,
                run_time_ns: stats.run_time_ns,
            }
        })
        .collect();
    // Every reserve either failed (LOST) or was submitted.
    Ok(KernelCounters {
        seen,
        submitted: seen.saturating_sub(lost),
        lost,
        read_errors: sum(stat::READ_ERRORS)?,
        summary_fallbacks: sum(stat::PENDING_FULL)?,
        recursion,
    })
}

/// Where [`KernelCounters`] are read from: the `STATS` map and a file
/// descriptor of every loaded program (see [`crate::kernel::Maps::programs`]).
pub struct KernelSources {
    pub stats: PerCpuArray<MapData, u64>,
    pub programs: Vec<LoadedProgram>,
}

impl KernelSources {
    pub fn read(&self) -> Result<KernelCounters> {
        read_kernel_counters(&self.stats, &self.programs)
    }

    /// Closes the programs' file descriptors: once detached, they unload.
    pub fn release_programs(&mut self) {
        self.programs.clear();
    }
}

pub struct Collector {
    ring: AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<Message>,
    /// Messages made outside the ring buffer (ticks, the start-up listing)
    /// that must follow every event produced before them: each is forwarded
    /// only after a drain that began once it had arrived. Sent straight to
    /// `tx`, a tick could overtake events still in the ring buffer and end a
    /// grace period early, and a listing could name sockets whose birth the
    /// tracker has not seen yet.
    ordered: Option<mpsc::Receiver<Message>>,
    counters: Arc<UserCounters>,
    drain_every: Duration,
    /// Forward raw records (for recording) instead of decoded events.
    raw: bool,
    /// Summary mode: the steps still pending in the kernel, sent after the
    /// final drain (every program has stopped then).
    pending: Option<PendingMap>,
}

type PendingMap = aya::maps::HashMap<MapData, u64, tracer_common::RawSummary>;

impl Collector {
    pub fn new(
        ring: RingBuf<MapData>,
        tx: mpsc::Sender<Message>,
        counters: Arc<UserCounters>,
        drain_every: Duration,
    ) -> Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as it lives, which is as long as the AsyncFd owns it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with epoll: {}", e))?;
        Ok(Self { ring, tx, ordered: None, counters, drain_every, raw: false, pending: None })
    }

    /// Forwards what arrives on `ordered` after the ring buffer's events
    /// that precede it (see the field).
    pub fn with_ordered(mut self, ordered: mpsc::Receiver<Message>) -> Self {
        self.ordered = Some(ordered);
        self
    }

    async fn next_ordered(ordered: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
        match ordered.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Summary mode: what is still pending at the end goes to the tracker too.
    pub fn with_pending(mut self, pending: Option<PendingMap>) -> Self {
        self.pending = pending;
        self
    }

    /// Forwards the kernel's records as they are (after validation).
    pub fn raw(mut self) -> Self {
        self.raw = true;
        self
    }

    /// Drains until `stop` turns true, then drains once more (the caller
    /// detaches the programs first, so that final drain empties the buffer
    /// for good) and returns. Dropping the sender ends the tracker's loop.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut tick = tokio::time::interval(self.drain_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        self.drain().await;
                        self.send_pending().await;
                        // A listing still on its way counts for the report.
                        if let Some(mut ordered) = self.ordered.take() {
                            while let Ok(message) = ordered.try_recv() {
                                let _ = self.tx.send(message).await;
                            }
                        }
                        return Ok(());
                    }
                }
                message = Self::next_ordered(&mut self.ordered) => {
                    match message {
                        Some(message) => {
                            self.drain().await;
                            if matches!(message, Message::Tick { .. })
                                && let Some(entries) = self.read_pending()
                                && self.tx.send(Message::Pending(entries)).await.is_err()
                            {
                                return Ok(());
                            }
                            if self.tx.send(message).await.is_err() {
                                return Ok(());
                            }
                        }
                        // Every sender gone: nothing more will come.
                        None => self.ordered = None,
                    }
                }
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.context("waiting on the ring buffer")?;
                    // Clear first: data arriving during the drain re-arms readiness.
                    guard.clear_ready();
                    drop(guard);
                    self.drain().await;
                }
                _ = tick.tick() => self.drain().await,
            }
        }
    }

    /// Summary mode, at a tick: every pending entry with a step (one map
    /// read per live socket: about a microsecond each).
    fn read_pending(&self) -> Option<Vec<tracer_common::RawSummary>> {
        let pending = self.pending.as_ref()?;
        Some(pending.iter().filter_map(|entry| entry.ok().map(|(_, s)| s)).filter(|s| s.count > 0).collect())
    }

    /// Summary mode, at the end: the steps of sockets that had not reached
    /// CLOSE (nor flushed since their last step), as their events, oldest
    /// first. Not counted as received records: the kernel never sent them.
    async fn send_pending(&mut self) {
        let Some(pending) = self.pending.take() else { return };
        let mut summaries: Vec<tracer_common::RawSummary> =
            pending.iter().filter_map(|entry| entry.ok().map(|(_, summary)| summary)).collect();
        summaries.sort_by_key(|s| s.steps.first().map_or(0, |step| step.ts_ns));
        let mut events = Vec::new();
        for summary in &summaries {
            if let Err(err) = super::summary::expand(summary, &mut events) {
                self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("dropping an undecodable pending summary: {err}");
            }
        }
        if !events.is_empty() {
            let _ = self.tx.send(Message::Events(events)).await;
        }
    }

    /// Reads everything currently in the ring buffer and forwards it in batches.
    async fn drain(&mut self) {
        let mut drained = 0;
        loop {
            let (ring, counters) = (self.ring.get_mut(), &*self.counters);
            let (message, n) = if self.raw {
                let batch = read_batch(ring, counters, |bytes, batch| {
                    let raw = decode::raw_from_bytes(bytes)?;
                    batch.push((raw, decode::decode_raw(&raw)?));
                    Ok(())
                });
                let n = batch.len();
                (Message::Raw(batch), n)
            } else {
                let batch = read_batch(ring, counters, decode::decode_into);
                let n = batch.len();
                (Message::Events(batch), n)
            };
            drained += n as u64;
            self.counters.drain_peak.fetch_max(drained, Ordering::Relaxed);
            if n == 0 {
                return;
            }
            if self.tx.send(message).await.is_err() {
                // Consumer gone (output closed): nothing left to do with events.
                return;
            }
            if n < BATCH {
                return;
            }
        }
    }
}

/// Where records come from: the ring buffer (or a list, in tests).
trait Records {
    /// Applies `f` to the next record; None when there is none now.
    fn next_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R>;
}

impl Records for RingBuf<MapData> {
    fn next_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        // The item is handed back to the ring buffer when dropped, after `f`.
        self.next().map(|item| f(&item))
    }
}

/// Up to [`BATCH`] records from `records`, each decoded by `decode` into
/// the batch (a summary record gives several events). Every record read
/// counts in `received` and, separately, in `decoded` when it goes into the
/// batch or in `decode_errors` when it is dropped.
fn read_batch<T>(
    records: &mut impl Records,
    counters: &UserCounters,
    decode: impl Fn(&[u8], &mut Vec<T>) -> Result<(), decode::DecodeError>,
) -> Vec<T> {
    let mut batch = Vec::with_capacity(BATCH);
    // Counted once per batch: the tracker thread reads these meanwhile.
    let (mut received, mut decoded, mut errors) = (0, 0, 0);
    while batch.len() < BATCH {
        let Some(result) = records.next_with(|bytes| decode(bytes, &mut batch)) else { break };
        received += 1;
        match result {
            Ok(()) => decoded += 1,
            Err(err) => {
                errors += 1;
                log::debug!("dropping undecodable record: {err}");
            }
        }
    }
    counters.received.fetch_add(received, Ordering::Relaxed);
    counters.decoded.fetch_add(decoded, Ordering::Relaxed);
    counters.decode_errors.fetch_add(errors, Ordering::Relaxed);
    batch
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tracer_common::{AF_INET, RAW_EVENT_SIZE, RawEvent, kind};

    use super::*;

    impl Records for VecDeque<Vec<u8>> {
        fn next_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
            self.pop_front().map(|record| f(&record))
        }
    }

    fn record(ts_ns: u64) -> Vec<u8> {
        let mut raw = RawEvent::ZERO;
        raw.ts_ns = ts_ns;
        raw.kind = kind::STATE;
        raw.family = AF_INET;
        raw.old_state = 7;
        raw.new_state = 2;
        decode::raw_to_bytes(&raw).to_vec()
    }

    fn counts(c: &UserCounters) -> (u64, u64, u64) {
        (c.received(), c.decoded(), c.decode_errors())
    }

    #[test]
    fn decoded_and_undecodable_records_are_counted_separately() {
        let mut garbled = record(2);
        garbled[std::mem::offset_of!(RawEvent, kind)] = 200;
        let short = record(3)[..RAW_EVENT_SIZE - 1].to_vec();
        let mut records = VecDeque::from([record(1), garbled, short, record(4)]);
        let counters = UserCounters::default();
        let batch = read_batch(&mut records, &counters, decode::decode_into);
        assert_eq!(batch.iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(counts(&counters), (4, 2, 2));
        // The recording path decodes into pairs: counted the same way.
        let mut records = VecDeque::from([record(5), vec![0; RAW_EVENT_SIZE]]);
        let pairs = read_batch(&mut records, &counters, |bytes, pairs| {
            let raw = decode::raw_from_bytes(bytes)?;
            pairs.push((raw, decode::decode_raw(&raw)?));
            Ok(())
        });
        assert_eq!(pairs.len(), 1);
        assert_eq!(counts(&counters), (6, 3, 3));
    }

    #[test]
    fn a_batch_stops_at_batch_size_and_the_rest_is_counted_by_the_next() {
        let mut records: VecDeque<_> = (0..BATCH as u64 + 3).map(record).collect();
        let counters = UserCounters::default();
        assert_eq!(read_batch(&mut records, &counters, decode::decode_into).len(), BATCH);
        assert_eq!(counts(&counters), (BATCH as u64, BATCH as u64, 0));
        assert_eq!(read_batch(&mut records, &counters, decode::decode_into).len(), 3);
        assert_eq!(read_batch(&mut records, &counters, decode::decode_into).len(), 0);
        assert_eq!(counts(&counters), (BATCH as u64 + 3, BATCH as u64 + 3, 0));
    }
}
