//! [`KernelConfig`]: what the kernel programs need to know about the running
//! kernel, set by userspace before load.

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
    /// `net.ns.__ns_ref` (6.18+), `net.ns.count` or `net.count` (before
    /// 5.11); 0 when none exists.
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
    // struct tcp_sock
    /// `total_retrans`: the kernel's running count of the socket's
    /// retransmitted segments (`tcpi_total_retrans`).
    pub tp_total_retrans: u32,
    /// `icsk_rto` (u32, jiffies): the retransmission timeout; at the
    /// retransmit tracepoint inside `tcp_retransmit_timer()`, the one that
    /// fired (the timer doubles it only after the resend).
    pub icsk_rto: u32,
    /// `icsk_backoff` (u8): RTO expiries since the last forward progress.
    pub icsk_backoff: u32,
    // struct tcp_sock
    /// `rcv_tstamp` (u32, jiffies): when the last acceptable ACK arrived
    /// (`tcp_ack()`, any ACK not older than `snd_una`).
    pub tp_rcv_tstamp: u32,
    // What the CLOSE transition reads for the end reason ([`crate::EndFacts`]).
    /// `sock.sk_flags` (unsigned long) and the bit of `SOCK_LINGER` in it.
    pub sk_flags: u32,
    pub sock_linger_bit: u32,
    /// `sock.sk_lingertime` (long, jiffies).
    pub sk_lingertime: u32,
    /// `tcp_sock.rcv_nxt` and `copied_seq` (u32): received but unread bytes.
    pub tp_rcv_nxt: u32,
    pub tp_copied_seq: u32,
    /// `inet_connection_sock.icsk_probes_out`, `icsk_retransmits` (u8) and
    /// `icsk_user_timeout` (u32, ms).
    pub icsk_probes_out: u32,
    pub icsk_retransmits: u32,
    pub icsk_user_timeout: u32,
    /// The kernel's tick rate (CONFIG_HZ), to turn jiffies into microseconds;
    /// 0 when unknown: retransmits then carry no timing.
    pub hz: u32,
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
    // accept(): the returned descriptor's socket, task->files->fdt->fd[fd]
    // ->private_data (struct socket)->sk, and the listener's queue.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `sock.sk_ack_backlog` and `sk_max_ack_backlog` (u32 since 5.4).
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    // kfree_skb: the dropped packet's headers and namespace.
    /// `sk_buff.head` (pointer), `network_header` (u16 offset from head),
    /// `protocol` (be16 ethertype), `dev` (pointer).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    pub skb_dev: u32,
    /// `net_device.nd_net.net` (pointer to struct net).
    pub dev_nd_net: u32,
    /// `sk_buff.sk` (pointer), the namespace when the packet has no device.
    pub skb_sk: u32,
    /// `SKB_DROP_REASON_QUEUE_PURGE` (0: none): not reported. A socket
    /// being destroyed frees what its queues still hold with this reason:
    /// after a passive close, the peer's FIN that nobody read, one per
    /// connection; unread data shows as the connection's end reason.
    pub drop_reason_queue_purge: u32,
    /// 1: summary mode (`tracer_common::RawSummary`): full sockets'
    /// transitions wait in the kernel and reach userspace together. 0: one
    /// event per transition (the full stream).
    pub summaries: u32,
    // struct timer_list
    pub timer_function: u32,
    /// Address of `tw_timer_handler` (0: timewait hooks stay idle).
    pub tw_timer_handler: u64,
    /// Address of `reqsk_timer_handler` (0: request-socket hooks stay idle).
    pub reqsk_timer_handler: u64,
    /// Submit with a wakeup only once this many bytes wait in the ring buffer;
    /// userspace drains on a timer in between. 0: wake up on every event.
    pub wakeup_bytes: u64,
    /// 0: the kernel gives tracing programs `bpf_get_socket_cookie` (Linux
    /// 5.12+), which names full sockets. Otherwise a full socket is named by
    /// its address XOR this mask (random per run, top bit clear, low bit set:
    /// never 0, never a kernel address in the output, and with a kernel
    /// address's top bit set, never equal to a kernel cookie, a counter).
    /// An address names one socket at a time, as a cookie does; the tracker
    /// ends a record at CLOSE, so a reused address starts a new record, as a
    /// socket that connects again keeps its cookie and starts one.
    pub cookie_mask: u64,
    /// Benchmark only ([`ablate`]): parts of the programs' work to leave out,
    /// so that `cargo xtask bench` can tell what each costs. 0 in every real
    /// run; a load-time constant, so the verifier drops the tests.
    pub ablate: u32,
    /// 1: every event carries the current task's comm and cgroup (every event
    /// is shown or recorded: `--events`, `record`). 0: only events whose
    /// socket lock the task owns, the only ones whose task the tracker uses
    /// (it is the socket's owner there; elsewhere softirq runs on top of an
    /// unrelated task): the two helpers cost ~100 ns per event.
    pub task_in_every_event: u32,
}

