//! Ring-buffer records -> [`Event`]s. Every record is length-checked and every
//! field validated: a short, long or garbled record is an error, never a panic.

use std::{fmt, net::SocketAddr};

use tracer_common::{AF_INET, AF_INET6, RAW_EVENT_SIZE, RawEvent, flags, kind};

use crate::event::{CaState, Comm, Event, EventKind, RetransmitTiming, Task, TcpState, Tuple};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Kind(u8),
    Family(u8),
    State(u8),
    /// A summary claiming more steps than it can hold.
    Steps(usize),
    /// A summary step naming a task slot it does not fill.
    Task(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length(n) => write!(f, "record of {n} bytes, expected {RAW_EVENT_SIZE}"),
            Self::Kind(k) => write!(f, "unknown event kind {k}"),
            Self::Family(v) => write!(f, "unknown address family {v}"),
            Self::State(s) => write!(f, "unknown TCP state {s}"),
            Self::Steps(n) => write!(f, "summary of {n} steps, at most {}", tracer_common::SUMMARY_STEPS),
            Self::Task(t) => write!(f, "summary step of unknown task slot {t}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reinterprets a record as the raw kernel struct after checking its length.
pub fn raw_from_bytes(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    if bytes.len() != RAW_EVENT_SIZE {
        return Err(DecodeError::Length(bytes.len()));
    }
    // SAFETY: the length matches and RawEvent is plain integers (any bit
    // pattern is valid); read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
}

/// The raw struct's bytes (for record files and tests).
pub fn raw_to_bytes(raw: &RawEvent) -> [u8; RAW_EVENT_SIZE] {
    // SAFETY: RawEvent is repr(C), RAW_EVENT_SIZE bytes, no uninitialised padding
    // (all padding is explicit `_pad` fields; tracer-common checks at compile
    // time that the fields tile the struct).
    unsafe { std::mem::transmute_copy(raw) }
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_raw(&raw_from_bytes(bytes)?)
}

/// A ring-buffer record into `out`: one event, or in summary mode the
/// events of a `SUMMARY` record (`pipeline::summary`), told apart by length.
/// A record of [`BUNDLE_EVENTS`] events the same size as a summary is told
/// apart by the kind its first event has (a summary's is `SUMMARY`): the
/// request's start, its child's LISTEN -> SYN_RECV and its end, sent
/// together in summary mode; a `kind` 0 slot is an event not sent.
pub fn decode_into(bytes: &[u8], out: &mut Vec<Event>) -> Result<(), DecodeError> {
    let kind_at = std::mem::offset_of!(RawEvent, kind);
    if bytes.len() == tracer_common::RAW_SUMMARY_SIZE && bytes[kind_at] == kind::SUMMARY {
        return super::summary::expand(&super::summary::summary_from_bytes(bytes)?, out);
    }
    if bytes.len() == BUNDLE_EVENTS * RAW_EVENT_SIZE {
        let start = out.len();
        for one in bytes.chunks_exact(RAW_EVENT_SIZE).filter(|one| one[kind_at] != 0) {
            match decode(one) {
                Ok(event) => out.push(event),
                Err(err) => {
                    out.truncate(start);
                    return Err(err);
                }
            }
        }
        return Ok(());
    }
    out.push(decode(bytes)?);
    Ok(())
}

/// Events in a bundle record (see [`decode_into`]).
pub const BUNDLE_EVENTS: usize = 3;

fn state(value: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_u8(value).ok_or(DecodeError::State(value))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, an AF_INET6 socket
/// talking IPv4) as the IPv4 address it is: the packets are IPv4, the peer's
/// socket (e.g. an AF_INET server) shows the IPv4 address, the ephemeral
/// ports are shared with AF_INET sockets, and `--raddr 198.18.0.0/15` or
/// `--ipv4` must match it.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// [`unmap`] on both ends.
pub fn unmap_tuple(tuple: Tuple) -> Tuple {
    Tuple { local: unmap(tuple.local), remote: unmap(tuple.remote) }
}

pub fn decode_raw(raw: &RawEvent) -> Result<Event, DecodeError> {
    let flag = |bit: u8| raw.flags & bit != 0;
    let kind = match raw.kind {
        kind::STATE => EventKind::State { old: state(raw.old_state)?, new: state(raw.new_state)? },
        kind::RESET_SENT => EventKind::ResetSent { in_reply: raw.reset_in_reply() },
        kind::RESET_RECEIVED => EventKind::ResetReceived,
        kind::OWNER => EventKind::Owner,
        kind::RETRANSMIT => EventKind::Retransmit {
            state: state(raw.new_state)?,
            segs: raw.segs(),
            syn: flag(flags::SYN),
            fin: flag(flags::FIN),
            ca_state: CaState::from_wire(raw.ca_state()),
            timing: flag(flags::TIMING).then(|| RetransmitTiming {
                since_ack_us: raw.since_ack_us(),
                rto_us: raw.rto_us(),
                backoff: raw.backoff(),
            }),
        },
        kind::SYNACK_RETRANSMIT => {
            EventKind::SynAckRetransmit { listener: raw.listener(), retransmits: raw.request_retransmits() }
        }
        kind::SOCK_ERROR => EventKind::SockError { errno: raw.errno() },
        kind::TW_ARMED => EventKind::TimeWaitArmed { substate: state(raw.timewait_substate())? },
        kind::TW_EXPIRED => EventKind::TimeWaitExpired { substate: state(raw.timewait_substate())? },
        kind::TW_CANCELLED => EventKind::TimeWaitCancelled {
            substate: state(raw.timewait_substate())?,
            in_connect: flag(flags::IN_CONNECT),
            netns_dying: flag(flags::NETNS_DYING),
        },
        kind::REQ_ARMED => {
            EventKind::RequestArmed { listener: raw.listener(), retransmits: raw.request_retransmits() }
        }
        kind::REQ_EXPIRED => EventKind::RequestExpired {
            listener: raw.listener(),
            retransmits: raw.request_retransmits(),
            acked: flag(flags::ACKED),
            listener_gone: flag(flags::LISTENER_GONE),
            defer_accept: raw.defer_accept().min(255) as u8,
        },
        kind::REQ_EXPIRE_DONE => EventKind::RequestExpireDone,
        kind::REQ_CANCELLED => EventKind::RequestCancelled {
            listener: raw.listener(),
            retransmits: raw.request_retransmits(),
            accept_queue: raw.accept_queue(),
        },
        kind::CONNECT_ERROR => EventKind::ConnectError { errno: raw.errno() },
        kind::ACCEPTED => EventKind::Accepted,
        kind::DROP => EventKind::Drop { reason: raw.drop_reason(), tcp_flags: raw.tcp_flags() },
        other => return Err(DecodeError::Kind(other)),
    };
    // Every kind but REQ_EXPIRE_DONE carries an address family.
    let tuple = match raw.family {
        AF_INET | AF_INET6 => {
            unmap_tuple(Tuple::from_raw(raw.family, raw.saddr, raw.sport, raw.daddr, raw.dport))
        }
        0 if matches!(kind, EventKind::RequestExpireDone) => Tuple::UNSPECIFIED,
        other => return Err(DecodeError::Family(other)),
    };
    Ok(Event {
        ts_ns: raw.ts_ns,
        kind,
        sock: raw.sk,
        cookie: raw.cookie,
        netns: raw.netns,
        tuple,
        task: Task {
            pid: (raw.pid_tgid >> 32) as u32,
            tid: raw.pid_tgid as u32,
            comm: Comm::new(raw.comm),
            cgroup: raw.cgroup_id,
        },
        owned_by_task: flag(flags::OWNED_BY_USER),
        kernel_total_retrans: raw.kernel_total_retrans(),
        close_errno: if matches!(kind, EventKind::State { .. }) { raw.close_errno() } else { 0 },
        end_facts: if matches!(kind, EventKind::State { .. }) { raw.end_facts() } else { None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn state_raw() -> RawEvent {
        let mut raw = RawEvent::ZERO;
        raw.kind = kind::STATE;
        raw.family = AF_INET;
        raw.old_state = 2;
        raw.new_state = 1;
        raw.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        raw.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        raw.sport = 40000;
        raw.dport = 8080;
        raw.pid_tgid = (42 << 32) | 43;
        raw.comm[..4].copy_from_slice(b"curl");
        raw.flags = flags::OWNED_BY_USER;
        raw
    }

    #[test]
    fn decodes_a_state_change() {
        let event = decode(&raw_to_bytes(&state_raw())).expect("valid record");
        assert_eq!(event.kind, EventKind::State { old: TcpState::SynSent, new: TcpState::Established });
        assert_eq!(event.tuple.local, "198.18.0.1:40000".parse::<SocketAddr>().expect("addr"));
        assert_eq!(event.tuple.remote, "198.18.0.2:8080".parse::<SocketAddr>().expect("addr"));
        assert_eq!((event.task.pid, event.task.tid), (42, 43));
        assert_eq!(event.task.comm.to_string(), "curl");
        assert!(event.owned_by_task);
    }

    #[test]
    fn decodes_ipv6() {
        let mut raw = state_raw();
        raw.family = AF_INET6;
        raw.saddr = "2001:db8::1".parse::<std::net::Ipv6Addr>().expect("v6").octets();
        let event = decode(&raw_to_bytes(&raw)).expect("valid record");
        assert_eq!(event.tuple.local, "[2001:db8::1]:40000".parse::<SocketAddr>().expect("addr"));
    }

    #[test]
    fn ipv4_mapped_addresses_decode_as_ipv4() {
        let mut raw = state_raw();
        raw.family = AF_INET6;
        raw.saddr = "::ffff:198.18.0.1".parse::<std::net::Ipv6Addr>().expect("v6").octets();
        raw.daddr = "::ffff:198.18.0.2".parse::<std::net::Ipv6Addr>().expect("v6").octets();
        let event = decode(&raw_to_bytes(&raw)).expect("valid record");
        assert_eq!(event.tuple.local, "198.18.0.1:40000".parse::<SocketAddr>().expect("addr"));
        assert_eq!(event.tuple.remote, "198.18.0.2:8080".parse::<SocketAddr>().expect("addr"));
        // A dual-stack listener's unspecified address stays IPv6.
        raw.saddr = [0; 16];
        let event = decode(&raw_to_bytes(&raw)).expect("valid record");
        assert_eq!(event.tuple.local, "[::]:40000".parse::<SocketAddr>().expect("addr"));
    }

    #[test]
    fn decodes_a_retransmits_timing_saturating_each_field() {
        let mut raw = state_raw();
        raw.kind = kind::RETRANSMIT;
        raw.set_segs(1);
        raw.set_ca_state(4);
        raw.set_timing(12_000, 1_200_000, 3);
        let timing = |raw: &RawEvent| match decode_raw(raw).expect("valid record").kind {
            EventKind::Retransmit { timing, segs: 1, .. } => timing,
            other => panic!("{other:?}"),
        };
        let t = RetransmitTiming { since_ack_us: 12_000, rto_us: 1_200_000, backoff: 3 };
        assert_eq!(timing(&raw), Some(t));
        raw.set_timing(u64::MAX, u64::MAX, 200);
        let t = RetransmitTiming { since_ack_us: u32::MAX, rto_us: (1 << 28) - 1, backoff: 15 };
        assert_eq!(timing(&raw), Some(t));
        raw.flags &= !flags::TIMING;
        assert_eq!(timing(&raw), None, "records without the flag (older versions) have no timing");
    }

    #[test]
    fn decodes_a_retransmit_and_keeps_an_unknown_congestion_state() {
        let mut raw = state_raw();
        raw.kind = kind::RETRANSMIT;
        raw.flags = flags::FIN;
        raw.set_segs(3);
        raw.set_ca_state(4);
        let expected = |ca_state| EventKind::Retransmit {
            state: TcpState::Established,
            segs: 3,
            syn: false,
            fin: true,
            ca_state,
            timing: None,
        };
        assert_eq!(decode_raw(&raw).expect("valid record").kind, expected(CaState::Loss));
        // A state a newer kernel might add is not a reason to drop the event.
        raw.set_ca_state(9);
        assert_eq!(decode_raw(&raw).expect("valid record").kind, expected(CaState::Unknown(9)));
    }

    #[test]
    fn rejects_short_long_and_empty_records() {
        let bytes = raw_to_bytes(&state_raw());
        for len in [0, 1, RAW_EVENT_SIZE - 1] {
            assert_eq!(decode(&bytes[..len]), Err(DecodeError::Length(len)));
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Length(RAW_EVENT_SIZE + 1)));
    }

    #[test]
    fn rejects_garbled_fields() {
        let garbled = |garble: fn(&mut RawEvent)| {
            let mut raw = state_raw();
            garble(&mut raw);
            decode_raw(&raw)
        };
        assert_eq!(garbled(|raw| raw.kind = 200), Err(DecodeError::Kind(200)));
        assert_eq!(garbled(|raw| raw.kind = 0), Err(DecodeError::Kind(0)));
        assert_eq!(garbled(|raw| raw.new_state = 13), Err(DecodeError::State(13)));
        assert_eq!(garbled(|raw| raw.old_state = 0), Err(DecodeError::State(0)));
        assert_eq!(garbled(|raw| raw.family = 1), Err(DecodeError::Family(1)));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic generator: the point is coverage of odd values.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut buf = [0u8; RAW_EVENT_SIZE];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            // Keep kind small sometimes so that deeper validation runs too.
            buf[std::mem::offset_of!(RawEvent, kind)] %= 17;
            let _ = decode(&buf);
        }
    }

    #[test]
    fn odd_comm_bytes_are_escaped_for_text_and_valid_for_json() {
        let mut raw = state_raw();
        raw.comm = *b"a\x1b[31mb\xff\0\0\0\0\0\0\0\0";
        let event = decode_raw(&raw).expect("valid record");
        assert_eq!(event.task.comm.to_string(), "a\\x1b[31mb\\xff");
        let json = serde_json::to_string(&event.task.comm).expect("json");
        assert_eq!(json, "\"a\\u001b[31mb\u{fffd}\"");
    }
}
