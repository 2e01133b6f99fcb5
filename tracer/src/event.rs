//! Decoded kernel events: what userspace reasons about. Produced by
//! [`crate::decode`] from the fixed-size records of the ring buffer.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::Serialize;

/// TCP states as the kernel numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "&'static str")]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value).checked_sub(1)?).copied()
    }

    /// The name `ss` and the kernel use, e.g. `FIN_WAIT1`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl From<TcpState> for &'static str {
    fn from(state: TcpState) -> Self {
        state.name()
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

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

    pub fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// For JSON: valid UTF-8 whatever the bytes (invalid ones become U+FFFD).
    pub fn to_lossy_string(&self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
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
        s.serialize_str(&self.to_lossy_string())
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
            if family == tracer_ebpf::AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(raw))
            } else {
                IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            }
        };
        Self { local: SocketAddr::new(ip(saddr), sport), remote: SocketAddr::new(ip(daddr), dport) }
    }
}

/// What happened. One variant per kernel hook (see tracer-ebpf `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A full socket changed state.
    State { old: TcpState, new: TcpState },
    /// We sent an RST on this socket.
    ResetSent,
    /// The peer's RST arrived on this socket.
    ResetReceived,
    /// A process (other than the last one seen) sent data on this socket.
    Owner,
    /// Segments retransmitted; `ca_state` is the kernel's `icsk_ca_state`.
    Retransmit { state: TcpState, segs: u32, syn: bool, fin: bool, ca_state: u8 },
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
    RequestCancelled { listener: u64, retransmits: u8 },
    /// connect() returned an error (`errno`), destination in `tuple.remote`.
    ConnectError { errno: u32 },
}

impl EventKind {
    /// Short name used in JSON (`"event"` field) and filters.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::State { .. } => "state",
            Self::ResetSent => "reset_sent",
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
}

/// A lifecycle step the tracker derived from several kernel events (request
/// socket established after X ms, TIME_WAIT ended by reuse, ...), shown in the
/// event stream next to the raw transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub ts_ns: u64,
    /// Stable machine name: `time_wait_start`, `time_wait_end`, `syn_recv_start`, ...
    pub event: &'static str,
    pub netns: u32,
    pub tuple: Tuple,
    pub owner: Option<Owner>,
    /// How it ended (`expired`, `reused`, `established`, `timeout`, ...).
    pub outcome: Option<&'static str>,
    /// How long it lasted, when it ended.
    pub duration_ns: Option<u64>,
    /// Human description for the text stream.
    pub detail: String,
}
