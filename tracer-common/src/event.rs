//! The ring-buffer record, [`RawEvent`]: its layout, its kinds and flags, and
//! the named accessors of the fields whose meaning depends on the kind.

/// Layout version of [`RawEvent`]. Bump it whenever the layout changes; record
/// files store it so that an old file is never misread.
pub const EVENT_LAYOUT_VERSION: u32 = 1;

/// Compile-time checks of [`RawEvent`]'s layout: each field's offset and
/// exact type (hence size), the struct's size and alignment, and that the
/// fields tile it (no implicit padding, which would be uninitialised bytes
/// in the ring buffer and in record files).
macro_rules! raw_event_layout {
    (size: $size:literal, align: $align:literal; $($field:ident: $ty:ty = $offset:literal,)*) => {
        const _: () = {
            $(
                assert!(core::mem::offset_of!(RawEvent, $field) == $offset);
                // Fails to compile unless the field has exactly this type.
                let _: $ty = RawEvent::ZERO.$field;
            )*
            assert!(core::mem::size_of::<RawEvent>() == $size);
            assert!(core::mem::align_of::<RawEvent>() == $align);
            assert!(0 $(+ core::mem::size_of::<$ty>())* == $size);
        };
    };
}

// The layout that EVENT_LAYOUT_VERSION names, pinned field by field: moving,
// resizing or retyping a field, or adding one, fails to compile here. Whoever
// edits this table changes the on-disk layout: bump EVENT_LAYOUT_VERSION in the
// same change (old record files are then refused instead of misread), and
// update the offsets that tracer/tests/fuzz.rs reads independently.
raw_event_layout! {
    size: 120, align: 8;
    ts_ns: u64 = 0,
    sk: u64 = 8,
    cookie: u64 = 16,
    aux: u64 = 24,
    pid_tgid: u64 = 32,
    cgroup_id: u64 = 40,
    netns: u32 = 48,
    aux32: u32 = 52,
    saddr: [u8; 16] = 56,
    daddr: [u8; 16] = 72,
    comm: [u8; 16] = 88,
    sport: u16 = 104,
    dport: u16 = 106,
    kind: u8 = 108,
    family: u8 = 109,
    old_state: u8 = 110,
    new_state: u8 = 111,
    flags: u8 = 112,
    aux8: u8 = 113,
    _pad: [u8; 6] = 114,
}

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
    /// `syscalls:sys_exit_accept4`/`sys_exit_accept`: the application took a
    /// TCP child socket off its listener's accept queue. The syscall's own
    /// task, so the socket's owner.
    pub const ACCEPTED: u8 = 16;
    /// `skb:kfree_skb` with a drop reason (Linux 5.17+) for a TCP segment:
    /// the kernel threw it away. The tuple is the packet's (source ->
    /// destination), not a socket's.
    pub const DROP: u8 = 17;
    /// Summary mode: a socket's pending transitions, a [`RawSummary`](crate::RawSummary)
    /// record (larger than a `RawEvent`, whose fields start it).
    pub const SUMMARY: u8 = 18;
    /// Highest kind of a [`RawEvent`] record (`SUMMARY` records are larger).
    pub const MAX: u8 = 17;
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
    /// `RETRANSMIT`: the timing fields ([`RawEvent::since_ack_us`],
    /// [`RawEvent::rto_us`], [`RawEvent::backoff`]) are set. Absent in records
    /// of older versions and when the kernel's tick rate is unknown.
    pub const TIMING: u8 = 1 << 7;
}

