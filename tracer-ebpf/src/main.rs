//! tcptrace kernel programs.
//!
//! Every program turns one kernel hook into at most one fixed-size [`RawEvent`]
//! in the `EVENTS` ring buffer. Programs do no aggregation: the connection state
//! machine lives in userspace (`tracer/src/track`), where it can be unit-tested.
//!
//! Struct offsets are not compiled in: userspace reads them from the running
//! kernel's BTF and sets the read-only global `CONFIG` before loading, so the
//! same object works on every kernel that has the hooks (see docs/ARCHITECTURE.md).
#![no_std]
#![no_main]
// Inline BPF assembly for one atomic add (`count`); the crate builds on nightly.
#![feature(asm_experimental_arch)]
// `#[inline(always)]` on closures (`send_held`).
#![feature(stmt_expr_attributes)]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_get_socket_cookie,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use tracer_ebpf::{
    AF_INET, AF_INET6, Field, IPPROTO_TCP, KernelConfig, RawEvent, flags, kind, stat, tcp_state,
};

/// Set by userspace before load (read-only data, frozen: the verifier treats
/// every field as a known constant).
#[unsafe(no_mangle)]
static CONFIG: KernelConfig = KernelConfig::ZERO;

/// Reads one field of `CONFIG`. Volatile, or the compiler would fold the
/// all-zero initializer into the code.
macro_rules! cfg {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&CONFIG.$field) }
    };
}

/// Default size; userspace overrides it (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// `[0] == 1` while tracing (see `names::CONTROL`).
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn tracing() -> bool {
    matches!(CONTROL.get(0), Some(&1))
}

/// Last process seen sending on a socket (cookie -> tgid): `OWNER` events are
/// emitted only when it changes, not for every sendmsg.
#[map]
static OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Destination of a connect() in progress, by pid_tgid (sys_enter -> sys_exit).
#[map]
static CONNECTS: HashMap<u64, ConnectArgs> = HashMap::with_max_entries(16384, 0);

/// Request-socket timer whose handler is running on this CPU (expire_entry ->
/// expire_exit). Timer callbacks never nest on one CPU.
#[map]
static EXPIRING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// An accepted child's LISTEN -> SYN_RECV and its request's `timer_cancel`,
/// held back by child socket: on older kernels (6.1 and 6.12 checked)
/// `inet_csk_clone_lock()` sets the child's state before it gets its
/// addresses and cookie (copied from the request socket after the
/// tracepoint). The child's own next transition (always from SYN_RECV) sends
/// both first, in order, with their own timestamps and the child's final
/// tuple and cookie, on whatever CPU it happens: an `accept()` on another
/// CPU can lock the new child before the softirq that created it reaches
/// its next transition, which then runs from the backlog over there.
#[map]
static HELD: HashMap<u64, Held> = HashMap::with_max_entries(8192, 0);

/// The all-zero [`Held`] that `HELD` entries start from: a map value, since
/// two events (240 bytes) do not fit the stack beside everything else.
#[map]
static HELD_TEMPLATE: Array<Held> = Array::with_max_entries(1, 0);

/// The child held last on this CPU: its request's cancel follows in the same
/// softirq (`inet_csk_complete_hashdance`). 0: none.
#[map]
static LAST_HELD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Held {
    child: RawEvent,
    /// `kind == 0`: no cancel held.
    cancel: RawEvent,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ConnectArgs {
    addr: [u8; 16],
    family: u16,
    port: u16,
    _pad: u32,
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // Atomic although per-CPU: a program running in process context can
        // be interrupted by a softirq running another of ours on this CPU,
        // and a plain read-modify-write would then lose one of the two
        // increments (seen = received + lost was off by one under a storm).
        // (BPF_ATOMIC add, `lock ... +=`: core's atomics offer no fetch_add
        // on this target.)
        unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) slot, in(reg) 1u64) };
    }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
}

#[inline(always)]
fn read_field(base: u64, field: Field) -> Result<u32, i32> {
    let word: u32 = read(base, field.byte)?;
    Ok(field.extract(word))
}

