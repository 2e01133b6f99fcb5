//! Property tests (proptest): whatever bytes the decoder and the recording
//! reader get, they answer with a value or an error, never a panic; and
//! records shaped like the kernel's decode to exactly what their bytes say.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicUsize, Ordering},
};

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use tracer::{
    event::{CaState, Comm, EventKind, RetransmitTiming, TcpState, Tuple},
    pipeline::decode::{self, DecodeError},
    record_file::{Block, Reader},
};
use tracer_common::{AF_INET, AF_INET6, RAW_EVENT_SIZE, RawEvent, flags, kind};

fn read_all(bytes: &[u8]) -> anyhow::Result<usize> {
    let mut reader = Reader::new(bytes)?;
    let mut n = 0;
    while let Some(block) = reader.next_block()? {
        if let Block::Events(events) = block {
            n += events.len();
        }
    }
    Ok(n)
}

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/handshakes.tcptrace"))
        .expect("fixture")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode::decode(&bytes);
    }

    #[test]
    fn summary_records_expand_or_fail_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), tracer_common::RAW_SUMMARY_SIZE),
        count in 0u8..=10,
        tasks in 0u8..=3,
    ) {
        // Mostly random, with the step and task counts near their bounds.
        let mut bytes = bytes;
        let tail = tracer_common::RAW_SUMMARY_SIZE - 8;
        bytes[tail] = count;
        bytes[tail + 1] = tasks;
        let mut out = Vec::new();
        if decode::decode_into(&bytes, &mut out).is_ok() {
            prop_assert!(out.len() <= tracer_common::SUMMARY_STEPS + 1);
        } else {
            prop_assert!(out.is_empty(), "a refused summary adds nothing");
        }
    }

    #[test]
    fn full_size_records_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 120..=120)) {
        // Random bytes rarely make a valid kind and family: this mostly runs
        // the refusals. `kernel_like_records_decode_to_their_bytes` covers decoding.
        if let Ok(event) = decode::decode(&bytes) {
            // A decoded event re-encodes to the same bytes' meaning.
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&bytes[..8]);
            prop_assert!(event.ts_ns == u64::from_ne_bytes(ts));
        }
    }

    #[test]
    fn reader_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = read_all(&bytes);
    }

    #[test]
    fn reader_never_panics_on_a_damaged_recording(
        cuts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        truncate in any::<Option<usize>>(),
    ) {
        let mut bytes = fixture();
        for (at, value) in cuts {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Some(len) = truncate {
            bytes.truncate(len % (bytes.len() + 1));
        }
        let _ = read_all(&bytes);
    }
}

#[test]
fn the_undamaged_fixture_reads() {
    assert!(read_all(&fixture()).expect("valid") > 0);
}

/// Byte offsets of the record's fields: the layout record files store
/// (`EVENT_LAYOUT_VERSION`). Written out here so that the property below
/// reads the bytes independently of the decoder; `the_layout_is_the_kernels`
/// checks them against the shared struct (whose per-kind fields are private:
/// they are checked through their accessors).
mod at {
    pub const TS: usize = 0;
    pub const SK: usize = 8;
    pub const COOKIE: usize = 16;
    pub const AUX: usize = 24;
    pub const PID_TGID: usize = 32;
    pub const CGROUP: usize = 40;
    pub const NETNS: usize = 48;
    pub const AUX32: usize = 52;
    pub const SADDR: usize = 56;
    pub const DADDR: usize = 72;
    pub const COMM: usize = 88;
    pub const SPORT: usize = 104;
    pub const DPORT: usize = 106;
    pub const KIND: usize = 108;
    pub const FAMILY: usize = 109;
    pub const OLD_STATE: usize = 110;
    pub const NEW_STATE: usize = 111;
    pub const FLAGS: usize = 112;
    pub const AUX8: usize = 113;
}

