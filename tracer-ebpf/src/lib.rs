//! Types shared by the kernel programs (`src/main.rs`, built for the BPF target)
//! and the userspace collector (`tracer`, built with the `user` feature).
//!
//! Everything that crosses the kernel/userspace boundary is `#[repr(C)]` and made
//! of fixed-size integers only: no enums, no `Option`, no `bool`. Userspace
//! validates every field when it decodes a record (see `tracer/src/decode.rs`).
#![no_std]

/// Layout version of [`RawEvent`]. Bump it whenever the layout changes; record
/// files store it so that an old file is never misread.
pub const EVENT_LAYOUT_VERSION: u32 = 1;

/// What a [`RawEvent`] reports. Values are stable: record files store them.
pub mod kind {
    /// `sock:inet_sock_set_state` for a TCP full socket.
    pub const STATE: u8 = 1;
    /// `tcp:tcp_send_reset` on a full socket (we sent an RST).
    pub const RESET_SENT: u8 = 2;
    /// `tcp:tcp_receive_reset` (the peer sent us an RST).
    pub const RESET_RECEIVED: u8 = 3;
    /// `tcp:tcp_sendmsg_locked`, emitted only when the sending process differs
    /// from the last one seen on this socket: names the owner of accepted sockets.
    pub const OWNER: u8 = 4;
    /// `tcp:tcp_retransmit_skb`.
    pub const RETRANSMIT: u8 = 5;
    /// `tcp:tcp_retransmit_synack` (request socket).
    pub const SYNACK_RETRANSMIT: u8 = 6;
    /// `sock:inet_sk_error_report` (e.g. ETIMEDOUT when retransmissions give up).
    pub const SOCK_ERROR: u8 = 7;
    /// `timer:timer_start` for a timewait socket's `tw_timer`.
    pub const TW_ARMED: u8 = 8;
    /// `timer:timer_expire_entry` for `tw_timer`: TIME_WAIT ends normally.
    pub const TW_EXPIRED: u8 = 9;
    /// `timer:timer_cancel` for `tw_timer`: re-arm, or early end (reuse, RST, SYN).
    pub const TW_CANCELLED: u8 = 10;
    /// `timer:timer_start` for a request socket's `rsk_timer` (SYN arrived, or re-arm).
    pub const REQ_ARMED: u8 = 11;
    /// `timer:timer_expire_entry` for `rsk_timer`.
    pub const REQ_EXPIRED: u8 = 12;
    /// `timer:timer_cancel` for `rsk_timer`: handshake completed or request dropped.
    pub const REQ_CANCELLED: u8 = 13;
    /// `timer:timer_expire_exit` after a `REQ_EXPIRED`: without a `REQ_ARMED` in
    /// between, the handler dropped the request.
    pub const REQ_EXPIRE_DONE: u8 = 14;
    /// `syscalls:sys_exit_connect` with an error other than EINPROGRESS.
    pub const CONNECT_ERROR: u8 = 15;
    /// Highest valid value.
    pub const MAX: u8 = 15;
}

/// Bits of [`RawEvent::flags`].
pub mod flags {
    /// The socket lock was owned by a user context (`sk_lock.owned`): the current
    /// task is a process operating on this socket in a system call, so its
    /// pid/comm name the socket's owner. Transitions in softirq never set it.
    pub const OWNED_BY_USER: u8 = 1 << 0;
    /// Retransmitted segment carried SYN.
    pub const SYN: u8 = 1 << 1;
    /// Retransmitted segment carried FIN.
    pub const FIN: u8 = 1 << 2;
    /// Request socket: the final ACK arrived (TCP_DEFER_ACCEPT or a full accept queue).
    pub const ACKED: u8 = 1 << 3;
    /// Request socket: its listener is no longer in LISTEN.
    pub const LISTENER_GONE: u8 = 1 << 4;
    /// Timewait cancel happened inside connect() of the current task toward the
    /// timewait socket's peer: the port is being reused (`tcp_tw_reuse`).
    pub const IN_CONNECT: u8 = 1 << 5;
    /// The socket's network namespace is being destroyed (its reference count
    /// is zero): timewait sockets are purged, not expired.
    pub const NETNS_DYING: u8 = 1 << 6;
}

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// Events a program wanted to emit (after filtering).
    pub const SEEN: u32 = 0;
    /// Unused (was: events written to the ring buffer, always SEEN - LOST;
    /// counting it cost a map lookup and an atomic add per event).
    pub const UNUSED: u32 = 1;
    /// Events lost because the ring buffer was full (reserve failed).
    pub const LOST: u32 = 2;
    /// Kernel memory reads that failed (event emitted with zeroed fields).
    pub const READ_ERRORS: u32 = 3;
    /// Number of slots.
    pub const COUNT: u32 = 4;
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// One record in the ring buffer. 120 bytes, 8-byte aligned.
///
/// Field meaning by kind (anything not listed is zero):
/// - `sk`: kernel address of the socket, timewait socket or request socket. It
///   identifies the object only while it lives; the address is reused later.
/// - `cookie`: socket cookie (unique for the boot). Timewait sockets inherit
///   the cookie of the full socket they replace. Zero for request sockets.
/// - `aux`: `REQ_*`/`SYNACK_RETRANSMIT`: listener address; `TW_ARMED`/`REQ_ARMED`:
///   timer expiry (jiffies).
/// - `aux32`: `RETRANSMIT`: segments retransmitted; `SOCK_ERROR`/`CONNECT_ERROR`:
///   errno; `REQ_EXPIRED`: listener's TCP_DEFER_ACCEPT (in retransmits).
/// - `aux8`: `RETRANSMIT`: congestion-avoidance state (`icsk_ca_state`);
///   `TW_*`: timewait substate; `REQ_*`: SYN-ACK retransmits so far (`num_retrans`).
/// - `old_state`/`new_state`: `STATE` transitions; other socket kinds put the
///   socket's current state in `new_state`.
/// - `pid_tgid`, `comm`, `cgroup_id`: the task running when the hook fired; it
///   is only the socket's owner when `flags::OWNED_BY_USER` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub ts_ns: u64,
    pub sk: u64,
    pub cookie: u64,
    pub aux: u64,
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub netns: u32,
    pub aux32: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    pub kind: u8,
    pub family: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub flags: u8,
    pub aux8: u8,
    pub _pad: [u8; 6],
}

