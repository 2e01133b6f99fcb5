//! Decoded kernel events: what userspace reasons about. Produced by
//! [`crate::decode`] from the fixed-size records of the ring buffer.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::Serialize;

/// The kernel's TCP and congestion-avoidance states: defined once, with the
/// record layout, in `tracer-common`.
pub use tracer_common::{CaState, TcpState};

/// A task name as the kernel stores it: up to 16 bytes, not necessarily UTF-8.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn new(raw: [u8; 16]) -> Self {
        Self(raw)
    }

    pub fn from_str_lossy(name: &str) -> Self {
        let mut raw = [0u8; 16];
        let bytes = name.as_bytes();
        let n = bytes.len().min(15);
        raw[..n].copy_from_slice(&bytes[..n]);
        Self(raw)
    }

    /// The 16 bytes as the kernel keeps them.
    pub fn raw(&self) -> [u8; 16] {
        self.0
    }

    pub fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// For JSON: valid UTF-8 whatever the bytes (invalid ones become U+FFFD),
    /// borrowed when the name is valid already.
    pub fn lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.bytes())
    }

    pub fn to_lossy_string(&self) -> String {
        self.lossy().into_owned()
    }
}

/// For terminals: non-printable bytes escaped (`\x1b`), never raw.
impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.bytes().escape_ascii().to_string())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.lossy())
    }
}

/// The task that was running when a hook fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    pub comm: Comm,
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup: u64,
}

/// The process a socket belongs to: the one that connected, listened,
/// accepted (sent on) or closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
    /// cgroup v2 id at the time (resolved to a path for reports).
    pub cgroup: u64,
}

impl Owner {
    pub fn of(task: &Task) -> Self {
        Self { pid: task.pid, comm: task.comm, cgroup: task.cgroup }
    }
}

/// Local and remote endpoint of a socket, as the socket saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Tuple {
    pub const UNSPECIFIED: Tuple = Tuple {
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    };

    pub fn from_raw(family: u8, saddr: [u8; 16], sport: u16, daddr: [u8; 16], dport: u16) -> Self {
        let ip = |raw: [u8; 16]| -> IpAddr {
            if family == tracer_common::AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(raw))
            } else {
                IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            }
        };
        Self { local: SocketAddr::new(ip(saddr), sport), remote: SocketAddr::new(ip(daddr), dport) }
    }
}

/// What the kernel said about a retransmission's timing (jiffies resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitTiming {
    /// Microseconds since the socket last received an acceptable ACK
    /// (`tcp_sock.rcv_tstamp`); meaningless in SYN_SENT.
    pub since_ack_us: u32,
    /// The retransmission timeout (`icsk_rto`), µs: for a timeout
    /// retransmission, the RTO that fired.
    pub rto_us: u32,
    /// RTO expiries since the last forward progress (`icsk_backoff`, at most 15).
    pub backoff: u8,
}