#[test]
fn the_layout_is_the_kernels() {
    use std::mem::offset_of;
    let expected = [
        (at::TS, offset_of!(RawEvent, ts_ns)),
        (at::SK, offset_of!(RawEvent, sk)),
        (at::COOKIE, offset_of!(RawEvent, cookie)),
        (at::PID_TGID, offset_of!(RawEvent, pid_tgid)),
        (at::CGROUP, offset_of!(RawEvent, cgroup_id)),
        (at::NETNS, offset_of!(RawEvent, netns)),
        (at::SADDR, offset_of!(RawEvent, saddr)),
        (at::DADDR, offset_of!(RawEvent, daddr)),
        (at::COMM, offset_of!(RawEvent, comm)),
        (at::SPORT, offset_of!(RawEvent, sport)),
        (at::DPORT, offset_of!(RawEvent, dport)),
        (at::KIND, offset_of!(RawEvent, kind)),
        (at::FAMILY, offset_of!(RawEvent, family)),
        (at::OLD_STATE, offset_of!(RawEvent, old_state)),
        (at::NEW_STATE, offset_of!(RawEvent, new_state)),
        (at::FLAGS, offset_of!(RawEvent, flags)),
    ];
    for (ours, struct_offset) in expected {
        assert_eq!(ours, struct_offset);
    }
    assert_eq!(RAW_EVENT_SIZE, 120);
    // The per-kind fields: each accessor writes the bytes at its offset, and
    // the accessors that share a field read what the others wrote.
    let mut raw = RawEvent::ZERO;
    raw.set_listener(0x0102_0304_0506_0708);
    raw.set_errno(0x1112_1314);
    raw.set_ca_state(0x21);
    let bytes = decode::raw_to_bytes(&raw);
    assert_eq!(u64_at(&bytes, at::AUX), 0x0102_0304_0506_0708);
    assert_eq!(u32_at(&bytes, at::AUX32), 0x1112_1314);
    assert_eq!(bytes[at::AUX8], 0x21);
    assert_eq!(bytes.iter().filter(|&&b| b != 0).count(), 8 + 4 + 1, "nothing else written");
    assert_eq!(
        (raw.timer_expiry(), raw.segs(), raw.defer_accept()),
        (0x0102_0304_0506_0708, 0x1314, 0x1112_1314)
    );
    // RETRANSMIT and STATE: the kernel's retransmit total shares aux32 with
    // segs (bits 16..32) and says it is there with bit 7 of aux8, beside
    // ca_state (bits 0..7).
    assert_eq!(raw.kernel_total_retrans(), None, "bit 7 of aux8 clear");
    raw.set_kernel_total_retrans(0x000a_bcde);
    let bytes = decode::raw_to_bytes(&raw);
    assert_eq!(u32_at(&bytes, at::AUX32), 0xbcde_1314);
    assert_eq!(bytes[at::AUX8], 0xa1);
    assert_eq!((raw.kernel_total_retrans(), raw.segs(), raw.ca_state()), (Some(0xbcde), 0x1314, 0x21));
    // The other kinds' accessors of aux8 read the whole byte.
    assert_eq!((raw.request_retransmits(), raw.timewait_substate()), (0xa1, 0xa1));
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

fn addr_at(b: &[u8], at: usize, family: u8) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
    } else {
        let mut v = [0u8; 16];
        v.copy_from_slice(&b[at..at + 16]);
        let v6 = Ipv6Addr::from(v);
        // An IPv4-mapped address is the IPv4 address it carries.
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }
}

const fn is_timewait_kind(k: u8) -> bool {
    matches!(k, kind::TW_ARMED | kind::TW_EXPIRED | kind::TW_CANCELLED)
}

