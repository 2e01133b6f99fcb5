//! Every map of the kernel programs, and the types of their values.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{RawEvent, RawSummary, stat};

/// Default size; userspace overrides it (`--ring-buffer-size`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// `[0] == 1` while tracing (see `names::CONTROL`).
#[map]
pub(crate) static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// Last process seen sending on a socket (cookie -> tgid): `OWNER` events are
/// emitted only when it changes, not for every sendmsg.
#[map]
pub(crate) static OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Destination of a connect() in progress, by pid_tgid (sys_enter -> sys_exit).
#[map]
pub(crate) static CONNECTS: HashMap<u64, ConnectArgs> = HashMap::with_max_entries(16384, 0);

/// Request-socket timer whose handler is running on this CPU (expire_entry ->
/// expire_exit). Timer callbacks never nest on one CPU.
#[map]
pub(crate) static EXPIRING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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
pub(crate) static HELD: HashMap<u64, Held> = HashMap::with_max_entries(8192, 0);

/// The all-zero [`Held`] that `HELD` entries start from: a map value, since
/// two events (240 bytes) do not fit the stack beside everything else.
#[map]
pub(crate) static HELD_TEMPLATE: Array<Held> = Array::with_max_entries(1, 0);

/// The child held last on this CPU: its request's cancel follows in the same
/// softirq (`inet_csk_complete_hashdance`). 0: none.
#[map]
pub(crate) static LAST_HELD: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Held {
    pub(crate) child: RawEvent,
    /// `kind == 0`: no cancel held.
    pub(crate) cancel: RawEvent,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ConnectArgs {
    pub(crate) addr: [u8; 16],
    pub(crate) family: u16,
    pub(crate) port: u16,
    pub(crate) _pad: u32,
    /// The connecting socket, from its CLOSE -> SYN_SENT inside this
    /// connect() (0 until then): a timewait socket is reused by this
    /// connect only if the socket took over its local port.
    pub(crate) sk: u64,
}

/// Summary mode: each full socket's transitions not yet sent, by cookie
/// (see `tracer_common::RawSummary`). Entries are made at a socket's first
/// summarised transition and removed at its CLOSE. Not preallocated: the
/// memory follows the live sockets (360 bytes each), up to the cap; beyond
/// it, sockets fall back to one event per transition (`stat::PENDING_FULL`).
/// A hash map rather than socket-local storage: tracing programs may call
/// `bpf_sk_storage_get` only from Linux 5.11 (5.10 is supported), and
/// userspace can read a hash map at the end (what is still pending then).
#[map]
pub(crate) static PENDING: HashMap<u64, RawSummary> =
    HashMap::with_max_entries(262_144, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The all-zero [`RawSummary`] that `PENDING` entries start from (too large
/// for the stack beside everything else).
#[map]
pub(crate) static PENDING_TEMPLATE: Array<RawSummary> = Array::with_max_entries(1, 0);

/// Summary mode: a request socket's first `REQ_ARMED`, held by request
/// socket until the request ends. A completed handshake sends it with its
/// child's LISTEN -> SYN_RECV and the request's cancel in one record
/// ([`HELD`]); anything else about the request sends it first.
#[map]
pub(crate) static REQ_ARMED: HashMap<u64, RawEvent> =
    HashMap::with_max_entries(65_536, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The all-zero event `REQ_ARMED` entries start from.
#[map]
pub(crate) static EVENT_TEMPLATE: Array<RawEvent> = Array::with_max_entries(1, 0);
