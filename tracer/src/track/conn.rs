//! One full socket's record, from its first transition to CLOSE.

use serde::Serialize;

use crate::{
    event::{Owner, TcpState, Tuple},
    track::{
        compact::{PackedTuple, SharedOwner, Stamp},
        end::{EndNote, EndReason},
        retrans::ConnStalls,
    },
};

/// How the socket came to exist, as far as tcptrace saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// connect(): CLOSE -> SYN_SENT.
    Active,
    /// Accepted child: LISTEN -> SYN_RECV.
    Passive,
    /// listen(): CLOSE -> LISTEN.
    Listener,
    /// Already open when tracing started.
    Unknown,
}

/// Who closed first, and how. Decided by the first closing action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseKind {
    /// This side sent the first FIN (ESTABLISHED -> FIN_WAIT1): active close.
    Local,
    /// The peer's FIN came first (ESTABLISHED -> CLOSE_WAIT): passive close.
    Remote,
    /// Both FINs crossed (FIN_WAIT1 -> CLOSING).
    Simultaneous,
    /// Ended by an RST this side sent (SO_LINGER 0, unread data, abort).
    ResetSent,
    /// Ended by the peer's RST (includes a refused connect).
    ResetReceived,
    /// Ended without FIN or RST seen here: timeout, connect failure, ...
    Aborted,
}

/// One per tracked socket, so kept compact (at most 120 bytes, checked
/// below): the tuple packed, timestamps without `Option`, owners shared.
#[derive(Clone, Debug, PartialEq)]
pub struct Conn {
    /// Insertion sequence number (eviction order).
    pub seq: u64,
    /// When the socket entered `state`; unknown when that was not observed.
    pub state_since: Stamp,
    pub opened_at: Stamp,
    pub closed_at: Stamp,
    owner: Option<SharedOwner>,
    /// The process that performed the active close (sent the first FIN).
    closer: Option<SharedOwner>,
    /// Its retransmissions' stalls.
    pub stalls: ConnStalls,
    pub netns: u32,
    /// Segments retransmitted (as the kernel's `tcpi_total_retrans`).
    pub retransmits: u32,
    tuple: PackedTuple,
    pub role: Role,
    pub state: TcpState,
    pub close: Option<CloseKind>,
    /// State of the last retransmit.
    pub retransmit_state: Option<TcpState>,
    /// How many retransmitted segments the kernel had counted for this
    /// socket (`total_retrans`, modulo 2^16) beyond `retransmits` when the
    /// record began: 0 for a socket born while tracing, learned from the
    /// first reading for the others. None until known.
    pub kernel_retrans_offset: Option<u16>,
    /// What happened to it, as [`Mark`] bits (one byte, not eight bools).
    marks: u8,
    /// What its CLOSE transition said about why it ended.
    end: EndNote,
}

/// Facts a record learns once (or, for `OwnerInherited`, changes with its
/// owner), kept as bits of `Conn::marks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The owner was inherited from the listener, not seen in a syscall.
    OwnerInherited,
    /// This side sent an RST.
    ResetSent,
    /// The peer's RST arrived.
    ResetReceived,
    /// Killed by retransmission timeout (ETIMEDOUT).
    TimedOut,
    /// Counted in `opened` (once its owner passed the owner filter).
    CountedOpen,
    /// An accepted child got past SYN_RECV (ESTABLISHED or later): only
    /// then is it a connection.
    PastHandshake,
    /// A timewait socket took over this connection.
    TimeWait,
    /// Left out by `--pid`/`--comm`/`--cgroup` (neither its owner nor its
    /// closer matches): kept apart, in a table of its own, so that it never
    /// takes the room of a socket the user asked for.
    Excluded,
}

impl Mark {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

// The memory target (BENCHMARKS.md: ≤ 256 bytes per live socket, with the
// map's key, control byte and slack) holds only while the record stays small.
const _: () = assert!(size_of::<Conn>() <= 120);

impl Conn {
    pub fn new(seq: u64, netns: u32, tuple: Tuple, role: Role, state: TcpState) -> Self {
        Self {
            seq,
            netns,
            tuple: PackedTuple::pack(&tuple),
            role,
            state,
            state_since: Stamp::UNKNOWN,
            opened_at: Stamp::UNKNOWN,
            closed_at: Stamp::UNKNOWN,
            owner: None,
            marks: 0,
            end: EndNote::NONE,
            close: None,
            closer: None,
            retransmits: 0,
            retransmit_state: None,
            kernel_retrans_offset: None,
            stalls: ConnStalls::default(),
        }
    }

    pub fn tuple(&self) -> Tuple {
        self.tuple.unpack()
    }

    /// Whether the socket has this tuple, without unpacking its own.
    pub fn has_tuple(&self, packed: &PackedTuple) -> bool {
        self.tuple == *packed
    }

    pub fn local_port(&self) -> u16 {
        self.tuple.local_port()
    }

    pub fn set_tuple(&mut self, tuple: &Tuple) {
        self.tuple = PackedTuple::pack(tuple);
    }

    /// The process that owns the socket (its last system call on it, or
    /// the listener's for an accepted child), if known.
    pub fn owner(&self) -> Option<Owner> {
        self.owner.as_deref().copied()
    }

    /// The process that performed the active close, if any.
    pub fn closer(&self) -> Option<Owner> {
        self.closer.as_deref().copied()
    }

    pub fn set_owner(&mut self, owner: SharedOwner, inherited: bool) {
        self.owner = Some(owner);
        self.set_mark(Mark::OwnerInherited, inherited);
    }