/// 120-byte records shaped like the kernel's: a valid kind, a family the
/// kernel sends (AF_INET, AF_INET6, or 0, which only REQ_EXPIRE_DONE may
/// carry), valid TCP states, every other byte random (padding included).
/// A few are invalid by design, so that rejection is exercised too: family
/// 0 on other kinds, a timewait substate that is no TCP state.
fn kernel_like_record() -> impl Strategy<Value = Vec<u8>> {
    let family = prop_oneof![4 => Just(AF_INET), 4 => Just(AF_INET6), 1 => Just(0u8)];
    // aux8 is a TCP state for timewait kinds and a small count or
    // congestion state for the others; mostly valid states, sometimes anything.
    let aux8 = prop_oneof![9 => 1u8..=12, 1 => any::<u8>()];
    (
        proptest::collection::vec(any::<u8>(), RAW_EVENT_SIZE),
        1u8..=kind::MAX,
        family,
        1u8..=12,
        1u8..=12,
        aux8,
        any::<bool>(),
    )
        .prop_map(|(mut bytes, k, family, old, new, aux8, mapped)| {
            bytes[at::KIND] = k;
            bytes[at::FAMILY] = family;
            bytes[at::OLD_STATE] = old;
            bytes[at::NEW_STATE] = new;
            bytes[at::AUX8] = aux8;
            if family == AF_INET6 && mapped {
                // ::ffff:a.b.c.d, an AF_INET6 socket speaking IPv4.
                bytes[at::SADDR..at::SADDR + 12].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
            }
            bytes
        })
}

/// What the decoder must refuse in [`kernel_like_record`]'s output (the
/// first rule broken, in the decoder's order), or None.
fn refusal(b: &[u8]) -> Option<DecodeError> {
    let (k, family, aux8) = (b[at::KIND], b[at::FAMILY], b[at::AUX8]);
    if is_timewait_kind(k) && TcpState::from_u8(aux8).is_none() {
        return Some(DecodeError::State(aux8));
    }
    let family_ok = family == AF_INET || family == AF_INET6 || (family == 0 && k == kind::REQ_EXPIRE_DONE);
    (!family_ok).then_some(DecodeError::Family(family))
}