impl RawEvent {
    pub const ZERO: Self = Self {
        ts_ns: 0,
        sk: 0,
        cookie: 0,
        aux: 0,
        pid_tgid: 0,
        cgroup_id: 0,
        netns: 0,
        aux32: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        comm: [0; 16],
        sport: 0,
        dport: 0,
        kind: 0,
        family: 0,
        old_state: 0,
        new_state: 0,
        flags: 0,
        aux8: 0,
        _pad: [0; 6],
    };
}

pub const RAW_EVENT_SIZE: usize = core::mem::size_of::<RawEvent>();
const _: () = assert!(RAW_EVENT_SIZE == 120);

/// A field inside a kernel struct, possibly a bitfield: read the 32-bit word at
/// `byte`, shift right by `shift`, keep `bits` bits. Plain fields have `shift` 0
/// and `bits` equal to their width. Computed from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Field {
    pub byte: u32,
    pub shift: u16,
    pub bits: u16,
}

impl Field {
    pub const ZERO: Self = Self { byte: 0, shift: 0, bits: 0 };

    /// Extracts this field from the 32-bit little-endian word read at `byte`.
    #[inline(always)]
    pub const fn extract(&self, word: u32) -> u32 {
        let shifted = word >> self.shift;
        if self.bits >= 32 { shifted } else { shifted & ((1u32 << self.bits) - 1) }
    }
}

/// Everything the kernel programs need to know about the running kernel:
/// struct offsets (from `/sys/kernel/btf/vmlinux`), timer callback addresses
/// (from `/proc/kallsyms`) and runtime settings. Set once as the read-only
/// global `CONFIG` before loading; the verifier sees the values as constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    // struct sock_common (offset 0 of sock, inet_timewait_sock and request_sock)
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_cookie: u32,
    /// `skc_listener` (request sockets): union member at the same place as `skc_flags`.
    pub skc_listener: u32,
    // struct net
    pub net_ns_inum: u32,
    /// `net.ns.__ns_ref` (6.18+) or `net.ns.count`; 0 when neither exists.
    pub net_ns_refcount: u32,
    // struct inet_sock: the bound source port survives unhashing at CLOSE,
    // unlike skc_num, which inet_put_port() clears before the tracepoint.
    pub inet_sport: u32,
    // struct sock
    pub sk_protocol: Field,
    pub sk_lock_owned: u32,
    pub sk_err: u32,
    // struct inet_connection_sock
    pub icsk_ca_state: Field,
    pub icsk_defer_accept: u32,
    // struct inet_timewait_sock
    pub tw_substate: u32,
    pub tw_sport: u32,
    pub tw_timer: u32,
    // struct request_sock / inet_request_sock
    pub req_timer: u32,
    pub req_num_retrans: u32,
    pub ireq_acked: Field,
    // struct sk_buff / tcp_skb_cb
    pub skb_cb: u32,
    pub tcb_tcp_flags: u32,
    pub tcb_gso_segs: u32,
    // struct task_struct / nsproxy
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    // struct timer_list
    pub timer_function: u32,
    /// Address of `tw_timer_handler` (0: timewait hooks stay idle).
    pub tw_timer_handler: u64,
    /// Address of `reqsk_timer_handler` (0: request-socket hooks stay idle).
    pub reqsk_timer_handler: u64,
    /// Submit with a wakeup only once this many bytes wait in the ring buffer;
    /// userspace drains on a timer in between. 0: wake up on every event.
    pub wakeup_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<KernelConfig>() == 160);

impl KernelConfig {
    pub const ZERO: Self = Self {
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_num: 0,
        skc_family: 0,
        skc_state: 0,
        skc_net: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        skc_cookie: 0,
        skc_listener: 0,
        net_ns_inum: 0,
        net_ns_refcount: 0,
        inet_sport: 0,
        sk_protocol: Field::ZERO,
        sk_lock_owned: 0,
        sk_err: 0,
        icsk_ca_state: Field::ZERO,
        icsk_defer_accept: 0,
        tw_substate: 0,
        tw_sport: 0,
        tw_timer: 0,
        req_timer: 0,
        req_num_retrans: 0,
        ireq_acked: Field::ZERO,
        skb_cb: 0,
        tcb_tcp_flags: 0,
        tcb_gso_segs: 0,
        task_nsproxy: 0,
        nsproxy_net_ns: 0,
        timer_function: 0,
        tw_timer_handler: 0,
        reqsk_timer_handler: 0,
        wakeup_bytes: 0,
    };
}

/// Names of maps and programs, shared so that userspace never misspells them.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const CONFIG: &str = "CONFIG";
    /// `CONTROL[0]`: 1 while tracing. Every program checks it first, so that
    /// all hooks start and stop at one instant although they are attached
    /// and detached one by one.
    pub const CONTROL: &str = "CONTROL";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are `repr(C)`, made only of integers and arrays of
    // integers, with explicit padding: every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::KernelConfig {}
}
