//! Summary mode, userspace half: a `SUMMARY` record (a socket's pending
//! steps, see `tracer_common::RawSummary`) becomes the events the full
//! stream would have carried, with their own timestamps and in their order,
//! so that the tracker, and every number it gives, is the same in both
//! modes. And [`TimeWaitOrder`]: a TIME_WAIT birth is sent at once by the
//! kernel but its socket's steps only at the CLOSE that follows, so the birth
//! waits for them here, as the full stream orders them.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use tracer_common::{
    NO_TASK, RAW_SUMMARY_SIZE, RawEvent, RawSummary, STEP_OWNER, STEP_STATE, SUMMARY_STEPS, SummaryTask,
    TcpState as RawState, flags, kind,
};

use super::decode::{DecodeError, decode_raw};
use crate::{
    event::{Event, EventKind, Owner, TcpState, Tuple},
    track::{Role, stuck::PendingSocket},
};

/// Reinterprets a `SUMMARY` record after checking its length.
pub fn summary_from_bytes(bytes: &[u8]) -> Result<RawSummary, DecodeError> {
    if bytes.len() != RAW_SUMMARY_SIZE {
        return Err(DecodeError::Length(bytes.len()));
    }
    // SAFETY: the length matches and RawSummary is plain integers (any bit
    // pattern is valid); read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawSummary>()) })
}

/// The events of one summary, appended to `out` in the order they happened
/// (the accept, which is not a step, where its time puts it). All or none:
/// a malformed summary appends nothing.
pub fn expand(summary: &RawSummary, out: &mut Vec<Event>) -> Result<(), DecodeError> {
    let count = usize::from(summary.count);
    if count > SUMMARY_STEPS {
        return Err(DecodeError::Steps(count));
    }
    let tasks = &summary.tasks[..usize::from(summary.tasks_used).min(summary.tasks.len())];
    let start = out.len();
    let mut accept = (summary.accepted_ns != 0).then_some(summary.accepted_ns);
    for step in &summary.steps[..count] {
        if let Some(at) = accept.filter(|&at| at < step.ts_ns) {
            accept = None;
            push(out, start, accepted(summary, at))?;
        }
        let closing = step.kind == STEP_STATE && step.new_state == RawState::Close.to_u8();
        // The CLOSE step carries what the record's base says about the end.
        let mut raw = if closing { summary.base } else { identity(&summary.base) };
        raw.ts_ns = step.ts_ns;
        raw.flags = 0;
        raw.kind = match step.kind {
            STEP_STATE => kind::STATE,
            STEP_OWNER => kind::OWNER,
            other => {
                out.truncate(start);
                return Err(DecodeError::Kind(other));
            }
        };
        raw.old_state = step.old_state;
        raw.new_state = step.new_state;
        if step.task != NO_TASK {
            let Some(task) = tasks.get(usize::from(step.task)) else {
                out.truncate(start);
                return Err(DecodeError::Task(step.task));
            };
            set_task(&mut raw, task);
        }
        push(out, start, raw)?;
    }
    if let Some(at) = accept {
        push(out, start, accepted(summary, at))?;
    }
    Ok(())
}

/// What a pending entry (read from the kernel's map at a tick) says the
/// socket is now, for the live view and stuck sockets; None when it holds
/// no transition.
pub fn pending_socket(summary: &RawSummary) -> Option<(u64, PendingSocket)> {
    let mut events = Vec::new();
    expand(summary, &mut events).ok()?;
    let (last, since_ns) = events.iter().rev().find_map(|e| match e.kind {
        EventKind::State { new, .. } => Some((new, e.ts_ns)),
        _ => None,
    })?;
    let role = match events.first().map(|e| e.kind) {
        Some(EventKind::State { old: TcpState::Close, new: TcpState::SynSent }) => Role::Active,
        Some(EventKind::State { old: TcpState::SynRecv, .. }) => Role::Passive,
        _ => Role::Unknown,
    };
    let owner = events.iter().rev().find(|e| e.owned_by_task).map(|e| Owner::of(&e.task));
    let first = events.first()?;
    let socket = PendingSocket { netns: first.netns, tuple: first.tuple, state: last, since_ns, owner, role };
    Some((summary.base.cookie, socket))
}

fn push(out: &mut Vec<Event>, start: usize, raw: RawEvent) -> Result<(), DecodeError> {
    match decode_raw(&raw) {
        Ok(event) => {
            out.push(event);
            Ok(())
        }
        Err(err) => {
            out.truncate(start);
            Err(err)
        }
    }
}

/// The base's identity alone (tuple, socket, cookie, namespace): what every
/// step's event has in common.
fn identity(base: &RawEvent) -> RawEvent {
    let mut raw = RawEvent::ZERO;
    raw.sk = base.sk;
    raw.cookie = base.cookie;
    raw.netns = base.netns;
    raw.family = base.family;
    raw.saddr = base.saddr;
    raw.daddr = base.daddr;
    raw.sport = base.sport;
    raw.dport = base.dport;
    raw
}