/// What happened. One variant per kernel hook (see tracer-common `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A full socket changed state.
    State { old: TcpState, new: TcpState },
    /// We sent an RST on this socket.
    ResetSent {
        /// The RST answers a received segment (not this side's own decision).
        in_reply: bool,
    },
    /// The peer's RST arrived on this socket.
    ResetReceived,
    /// A process (other than the last one seen) sent data on this socket.
    Owner,
    /// Segments retransmitted; `ca_state` is the socket's congestion-avoidance state.
    /// `timing` is None in records without it (older versions, unknown HZ).
    Retransmit {
        state: TcpState,
        segs: u32,
        syn: bool,
        fin: bool,
        ca_state: CaState,
        timing: Option<RetransmitTiming>,
    },
    /// A request socket's SYN-ACK went out again.
    SynAckRetransmit { listener: u64, retransmits: u8 },
    /// The socket reported an error (`sk_err`), e.g. ETIMEDOUT.
    SockError { errno: u32 },
    /// A timewait socket's timer was (re)armed; `substate` is FIN_WAIT2 or TIME_WAIT.
    TimeWaitArmed { substate: TcpState },
    /// A timewait socket's timer fired: it ends now.
    TimeWaitExpired { substate: TcpState },
    /// A timewait socket's timer was cancelled: re-arm follows, or it ends
    /// early. `in_connect`: inside a connect() to the same peer (port reuse);
    /// `netns_dying`: its namespace is being destroyed.
    TimeWaitCancelled { substate: TcpState, in_connect: bool, netns_dying: bool },
    /// A request socket's timer was armed (first time: the SYN arrived).
    RequestArmed { listener: u64, retransmits: u8 },
    /// A request socket's timer fired.
    RequestExpired { listener: u64, retransmits: u8, acked: bool, listener_gone: bool, defer_accept: u8 },
    /// The handler of that timer returned (the request may be gone).
    RequestExpireDone,
    /// A request socket's timer was cancelled: handshake completed or dropped.
    /// `accept_queue`: the listener's accept queue (depth, limit) then.
    RequestCancelled { listener: u64, retransmits: u8, accept_queue: Option<(u32, u32)> },
    /// connect() returned an error (`errno`), destination in `tuple.remote`.
    ConnectError { errno: u32 },
    /// accept() returned this child socket (the task is its owner).
    Accepted,
    /// The kernel dropped a TCP segment: `reason` is its `enum
    /// skb_drop_reason` value, `tcp_flags` the segment's flags byte. The
    /// tuple is the packet's: `local` its source, `remote` its destination.
    Drop { reason: u32, tcp_flags: u8 },
}

impl EventKind {
    /// Short name used in JSON (`"event"` field) and filters.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::State { .. } => "state",
            Self::ResetSent { .. } => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::Owner => "owner",
            Self::Retransmit { .. } => "retransmit",
            Self::SynAckRetransmit { .. } => "synack_retransmit",
            Self::SockError { .. } => "sock_error",
            Self::TimeWaitArmed { .. } => "timewait_armed",
            Self::TimeWaitExpired { .. } => "timewait_expired",
            Self::TimeWaitCancelled { .. } => "timewait_cancelled",
            Self::RequestArmed { .. } => "request_armed",
            Self::RequestExpired { .. } => "request_expired",
            Self::RequestExpireDone => "request_expire_done",
            Self::RequestCancelled { .. } => "request_cancelled",
            Self::ConnectError { .. } => "connect_error",
            Self::Accepted => "accepted",
            Self::Drop { .. } => "drop",
        }
    }
}

/// One kernel event, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub kind: EventKind,
    /// Kernel address of the socket object (full, timewait or request socket).
    pub sock: u64,
    /// Socket cookie; 0 when the object has none (request sockets).
    pub cookie: u64,
    /// Network namespace inode.
    pub netns: u32,
    pub tuple: Tuple,
    /// The task running when the hook fired.
    pub task: Task,
    /// The task held the socket lock: it is a process operating on this
    /// socket in a system call, so it names the socket's owner.
    pub owned_by_task: bool,
    /// `RETRANSMIT` and full sockets' `-> CLOSE`: the kernel's running count
    /// of the socket's retransmitted segments (`tcpi_total_retrans`) modulo
    /// 2^16, after this event. None in older recordings.
    pub kernel_total_retrans: Option<u16>,
    /// Full sockets' `-> CLOSE`: the socket's error (`sk_err`) then; 0 when
    /// none, and in older recordings.
    pub close_errno: u32,
    /// Full sockets' `-> CLOSE`: what the socket said about why it ended
    /// (None in older recordings).
    pub end_facts: Option<tracer_common::EndFacts>,
}

/// The symbolic name of an errno the kernel reported (`ETIMEDOUT`), or
/// `errno N` for one without a name here.
pub fn errno_name(errno: u32) -> String {
    let name = match errno as i32 {
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EPIPE => "EPIPE",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::EALREADY => "EALREADY",
        libc::EISCONN => "EISCONN",
        libc::ENETDOWN => "ENETDOWN",
        libc::EPROTO => "EPROTO",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}