/// One record in the ring buffer. 120 bytes, 8-byte aligned.
///
/// Field meaning (anything a kind does not set is zero):
/// - `sk`: kernel address of the socket, timewait socket or request socket. It
///   identifies the object only while it lives; the address is reused later.
/// - `cookie`: socket cookie (unique for the boot). Timewait sockets inherit
///   the cookie of the full socket they replace. Zero for request sockets.
/// - `old_state`/`new_state`: `STATE` transitions; other socket kinds put the
///   socket's current state in `new_state`.
/// - `pid_tgid`, `comm`, `cgroup_id`: the task running when the hook fired; it
///   is only the socket's owner when `flags::OWNED_BY_USER` is set.
///
/// Three private fields hold what only some kinds carry; they are read and
/// written through accessors named for what they hold, each saying for which
/// kinds: [`segs`](Self::segs), [`ca_state`](Self::ca_state) and the timing
/// ([`since_ack_us`](Self::since_ack_us), [`rto_us`](Self::rto_us),
/// [`backoff`](Self::backoff)) (`RETRANSMIT`),
/// [`errno`](Self::errno) (`SOCK_ERROR`, `CONNECT_ERROR`),
/// [`listener`](Self::listener) and
/// [`request_retransmits`](Self::request_retransmits) (`REQ_*`,
/// `SYNACK_RETRANSMIT`), [`defer_accept`](Self::defer_accept) (`REQ_EXPIRED`),
/// [`timewait_substate`](Self::timewait_substate) (`TW_*`) and
/// [`timer_expiry`](Self::timer_expiry) (`TW_ARMED`). Setters come in pairs
/// with the getters, so that a program can fill an event field by field and
/// still send what it has when a later read fails.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub ts_ns: u64,
    pub sk: u64,
    pub cookie: u64,
    /// Listener address, timer expiry or retransmit timing (see the accessors).
    aux: u64,
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub netns: u32,
    /// Segments, errno or TCP_DEFER_ACCEPT (see the accessors).
    aux32: u32,
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
    /// Congestion state, timewait substate or SYN-ACK count (see the accessors).
    aux8: u8,
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

/// `RETRANSMIT`.
impl RawEvent {
    /// Segments retransmitted (the skb's `tcp_gso_segs`, a u16, at least 1).
    /// Bits 0..16 of `aux32`.
    #[inline(always)]
    pub const fn segs(&self) -> u32 {
        self.aux32 & 0xffff
    }

    #[inline(always)]
    pub const fn set_segs(&mut self, segs: u32) {
        let segs = if segs > 0xffff { 0xffff } else { segs };
        self.aux32 = (self.aux32 & !0xffff) | segs;
    }

    /// The socket's congestion-avoidance state (`icsk_ca_state`) when the
    /// segment went out; userspace decodes it with [`CaState::from_wire`](crate::CaState::from_wire).
    /// Bits 0..7 of `aux8`.
    #[inline(always)]
    pub const fn ca_state(&self) -> u8 {
        self.aux8 & !KERNEL_TOTAL
    }

    #[inline(always)]
    pub const fn set_ca_state(&mut self, ca_state: u8) {
        self.aux8 = (self.aux8 & KERNEL_TOTAL) | (ca_state & !KERNEL_TOTAL);
    }
}

/// Bit of `aux8` saying that bits 16..32 of `aux32` hold the kernel's
/// retransmit total. Records written before it have it clear.
const KERNEL_TOTAL: u8 = 1 << 7;

/// `RETRANSMIT` and `STATE` (full sockets).
impl RawEvent {
    /// The socket's `tcp_sock.total_retrans` (what `tcpi_total_retrans`
    /// reports: every retransmitted segment the kernel counted, this one
    /// included), modulo 2^16, when the program read it. Userspace compares
    /// it with the segments it saw, so that a retransmission no event showed
    /// is counted as unseen instead of lost silently. Bits 16..32 of `aux32`.
    #[inline(always)]
    pub const fn kernel_total_retrans(&self) -> Option<u16> {
        if self.aux8 & KERNEL_TOTAL == 0 { None } else { Some((self.aux32 >> 16) as u16) }
    }

    /// `STATE` to CLOSE: the socket's `sk_err` then (0: none), bits 0..16
    /// of `aux32`. `tcp_write_err()` sets ETIMEDOUT before `tcp_done()`: a
    /// kill by retransmission timeout is known from the transition itself,
    /// also on kernels without the `inet_sk_error_report` hook.
    #[inline(always)]
    pub const fn close_errno(&self) -> u32 {
        self.aux32 & 0xffff
    }

    #[inline(always)]
    pub const fn set_close_errno(&mut self, errno: u32) {
        let errno = if errno > 0xffff { 0xffff } else { errno };
        self.aux32 = (self.aux32 & !0xffff) | errno;
    }

    #[inline(always)]
    pub const fn set_kernel_total_retrans(&mut self, total: u32) {
        self.aux32 = (self.aux32 & 0xffff) | ((total & 0xffff) << 16);
        self.aux8 |= KERNEL_TOTAL;
    }

    /// Microseconds since the socket last received an acceptable ACK
    /// (`tcp_sock.rcv_tstamp`, jiffies resolution), saturating. Meaningful
    /// only with [`flags::TIMING`], and not in SYN_SENT (nothing received yet).
    /// Bits 0..32 of `aux`.
    #[inline(always)]
    pub const fn since_ack_us(&self) -> u32 {
        self.aux as u32
    }

