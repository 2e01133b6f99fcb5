//! Full-socket events other than state transitions: resets sent and
//! received, a new sending process (`tcp_sendmsg_locked`), socket errors.
use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::kind;

use crate::{
    emit::{emit, read_failed, tracing},
    maps::OWNERS,
    read::{fill_full_sock, is_full_sock, is_tcp, read, socket_cookie},
    summary,
};

program! {
    /// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, reason)`;
    /// `sk` is NULL for resets sent without a socket and may be a timewait socket.
    #[btf_tracepoint(function = "tcp_send_reset")]
    pub fn tcptrace_send_reset(BtfTracePointContext) -> i32 = try_send_reset;
}

#[inline(always)]
fn try_send_reset(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let sk: *mut c_void = ctx.arg(0);
    // NULL for this side's own resets (tcp_send_active_reset()), the
    // received segment when the RST answers one.
    let skb: *mut c_void = ctx.arg(1);
    if !sk.is_null() && is_full_sock(sk as u64).map_err(read_failed)? {
        summary::flush_before(sk);
        emit(|event| {
            event.kind = kind::RESET_SENT;
            event.set_reset_in_reply(!skb.is_null());
            fill_full_sock(event, sk)
        });
    }
    Ok(0)
}

program! {
    /// `tcp_receive_reset(struct sock *sk)`
    #[btf_tracepoint(function = "tcp_receive_reset")]
    pub fn tcptrace_receive_reset(BtfTracePointContext) -> i32 = try_receive_reset;
}

#[inline(always)]
fn try_receive_reset(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let sk: *mut c_void = ctx.arg(0);
    summary::flush_before(sk);
    emit(|event| {
        event.kind = kind::RESET_RECEIVED;
        fill_full_sock(event, sk)
    });
    Ok(0)
}

program! {
    /// `tcp_sendmsg_locked(const struct sock *sk, ...)`: process context, socket
    /// locked by the sender. Emits only when the sending process changes.
    #[btf_tracepoint(function = "tcp_sendmsg_locked")]
    pub fn tcptrace_sendmsg(BtfTracePointContext) -> i32 = try_sendmsg;
}

#[inline(always)]
fn try_sendmsg(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let sk: *mut c_void = ctx.arg(0);
    let cookie = socket_cookie(sk).map_err(read_failed)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is read once, at once; map values stay valid while the
    // program runs, and another CPU's update of this u32 cannot tear it (at
    // worst one OWNER event too many or too few).
    if let Some(last) = unsafe { OWNERS.get(cookie) }
        && *last == tgid
    {
        return Ok(0);
    }
    let _ = OWNERS.insert(cookie, tgid, 0);
    // Summary mode: a step among the socket's pending ones.
    if config!(summaries) != 0 && summary::add_owner(sk) {
        return Ok(0);
    }
    emit(|event| {
        event.kind = kind::OWNER;
        fill_full_sock(event, sk)
    });
    Ok(0)
}

program! {
    /// `inet_sk_error_report(const struct sock *sk)`
    #[btf_tracepoint(function = "inet_sk_error_report")]
    pub fn tcptrace_sk_error(BtfTracePointContext) -> i32 = try_sk_error;
}

#[inline(always)]
fn try_sk_error(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let sk: *mut c_void = ctx.arg(0);
    if !is_tcp(sk as u64).map_err(read_failed)? {
        return Ok(0);
    }
    // tcp_disconnect() reports with sk_err already cleared: nothing to say.
    let err: i32 = read(sk as u64, config!(sk_err)).map_err(read_failed)?;
    if err == 0 {
        return Ok(0);
    }
    summary::flush_before(sk);
    emit(|event| {
        event.kind = kind::SOCK_ERROR;
        fill_full_sock(event, sk)?;
        event.set_errno(err as u32);
        Ok(())
    });
    Ok(0)
}
