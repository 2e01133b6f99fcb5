//! Why each connection ended: one [`EndReason`] per closed connection,
//! from what its CLOSE transition carried (the socket's error and
//! [`EndFacts`]), the resets seen around it and who closed first.
//!
//! The kernel paths behind each class (net/ipv4/tcp*.c, 5.10 to 6.18):
//! - an RST from the peer: `tcp_reset()` sets ECONNREFUSED in SYN_SENT,
//!   EPIPE in CLOSE_WAIT, ECONNRESET otherwise, then `tcp_done()`;
//! - data after our close() (FIN_WAIT1/2 with the receive side shut):
//!   `tcp_rcv_state_process()` calls `tcp_reset()` (an RST "received", as
//!   far as the hooks say) and its caller sends an RST (TCPAbortOnData);
//! - close() with unread data: CLOSE, then an RST (TCPAbortOnClose); with
//!   `SO_LINGER {1, 0}`: `tcp_disconnect()`, CLOSE, then an RST;
//! - `tcp_abort()` (`ss -K`, SOCK_DESTROY): ECONNABORTED, an RST if needed;
//! - a timeout: `tcp_write_err()` sets ETIMEDOUT (or the soft error an ICMP
//!   left, e.g. EHOSTUNREACH) before `tcp_done()`. In SYN_SENT it is the SYN
//!   retries (tcp_syn_retries); with TCP_USER_TIMEOUT set, that deadline
//!   decides in every state; keepalive probes (`icsk_probes_out`) go out
//!   only with nothing in flight, so probes without retransmission timeouts
//!   are a keepalive (or zero-window probe) timeout; else tcp_retries2;
//! - an ICMP host or network unreachable in SYN_SENT was a hard error
//!   until Linux 6.5 (EHOSTUNREACH or ENETUNREACH, then `tcp_done()`);
//!   since "tcp: no longer abort SYN_SENT when receiving some ICMP" it is
//!   a soft error, as it always was when it arrives while connect() holds
//!   the socket (on veth it does, in the sender's own context): the
//!   application reads it (SO_ERROR, which clears it) and closes the socket
//!   itself, which is all the CLOSE shows ([`EndReason::ConnectAbandoned`]);
//!   a soft error still names the end of a connection that then times out;
//! - data after our close(), when the segment also acknowledges our FIN:
//!   `tcp_rcv_state_process()` calls `tcp_done()` itself (no error set)
//!   and its caller resets: CLOSE from FIN_WAIT1/2, outside any system
//!   call, then an RST.

use serde::Serialize;
use tracer_common::EndFacts;

use super::conn::CloseKind;
use crate::event::TcpState;

/// Why a connection ended. Stable names (`name`) are used in JSON, events
/// and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndReason {
    /// Orderly: this side sent the first FIN.
    ClosedLocal,
    /// Orderly: the peer sent the first FIN.
    ClosedRemote,
    /// Orderly: both FINs crossed.
    ClosedSimultaneous,
    /// An RST answered our SYN (nothing listening, or a firewall's reject).
    Refused,
    /// The peer reset an established (or closing) connection.
    ResetByPeer,
    /// We reset: close() with SO_LINGER {on, 0}.
    ResetLingerZero,
    /// We reset: close() with received data still unread.
    ResetUnreadData,
    /// We reset: data arrived after our close().
    ResetDataAfterClose,
    /// We reset: the socket was killed (`tcp_abort`: `ss -K`, SOCK_DESTROY).
    ResetKilled,
    /// We reset otherwise (FIN_WAIT2 with linger2 < 0, orphan or memory
    /// limits, `connect(AF_UNSPEC)`).
    ResetOther,
    /// connect() gave up: SYN retries exhausted (tcp_syn_retries).
    TimeoutSyn,
    /// Data retransmissions exhausted (tcp_retries2).
    TimeoutRetransmit,
    /// Keepalive probes unanswered.
    TimeoutKeepalive,
    /// TCP_USER_TIMEOUT expired.
    TimeoutUser,
    /// Timed out, which limit unknown (a recording without end facts).
    Timeout,
    /// An ICMP destination/host/network unreachable ended it.
    Unreachable,
    /// Another socket error ended it (named by the errno in events).
    ErrorOther,
    /// The application closed the socket while it was still connecting
    /// (its own connect timeout, or an ICMP error it read: Linux 6.5+).
    ConnectAbandoned,
    /// Ended without a FIN, RST or error seen here (e.g. connect() found no
    /// local port, or tracing began after the close began).
    Unknown,
}

