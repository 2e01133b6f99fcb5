//! Request sockets (SYN_RECV) and timewait sockets, seen through their
//! timers: `timer_start`, `timer_expire_entry`/`_exit`, `timer_cancel`.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{RawEvent, TcpState, flags, kind};

use super::held::hold_cancel;
use crate::{
    emit::{emit, tracing},
    maps::{CONNECTS, EXPIRING},
    read::{fill_sock_common, fill_task, read, read_field},
    requests,
};

/// Which kind of socket a timer belongs to, from its callback.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    TimeWait(u64),
    Request(u64),
}

#[inline(always)]
pub(crate) fn classify_timer(timer: u64, function: u64) -> Option<Timer> {
    if function == 0 {
        return None;
    }
    if function == config!(tw_timer_handler) {
        Some(Timer::TimeWait(timer - config!(tw_timer) as u64))
    } else if function == config!(reqsk_timer_handler) {
        Some(Timer::Request(timer - config!(req_timer) as u64))
    } else {
        None
    }
}

/// Whose timer `timer` is, from its callback. Every TCP timer (retransmit,
/// delayed ACK, keepalive, ...) and every other timer of the host passes
/// here, and all but the timewait and request timers stop here: `timer` is
/// the tracepoint's BTF-typed `struct timer_list *`, so the callback is one
/// plain load that the verifier checks against BTF (a faulting load reads
/// zero), not a `bpf_probe_read_kernel` call (~25 ns).
#[inline(always)]
pub(crate) fn timer_owner(timer: *const u8) -> Option<Timer> {
    let offset = config!(timer_function) as usize;
    // SAFETY: `timer` comes straight from the tracepoint's arguments (a live
    // timer while the tracepoint runs) and `offset` is that of `function` in
    // `struct timer_list` (BTF, a load-time constant): the verifier checks
    // this 8-byte load against that type.
    let function: u64 = unsafe { core::ptr::read_volatile(timer.add(offset) as *const u64) };
    classify_timer(timer as u64, function)
}

#[inline(always)]
pub(crate) fn fill_tw(event: &mut RawEvent, tw: u64) -> Result<(), i32> {
    fill_task(event);
    fill_sock_common(event, tw)?;
    event.cookie = read(tw, config!(skc_cookie))?;
    event.set_timewait_substate(read(tw, config!(tw_substate))?);
    let sport: u16 = read(tw, config!(tw_sport))?;
    event.sport = u16::from_be(sport);
    Ok(())
}

#[inline(always)]
pub(crate) fn fill_req(event: &mut RawEvent, req: u64) -> Result<(), i32> {
    fill_task(event);
    fill_sock_common(event, req)?;
    event.set_listener(read(req, config!(skc_listener))?);
    event.set_request_retransmits(read(req, config!(req_num_retrans))?);
    Ok(())
}

program! {
    /// `timer_start(struct timer_list *timer, unsigned long bucket_expiry)`
    #[btf_tracepoint(function = "timer_start")]
    pub fn tcptrace_timer_start(BtfTracePointContext) -> i32 = try_timer_start;
}

#[inline(always)]
fn try_timer_start(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let timer: u64 = ctx.arg(0);
    let expiry: u64 = ctx.arg(1);
    match timer_owner(timer as *const u8) {
        Some(Timer::TimeWait(tw)) => emit(|event| {
            event.kind = kind::TW_ARMED;
            fill_tw(event, tw)?;
            event.set_timer_expiry(expiry);
            Ok(())
        }),
        Some(Timer::Request(req)) => {
            // Summary mode: a request's start waits for its end.
            if config!(summaries) != 0
                && let Ok(retransmits) = read::<u8>(req, config!(req_num_retrans))
                && requests::hold_armed(req, retransmits)
            {
                return Ok(0);
            }
            emit(|event| {
                event.kind = kind::REQ_ARMED;
                fill_req(event, req)
            })
        }
        None => {}
    }
    Ok(0)
}

program! {
    /// `timer_expire_entry(struct timer_list *timer, unsigned long baseclk)`
    #[btf_tracepoint(function = "timer_expire_entry")]
    pub fn tcptrace_timer_expire(BtfTracePointContext) -> i32 = try_timer_expire;
}

#[inline(always)]
fn try_timer_expire(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let timer: u64 = ctx.arg(0);
    match timer_owner(timer as *const u8) {
        Some(Timer::TimeWait(tw)) => emit(|event| {
            event.kind = kind::TW_EXPIRED;
            fill_tw(event, tw)
        }),
        Some(Timer::Request(req)) => {
            if let Some(slot) = EXPIRING.get_ptr_mut(0) {
                // SAFETY: a valid, aligned per-CPU u64 slot from the map
                // lookup; timer callbacks never nest on one CPU, and only these
                // two programs use it.
                unsafe { *slot = timer };
            }
            requests::flush(req);
            emit(|event| {
                event.kind = kind::REQ_EXPIRED;
                fill_req(event, req)?;
                fill_req_expiry(event, req)
            })
        }
        None => {}
    }
    Ok(0)
}

