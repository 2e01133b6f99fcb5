//! Summary mode, request sockets: a request's start (`REQ_ARMED`) waits in
//! [`REQ_ARMED`](crate::maps::REQ_ARMED) and, when the handshake completes,
//! reaches userspace in one record with the child's LISTEN -> SYN_RECV and
//! the request's cancel (`probes::held::send_held`); a request that
//! retransmits, expires or ends otherwise sends it first ([`flush`]).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{RawEvent, kind};

use crate::{
    emit::emit,
    maps::{EVENT_TEMPLATE, REQ_ARMED},
    probes::timers::fill_req,
};

/// Holds the first arming of request `req`'s timer (no SYN-ACK resent yet);
/// false when the caller must send it (summary mode off, a re-arm, or the
/// table full).
#[inline(always)]
pub(crate) fn hold_armed(req: u64, retransmits: u8) -> bool {
    if config!(summaries) == 0 || retransmits != 0 {
        return false;
    }
    if REQ_ARMED.get_ptr_mut(req).is_some() {
        flush(req);
        return false;
    }
    let Some(template) = EVENT_TEMPLATE.get(0) else { return false };
    if REQ_ARMED.insert(req, template, 0).is_err() {
        return false;
    }
    let Some(held) = REQ_ARMED.get_ptr_mut(req) else { return false };
    // SAFETY: the entry just made, valid while the program runs; the
    // request's events are serialised (its listener's lock or its timer).
    let event = unsafe { &mut *held };
    // SAFETY: a BPF helper without preconditions.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.kind = kind::REQ_ARMED;
    if fill_req(event, req).is_err() {
        let _ = REQ_ARMED.remove(req);
        return false;
    }
    true
}

/// The request's held start as an event, before anything else about it.
#[inline(always)]
pub(crate) fn flush(req: u64) {
    if config!(summaries) == 0 {
        return;
    }
    let Some(held) = REQ_ARMED.get_ptr_mut(req) else { return };
    emit(|event| {
        // SAFETY: a valid map value, copied while the program runs.
        *event = unsafe { *held };
        Ok(())
    });
    let _ = REQ_ARMED.remove(req);
}

/// Takes the request's held start into `slot` (left zero when none).
#[inline(always)]
pub(crate) fn take(req: u64, slot: &mut RawEvent) {
    let Some(held) = REQ_ARMED.get_ptr_mut(req) else { return };
    // SAFETY: as in `flush`.
    *slot = unsafe { *held };
    let _ = REQ_ARMED.remove(req);
}