fn set_task(raw: &mut RawEvent, task: &SummaryTask) {
    raw.pid_tgid = task.pid_tgid;
    raw.cgroup_id = task.cgroup_id;
    raw.comm = task.comm;
    raw.flags |= flags::OWNED_BY_USER;
}

/// The `ACCEPTED` event the accept program would have sent.
fn accepted(summary: &RawSummary, at: u64) -> RawEvent {
    let mut raw = identity(&summary.base);
    raw.ts_ns = at;
    raw.kind = kind::ACCEPTED;
    set_task(&mut raw, &summary.acceptor);
    raw
}

/// Sockets remembered as closed, for [`TimeWaitOrder`] (bounded: a storm
/// closes tens of thousands a second). A re-arm of a timewait socket whose
/// CLOSE is forgotten waits for the deadline or for its own end, whichever
/// comes first, then goes on unchanged.
const CLOSED_MEMORY: usize = 4096;

/// A TIME_WAIT birth waits at most this long (event time) for its socket's
/// CLOSE (normally in the same softirq, microseconds later).
pub const BIRTH_WAIT_NS: u64 = 1_000_000_000;

/// Puts each TIME_WAIT birth (`TW_ARMED`) back before its socket's CLOSE,
/// where the full stream has it: the kernel arms the timewait socket's
/// timer in `tcp_time_wait()` just before `tcp_done()` closes the full
/// socket, and the tracker takes the closer from the full socket's record.
/// A birth waits until its cookie's CLOSE goes by (or [`BIRTH_WAIT_NS`]);
/// re-arms, after the CLOSE, go on at once.
#[derive(Default)]
pub struct TimeWaitOrder {
    waiting: HashMap<Key, Vec<Event>>,
    /// Births in arrival order, for the deadline: (time, socket).
    deadlines: VecDeque<(u64, Key)>,
    closed: HashSet<Key>,
    closed_order: VecDeque<Key>,
}

/// A full socket and the timewait socket that replaces it: by cookie (the
/// timewait socket inherits it), or where cookies are addresses (kernels
/// before 5.12, `KernelConfig::cookie_mask`) by namespace and tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Cookie(u64),
    Tuple(u32, Tuple),
}

impl Key {
    fn of(event: &Event) -> Self {
        if event.cookie >> 63 == 1 {
            Self::Tuple(event.netns, event.tuple)
        } else {
            Self::Cookie(event.cookie)
        }
    }
}

impl TimeWaitOrder {
    pub fn new() -> Self {
        Self {
            waiting: HashMap::new(),
            deadlines: VecDeque::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
        }
    }

    /// `event` in its place: appended to `out` with whatever it releases
    /// (births that waited for it before it), or kept back.
    pub fn push(&mut self, event: &Event, out: &mut Vec<Event>) {
        self.release_older(event.ts_ns.saturating_sub(BIRTH_WAIT_NS), out);
        let key = Key::of(event);
        match event.kind {
            EventKind::TimeWaitArmed { .. } if event.cookie != 0 && !self.closed.contains(&key) => {
                self.deadlines.push_back((event.ts_ns, key));
                self.waiting.entry(key).or_default().push(*event);
            }
            EventKind::State { new: TcpState::Close, .. } => {
                if let Some(births) = self.waiting.remove(&key) {
                    out.extend(births);
                }
                self.remember_closed(key);
                out.push(*event);
            }
            // Its end: whatever of it waits goes first (a re-arm whose
            // CLOSE was forgotten).
            EventKind::TimeWaitExpired { .. } | EventKind::TimeWaitCancelled { .. } => {
                if let Some(births) = self.waiting.remove(&key) {
                    out.extend(births);
                }
                out.push(*event);
            }
            // A new life (connect() again on the socket, a new child on the
            // same tuple): its birth will wait again.
            EventKind::State { old: TcpState::Close | TcpState::Listen, .. } => {
                self.closed.remove(&key);
                out.push(*event);
            }
            _ => out.push(*event),
        }
    }

    /// Births older than `before_ns` go on as they are (their socket's
    /// CLOSE was lost, or went out before tracing started).
    pub fn release_older(&mut self, before_ns: u64, out: &mut Vec<Event>) {
        while let Some(&(ts, key)) = self.deadlines.front() {
            if ts >= before_ns {
                break;
            }
            self.deadlines.pop_front();
            if let Some(births) = self.waiting.remove(&key) {
                out.extend(births);
            }
        }
    }

    /// Everything still waiting (end of tracing).
    pub fn release_all(&mut self, out: &mut Vec<Event>) {
        self.release_older(u64::MAX, out);
    }

    fn remember_closed(&mut self, key: Key) {
        if self.closed.insert(key) {
            self.closed_order.push_back(key);
            if self.closed_order.len() > CLOSED_MEMORY
                && let Some(old) = self.closed_order.pop_front()
            {
                self.closed.remove(&old);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests;
