//! Summary mode (`KernelConfig::summaries`): a full socket's transitions
//! wait in `PENDING` and reach userspace together, one `SUMMARY` record
//! instead of one record each (see `tracer_common::RawSummary`): the ring
//! buffer's reserve and submit were ~265 of the ~360 ns that each event
//! cost the state program.
//!
//! Sent (flushed) at CLOSE, when the steps or task slots are full, and
//! before any event about the socket that cannot wait ([`flush_before`]),
//! so that one socket's events reach userspace in their order.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
};
use tracer_common::{
    NO_TASK, RawSummary, STEP_OWNER, STEP_STATE, SUMMARY_STEPS, SummaryTask, TcpState, kind, stat,
};

use crate::{
    emit::{count, wakeup_flags},
    maps::{EVENTS, PENDING, PENDING_TEMPLATE},
    probes::state::fill_close,
    read::{TcpSock, socket_cookie},
};

/// Adds a transition of `sk` to its pending steps; at CLOSE sends them all
/// and forgets the socket. False when the caller must send the transition
/// as an event itself: no pending entry could be made (table full, counted
/// in `PENDING_FULL`), or a CLOSE of a socket with none (one whose earlier
/// transitions went out as events).
#[inline(always)]
pub(crate) fn add_transition(sk: *mut c_void, tcp: TcpSock, old: u8, new: u8) -> bool {
    let Ok(cookie) = socket_cookie(sk) else { return false };
    let closing = new == TcpState::Close as u8;
    let Some(pending) = entry(cookie, !closing) else { return false };
    let owned = tcp.get::<i32>(config!(sk_lock_owned)) != 0;
    add_step(sk, tcp, cookie, pending, STEP_STATE, old, new, owned);
    if closing {
        flush(sk, tcp, pending, true);
        let _ = PENDING.remove(cookie);
    }
    true
}

/// Adds an owner change (`tcp_sendmsg_locked`, the sender holds the socket
/// lock) to the socket's pending steps; false when it has none (the caller
/// sends the `OWNER` event).
#[inline(always)]
pub(crate) fn add_owner(sk: *mut c_void) -> bool {
    let Some(tcp) = TcpSock::of(sk) else { return false };
    let Ok(cookie) = socket_cookie(sk) else { return false };
    let Some(pending) = entry(cookie, false) else { return false };
    add_step(sk, tcp, cookie, pending, STEP_OWNER, 0, 0, true);
    true
}

/// Notes the accept() that returned the socket with this cookie (current
/// task, now) in its pending entry; false when it has none (the caller sends
/// the `ACCEPTED` event). Not a step: accept() does not hold the child's
/// socket lock, so it writes fields of its own, the time last.
#[inline(always)]
pub(crate) fn note_accept(cookie: u64) -> bool {
    let Some(pending) = entry(cookie, false) else { return false };
    // SAFETY: a valid pointer into this socket's map value (see `entry`).
    let p = unsafe { &mut *pending };
    if p.accepted_ns != 0 {
        return false;
    }
    fill_task(&mut p.acceptor);
    // SAFETY: a BPF helper without preconditions.
    p.accepted_ns = unsafe { bpf_ktime_get_ns() };
    true
}

/// Sends the socket's pending steps, if any, before an event about it that
/// cannot wait (retransmit, reset, error): userspace then gets them in order.
#[inline(always)]
pub(crate) fn flush_before(sk: *mut c_void) {
    if config!(summaries) == 0 {
        return;
    }
    let Some(tcp) = TcpSock::of(sk) else { return };
    let Ok(cookie) = socket_cookie(sk) else { return };
    if let Some(pending) = entry(cookie, false) {
        flush(sk, tcp, pending, false);
    }
}

/// The socket's pending entry; made (from the zero template) when `create`.
#[inline(always)]
fn entry(cookie: u64, create: bool) -> Option<*mut RawSummary> {
    if let Some(p) = PENDING.get_ptr_mut(cookie) {
        return Some(p);
    }
    if !create {
        return None;
    }
    let template = PENDING_TEMPLATE.get(0)?;
    if PENDING.insert(cookie, template, 0).is_err() {
        count(stat::PENDING_FULL);
        return None;
    }
    PENDING.get_ptr_mut(cookie)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)] // one call per step kind, all inline