/// Reserves a record, lets `fill` write it, submits it. Counts what it saw,
/// submitted and lost so that `seen == submitted + lost` holds exactly.
#[inline(always)]
fn emit(fill: impl FnOnce(&mut RawEvent) -> Result<(), i32>) {
    count(stat::SEEN);
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        count(stat::LOST);
        return;
    };
    let event = entry.write(RawEvent::ZERO);
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    if fill(event).is_err() {
        // Submit what we have: a partly filled event is still an event, and
        // dropping it here would break the seen/received accounting.
        count(stat::READ_ERRORS);
    }
    let wakeup_bytes = cfg!(wakeup_bytes);
    let flags = if wakeup_bytes == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    };
    // Submitted = SEEN - LOST: not counted (userspace derives it).
    entry.submit(flags);
}

/// Bytes of `struct sock_common` read at once: every field we need lies in
/// its first 96 bytes on the kernels we know (6.1 to 6.18), and one
/// `bpf_probe_read_kernel` of 96 bytes costs about what one of 2 bytes costs
/// (the call dominates). Every full, timewait and request socket is larger.
const SKC_SPAN: usize = 96;

#[repr(C, align(8))]
struct SkcBytes([u8; SKC_SPAN]);

impl SkcBytes {
    /// The `T` at `off`; zero if out of range (cannot happen when
    /// [`skc_fits`] holds, which is checked first).
    #[inline(always)]
    fn get<T: Copy + Default>(&self, off: u32) -> T {
        let off = off as usize;
        if off + core::mem::size_of::<T>() > SKC_SPAN {
            return T::default();
        }
        unsafe { core::ptr::read_unaligned(self.0.as_ptr().add(off) as *const T) }
    }
}

/// Whether every `sock_common` field we read lies within [`SKC_SPAN`]. The
/// offsets are load-time constants (frozen rodata, from BTF): the verifier
/// prunes the branch not taken, so an unexpected layout costs nothing but
/// the slower per-field path.
#[inline(always)]
fn skc_fits() -> bool {
    let within = |off: u32, size: u32| off + size <= SKC_SPAN as u32;
    within(cfg!(skc_daddr), 4)
        && within(cfg!(skc_rcv_saddr), 4)
        && within(cfg!(skc_dport), 2)
        && within(cfg!(skc_num), 2)
        && within(cfg!(skc_family), 2)
        && within(cfg!(skc_state), 1)
        && within(cfg!(skc_net), 8)
        && within(cfg!(skc_v6_daddr), 16)
        && within(cfg!(skc_v6_rcv_saddr), 16)
}

/// Fills identity fields of any socket (full, timewait or request): they all
/// start with `struct sock_common`.
#[inline(always)]
fn fill_sock_common(event: &mut RawEvent, sk: u64) -> Result<(), i32> {
    if !skc_fits() {
        return fill_sock_common_by_field(event, sk);
    }
    event.sk = sk;
    let skc: SkcBytes = read(sk, 0)?;
    let family: u16 = skc.get(cfg!(skc_family));
    event.family = family as u8;
    event.new_state = skc.get(cfg!(skc_state));
    event.dport = u16::from_be(skc.get(cfg!(skc_dport)));
    event.sport = skc.get(cfg!(skc_num));
    if event.family == AF_INET6 {
        event.daddr = skc.get(cfg!(skc_v6_daddr));
        event.saddr = skc.get(cfg!(skc_v6_rcv_saddr));
    } else {
        let daddr: [u8; 4] = skc.get(cfg!(skc_daddr));
        let saddr: [u8; 4] = skc.get(cfg!(skc_rcv_saddr));
        event.daddr[..4].copy_from_slice(&daddr);
        event.saddr[..4].copy_from_slice(&saddr);
    }
    let net: u64 = skc.get(cfg!(skc_net));
    if net != 0 {
        event.netns = read(net, cfg!(net_ns_inum))?;
    }
    Ok(())
}

