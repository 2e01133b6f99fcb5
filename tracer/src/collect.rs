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
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tracer_ebpf::stat;

use crate::{decode, event::Event, snapshot::ListedSocket};

/// What flows from the collector side to the tracker thread, in order.
#[derive(Debug)]
pub enum Message {
    /// Kernel events, in ring-buffer order.
    Events(Vec<Event>),
    /// The same, each also as the kernel wrote it (recording mode): decoded
    /// once here, written by the recorder, applied by the tracker.
    Raw(Vec<(tracer_ebpf::RawEvent, Event)>),
    /// TIME_WAIT sockets listed at start (sock_diag), sent once.
    ListedTimeWait(Vec<ListedSocket>),
    /// Every `--interval`: time goes on (grace periods end, the live view
    /// refreshes) even when no event arrives.
    Tick { now_ns: u64, kernel: KernelCounters },
}

/// Events per batch sent to the tracker: amortises channel synchronisation.
pub const BATCH: usize = 1024;
/// Batches in flight: bounds userspace memory between collector and tracker.
pub const CHANNEL_BATCHES: usize = 64;

/// Counters kept by userspace (the kernel keeps its own, see [`KernelCounters`]).
#[derive(Debug, Default)]
pub struct UserCounters {
    /// Records read from the ring buffer.
    pub received: AtomicU64,
    /// Records that failed validation (counted, not passed on).
    pub decode_errors: AtomicU64,
}

impl UserCounters {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }
}

/// Sums over CPUs of the kernel programs' `STATS` map.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounters {
    pub seen: u64,
    pub submitted: u64,
    pub lost: u64,
    pub read_errors: u64,
}

pub fn read_kernel_counters(stats: &PerCpuArray<MapData, u64>) -> Result<KernelCounters> {
    let sum = |index: u32| -> Result<u64> {
        let values = stats.get(&index, 0).with_context(|| format!("reading STATS[{index}]"))?;
        Ok(values.iter().sum())
    };
    let (seen, lost) = (sum(stat::SEEN)?, sum(stat::LOST)?);
    // Every reserve either failed (LOST) or was submitted.
    Ok(KernelCounters {
        seen,
        submitted: seen.saturating_sub(lost),
        lost,
        read_errors: sum(stat::READ_ERRORS)?,
    })
}

pub struct Collector {
    ring: AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<Message>,
    counters: Arc<UserCounters>,
    drain_every: Duration,
    /// Forward raw records (for recording) instead of decoded events.
    raw: bool,
}

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
        Ok(Self { ring, tx, counters, drain_every, raw: false })
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
                        return Ok(());
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

    /// Reads everything currently in the ring buffer and forwards it in batches.
    async fn drain(&mut self) {
        loop {
            let (message, n) = if self.raw {
                let batch = self.read_batch(|bytes| {
                    decode::raw_from_bytes(bytes)
                        .and_then(|raw| decode::decode_raw(&raw).map(|event| (raw, event)))
                });
                let n = batch.len();
                (Message::Raw(batch), n)
            } else {
                let batch = self.read_batch(decode::decode);
                let n = batch.len();
                (Message::Events(batch), n)
            };
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

    /// Up to [`BATCH`] records from the ring buffer, each decoded by `decode`;
    /// undecodable ones are counted and dropped.
    fn read_batch<T>(&mut self, decode: impl Fn(&[u8]) -> Result<T, decode::DecodeError>) -> Vec<T> {
        let ring = self.ring.get_mut();
        let mut batch = Vec::with_capacity(BATCH);
        // Counted once per batch: the tracker thread reads these meanwhile.
        let (mut received, mut errors) = (0, 0);
        while batch.len() < BATCH {
            let Some(item) = ring.next() else { break };
            received += 1;
            match decode(&item) {
                Ok(decoded) => batch.push(decoded),
                Err(err) => {
                    errors += 1;
                    log::debug!("dropping undecodable record: {err}");
                }
            }
        }
        self.counters.received.fetch_add(received, Ordering::Relaxed);
        self.counters.decode_errors.fetch_add(errors, Ordering::Relaxed);
        batch
    }
}