fn add_step(
    sk: *mut c_void,
    tcp: TcpSock,
    cookie: u64,
    pending: *mut RawSummary,
    kind: u8,
    old: u8,
    new: u8,
    owned: bool,
) {
    // SAFETY: `pending` points into this socket's map value, valid while the
    // program runs. Its writers are serialised by the socket lock: every
    // transition and sendmsg holds it (softirq, or the owning task), and the
    // accept program writes only `acceptor`/`accepted_ns`.
    let p = unsafe { &mut *pending };
    let mut task = NO_TASK;
    if owned {
        task = match task_slot(p) {
            Some(slot) => slot,
            None => {
                flush(sk, tcp, pending, false);
                task_slot(p).unwrap_or(NO_TASK)
            }
        };
    }
    if p.count as usize >= SUMMARY_STEPS {
        flush(sk, tcp, pending, false);
    }
    // The tuple for what userspace reads from the map (each tick, and what
    // is still pending when tracing stops): at a socket's first step, and
    // again at ESTABLISHED, when an active open has its local port (chosen
    // after CLOSE -> SYN_SENT). It does not change afterwards; a flush
    // fills its record afresh.
    if p.count == 0 || (kind == STEP_STATE && new == TcpState::Established as u8) {
        tcp.fill(&mut p.base, sk);
        p.base.cookie = cookie;
    }
    let i = p.count as usize;
    if i >= SUMMARY_STEPS {
        return; // cannot happen (flushed above); the verifier needs the bound
    }
    let step = &mut p.steps[i];
    // SAFETY: a BPF helper without preconditions.
    step.ts_ns = unsafe { bpf_ktime_get_ns() };
    step.kind = kind;
    step.old_state = old;
    step.new_state = new;
    step.task = task;
    p.count += 1;
}

/// The slot of the current task in `p.tasks`, filled if new; None when both
/// slots hold other tasks.
#[inline(always)]
fn task_slot(p: &mut RawSummary) -> Option<u8> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let used = p.tasks_used as usize;
    if used > 0 && p.tasks[0].pid_tgid == pid_tgid {
        return Some(0);
    }
    if used > 1 && p.tasks[1].pid_tgid == pid_tgid {
        return Some(1);
    }
    if used >= p.tasks.len() {
        return None;
    }
    fill_task(&mut p.tasks[used]);
    p.tasks_used += 1;
    Some(used as u8)
}

#[inline(always)]
fn fill_task(task: &mut SummaryTask) {
    task.pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a BPF helper without preconditions.
    task.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    task.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Sends `pending` as one `SUMMARY` record and empties it (counted in `SEEN`,
/// or `LOST` when the ring buffer is full: the steps are then lost, as the
/// events would have been).
#[inline(always)]
fn flush(sk: *mut c_void, tcp: TcpSock, pending: *mut RawSummary, closing: bool) {
    // SAFETY: as in `add_step`.
    let p = unsafe { &mut *pending };
    if p.count == 0 && p.accepted_ns == 0 && !closing {
        return;
    }
    count(stat::SEEN);
    match EVENTS.reserve::<RawSummary>(0) {
        None => count(stat::LOST),
        Some(mut entry) => {
            let record = entry.as_mut_ptr();
            // SAFETY: `record` is the reserved, exclusively ours, suitably
            // aligned ring-buffer space for one RawSummary; `p` a valid map
            // value of the same type. Both copies are plain memory moves.
            unsafe {
                core::ptr::copy_nonoverlapping(pending as *const RawSummary, record, 1);
                let base = &mut (*record).base;
                base.flags = 0;
                tcp.fill(base, sk);
                base.kind = kind::SUMMARY;
                base.ts_ns = bpf_ktime_get_ns();
                if closing {
                    fill_close(base, tcp);
                }
            }
            entry.submit(wakeup_flags());
        }
    }
    p.count = 0;
    p.tasks_used = 0;
    p.accepted_ns = 0;
}