const _: () = assert!(core::mem::size_of::<KernelConfig>() == 296);

/// Bits of [`KernelConfig::ablate`] (hidden `tcptrace run --ablate`): each
/// leaves one piece of the per-event work out, events then carry zeros
/// there. For measuring the kernel programs' cost piece by piece, never for
/// tracing.
pub mod ablate {
    /// `bpf_get_current_comm`.
    pub const COMM: u32 = 1 << 0;
    /// `bpf_get_current_cgroup_id`.
    pub const CGROUP: u32 = 1 << 1;
    /// `bpf_get_current_pid_tgid` in events.
    pub const PID: u32 = 1 << 2;
    /// `bpf_get_socket_cookie`.
    pub const COOKIE: u32 = 1 << 3;
    /// The read of the socket's namespace inode (`net->ns.inum`).
    pub const NETNS: u32 = 1 << 4;
    /// The `sock_common` read (addresses, ports, family, state).
    pub const SOCK_COMMON: u32 = 1 << 5;
    /// The reads of `inet_sport` and the socket lock's owner.
    pub const SPORT_OWNED: u32 = 1 << 6;
    /// `bpf_ktime_get_ns`.
    pub const KTIME: u32 = 1 << 7;
    /// The `SEEN` counter's per-CPU lookup and atomic add.
    pub const SEEN: u32 = 1 << 8;
    /// The ring buffer fill-level query before submit (always wake instead).
    pub const QUERY: u32 = 1 << 9;
    /// Reserving, zeroing, filling and submitting the event: nothing is sent.
    pub const EMIT: u32 = 1 << 10;
    /// The protocol check's read (every socket taken for TCP).
    pub const IS_TCP: u32 = 1 << 11;
    /// The state program's `HELD` and `CONNECTS` map lookups.
    pub const LOOKUPS: u32 = 1 << 12;

    /// Names for `--ablate`, in the order the benchmark measures them.
    pub const NAMES: &[(&str, u32)] = &[
        ("comm", COMM),
        ("cgroup", CGROUP),
        ("pid", PID),
        ("cookie", COOKIE),
        ("netns", NETNS),
        ("sock-common", SOCK_COMMON),
        ("sport-owned", SPORT_OWNED),
        ("ktime", KTIME),
        ("seen", SEEN),
        ("query", QUERY),
        ("is-tcp", IS_TCP),
        ("lookups", LOOKUPS),
        ("emit", EMIT),
    ];
}

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
        tp_total_retrans: 0,
        icsk_rto: 0,
        icsk_backoff: 0,
        tp_rcv_tstamp: 0,
        sk_flags: 0,
        sock_linger_bit: 0,
        sk_lingertime: 0,
        tp_rcv_nxt: 0,
        tp_copied_seq: 0,
        icsk_probes_out: 0,
        icsk_retransmits: 0,
        icsk_user_timeout: 0,
        hz: 0,
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
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_private_data: 0,
        socket_sk: 0,
        sk_ack_backlog: 0,
        sk_max_ack_backlog: 0,
        skb_head: 0,
        skb_network_header: 0,
        skb_protocol: 0,
        skb_dev: 0,
        dev_nd_net: 0,
        skb_sk: 0,
        drop_reason_queue_purge: 0,
        summaries: 0,
        timer_function: 0,
        tw_timer_handler: 0,
        reqsk_timer_handler: 0,
        wakeup_bytes: 0,
        cookie_mask: 0,
        ablate: 0,
        task_in_every_event: 0,
    };
}