/// Checks one record: refused exactly when [`refusal`] says so, otherwise
/// every decoded field is what the bytes say.
fn check_record(b: &[u8]) -> Result<bool, TestCaseError> {
    let decoded = decode::decode(b);
    if let Some(expected) = refusal(b) {
        prop_assert_eq!(decoded, Err(expected));
        return Ok(false);
    }
    let event = match decoded {
        Ok(event) => event,
        Err(err) => return Err(TestCaseError::fail(format!("valid record refused: {err}"))),
    };
    let state = |at: usize| TcpState::from_u8(b[at]).expect("generated states are valid");
    let flag = |bit: u8| b[at::FLAGS] & bit != 0;
    let (aux, aux32, aux8) = (u64_at(b, at::AUX), u32_at(b, at::AUX32), b[at::AUX8]);
    prop_assert_eq!(event.ts_ns, u64_at(b, at::TS));
    prop_assert_eq!(event.sock, u64_at(b, at::SK));
    prop_assert_eq!(event.cookie, u64_at(b, at::COOKIE));
    prop_assert_eq!(event.netns, u32_at(b, at::NETNS));
    let pid_tgid = u64_at(b, at::PID_TGID);
    prop_assert_eq!(event.task.pid, (pid_tgid >> 32) as u32);
    prop_assert_eq!(event.task.tid, pid_tgid as u32);
    prop_assert_eq!(event.task.cgroup, u64_at(b, at::CGROUP));
    let mut comm = [0u8; 16];
    comm.copy_from_slice(&b[at::COMM..at::COMM + 16]);
    prop_assert_eq!(event.task.comm, Comm::new(comm));
    prop_assert_eq!(event.owned_by_task, flag(flags::OWNED_BY_USER));
    let family = b[at::FAMILY];
    if family == 0 {
        prop_assert_eq!(event.tuple, Tuple::UNSPECIFIED);
    } else {
        prop_assert_eq!(event.tuple.local.ip(), addr_at(b, at::SADDR, family));
        prop_assert_eq!(event.tuple.remote.ip(), addr_at(b, at::DADDR, family));
        prop_assert_eq!(event.tuple.local.port(), u16_at(b, at::SPORT));
        prop_assert_eq!(event.tuple.remote.port(), u16_at(b, at::DPORT));
    }
    let expected = match b[at::KIND] {
        kind::STATE => EventKind::State { old: state(at::OLD_STATE), new: state(at::NEW_STATE) },
        kind::RESET_SENT => EventKind::ResetSent { in_reply: aux8 & 1 == 1 },
        kind::RESET_RECEIVED => EventKind::ResetReceived,
        kind::OWNER => EventKind::Owner,
        kind::RETRANSMIT => EventKind::Retransmit {
            state: state(at::NEW_STATE),
            segs: aux32 & 0xffff,
            syn: flag(flags::SYN),
            fin: flag(flags::FIN),
            ca_state: CaState::from_wire(aux8 & 0x7f),
            timing: flag(flags::TIMING).then_some(RetransmitTiming {
                since_ack_us: aux as u32,
                rto_us: ((aux >> 32) as u32) & ((1 << 28) - 1),
                backoff: (aux >> 60) as u8,
            }),
        },
        kind::SYNACK_RETRANSMIT => EventKind::SynAckRetransmit { listener: aux, retransmits: aux8 },
        kind::SOCK_ERROR => EventKind::SockError { errno: aux32 },
        kind::TW_ARMED => EventKind::TimeWaitArmed { substate: state(at::AUX8) },
        kind::TW_EXPIRED => EventKind::TimeWaitExpired { substate: state(at::AUX8) },
        kind::TW_CANCELLED => EventKind::TimeWaitCancelled {
            substate: state(at::AUX8),
            in_connect: flag(flags::IN_CONNECT),
            netns_dying: flag(flags::NETNS_DYING),
        },
        kind::REQ_ARMED => EventKind::RequestArmed { listener: aux, retransmits: aux8 },
        kind::REQ_EXPIRED => EventKind::RequestExpired {
            listener: aux,
            retransmits: aux8,
            acked: flag(flags::ACKED),
            listener_gone: flag(flags::LISTENER_GONE),
            defer_accept: aux32.min(255) as u8,
        },
        kind::REQ_CANCELLED => EventKind::RequestCancelled {
            listener: aux,
            retransmits: aux8,
            // Bits 16..32: the limit plus one (0: not read); bits 0..16: the depth.
            accept_queue: (aux32 >> 16 != 0).then(|| (aux32 & 0xffff, (aux32 >> 16) - 1)),
        },
        kind::REQ_EXPIRE_DONE => EventKind::RequestExpireDone,
        kind::CONNECT_ERROR => EventKind::ConnectError { errno: aux32 },
        kind::ACCEPTED => EventKind::Accepted,
        kind::DROP => EventKind::Drop { reason: aux32, tcp_flags: aux8 },
        other => return Err(TestCaseError::fail(format!("generator produced kind {other}"))),
    };
    prop_assert_eq!(event.kind, expected);
    // A STATE record's end facts: bit 6 of aux8 says aux holds them.
    let end_facts = (b[at::KIND] == kind::STATE && aux8 & (1 << 6) != 0).then_some(tracer_common::EndFacts {
        user_timeout_ms: aux as u32,
        probes_out: (aux >> 32) as u8,
        retransmits: (aux >> 40) as u8,
        unread: ((aux >> 48) & 0x7fff) as u16,
        linger_zero: aux >> 63 == 1,
    });
    prop_assert_eq!(event.end_facts, end_facts);
    Ok(true)
}

/// Most kernel-like records must reach the decoded branch: with the weights
/// above about 88 % do. If the generator drifts (a new kind, a stricter
/// decoder) so that the field checks stop running, this fails instead of
/// passing vacuously.
#[test]
fn kernel_like_records_decode_to_their_bytes() {
    const CASES: u32 = 2000;
    let (cases, decoded) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let result = runner.run(&kernel_like_record(), |bytes| {
        cases.fetch_add(1, Ordering::Relaxed);
        if check_record(&bytes)? {
            decoded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    let (cases, decoded) = (cases.into_inner(), decoded.into_inner());
    assert_eq!(cases, CASES as usize, "every case ran once");
    assert!(decoded * 4 >= cases * 3, "only {decoded} of {cases} generated records decoded");
}