impl EndReason {
    /// In declaration order (`EndCounts` indexes by the discriminant; a
    /// unit test checks the order).
    pub const ALL: [Self; 19] = [
        Self::ClosedLocal,
        Self::ClosedRemote,
        Self::ClosedSimultaneous,
        Self::Refused,
        Self::ResetByPeer,
        Self::ResetLingerZero,
        Self::ResetUnreadData,
        Self::ResetDataAfterClose,
        Self::ResetKilled,
        Self::ResetOther,
        Self::TimeoutSyn,
        Self::TimeoutRetransmit,
        Self::TimeoutKeepalive,
        Self::TimeoutUser,
        Self::Timeout,
        Self::Unreachable,
        Self::ErrorOther,
        Self::ConnectAbandoned,
        Self::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ClosedLocal => "closed_local_first",
            Self::ClosedRemote => "closed_remote_first",
            Self::ClosedSimultaneous => "closed_simultaneous",
            Self::Refused => "refused",
            Self::ResetByPeer => "reset_by_peer",
            Self::ResetLingerZero => "reset_linger_zero",
            Self::ResetUnreadData => "reset_unread_data",
            Self::ResetDataAfterClose => "reset_data_after_close",
            Self::ResetKilled => "reset_killed",
            Self::ResetOther => "reset_other",
            Self::TimeoutSyn => "timeout_syn",
            Self::TimeoutRetransmit => "timeout_retransmit",
            Self::TimeoutKeepalive => "timeout_keepalive",
            Self::TimeoutUser => "timeout_user",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::ErrorOther => "error_other",
            Self::ConnectAbandoned => "connect_abandoned",
            Self::Unknown => "unknown",
        }
    }

    /// In words, for the text report and `--events`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ClosedLocal => "orderly close, this side first",
            Self::ClosedRemote => "orderly close, the peer first",
            Self::ClosedSimultaneous => "orderly close, both at once",
            Self::Refused => "refused: RST answered the SYN",
            Self::ResetByPeer => "reset by the peer",
            Self::ResetLingerZero => "reset sent: close() with SO_LINGER 0",
            Self::ResetUnreadData => "reset sent: close() with unread data",
            Self::ResetDataAfterClose => "reset sent: data arrived after close()",
            Self::ResetKilled => "reset sent: killed (ss -K / SOCK_DESTROY)",
            Self::ResetOther => "reset sent: other (linger2, orphan or memory limits, disconnect)",
            Self::TimeoutSyn => "timed out: SYN retries exhausted (tcp_syn_retries)",
            Self::TimeoutRetransmit => "timed out: retransmissions exhausted (tcp_retries2)",
            Self::TimeoutKeepalive => "timed out: keepalive probes unanswered",
            Self::TimeoutUser => "timed out: TCP_USER_TIMEOUT",
            Self::Timeout => "timed out (which limit unknown)",
            Self::Unreachable => "unreachable (ICMP)",
            Self::ErrorOther => "another socket error",
            Self::ConnectAbandoned => {
                "closed by the application while connecting (its timeout, or an ICMP error)"
            }
            Self::Unknown => "no FIN, RST or error seen",
        }
    }

    /// A failure rather than an orderly close.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::ClosedLocal | Self::ClosedRemote | Self::ClosedSimultaneous)
    }

    /// The class of a connect() that failed with `errno` (the connect error
    /// table), when it names one.
    pub fn of_connect_errno(errno: u32) -> Option<Self> {
        match ErrorClass::of(errno as i32) {
            ErrorClass::Refused => Some(Self::Refused),
            ErrorClass::Timeout => Some(Self::TimeoutSyn),
            ErrorClass::Unreachable => Some(Self::Unreachable),
            ErrorClass::Reset => Some(Self::ResetByPeer),
            ErrorClass::Aborted => Some(Self::ResetKilled),
            ErrorClass::None | ErrorClass::Other => None,
        }
    }
}

