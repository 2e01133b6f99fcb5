//! The summary record ([`RawSummary`], kind `SUMMARY`): in summary mode
//! (`KernelConfig::summaries`) a full socket's state transitions wait in
//! the kernel (one [`RawSummary`] map entry per socket) and reach userspace
//! together, in one ring-buffer record, instead of one record each.
//! Userspace expands the record back into the events the full stream would
//! have carried (same timestamps, same order), so the tracker and every
//! number it produces are the same in both modes.
//!
//! A socket's pending steps are sent (flushed) when it reaches CLOSE, when
//! all [`SUMMARY_STEPS`] slots are taken, when a third owning task appears,
//! and before any event about the socket that cannot wait (a retransmit, a
//! reset, an error), so that one socket's events keep their order.

use crate::RawEvent;

/// Steps a [`RawSummary`] holds before it must be flushed. A connection's
/// whole life is five transitions on either side (CLOSE -> SYN_SENT ->
/// ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE, or SYN_RECV ->
/// ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 -> CLOSE), plus an owner change.
pub const SUMMARY_STEPS: usize = 8;

/// [`SummaryStep::task`] of a step whose task did not own the socket.
pub const NO_TASK: u8 = 0xff;

/// [`SummaryStep::kind`]: a state transition (`old_state` -> `new_state`).
pub const STEP_STATE: u8 = 1;
/// [`SummaryStep::kind`]: a new sending process (what `kind::OWNER` says).
pub const STEP_OWNER: u8 = 2;

/// One transition (or owner change) of a pending socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryStep {
    /// `bpf_ktime_get_ns()` when it happened, as the event's `ts_ns`.
    pub ts_ns: u64,
    pub kind: u8,
    pub old_state: u8,
    pub new_state: u8,
    /// Index into [`RawSummary::tasks`] of the task that owned the socket
    /// (`flags::OWNED_BY_USER`), or [`NO_TASK`].
    pub task: u8,
    pub _pad: [u8; 4],
}

/// A task that owned the socket during a step.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryTask {
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// A socket's steps not yet sent: the value of the kernel's `PENDING` map
/// (by socket cookie), and the ring-buffer record that sends them (kind
/// `SUMMARY`). `base` is filled as a `STATE` event's would be, at each step
/// (the socket's tuple, cookie and address: userspace can expand what is
/// still pending when tracing stops), and at the flush (`kind::SUMMARY`,
/// the flush's time; at CLOSE also the close errno, end facts and
/// retransmit total that the CLOSE event carries).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSummary {
    pub base: RawEvent,
    pub steps: [SummaryStep; SUMMARY_STEPS],
    pub tasks: [SummaryTask; 2],
    /// The task whose `accept()` returned this socket (what `kind::ACCEPTED`
    /// says), valid when `accepted_ns` is not 0. Written by the accept
    /// program, outside the socket lock: fields of their own, not a step.
    pub acceptor: SummaryTask,
    pub accepted_ns: u64,
    /// Steps used.
    pub count: u8,
    /// Tasks used.
    pub tasks_used: u8,
    pub _pad: [u8; 6],
}

impl RawSummary {
    pub const ZERO: Self = Self {
        base: RawEvent::ZERO,
        steps: [SummaryStep { ts_ns: 0, kind: 0, old_state: 0, new_state: 0, task: 0, _pad: [0; 4] };
            SUMMARY_STEPS],
        tasks: [SummaryTask { pid_tgid: 0, cgroup_id: 0, comm: [0; 16] }; 2],
        acceptor: SummaryTask { pid_tgid: 0, cgroup_id: 0, comm: [0; 16] },
        accepted_ns: 0,
        count: 0,
        tasks_used: 0,
        _pad: [0; 6],
    };
}

pub const RAW_SUMMARY_SIZE: usize = core::mem::size_of::<RawSummary>();

// No implicit padding (uninitialised bytes in the ring buffer), and the
// sizes userspace length-checks.
const _: () = {
    assert!(core::mem::size_of::<SummaryStep>() == 16);
    assert!(core::mem::size_of::<SummaryTask>() == 32);
    assert!(RAW_SUMMARY_SIZE == 120 + 16 * SUMMARY_STEPS + 32 * 3 + 8 + 8);
    assert!(RAW_SUMMARY_SIZE != crate::RAW_EVENT_SIZE);
    // Bundles of three events are this size too: told apart by the kind at
    // the start's offset (userspace, `decode_into`).
    assert!(RAW_SUMMARY_SIZE == 3 * crate::RAW_EVENT_SIZE);
};
