//! Full sockets' state transitions (`inet_sock_set_state`), and the note of
//! the socket a `connect()` is connecting, for the timewait-reuse check.
use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{EndFacts, RawEvent, TcpState, kind};

use super::held::{hold_child, send_held};
use crate::{
    emit::{emit, tracing},
    maps::CONNECTS,
    read::{TcpSock, fill_task, socket_cookie},
    summary,
};

program! {
    /// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`
    #[btf_tracepoint(function = "inet_sock_set_state")]
    pub fn tcptrace_state(BtfTracePointContext) -> i32 = try_state;
}

#[inline(always)]
fn try_state(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let sk: *mut c_void = ctx.arg(0);
    // No full TCP socket (another protocol's): nothing to say.
    let Some(tcp) = TcpSock::of(sk) else {
        return Ok(0);
    };
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if old == TcpState::SynRecv as i32 && !ablated!(LOOKUPS) {
        send_held(sk);
    }
    if old == TcpState::Close as i32 && new == TcpState::SynSent as i32 && !ablated!(LOOKUPS) {
        remember_connecting(sk as u64);
    }
    // A child still carrying its listener's remote port (0): older kernel.
    // In summary mode every child waits, to go with its request's start and
    // end in one record.
    if old == TcpState::Listen as i32
        && new == TcpState::SynRecv as i32
        && (tcp.get::<u16>(config!(skc_dport)) == 0 || config!(summaries) != 0)
        && hold_child(sk as u64, old, new)
    {
        return Ok(0);
    }
    // Summary mode: the transition waits in the kernel with the socket's
    // others (listeners' transitions and new children go at once: requests
    // and accept queues are matched with them as they happen).
    if config!(summaries) != 0
        && old != TcpState::Listen as i32
        && new != TcpState::Listen as i32
        && summary::add_transition(sk, tcp, old as u8, new as u8)
    {
        return Ok(0);
    }
    emit(|event| {
        event.kind = kind::STATE;
        event.cookie = socket_cookie(sk)?;
        // Fields first: they say whether the task owns the socket.
        tcp.fill(event, sk);
        fill_task(event);
        event.old_state = old as u8;
        event.new_state = new as u8;
        if new == TcpState::Close as i32 {
            fill_close(event, tcp);
        }
        Ok(())
    });
    Ok(0)
}

/// What a CLOSE event carries beyond the transition: the kernel's
/// retransmit total (a retransmission that no event showed still counts,
/// as unseen: docs/RELIABILITY.md), the socket's error and its end facts.
#[inline(always)]
pub(crate) fn fill_close(event: &mut RawEvent, tcp: TcpSock) {
    event.set_kernel_total_retrans(tcp.get(config!(tp_total_retrans)));
    let err: i32 = tcp.get(config!(sk_err));
    event.set_close_errno(err as u32);
    event.set_end_facts(end_facts(tcp));
}

/// What the socket says at CLOSE about why it ended (userspace classifies).
/// The kernel has cleared nothing of it yet: a linger-zero close and a close
/// with unread data set CLOSE before they send the RST; a timeout's
/// `tcp_write_err()` keeps the probe and retransmission counts.
#[inline(always)]
fn end_facts(tcp: TcpSock) -> EndFacts {
    let sk_flags: u64 = tcp.get(config!(sk_flags));
    let linger_time: u64 = tcp.get(config!(sk_lingertime));
    let rcv_nxt: u32 = tcp.get(config!(tp_rcv_nxt));
    let copied_seq: u32 = tcp.get(config!(tp_copied_seq));
    let unread = rcv_nxt.wrapping_sub(copied_seq);
    EndFacts {
        linger_zero: (sk_flags >> (config!(sock_linger_bit) & 63)) & 1 == 1 && linger_time == 0,
        unread: if unread > 0xffff { 0xffff } else { unread as u16 },
        probes_out: tcp.get(config!(icsk_probes_out)),
        retransmits: tcp.get(config!(icsk_retransmits)),
        user_timeout_ms: tcp.get(config!(icsk_user_timeout)),
    }
}

/// Notes the socket a connect() of the current task is connecting (its
/// CLOSE -> SYN_SENT runs inside the syscall, before the port is chosen).
#[inline(always)]
pub(crate) fn remember_connecting(sk: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(args) = CONNECTS.get_ptr_mut(pid_tgid) {
        // SAFETY: a valid pointer into the map's value for this key; only
        // this task (inside its own connect()) writes this entry.
        unsafe { (*args).sk = sk };
    }
}