impl Serialize for EndReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Socket errors by what they say about the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    None,
    Refused,
    Reset,
    Timeout,
    Unreachable,
    Aborted,
    Other,
}

impl ErrorClass {
    pub fn of(errno: i32) -> Self {
        match errno {
            0 => Self::None,
            libc::ECONNREFUSED => Self::Refused,
            libc::ECONNRESET | libc::EPIPE => Self::Reset,
            libc::ETIMEDOUT => Self::Timeout,
            libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => Self::Unreachable,
            libc::ECONNABORTED => Self::Aborted,
            _ => Self::Other,
        }
    }
}

/// Everything the classification uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndEvidence {
    /// What `sk_err` said at the CLOSE transition.
    pub error: ErrorClass,
    /// The socket's facts at the CLOSE transition (None: an older recording).
    pub facts: Option<EndFacts>,
    /// The state it left for CLOSE.
    pub closed_from: TcpState,
    /// The CLOSE happened in a system call of the socket's owner (close(),
    /// shutdown(), connect()), not in softirq or a timer.
    pub closed_in_syscall: bool,
    /// An RST this side sent answered a received segment (the tracepoint's
    /// `skb` was set), rather than being its own decision.
    pub reset_in_reply: bool,
    /// Who sent the first FIN, if anyone did.
    pub close: Option<CloseKind>,
    pub reset_sent: bool,
}

impl EndEvidence {
    pub fn classify(&self) -> EndReason {
        let error = self.error;
        // A keepalive (or user) timeout sends an RST before it reports the
        // error (`tcp_keepalive_timer()`): the timeout is the reason.
        if error == ErrorClass::Timeout {
            return self.timeout();
        }
        if self.reset_sent {
            return self.reset_cause(error);
        }
        match error {
            ErrorClass::Refused => EndReason::Refused,
            ErrorClass::Reset => EndReason::ResetByPeer,
            ErrorClass::Timeout => self.timeout(),
            ErrorClass::Unreachable => EndReason::Unreachable,
            ErrorClass::Aborted => EndReason::ResetKilled,
            ErrorClass::Other => EndReason::ErrorOther,
            ErrorClass::None => match self.close {
                Some(CloseKind::Local) => EndReason::ClosedLocal,
                Some(CloseKind::Remote) => EndReason::ClosedRemote,
                Some(CloseKind::Simultaneous) => EndReason::ClosedSimultaneous,
                _ if self.closed_from == TcpState::SynSent && self.closed_in_syscall => {
                    EndReason::ConnectAbandoned
                }
                _ => EndReason::Unknown,
            },
        }
    }

    /// We sent an RST: why.
    fn reset_cause(&self, error: ErrorClass) -> EndReason {
        if error == ErrorClass::Aborted {
            return EndReason::ResetKilled;
        }
        // An RST answering data after our FIN: the kernel aborted on data
        // (tcp_done() with no error, or tcp_reset()'s ECONNRESET). Our own
        // RST after our FIN is close() in FIN_WAIT2 with linger2 < 0, or the
        // orphan and memory limits (ResetOther).
        if self.reset_in_reply
            && (matches!(self.closed_from, TcpState::FinWait1 | TcpState::FinWait2)
                || self.close == Some(CloseKind::Local))
        {
            return EndReason::ResetDataAfterClose;
        }
        let Some(facts) = self.facts else { return EndReason::ResetOther };
        // `rcv_nxt - copied_seq` counts the peer's FIN as one byte until
        // the application reads the end of the stream.
        let fin = u16::from(matches!(self.close, Some(CloseKind::Remote | CloseKind::Simultaneous)));
        if facts.unread > fin {
            EndReason::ResetUnreadData
        } else if facts.linger_zero {
            EndReason::ResetLingerZero
        } else {
            EndReason::ResetOther
        }
    }

    fn timeout(&self) -> EndReason {
        if self.closed_from == TcpState::SynSent {
            return EndReason::TimeoutSyn;
        }
        match self.facts {
            None => EndReason::Timeout,
            Some(f) if f.user_timeout_ms > 0 => EndReason::TimeoutUser,
            Some(f) if f.probes_out > 0 && f.retransmits == 0 => EndReason::TimeoutKeepalive,
            Some(_) => EndReason::TimeoutRetransmit,
        }
    }
}