/// [`fill_sock_common`] one field at a time, for a layout we do not expect.
#[inline(always)]
fn fill_sock_common_by_field(event: &mut RawEvent, sk: u64) -> Result<(), i32> {
    event.sk = sk;
    let family: u16 = read(sk, cfg!(skc_family))?;
    event.family = family as u8;
    event.new_state = read(sk, cfg!(skc_state))?;
    let dport: u16 = read(sk, cfg!(skc_dport))?;
    event.dport = u16::from_be(dport);
    event.sport = read(sk, cfg!(skc_num))?;
    if event.family == AF_INET6 {
        event.daddr = read(sk, cfg!(skc_v6_daddr))?;
        event.saddr = read(sk, cfg!(skc_v6_rcv_saddr))?;
    } else {
        let daddr: [u8; 4] = read(sk, cfg!(skc_daddr))?;
        let saddr: [u8; 4] = read(sk, cfg!(skc_rcv_saddr))?;
        event.daddr[..4].copy_from_slice(&daddr);
        event.saddr[..4].copy_from_slice(&saddr);
    }
    let net: u64 = read(sk, cfg!(skc_net))?;
    if net != 0 {
        event.netns = read(net, cfg!(net_ns_inum))?;
    }
    Ok(())
}

/// Fills the current task's identity. It is the socket's owner only when
/// `flags::OWNED_BY_USER` is also set (see KERNEL-NOTES.md: softirq runs on
/// top of unrelated tasks).
#[inline(always)]
fn fill_task(event: &mut RawEvent) {
    event.pid_tgid = bpf_get_current_pid_tgid();
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Fills a full socket event: identity, cookie, lock ownership, task.
/// `sk` must come straight from the tracepoint's BTF arguments: the cookie
/// helper only accepts a typed socket pointer.
#[inline(always)]
fn fill_full_sock(event: &mut RawEvent, sk: *mut c_void) -> Result<(), i32> {
    event.cookie = unsafe { bpf_get_socket_cookie(sk) };
    fill_task(event);
    fill_sock_fields(event, sk as u64)
}

/// The full socket's identity, ports and lock ownership (no cookie, no task).
#[inline(always)]
fn fill_sock_fields(event: &mut RawEvent, sk: u64) -> Result<(), i32> {
    fill_sock_common(event, sk)?;
    let sport: u16 = read(sk, cfg!(inet_sport))?;
    if sport != 0 {
        event.sport = u16::from_be(sport);
    }
    let owned: i32 = read(sk, cfg!(sk_lock_owned))?;
    if owned != 0 {
        event.flags |= flags::OWNED_BY_USER;
    }
    Ok(())
}

#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    matches!(read_field(sk, cfg!(sk_protocol)), Ok(p) if p == IPPROTO_TCP as u32)
}

