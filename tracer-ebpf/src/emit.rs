//! The prologue every program shares (`tracing`), the per-CPU counters, and
//! the one way events reach the ring buffer (`emit`).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
};
use tracer_common::{RawEvent, stat};

use crate::maps::{CONTROL, EVENTS, STATS};

/// The prologue every program starts with, `tracing()?`: [`Stop`] unless
/// tracing is switched on (`CONTROL`).
#[inline(always)]
pub(crate) fn tracing() -> Result<(), Stop> {
    if matches!(CONTROL.get(0), Some(&1)) { Ok(()) } else { Err(Stop) }
}

/// Ends a program at once (through `?`), returning 0: tracing is switched
/// off, or a read it needed failed ([`read_failed`]).
///
/// Every program returns 0, whether it emitted, had nothing to say or
/// failed (failures are counted in `STATS`): tp_btf programs' return values
/// are ignored, and a classic tracepoint program's non-zero return would
/// send the kernel on to process the perf sample, for nothing.
pub(crate) struct Stop;

impl From<Stop> for i32 {
    #[inline(always)]
    fn from(_: Stop) -> Self {
        0
    }
}

impl From<Stop> for u32 {
    #[inline(always)]
    fn from(_: Stop) -> Self {
        0
    }
}

/// A read that a program needed before it could begin an event failed: no
/// event, so the loss is counted in `READ_ERRORS` (never dropped silently),
/// and the program stops. `read(..).map_err(read_failed)?`.
#[inline(always)]
pub(crate) fn read_failed<E>(_err: E) -> Stop {
    count(stat::READ_ERRORS);
    Stop
}

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // Atomic although per-CPU: a program running in process context can
        // be interrupted by a softirq running another of ours on this CPU,
        // and a plain read-modify-write would then lose one of the two
        // increments (seen = received + lost was off by one under a storm).
        // (BPF_ATOMIC add, `lock ... +=`: core's atomics offer no fetch_add
        // on this target.)
        // SAFETY: `slot` is the non-null, 8-byte aligned pointer to a u64 that
        // the map lookup just returned (per-CPU array values live as long as
        // the map); the instruction adds 1 to it atomically and touches nothing
        // else.
        unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) slot, in(reg) 1u64) };
    }
}

/// Reserves a record, lets `fill` write it, submits it. Counts every event in
/// `SEEN` and every failed reserve in `LOST`; userspace derives what was
/// submitted (`SEEN - LOST`), so `seen == received + lost` holds exactly. A
/// `fill` that fails is counted in `READ_ERRORS`, and its event still sent.
#[inline(always)]
pub(crate) fn emit(fill: impl FnOnce(&mut RawEvent) -> Result<(), i32>) {
    if ablated!(EMIT) {
        return;
    }
    if !ablated!(SEEN) {
        count(stat::SEEN);
    }
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        count(stat::LOST);
        return;
    };
    let event = entry.write(RawEvent::ZERO);
    if !ablated!(KTIME) {
        // SAFETY: a BPF helper without preconditions (all helper bindings are
        // unsafe).
        event.ts_ns = unsafe { bpf_ktime_get_ns() };
    }
    if fill(event).is_err() {
        // Submit what we have: a partly filled event is still an event, and
        // dropping it here would break the seen/received accounting.
        count(stat::READ_ERRORS);
    }
    // Submitted = SEEN - LOST: not counted (userspace derives it).
    entry.submit(wakeup_flags());
}

/// The submit flags of the wakeup policy (`KernelConfig::wakeup_bytes`):
/// wake the reader only once enough bytes wait.
#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    let wakeup_bytes = config!(wakeup_bytes);
    if wakeup_bytes == 0 || ablated!(QUERY) {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
