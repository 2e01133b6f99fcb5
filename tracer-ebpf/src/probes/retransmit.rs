//! Retransmitted segments (`tcp_retransmit_skb`, two variants by the
//! tracepoint's arity) and SYN-ACK retransmits of request sockets.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_jiffies64;
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{RawEvent, flags, kind};

use crate::{
    emit::{emit, tracing},
    read::{fill_full_sock, fill_sock_common, fill_task, read, read_field},
    requests, summary,
};

/// Whether the kernel counted a retransmission that the tracepoint reports
/// with result `err` (in `total_retrans`, RetransSegs and `tcp_gso_segs`
/// segments): `__tcp_retransmit_skb()` counts just before it hands the skb to
/// `tcp_transmit_skb()`, so a failure of the transmit itself (`-EPERM` from a
/// netfilter drop on the output path, `-ENOBUFS` from a full qdisc, ...; then
/// also in TCPRetransFail) is counted, while the checks that come first return
/// `-EBUSY` (the original still in a host queue), `-EINVAL`, `-ENOMEM`,
/// `-EHOSTUNREACH` (no route) or `-EAGAIN` (window) uncounted. The transmit
/// can return `-EHOSTUNREACH`, `-ENOMEM` (TCP-AO) or `-EINVAL` (no neighbour)
/// too, rarely: no event shows those counted retransmissions, and userspace
/// counts them from the kernel's total as unseen (docs/ARCHITECTURE.md,
/// "Retransmits"). Errno values of asm-generic (x86, arm64).
#[inline(always)]
fn counted_by_kernel(err: i32) -> bool {
    const EAGAIN: i32 = 11;
    const ENOMEM: i32 = 12;
    const EBUSY: i32 = 16;
    const EINVAL: i32 = 22;
    const EHOSTUNREACH: i32 = 113;
    !matches!(-err, EBUSY | EINVAL | ENOMEM | EHOSTUNREACH | EAGAIN)
}

/// Shared body of both retransmit programs. `err` is the retransmission's
/// result on kernels whose tracepoint reports failed attempts too (6.17+),
/// else 0 (older kernels fire only for successes).
#[inline(always)]
fn retransmit(sk: *mut c_void, skb: u64, err: i32) {
    if !counted_by_kernel(err) {
        return;
    }
    summary::flush_before(sk);
    emit(|event| {
        event.kind = kind::RETRANSMIT;
        fill_full_sock(event, sk)?;
        let cb = skb + config!(skb_cb) as u64;
        let tcp_flags: u8 = read(cb, config!(tcb_tcp_flags))?;
        if tcp_flags & 0x02 != 0 {
            event.flags |= flags::SYN;
        }
        if tcp_flags & 0x01 != 0 {
            event.flags |= flags::FIN;
        }
        let segs: u16 = read(cb, config!(tcb_gso_segs))?;
        event.set_segs(if segs == 0 { 1 } else { segs as u32 });
        event.set_ca_state(read_field(sk as u64, config!(icsk_ca_state))? as u8);
        event.set_kernel_total_retrans(read(sk as u64, config!(tp_total_retrans))?);
        timing(event, sk as u64)
    });
}

/// The retransmission's timing (docs/ARCHITECTURE.md, "Retransmit stalls"):
/// time since the last acceptable ACK (`tcp_sock.rcv_tstamp`, which `tcp_ack()`
/// sets for every ACK not older than `snd_una`), the RTO (`icsk_rto`: inside
/// `tcp_retransmit_timer()` the one that fired, doubled only after the resend)
/// and the backoff count (`icsk_backoff`, likewise incremented after). All
/// three are jiffies or counts; `hz` (CONFIG_HZ, from userspace) turns jiffies
/// into microseconds. Skipped when `hz` is unknown.
#[inline(always)]
fn timing(event: &mut RawEvent, sk: u64) -> Result<(), i32> {
    let hz = config!(hz) as u64;
    if hz == 0 {
        return Ok(());
    }
    let rcv_tstamp: u32 = read(sk, config!(tp_rcv_tstamp))?;
    let rto: u32 = read(sk, config!(icsk_rto))?;
    let backoff: u8 = read(sk, config!(icsk_backoff))?;
    // SAFETY: a helper without arguments, allowed in tracing programs (5.5+).
    let now = unsafe { bpf_jiffies64() } as u32;
    let since = now.wrapping_sub(rcv_tstamp) as u64;
    event.set_timing(since * 1_000_000 / hz, rto as u64 * 1_000_000 / hz, backoff);
    Ok(())
}

program! {
    /// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)` (6.17+)
    #[btf_tracepoint(function = "tcp_retransmit_skb")]
    pub fn tcptrace_retransmit(BtfTracePointContext) -> i32 = try_retransmit;
}

#[inline(always)]
fn try_retransmit(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    retransmit(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    Ok(0)
}

program! {
    /// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb)`
    /// (older kernels: fires only for segments actually sent).
    #[btf_tracepoint(function = "tcp_retransmit_skb")]
    pub fn tcptrace_retransmit_legacy(BtfTracePointContext) -> i32 = try_retransmit_legacy;
}

#[inline(always)]
fn try_retransmit_legacy(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    retransmit(ctx.arg(0), ctx.arg(1), 0);
    Ok(0)
}

program! {
    /// `tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req)`
    #[btf_tracepoint(function = "tcp_retransmit_synack")]
    pub fn tcptrace_synack(BtfTracePointContext) -> i32 = try_synack;
}

#[inline(always)]
fn try_synack(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    tracing()?;
    let listener: u64 = ctx.arg(0);
    let req: u64 = ctx.arg(1);
    requests::flush(req);
    emit(|event| {
        event.kind = kind::SYNACK_RETRANSMIT;
        event.set_listener(listener);
        fill_task(event);
        fill_sock_common(event, req)?;
        event.set_request_retransmits(read(req, config!(req_num_retrans))?);
        Ok(())
    });
    Ok(0)
}