#[inline(always)]
fn is_full_sock(sk: u64) -> bool {
    match read::<u8>(sk, cfg!(skc_state)) {
        Ok(state) => state != tcp_state::TIME_WAIT && state != tcp_state::NEW_SYN_RECV,
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Full sockets
// ---------------------------------------------------------------------------

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcptrace_state(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    match try_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: *mut c_void = ctx.arg(0);
    if !is_tcp(sk as u64) {
        return Ok(());
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if old == tcp_state::SYN_RECV as i32 {
        send_held(sk);
    }
    // A child still carrying its listener's remote port (0): older kernel.
    if old == tcp_state::LISTEN as i32
        && new == tcp_state::SYN_RECV as i32
        && matches!(read::<u16>(sk as u64, cfg!(skc_dport)), Ok(0))
        && hold_child(sk as u64, old, new)
    {
        return Ok(());
    }
    emit(|event| {
        event.kind = kind::STATE;
        fill_full_sock(event, sk)?;
        event.old_state = old as u8;
        event.new_state = new as u8;
        Ok(())
    });
    Ok(())
}

/// Holds a child's LISTEN -> SYN_RECV (see [`HELD`]); false if it cannot
/// (map full): the caller then sends it at once, tuple incomplete.
#[inline(always)]
fn hold_child(sk: u64, old: i32, new: i32) -> bool {
    let Some(template) = HELD_TEMPLATE.get(0) else { return false };
    if HELD.insert(&sk, template, 0).is_err() {
        return false;
    }
    let Some(held) = HELD.get_ptr_mut(&sk) else { return false };
    let child = unsafe { &mut (*held).child };
    child.ts_ns = unsafe { bpf_ktime_get_ns() };
    child.kind = kind::STATE;
    // No cookie yet: asking now would give one that the kernel replaces.
    fill_task(child);
    if fill_sock_fields(child, sk).is_err() {
        count(stat::READ_ERRORS);
    }
    child.old_state = old as u8;
    child.new_state = new as u8;
    child.sk = sk;
    if let Some(last) = LAST_HELD.get_ptr_mut(0) {
        unsafe { *last = sk };
    }
    true
}

/// Sends what is held for `sk` (see [`HELD`]), before its own transition:
/// the child's event with its addresses and ports read now and its cookie,
/// then its request's cancel.
#[inline(always)]
fn send_held(sk: *mut c_void) {
    let key = sk as u64;
    let Some(held) = HELD.get_ptr_mut(&key) else { return };
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // Inlined: as a BPF subprogram its frame came on top of the caller's,
    // more stack together than the 6.1 verifier allows (672 of 512 bytes;
    // 6.18 gives tracing programs a private stack).
    emit(
        #[inline(always)]
        |event| {
            *event = unsafe { (*held).child };
            let (old, new) = (event.old_state, event.new_state);
            fill_sock_fields(event, key)?;
            event.old_state = old;
            event.new_state = new;
            event.cookie = cookie;
            Ok(())
        },
    );
    if unsafe { (*held).cancel.kind } != 0 {
        emit(
            #[inline(always)]
            |event| {
                *event = unsafe { (*held).cancel };
                event.kind = kind::REQ_CANCELLED;
                Ok(())
            },
        );
    }
    let _ = HELD.remove(&key);
    if let Some(last) = LAST_HELD.get_ptr_mut(0)
        && unsafe { *last } == key
    {
        unsafe { *last = 0 };
    }
}

/// Holds a request's cancel with the child held last on this CPU if it is
/// that request's child (same ports: its addresses are in place by now);
/// true if held.
#[inline(always)]
fn hold_cancel(req: u64) -> bool {
    let Some(last) = LAST_HELD.get_ptr_mut(0) else { return false };
    let child_sk = unsafe { *last };
    if child_sk == 0 {
        return false;
    }
    unsafe { *last = 0 };
    let Some(held) = HELD.get_ptr_mut(&child_sk) else { return false };
    let cancel = unsafe { &mut (*held).cancel };
    if cancel.kind != 0 {
        return false;
    }
    cancel.ts_ns = unsafe { bpf_ktime_get_ns() };
    if fill_req(cancel, req).is_err() {
        count(stat::READ_ERRORS);
    }
    let dport: u16 = read(child_sk, cfg!(skc_dport)).unwrap_or(0);
    let sport: u16 = read(child_sk, cfg!(skc_num)).unwrap_or(0);
    if cancel.dport != u16::from_be(dport) || cancel.sport != sport {
        // Another request's: not held (sent by the caller).
        *cancel = RawEvent::ZERO;
        return false;
    }
    cancel.kind = kind::REQ_CANCELLED;
    true
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, reason)`;
/// `sk` is NULL for resets sent without a socket and may be a timewait socket.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcptrace_send_reset(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if !sk.is_null() && is_full_sock(sk as u64) {
        emit(|event| {
            event.kind = kind::RESET_SENT;
            fill_full_sock(event, sk)
        });
    }
    0
}

/// `tcp_receive_reset(struct sock *sk)`
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcptrace_receive_reset(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    emit(|event| {
        event.kind = kind::RESET_RECEIVED;
        fill_full_sock(event, sk)
    });
    0
}

/// `tcp_sendmsg_locked(const struct sock *sk, ...)`: process context, socket
/// locked by the sender. Emits only when the sending process changes.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcptrace_sendmsg(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(last) = unsafe { OWNERS.get(&cookie) } {
        if *last == tgid {
            return 0;
        }
    }
    let _ = OWNERS.insert(&cookie, &tgid, 0);
    emit(|event| {
        event.kind = kind::OWNER;
        fill_full_sock(event, sk)
    });
    0
}

/// `inet_sk_error_report(const struct sock *sk)`
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn tcptrace_sk_error(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if !is_tcp(sk as u64) {
        return 0;
    }
    // tcp_disconnect() reports with sk_err already cleared: nothing to say.
    let Ok(err) = read::<i32>(sk as u64, cfg!(sk_err)) else { return 0 };
    if err == 0 {
        return 0;
    }
    emit(|event| {
        event.kind = kind::SOCK_ERROR;
        fill_full_sock(event, sk)?;
        event.aux32 = err as u32;
        Ok(())
    });
    0
}

/// Shared body of both retransmit programs. `err` is the transmit result on
/// kernels whose tracepoint reports failures too (6.12+), else 0.
#[inline(always)]
fn retransmit(sk: *mut c_void, skb: u64, err: i32) {
    if err != 0 {
        // Not sent: the kernel counts it in TCPRetransFail, not in total_retrans.
        return;
    }
    emit(|event| {
        event.kind = kind::RETRANSMIT;
        fill_full_sock(event, sk)?;
        let cb = skb + cfg!(skb_cb) as u64;
        let tcp_flags: u8 = read(cb, cfg!(tcb_tcp_flags))?;
        if tcp_flags & 0x02 != 0 {
            event.flags |= flags::SYN;
        }
        if tcp_flags & 0x01 != 0 {
            event.flags |= flags::FIN;
        }
        let segs: u16 = read(cb, cfg!(tcb_gso_segs))?;
        event.aux32 = if segs == 0 { 1 } else { segs as u32 };
        event.aux8 = read_field(sk as u64, cfg!(icsk_ca_state))? as u8;
        Ok(())
    });
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)` (6.12+)
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcptrace_retransmit(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let err: i32 = ctx.arg(2);
    retransmit(sk, skb, err);
    0
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb)`
/// (older kernels: fires only for segments actually sent).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcptrace_retransmit_legacy(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    retransmit(sk, skb, 0);
    0
}

// ---------------------------------------------------------------------------
// Request sockets (SYN_RECV) and timewait sockets: seen through their timers
// ---------------------------------------------------------------------------

/// `tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req)`
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcptrace_synack(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let listener: u64 = ctx.arg(0);
    let req: u64 = ctx.arg(1);
    emit(|event| {
        event.kind = kind::SYNACK_RETRANSMIT;
        event.aux = listener;
        fill_task(event);
        fill_sock_common(event, req)?;
        event.aux8 = read(req, cfg!(req_num_retrans))?;
        Ok(())
    });
    0
}

/// Which kind of socket a timer belongs to, from its callback.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timer {
    TimeWait(u64),
    Request(u64),
}

#[inline(always)]
fn classify_timer(timer: u64, function: u64) -> Option<Timer> {
    if function == 0 {
        return None;
    }
    if function == cfg!(tw_timer_handler) {
        Some(Timer::TimeWait(timer - cfg!(tw_timer) as u64))
    } else if function == cfg!(reqsk_timer_handler) {
        Some(Timer::Request(timer - cfg!(req_timer) as u64))
    } else {
        None
    }
}

#[inline(always)]
fn timer_owner(timer: u64) -> Option<Timer> {
    let function: u64 = read(timer, cfg!(timer_function)).ok()?;
    classify_timer(timer, function)
}

#[inline(always)]
fn fill_tw(event: &mut RawEvent, tw: u64) -> Result<(), i32> {
    fill_task(event);
    fill_sock_common(event, tw)?;
    event.cookie = read(tw, cfg!(skc_cookie))?;
    event.aux8 = read(tw, cfg!(tw_substate))?;
    let sport: u16 = read(tw, cfg!(tw_sport))?;
    event.sport = u16::from_be(sport);
    Ok(())
}

#[inline(always)]
fn fill_req(event: &mut RawEvent, req: u64) -> Result<(), i32> {
    fill_task(event);
    fill_sock_common(event, req)?;
    event.aux = read(req, cfg!(skc_listener))?;
    event.aux8 = read(req, cfg!(req_num_retrans))?;
    Ok(())
}

/// `timer_start(struct timer_list *timer, unsigned long bucket_expiry)`
#[btf_tracepoint(function = "timer_start")]
pub fn tcptrace_timer_start(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let timer: u64 = ctx.arg(0);
    let expiry: u64 = ctx.arg(1);
    match timer_owner(timer) {
        Some(Timer::TimeWait(tw)) => emit(|event| {
            event.kind = kind::TW_ARMED;
            fill_tw(event, tw)?;
            event.aux = expiry;
            Ok(())
        }),
        Some(Timer::Request(req)) => emit(|event| {
            event.kind = kind::REQ_ARMED;
            fill_req(event, req)
        }),
        None => {}
    }
    0
}

/// `timer_expire_entry(struct timer_list *timer, unsigned long baseclk)`
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn tcptrace_timer_expire(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let timer: u64 = ctx.arg(0);
    match timer_owner(timer) {
        Some(Timer::TimeWait(tw)) => emit(|event| {
            event.kind = kind::TW_EXPIRED;
            fill_tw(event, tw)
        }),
        Some(Timer::Request(req)) => {
            if let Some(slot) = EXPIRING.get_ptr_mut(0) {
                unsafe { *slot = timer };
            }
            emit(|event| {
                event.kind = kind::REQ_EXPIRED;
                fill_req(event, req)?;
                fill_req_expiry(event, req)
            })
        }
        None => {}
    }
    0
}

/// What decides a request's fate when its timer fires: was the final ACK
/// received, is the listener still listening, is TCP_DEFER_ACCEPT set.
#[inline(always)]
fn fill_req_expiry(event: &mut RawEvent, req: u64) -> Result<(), i32> {
    if read_field(req, cfg!(ireq_acked))? != 0 {
        event.flags |= flags::ACKED;
    }
    let listener = event.aux;
    if listener != 0 {
        let state: u8 = read(listener, cfg!(skc_state))?;
        if state != tcp_state::LISTEN {
            event.flags |= flags::LISTENER_GONE;
        }
        let defer: u8 = read(listener, cfg!(icsk_defer_accept))?;
        event.aux32 = defer as u32;
    }
    Ok(())
}

/// `timer_expire_exit(struct timer_list *timer)`: the timer may be freed by
/// now, so it is matched against the one recorded at entry, never read.
#[btf_tracepoint(function = "timer_expire_exit")]
pub fn tcptrace_timer_expire_exit(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let timer: u64 = ctx.arg(0);
    let Some(slot) = EXPIRING.get_ptr_mut(0) else {
        return 0;
    };
    if unsafe { *slot } != timer || timer == 0 {
        return 0;
    }
    unsafe { *slot = 0 };
    let req = timer - cfg!(req_timer) as u64;
    emit(|event| {
        event.kind = kind::REQ_EXPIRE_DONE;
        event.sk = req;
        fill_task(event);
        Ok(())
    });
    0
}

/// `timer_cancel(struct timer_list *timer)`: fires before the timer is
/// detached, so its callback is still readable.
#[btf_tracepoint(function = "timer_cancel")]
pub fn tcptrace_timer_cancel(ctx: BtfTracePointContext) -> i32 {
    if !tracing() {
        return 0;
    }
    let timer: u64 = ctx.arg(0);
    match timer_owner(timer) {
        Some(Timer::TimeWait(tw)) => emit(|event| {
            event.kind = kind::TW_CANCELLED;
            fill_tw(event, tw)?;
            if connecting_to(event) {
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
                return 0;
            }
            emit(|event| {
                event.kind = kind::REQ_CANCELLED;
                fill_req(event, req)
            })
        }
        None => {}
    }
    0
}

/// True when the current task is inside connect() toward the event's peer:
/// a timewait socket cancelled there is being reused for the new connection.
#[inline(always)]
fn connecting_to(event: &RawEvent) -> bool {
    // The key must live on the stack: older verifiers (Linux 6.1) reject
    // ring buffer memory (`&event.pid_tgid`) as a map key.
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = (unsafe { CONNECTS.get(&pid_tgid) }) else {
        return false;
    };
    args.family == event.family as u16 && args.port == event.dport && args.addr == event.daddr
}

/// True when the socket's namespace has no references left (cleanup_net is
/// purging its timewait sockets).
#[inline(always)]
fn netns_dying(sk: u64) -> bool {
    let offset = cfg!(net_ns_refcount);
    if offset == 0 {
        return false;
    }
    let Ok(net) = read::<u64>(sk, cfg!(skc_net)) else { return false };
    net != 0 && matches!(read::<u32>(net, offset), Ok(0))
}

// ---------------------------------------------------------------------------
// connect() failures (classic syscall tracepoints: per-syscall, cheap)
// ---------------------------------------------------------------------------

const EINPROGRESS: i64 = 115;

/// `syscalls:sys_enter_connect`: remember where the task connects to.
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn tcptrace_connect_enter(ctx: TracePointContext) -> u32 {
    if !tracing() {
        return 0;
    }
    match try_connect_enter(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_connect_enter(ctx: &TracePointContext) -> Result<(), i32> {
    // Field offsets from tracefs format: uservaddr at 24.
    let uaddr: u64 = unsafe { ctx.read_at(24)? };
    if uaddr == 0 {
        return Ok(());
    }
    let family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16)? };
    let mut args = ConnectArgs { addr: [0; 16], family, port: 0, _pad: 0 };
    let port: u16 = unsafe { bpf_probe_read_user((uaddr + 2) as *const u16)? };
    args.port = u16::from_be(port);
    if family == AF_INET as u16 {
        let a: [u8; 4] = unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4])? };
        args.addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 as u16 {
        args.addr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16])? };
    } else {
        return Ok(());
    }
    if CONNECTS.insert(&bpf_get_current_pid_tgid(), &args, 0).is_err() {
        // Only when 16384 connects are in flight at once: worth telling.
        warn!(ctx, "connect() table full: timewait reuse and connect errors may be missed");
    }
    Ok(())
}

/// `syscalls:sys_exit_connect`: report failures (EADDRNOTAVAIL is the direct
/// symptom of ephemeral port exhaustion).
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn tcptrace_connect_exit(ctx: TracePointContext) -> u32 {
    if !tracing() {
        return 0;
    }
    match try_connect_exit(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_connect_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(args) = (unsafe { CONNECTS.get(&pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = CONNECTS.remove(&pid_tgid);
    let ret: i64 = unsafe { ctx.read_at(16)? };
    if ret >= 0 || ret == -EINPROGRESS {
        return Ok(());
    }
    emit(|event| {
        event.kind = kind::CONNECT_ERROR;
        fill_task(event);
        // The syscall's own task: by construction the process that connects.
        event.flags |= flags::OWNED_BY_USER;
        event.family = args.family as u8;
        event.daddr = args.addr;
        event.dport = args.port;
        event.aux32 = (-ret) as u32;
        event.netns = current_netns()?;
        Ok(())
    });
    Ok(())
}

#[inline(always)]
fn current_netns() -> Result<u32, i32> {
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = read(task, cfg!(task_nsproxy))?;
    if nsproxy == 0 {
        return Ok(0);
    }
    let net: u64 = read(nsproxy, cfg!(nsproxy_net_ns))?;
    read(net, cfg!(net_ns_inum))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