/// The listener's accept queue, depth and limit, as `ss -lnt` shows them
/// (see [`RawEvent::accept_queue`]).
#[inline(always)]
pub(crate) fn fill_accept_queue(event: &mut RawEvent) -> Result<(), i32> {
    let listener = event.listener();
    if listener != 0 {
        let depth: u32 = read(listener, config!(sk_ack_backlog))?;
        let limit: u32 = read(listener, config!(sk_max_ack_backlog))?;
        event.set_accept_queue(depth, limit);
    }
    Ok(())
}

/// What decides a request's fate when its timer fires: was the final ACK
/// received, is the listener still listening, is TCP_DEFER_ACCEPT set.
#[inline(always)]
pub(crate) fn fill_req_expiry(event: &mut RawEvent, req: u64) -> Result<(), i32> {
    if read_field(req, config!(ireq_acked))? != 0 {
        event.flags |= flags::ACKED;
    }
    let listener = event.listener();
    if listener != 0 {
        let state: u8 = read(listener, config!(skc_state))?;
        if state != TcpState::Listen.to_u8() {
            event.flags |= flags::LISTENER_GONE;
        }
        let defer: u8 = read(listener, config!(icsk_defer_accept))?;
        event.set_defer_accept(defer as u32);
    }
    Ok(())
}

program! {
    /// `timer_expire_exit(struct timer_list *timer)`: the timer may be freed by
    /// now, so it is matched against the one recorded at entry, never read.
    #[btf_tracepoint(function = "timer_expire_exit")]
    pub fn tcptrace_timer_expire_exit(BtfTracePointContext) -> i32 = try_timer_expire_exit;
}

#[inline(always)]
fn try_timer_expire_exit(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let timer: u64 = ctx.arg(0);
    let Some(slot) = EXPIRING.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: as in `try_timer_expire`.
    if unsafe { *slot } != timer || timer == 0 {
        return Ok(0);
    }
    // SAFETY: as in `try_timer_expire`.
    unsafe { *slot = 0 };
    let req = timer - config!(req_timer) as u64;
    emit(|event| {
        event.kind = kind::REQ_EXPIRE_DONE;
        event.sk = req;
        fill_task(event);
        Ok(())
    });
    Ok(0)
}

program! {
    /// `timer_cancel(struct timer_list *timer)`: fires before the timer is
    /// detached, so its callback is still readable.
    #[btf_tracepoint(function = "timer_cancel")]
    pub fn tcptrace_timer_cancel(BtfTracePointContext) -> i32 = try_timer_cancel;
}

#[inline(always)]
fn try_timer_cancel(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let timer: u64 = ctx.arg(0);
    match timer_owner(timer as *const u8) {
        Some(Timer::TimeWait(tw)) => emit(|event| {
            event.kind = kind::TW_CANCELLED;
            fill_tw(event, tw)?;
            if connecting_to(event, tw) {
                event.flags |= flags::IN_CONNECT;
            }
            if netns_dying(tw) {
                event.flags |= flags::NETNS_DYING;
            }
            Ok(())
        }),
        Some(Timer::Request(req)) => {
            // A child held back comes first: wait with it.
            if hold_cancel(req) {
                return Ok(0);
            }
            requests::flush(req);
            emit(|event| {
                event.kind = kind::REQ_CANCELLED;
                fill_req(event, req)?;
                fill_accept_queue(event)
            })
        }
        None => {}
    }
    Ok(0)
}

/// True when the current task is inside connect() toward the event's peer
/// and its connecting socket has taken the timewait socket's local port in
/// the same namespace: the timewait socket is being reused for the new
/// connection (`__inet_hash_connect` sets `inet_sport` before it cancels the
/// timewait timer). A timewait socket killed by an RST that softirq
/// processes on top of such a task has another port, or another namespace.
#[inline(always)]
pub(crate) fn connecting_to(event: &RawEvent, tw: u64) -> bool {
    // The key must live on the stack: older verifiers (Linux 6.1) reject
    // ring buffer memory (`&event.pid_tgid`) as a map key.
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the entry is keyed by the current task, which only changes it
    // itself: from its own connect() (the SYN_SENT note, sys_exit_connect),
    // which cannot run while this program runs on top of it; map values stay
    // valid while the program runs.
    let Some(args) = (unsafe { CONNECTS.get(pid_tgid) }) else {
        return false;
    };
    if args.family != event.family as u16 || args.port != event.dport || args.addr != event.daddr {
        return false;
    }
    let sk = args.sk;
    if sk == 0 {
        return false;
    }
    let same_port = matches!(read::<u16>(sk, config!(inet_sport)), Ok(p) if u16::from_be(p) == event.sport);
    let same_net = match (read::<u64>(sk, config!(skc_net)), read::<u64>(tw, config!(skc_net))) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    same_port && same_net
}

/// True when the socket's namespace has no references left (cleanup_net is
/// purging its timewait sockets).
#[inline(always)]
pub(crate) fn netns_dying(sk: u64) -> bool {
    let offset = config!(net_ns_refcount);
    if offset == 0 {
        return false;
    }
    let Ok(net) = read::<u64>(sk, config!(skc_net)) else { return false };
    net != 0 && matches!(read::<u32>(net, offset), Ok(0))
}
