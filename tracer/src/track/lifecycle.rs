//! Lifecycle steps the tracker derives from several kernel events: a
//! request socket's SYN_RECV from SYN to handshake, a TIME_WAIT from birth
//! to end. They are facts (what happened, how long, how it ended); the
//! `--events` printer (output/events.rs) names and describes them.

use super::{end::EndReason, synrecv::RequestDrop, timewait::TwEnd};
use crate::event::{Owner, TcpState, Tuple};

/// One step, shown in the event stream next to the raw transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub ts_ns: u64,
    pub netns: u32,
    pub tuple: Tuple,
    pub owner: Option<Owner>,
    pub step: Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A timewait socket took over the connection. `substate` is FIN_WAIT2
    /// when it still waits for the peer's FIN (tcp_time_wait() from
    /// FIN_WAIT2), TIME_WAIT otherwise.
    TimeWaitStart { substate: TcpState },
    /// A timewait socket ended; its age is unknown when it was born before
    /// tracing.
    TimeWaitEnd { end: TwEnd, age_ns: Option<u64> },
    /// A SYN arrived: a request socket in SYN_RECV, SYN-ACK sent.
    SynRecvStart,
    /// The handshake completed: the child socket was created.
    SynRecvEstablished { dwell_ns: u64, synack_retransmits: u32 },
    /// The request socket ended without a child.
    SynRecvDropped { reason: RequestDrop, age_ns: u64, synack_retransmits: u32 },
    /// A connection's record ended (at its CLOSE, counted after a short
    /// grace for a late RST): why, from which state, after how long (unknown
    /// when it opened before tracing).
    ConnectionEnd { reason: EndReason, closed_from: Option<TcpState>, lifetime_ns: Option<u64> },
}

impl Step {
    /// How long the step lasted, when it ended one.
    pub fn duration_ns(&self) -> Option<u64> {
        match *self {
            Self::TimeWaitStart { .. } | Self::SynRecvStart => None,
            Self::TimeWaitEnd { age_ns, .. } => age_ns,
            Self::SynRecvEstablished { dwell_ns, .. } => Some(dwell_ns),
            Self::SynRecvDropped { age_ns, .. } => Some(age_ns),
            Self::ConnectionEnd { lifetime_ns, .. } => lifetime_ns,
        }
    }
}