    /// The retransmission timeout (`icsk_rto`) in microseconds, saturating at
    /// 2^28 - 1 (268 s, above TCP_RTO_MAX). Bits 32..60 of `aux`.
    #[inline(always)]
    pub const fn rto_us(&self) -> u32 {
        ((self.aux >> 32) as u32) & RTO_MASK
    }

    /// RTO expiries since the last forward progress (`icsk_backoff`),
    /// saturating at 15. Bits 60..64 of `aux`.
    #[inline(always)]
    pub const fn backoff(&self) -> u8 {
        (self.aux >> 60) as u8
    }

    /// Sets the three timing fields (saturating each) and [`flags::TIMING`].
    #[inline(always)]
    pub const fn set_timing(&mut self, since_ack_us: u64, rto_us: u64, backoff: u8) {
        let since = if since_ack_us > u32::MAX as u64 { u32::MAX as u64 } else { since_ack_us };
        let rto = if rto_us > RTO_MASK as u64 { RTO_MASK as u64 } else { rto_us };
        let backoff = if backoff > 15 { 15 } else { backoff } as u64;
        self.aux = since | (rto << 32) | (backoff << 60);
        self.flags |= flags::TIMING;
    }
}

const RTO_MASK: u32 = (1 << 28) - 1;

/// `RESET_SENT`.
impl RawEvent {
    /// The RST answers a segment that arrived (the tracepoint's `skb` is
    /// set: `tcp_v4_send_reset()`), rather than being this side's own
    /// decision (`tcp_send_active_reset()`: close with unread data, SO_LINGER
    /// 0, an abort). Bit 0 of `aux8`.
    #[inline(always)]
    pub const fn reset_in_reply(&self) -> bool {
        self.aux8 & 1 == 1
    }

    #[inline(always)]
    pub const fn set_reset_in_reply(&mut self, in_reply: bool) {
        self.aux8 = (self.aux8 & !1) | in_reply as u8;
    }
}

/// Bit of `aux8` (`STATE` to CLOSE) saying that `aux` holds [`EndFacts`].
/// Records written before it have it clear.
const END_FACTS: u8 = 1 << 6;

/// What a full socket's state says, at its CLOSE transition, about why it
/// ended; userspace classifies the end from these and the errno
/// ([`RawEvent::close_errno`]). Read from the socket right at the
/// transition, before the kernel clears anything the reason needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndFacts {
    /// `SO_LINGER` on with a zero timeout (`SOCK_LINGER` set, `sk_lingertime`
    /// 0): close() resets instead of sending a FIN.
    pub linger_zero: bool,
    /// Received bytes the application never read (`rcv_nxt - copied_seq`,
    /// which counts the peer's FIN as one), saturating at 2^15 - 1.
    pub unread: u16,
    /// `icsk_probes_out`: keepalive (or zero-window) probes unanswered.
    pub probes_out: u8,
    /// `icsk_retransmits`: retransmission timeouts since the last progress.
    pub retransmits: u8,
    /// `icsk_user_timeout` (TCP_USER_TIMEOUT, ms; 0: not set).
    pub user_timeout_ms: u32,
}

/// `STATE` to CLOSE.
impl RawEvent {
    /// The [`EndFacts`], when the program read them. `aux`: bits 0..32 the
    /// user timeout, 32..40 probes, 40..48 retransmits, 48..63 unread bytes,
    /// 63 linger zero.
    #[inline(always)]
    pub const fn end_facts(&self) -> Option<EndFacts> {
        if self.aux8 & END_FACTS == 0 {
            return None;
        }
        let aux = self.aux;
        Some(EndFacts {
            user_timeout_ms: aux as u32,
            probes_out: (aux >> 32) as u8,
            retransmits: (aux >> 40) as u8,
            unread: ((aux >> 48) & 0x7fff) as u16,
            linger_zero: aux >> 63 == 1,
        })
    }

    #[inline(always)]
    pub const fn set_end_facts(&mut self, facts: EndFacts) {
        let unread = if facts.unread > 0x7fff { 0x7fff } else { facts.unread } as u64;
        self.aux = facts.user_timeout_ms as u64
            | (facts.probes_out as u64) << 32
            | (facts.retransmits as u64) << 40
            | unread << 48
            | (facts.linger_zero as u64) << 63;
        self.aux8 |= END_FACTS;
    }
}