    pub fn has(&self, mark: Mark) -> bool {
        self.marks & mark.bit() != 0
    }

    pub fn mark(&mut self, mark: Mark) {
        self.marks |= mark.bit();
    }

    pub fn set_mark(&mut self, mark: Mark, on: bool) {
        if on { self.mark(mark) } else { self.marks &= !mark.bit() }
    }

    /// Compares the kernel's retransmit total carried by an event (after its
    /// own `segs`; `total_retrans` modulo 2^16) with the segments this record
    /// has: the difference is retransmissions the kernel counted that no
    /// event showed (on these kernels the tracepoint sometimes does not run
    /// the program, and before 6.17 it never fires for a failed attempt;
    /// docs/RELIABILITY.md). They are added here, so that the count stays the
    /// kernel's, and returned, to be counted as `unseen` with no kind or
    /// cause. A record that began mid-life learns its offset from the first
    /// reading instead.
    pub fn catch_up_retransmits(&mut self, total: Option<u16>, segs: u32) -> u32 {
        let Some(total) = total else { return 0 };
        let before = total.wrapping_sub(segs as u16);
        let have = self.retransmits as u16;
        let Some(offset) = self.kernel_retrans_offset else {
            self.kernel_retrans_offset = Some(before.wrapping_sub(have));
            return 0;
        };
        let unseen = before.wrapping_sub(have.wrapping_add(offset));
        // A "negative" difference (more seen than counted) is not a loss.
        if unseen >= 0x8000 {
            return 0;
        }
        self.retransmits += u32::from(unseen);
        u32::from(unseen)
    }

    /// Applies the close analysis for a transition. `actor` is the process
    /// in whose system call the transition happened, if any.
    pub fn note_close_step(&mut self, old: TcpState, new: TcpState, actor: Option<&SharedOwner>) {
        use TcpState::*;
        match (old, new) {
            (Established | SynRecv, FinWait1) if self.close.is_none() => {
                self.close = Some(CloseKind::Local);
                self.closer = actor.or(self.owner.as_ref()).cloned();
            }
            (Established, CloseWait) if self.close.is_none() => self.close = Some(CloseKind::Remote),
            (FinWait1, Closing) if self.close == Some(CloseKind::Local) => {
                self.close = Some(CloseKind::Simultaneous);
            }
            _ => {}
        }
    }

    /// The final close classification, once no more RST can arrive for it.
    pub fn final_close(&self) -> CloseKind {
        match self.close {
            Some(kind) => kind,
            None if self.has(Mark::ResetReceived) => CloseKind::ResetReceived,
            None if self.has(Mark::ResetSent) => CloseKind::ResetSent,
            None => CloseKind::Aborted,
        }
    }

    /// Notes what the CLOSE transition carried, for [`Conn::end_reason`].
    pub fn note_close(
        &mut self,
        errno: u32,
        facts: Option<tracer_common::EndFacts>,
        closed_from: TcpState,
        in_syscall: bool,
    ) {
        self.end.close(super::end::ErrorClass::of(errno as i32), facts, closed_from, in_syscall);
    }

    /// An RST this side sent answered a received segment.
    pub fn note_reset_in_reply(&mut self) {
        self.end.note_reset_in_reply();
    }

    /// Why it ended, once no more RST can arrive for it; None while no
    /// CLOSE was seen.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end.evidence(self.close, self.has(Mark::ResetSent)).map(|e| e.classify())
    }

    /// The state it left for CLOSE, once that was seen.
    pub fn closed_from(&self) -> Option<TcpState> {
        self.end.closed_from()
    }

    /// Whether the connection ever completed its handshake as far as we saw.
    pub fn is_connection(&self) -> bool {
        matches!(self.role, Role::Active | Role::Passive | Role::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Comm;

    fn owner(pid: u32) -> SharedOwner {
        SharedOwner::new(Owner { pid, comm: Comm::from_str_lossy("x"), cgroup: 1 })
    }

    fn conn() -> Conn {
        Conn::new(0, 1, Tuple::UNSPECIFIED, Role::Active, TcpState::Established)
    }

    #[test]
    fn first_fin_decides_who_closed_first() {
        let mut c = conn();
        c.note_close_step(TcpState::Established, TcpState::FinWait1, Some(&owner(7)));
        assert_eq!(c.close, Some(CloseKind::Local));
        assert_eq!(c.closer().map(|o| o.pid), Some(7));
        c.note_close_step(TcpState::FinWait1, TcpState::Closing, None);
        assert_eq!(c.final_close(), CloseKind::Simultaneous);
        assert_eq!(c.closer().map(|o| o.pid), Some(7), "closer kept");

        let mut c = conn();
        c.note_close_step(TcpState::Established, TcpState::CloseWait, None);
        c.note_close_step(TcpState::CloseWait, TcpState::LastAck, Some(&owner(9)));
        assert_eq!(c.final_close(), CloseKind::Remote);
        assert_eq!(c.closer(), None, "a passive closer is not an active closer");
    }

    #[test]
    fn resets_decide_only_when_no_fin_came_first() {
        let mut c = conn();
        c.mark(Mark::ResetSent);
        assert_eq!(c.final_close(), CloseKind::ResetSent);
        c.mark(Mark::ResetReceived);
        assert_eq!(c.final_close(), CloseKind::ResetReceived);
        c.close = Some(CloseKind::Local);
        assert_eq!(c.final_close(), CloseKind::Local);
        assert_eq!(conn().final_close(), CloseKind::Aborted);
    }
}
