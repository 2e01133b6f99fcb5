//! Accepted children held back on kernels that give a child its addresses
//! and cookie only after its LISTEN -> SYN_RECV (6.1, 6.12): see
//! [`HELD`](crate::maps::HELD).
use core::ffi::c_void;

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{RawEvent, kind, stat};

use super::timers::{fill_accept_queue, fill_req};
use crate::{
    emit::{count, emit, wakeup_flags},
    maps::{EVENTS, HELD, HELD_TEMPLATE, Held, LAST_HELD},
    read::{fill_sock_fields, fill_task, read, socket_cookie},
};

/// Holds a child's LISTEN -> SYN_RECV (see [`HELD`]); false if it cannot
/// (map full): the caller then sends it at once, tuple incomplete.
#[inline(always)]
pub(crate) fn hold_child(sk: u64, old: i32, new: i32) -> bool {
    let Some(template) = HELD_TEMPLATE.get(0) else { return false };
    if HELD.insert(sk, template, 0).is_err() {
        return false;
    }
    let Some(held) = HELD.get_ptr_mut(sk) else { return false };
    // SAFETY: `held` is the non-null pointer to this child's entry, just
    // inserted; map values stay valid while the program runs. No other
    // reference to it exists: its writers (here and `hold_cancel`) and its
    // reader (`send_held`) are serialised by the child's socket lock, held by
    // the softirq creating the child and by whoever makes its next transition.
    let child = unsafe { &mut (*held).child };
    // SAFETY: a BPF helper without preconditions.
    child.ts_ns = unsafe { bpf_ktime_get_ns() };
    child.kind = kind::STATE;
    // No cookie yet: asking now would give one that the kernel replaces.
    // Fields first: they say whether the task owns the socket.
    if fill_sock_fields(child, sk).is_err() {
        count(stat::READ_ERRORS);
    }
    fill_task(child);
    child.old_state = old as u8;
    child.new_state = new as u8;
    child.sk = sk;
    if let Some(last) = LAST_HELD.get_ptr_mut(0) {
        // SAFETY: a valid, aligned per-CPU u64 slot from the map lookup; only
        // programs on this CPU use it, and an 8-byte store cannot tear.
        unsafe { *last = sk };
    }
    true
}

/// Sends what is held for `sk` (see [`HELD`]), before its own transition:
/// the child's event with its addresses and ports read now and its cookie,
/// then its request's cancel.
#[inline(always)]
pub(crate) fn send_held(sk: *mut c_void) {
    let key = sk as u64;
    let Some(held) = HELD.get_ptr_mut(key) else { return };
    // `sk` is the tracepoint's BTF-typed socket argument, passed through
    // unchanged, as the cookie helper needs.
    let cookie = socket_cookie(sk).unwrap_or_else(|_| {
        count(stat::READ_ERRORS);
        0
    });
    if config!(summaries) != 0 {
        send_bundle(held, key, cookie);
        let _ = HELD.remove(key);
        forget_last(key);
        return;
    }
    // Inlined: as a BPF subprogram its frame came on top of the caller's,
    // more stack together than the 6.1 verifier allows (672 of 512 bytes;
    // 6.18 gives tracing programs a private stack).
    emit(
        #[inline(always)]
        |event| {
            // SAFETY: `held` is non-null and stays valid while the program
            // runs; copying the plain-data event races with no writer
            // (serialised by the child's socket lock, see `hold_child`).
            *event = unsafe { (*held).child };
            let (old, new) = (event.old_state, event.new_state);
            fill_sock_fields(event, key)?;
            event.old_state = old;
            event.new_state = new;
            event.cookie = cookie;
            Ok(())
        },
    );
    // SAFETY: as above.
    if unsafe { (*held).cancel.kind } != 0 {
        emit(
            #[inline(always)]
            |event| {
                // SAFETY: as above.
                *event = unsafe { (*held).cancel };
                event.kind = kind::REQ_CANCELLED;
                Ok(())
            },
        );
    }
    let _ = HELD.remove(key);
    forget_last(key);
}

/// `LAST_HELD` no longer names `key`.
#[inline(always)]
fn forget_last(key: u64) {
    if let Some(last) = LAST_HELD.get_ptr_mut(0)
        // SAFETY: a valid, aligned per-CPU u64 slot; only programs on this CPU
        // use it.
        && unsafe { *last } == key
    {
        // SAFETY: as above.
        unsafe { *last = 0 };
    }
}

/// Summary mode: the request's held start, the child and the request's
/// cancel in one record of three events (`kind` 0 where one is missing), in
/// that order. Counted once in `SEEN` (or `LOST`), as one record.
#[inline(always)]
fn send_bundle(held: *mut Held, key: u64, cookie: u64) {
    count(stat::SEEN);
    let Some(mut entry) = EVENTS.reserve::<[RawEvent; 3]>(0) else {
        count(stat::LOST);
        return;
    };
    let record = entry.as_mut_ptr() as *mut RawEvent;
    // SAFETY: `record` is the reserved ring-buffer space of three events,
    // ours alone until submitted; `held` is non-null and valid while the
    // program runs (see `send_held`).
    let (armed, child, cancel) = unsafe { (&mut *record, &mut *record.add(1), &mut *record.add(2)) };
    *armed = RawEvent::ZERO;
    // SAFETY: as above.
    *child = unsafe { (*held).child };
    let (old, new) = (child.old_state, child.new_state);
    if fill_sock_fields(child, key).is_err() {
        count(stat::READ_ERRORS);
    }
    child.old_state = old;
    child.new_state = new;
    child.cookie = cookie;
    // SAFETY: as above.
    *cancel = unsafe { (*held).cancel };
    if cancel.kind != 0 {
        cancel.kind = kind::REQ_CANCELLED;
        crate::requests::take(cancel.sk, armed);
    }
    entry.submit(wakeup_flags());
}

/// Holds a request's cancel with the child held last on this CPU if it is
/// that request's child (same ports: its addresses are in place by now);
/// true if held.
#[inline(always)]
pub(crate) fn hold_cancel(req: u64) -> bool {
    let Some(last) = LAST_HELD.get_ptr_mut(0) else { return false };
    // SAFETY: a valid, aligned per-CPU u64 slot; only programs on this CPU use
    // it.
    let child_sk = unsafe { *last };
    if child_sk == 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe { *last = 0 };
    let Some(held) = HELD.get_ptr_mut(child_sk) else { return false };
    // SAFETY: `held` is non-null and stays valid while the program runs; the
    // only reference to the entry (see `hold_child`): the request's cancel runs
    // in the softirq that still holds the new child's lock.
    let cancel = unsafe { &mut (*held).cancel };
    if cancel.kind != 0 {
        return false;
    }
    // SAFETY: a BPF helper without preconditions.
    cancel.ts_ns = unsafe { bpf_ktime_get_ns() };
    if fill_req(cancel, req).and_then(|()| fill_accept_queue(cancel)).is_err() {
        count(stat::READ_ERRORS);
    }
    let dport: u16 = read(child_sk, config!(skc_dport)).unwrap_or(0);
    let sport: u16 = read(child_sk, config!(skc_num)).unwrap_or(0);
    if cancel.dport != u16::from_be(dport) || cancel.sport != sport {
        // Another request's: not held (sent by the caller).
        *cancel = RawEvent::ZERO;
        return false;
    }
    cancel.kind = kind::REQ_CANCELLED;
    true
}