/// `SOCK_ERROR`, `CONNECT_ERROR`.
impl RawEvent {
    /// The error, a positive errno (`sk_err`; connect()'s return value negated).
    #[inline(always)]
    pub const fn errno(&self) -> u32 {
        self.aux32
    }

    #[inline(always)]
    pub const fn set_errno(&mut self, errno: u32) {
        self.aux32 = errno;
    }
}

/// `REQ_ARMED`, `REQ_EXPIRED`, `REQ_CANCELLED`, `SYNACK_RETRANSMIT`: request sockets.
impl RawEvent {
    /// Kernel address of the request socket's listener (`rsk_listener`).
    #[inline(always)]
    pub const fn listener(&self) -> u64 {
        self.aux
    }

    #[inline(always)]
    pub const fn set_listener(&mut self, listener: u64) {
        self.aux = listener;
    }

    /// SYN-ACK retransmits so far (`num_retrans`).
    #[inline(always)]
    pub const fn request_retransmits(&self) -> u8 {
        self.aux8
    }

    #[inline(always)]
    pub const fn set_request_retransmits(&mut self, retransmits: u8) {
        self.aux8 = retransmits;
    }
}

/// `REQ_CANCELLED`: the listener's accept queue when the request ended.
impl RawEvent {
    /// The listener's `sk_ack_backlog` (children waiting for accept(), the
    /// `Recv-Q` of `ss -lnt`) and `sk_max_ack_backlog` (its limit, `Send-Q`)
    /// when the request's timer was cancelled: for a completed handshake,
    /// just before its child joins the queue. None when not read. Bits
    /// 0..16 of `aux32` the depth, 16..32 the limit plus one (0: not read),
    /// each saturating.
    #[inline(always)]
    pub const fn accept_queue(&self) -> Option<(u32, u32)> {
        let limit = self.aux32 >> 16;
        if limit == 0 { None } else { Some((self.aux32 & 0xffff, limit - 1)) }
    }

    #[inline(always)]
    pub const fn set_accept_queue(&mut self, depth: u32, limit: u32) {
        let depth = if depth > 0xffff { 0xffff } else { depth };
        let limit = if limit > 0xfffe { 0xfffe } else { limit };
        self.aux32 = depth | (limit + 1) << 16;
    }
}

/// `DROP`.
impl RawEvent {
    /// The kernel's `enum skb_drop_reason` value (its names differ between
    /// kernels: userspace reads them from the kernel's BTF). `aux32`.
    #[inline(always)]
    pub const fn drop_reason(&self) -> u32 {
        self.aux32
    }

    #[inline(always)]
    pub const fn set_drop_reason(&mut self, reason: u32) {
        self.aux32 = reason;
    }

    /// The dropped segment's TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04,
    /// ACK 0x10). `aux8`.
    #[inline(always)]
    pub const fn tcp_flags(&self) -> u8 {
        self.aux8
    }

    #[inline(always)]
    pub const fn set_tcp_flags(&mut self, flags: u8) {
        self.aux8 = flags;
    }
}

/// `REQ_EXPIRED`.
impl RawEvent {
    /// The listener's TCP_DEFER_ACCEPT (`icsk_accept_queue.rskq_defer_accept`,
    /// in retransmits).
    #[inline(always)]
    pub const fn defer_accept(&self) -> u32 {
        self.aux32
    }

    #[inline(always)]
    pub const fn set_defer_accept(&mut self, retransmits: u32) {
        self.aux32 = retransmits;
    }
}

/// `TW_ARMED`, `TW_EXPIRED`, `TW_CANCELLED`: timewait sockets.
impl RawEvent {
    /// The timewait socket's substate (`tw_substate`): FIN_WAIT2 or
    /// TIME_WAIT, a [`TcpState`](crate::TcpState) value.
    #[inline(always)]
    pub const fn timewait_substate(&self) -> u8 {
        self.aux8
    }

    #[inline(always)]
    pub const fn set_timewait_substate(&mut self, substate: u8) {
        self.aux8 = substate;
    }

    /// `TW_ARMED` only: when the timer expires (jiffies).
    #[inline(always)]
    pub const fn timer_expiry(&self) -> u64 {
        self.aux
    }

    #[inline(always)]
    pub const fn set_timer_expiry(&mut self, jiffies: u64) {
        self.aux = jiffies;
    }
}

pub const RAW_EVENT_SIZE: usize = core::mem::size_of::<RawEvent>();