/// What a record keeps of its CLOSE transition for the classification (the
/// record is compact: two bytes, see `Conn`'s size check). The errno is
/// kept as its class, the facts as the bits the classification reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndNote {
    /// Bits 0..3: errno class + 1 (0: no CLOSE seen); 3: facts known;
    /// 4: linger zero; 5: unread > 1; 6: unread == 1; 7: probes without
    /// retransmission timeouts.
    bits: u8,
    /// Bit 0: user timeout set; 1: closed in a system call; 2..6: the
    /// state it left for CLOSE; 7: an RST sent in reply to a segment.
    more: u8,
}

impl EndNote {
    pub const NONE: Self = Self { bits: 0, more: 0 };

    const CLASSES: [ErrorClass; 7] = [
        ErrorClass::None,
        ErrorClass::Refused,
        ErrorClass::Reset,
        ErrorClass::Timeout,
        ErrorClass::Unreachable,
        ErrorClass::Aborted,
        ErrorClass::Other,
    ];

    const REPLY: u8 = 1 << 7;

    /// An RST this side sent answered a received segment (before or after
    /// the CLOSE: [`EndNote::at_close`] keeps it).
    pub fn note_reset_in_reply(&mut self) {
        self.more |= Self::REPLY;
    }

    /// Notes the CLOSE (keeping an earlier [`EndNote::note_reset_in_reply`]).
    pub fn close(
        &mut self,
        error: ErrorClass,
        facts: Option<EndFacts>,
        closed_from: TcpState,
        in_syscall: bool,
    ) {
        let reply = self.more & Self::REPLY;
        *self = Self::at_close(error, facts, closed_from, in_syscall);
        self.more |= reply;
    }

    pub fn at_close(
        error: ErrorClass,
        facts: Option<EndFacts>,
        closed_from: TcpState,
        in_syscall: bool,
    ) -> Self {
        let index = Self::CLASSES.iter().position(|c| *c == error).unwrap_or(6) as u8;
        let mut bits = index + 1;
        let mut more = (closed_from as u8) << 2 | u8::from(in_syscall) << 1;
        if let Some(f) = facts {
            bits |= 1 << 3;
            bits |= u8::from(f.linger_zero) << 4;
            bits |= u8::from(f.unread > 1) << 5;
            bits |= u8::from(f.unread == 1) << 6;
            bits |= u8::from(f.probes_out > 0 && f.retransmits == 0) << 7;
            more |= u8::from(f.user_timeout_ms > 0);
        }
        Self { bits, more }
    }

    /// The state the socket left for CLOSE; None before its CLOSE.
    pub fn closed_from(self) -> Option<TcpState> {
        if self.bits & 7 == 0 { None } else { TcpState::from_u8(self.more >> 2 & 0x1f) }
    }

    /// The evidence back, plus what
    /// the record learned after: who closed first, whether we reset.
    pub fn evidence(self, close: Option<CloseKind>, reset_sent: bool) -> Option<EndEvidence> {
        let class = *Self::CLASSES.get(usize::from(self.bits & 7).checked_sub(1)?)?;
        let bit = |n: u8| self.bits >> n & 1 == 1;
        let facts = bit(3).then(|| {
            let keepalive = bit(7);
            EndFacts {
                linger_zero: bit(4),
                unread: if bit(5) { 2 } else { u16::from(bit(6)) },
                probes_out: u8::from(keepalive),
                retransmits: 0,
                user_timeout_ms: u32::from(self.more & 1),
            }
        });
        let closed_from = TcpState::from_u8(self.more >> 2 & 0x1f).unwrap_or(TcpState::Close);
        let closed_in_syscall = self.more >> 1 & 1 == 1;
        let reset_in_reply = self.more & Self::REPLY != 0;
        Some(EndEvidence {
            error: class,
            facts,
            closed_from,
            closed_in_syscall,
            reset_in_reply,
            close,
            reset_sent,
        })
    }
}

#[cfg(test)]
mod tests;
