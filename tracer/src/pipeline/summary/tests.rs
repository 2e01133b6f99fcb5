use tracer_common::{AF_INET, EndFacts, RawEvent, RawSummary, TcpState as S, kind};

use super::*;
use crate::pipeline::decode::{decode_raw, raw_to_bytes};

const COOKIE: u64 = 77;

fn base() -> RawEvent {
    let mut raw = RawEvent::ZERO;
    raw.kind = kind::SUMMARY;
    raw.ts_ns = 9_999;
    raw.sk = 0xffff_0000_1234;
    raw.cookie = COOKIE;
    raw.netns = 4026531840;
    raw.family = AF_INET;
    raw.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
    raw.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
    raw.sport = 40000;
    raw.dport = 8080;
    raw
}

fn task(pid: u64, name: &[u8]) -> SummaryTask {
    let mut comm = [0; 16];
    comm[..name.len()].copy_from_slice(name);
    SummaryTask { pid_tgid: pid << 32 | pid, cgroup_id: 5, comm }
}

/// A client's whole life: connect, established, the peer's FIN, close, ACK.
fn client_life() -> RawSummary {
    let mut s = RawSummary::ZERO;
    s.base = base();
    let steps = [
        (100, S::Close, S::SynSent, 0),
        (200, S::SynSent, S::Established, NO_TASK),
        (300, S::Established, S::CloseWait, NO_TASK),
        (400, S::CloseWait, S::LastAck, 0),
        (500, S::LastAck, S::Close, NO_TASK),
    ];
    for (i, (ts, old, new, task)) in steps.into_iter().enumerate() {
        s.steps[i] = tracer_common::SummaryStep {
            ts_ns: ts,
            kind: STEP_STATE,
            old_state: old.to_u8(),
            new_state: new.to_u8(),
            task,
            _pad: [0; 4],
        };
    }
    s.count = 5;
    s.tasks[0] = task(42, b"curl");
    s.tasks_used = 1;
    s.base.set_close_errno(0);
    s.base.set_kernel_total_retrans(3);
    s.base.set_end_facts(EndFacts { unread: 1, ..Default::default() });
    s
}

/// The event the full stream would carry for this transition.
fn full_stream(ts: u64, old: S, new: S, owner: Option<&SummaryTask>) -> Event {
    let mut raw = base();
    raw.kind = kind::STATE;
    raw.ts_ns = ts;
    raw.old_state = old.to_u8();
    raw.new_state = new.to_u8();
    if let Some(t) = owner {
        raw.pid_tgid = t.pid_tgid;
        raw.cgroup_id = t.cgroup_id;
        raw.comm = t.comm;
        raw.flags = flags::OWNED_BY_USER;
    }
    if new == S::Close {
        raw.set_close_errno(0);
        raw.set_kernel_total_retrans(3);
        raw.set_end_facts(EndFacts { unread: 1, ..Default::default() });
    }
    decode_raw(&raw).unwrap()
}

#[test]
fn a_summary_expands_to_the_events_of_the_full_stream() {
    let s = client_life();
    let mut out = Vec::new();
    expand(&s, &mut out).unwrap();
    let curl = task(42, b"curl");
    assert_eq!(
        out,
        [
            full_stream(100, S::Close, S::SynSent, Some(&curl)),
            full_stream(200, S::SynSent, S::Established, None),
            full_stream(300, S::Established, S::CloseWait, None),
            full_stream(400, S::CloseWait, S::LastAck, Some(&curl)),
            full_stream(500, S::LastAck, S::Close, None),
        ]
    );
    // Only the CLOSE carries the end.
    assert!(out[..4].iter().all(|e| e.end_facts.is_none() && e.kernel_total_retrans.is_none()));
    assert_eq!(out[4].kernel_total_retrans, Some(3));
}

#[test]
fn the_accept_goes_where_its_time_puts_it_with_its_task() {
    let mut s = client_life();
    s.accepted_ns = 250;
    s.acceptor = task(7, b"nginx");
    let mut out = Vec::new();
    expand(&s, &mut out).unwrap();
    assert_eq!(out.len(), 6);
    assert_eq!(out[2].kind, EventKind::Accepted);
    assert_eq!((out[2].ts_ns, out[2].task.pid, out[2].owned_by_task), (250, 7, true));
    assert_eq!(out[2].tuple, out[0].tuple);
    // After every step: last.
    s.accepted_ns = 600;
    out.clear();
    expand(&s, &mut out).unwrap();
    assert_eq!(out[5].kind, EventKind::Accepted);
}

#[test]
fn an_owner_step_is_an_owner_event() {
    let mut s = client_life();
    s.steps[5] = tracer_common::SummaryStep {
        ts_ns: 450,
        kind: STEP_OWNER,
        old_state: 0,
        new_state: 0,
        task: 1,
        _pad: [0; 4],
    };
    s.count = 6;
    s.tasks[1] = task(9, b"worker");
    s.tasks_used = 2;
    let mut out = Vec::new();
    expand(&s, &mut out).unwrap();
    assert_eq!(out[5].kind, EventKind::Owner);
    assert_eq!((out[5].task.pid, out[5].owned_by_task), (9, true));
}

#[test]
fn a_malformed_summary_is_an_error_and_adds_nothing() {
    let mut out = vec![full_stream(1, S::Close, S::SynSent, None)];
    let mut s = client_life();
    s.count = SUMMARY_STEPS as u8 + 1;
    assert_eq!(expand(&s, &mut out), Err(DecodeError::Steps(SUMMARY_STEPS + 1)));
    let mut s = client_life();
    s.steps[3].task = 1; // only slot 0 is used
    assert_eq!(expand(&s, &mut out), Err(DecodeError::Task(1)));
    let mut s = client_life();
    s.steps[4].new_state = 200;
    assert_eq!(expand(&s, &mut out), Err(DecodeError::State(200)));
    let mut s = client_life();
    s.steps[2].kind = 9;
    assert_eq!(expand(&s, &mut out), Err(DecodeError::Kind(9)));
    assert_eq!(out.len(), 1);
}

#[test]
fn records_are_told_apart_by_length() {
    let s = client_life();
    // SAFETY: RawSummary is repr(C) plain integers without implicit padding.
    let bytes: [u8; RAW_SUMMARY_SIZE] = unsafe { std::mem::transmute_copy(&s) };
    let mut out = Vec::new();
    crate::pipeline::decode::decode_into(&bytes, &mut out).unwrap();
    assert_eq!(out.len(), 5);
    let one = raw_to_bytes(&base_state());
    crate::pipeline::decode::decode_into(&one, &mut out).unwrap();
    assert_eq!(out.len(), 6);
    assert_eq!(
        crate::pipeline::decode::decode_into(&bytes[..RAW_SUMMARY_SIZE - 1], &mut out),
        Err(DecodeError::Length(RAW_SUMMARY_SIZE - 1))
    );
    // A summary's base alone, as a 120-byte record, is no event.
    assert_eq!(decode_raw(&base()), Err(DecodeError::Kind(kind::SUMMARY)));
}

fn base_state() -> RawEvent {
    let mut raw = base();
    raw.kind = kind::STATE;
    raw.old_state = S::Close.to_u8();
    raw.new_state = S::Listen.to_u8();
    raw
}

fn time_wait_armed(ts: u64, cookie: u64) -> Event {
    let mut raw = base();
    raw.kind = kind::TW_ARMED;
    raw.ts_ns = ts;
    raw.cookie = cookie;
    raw.set_timewait_substate(S::TimeWait.to_u8());
    decode_raw(&raw).unwrap()
}

fn kinds(events: &[Event]) -> Vec<(u64, bool)> {
    events.iter().map(|e| (e.ts_ns, matches!(e.kind, EventKind::TimeWaitArmed { .. }))).collect()
}

#[test]
fn a_time_wait_birth_waits_for_its_sockets_close() {
    let mut order = TimeWaitOrder::new();
    let mut out = Vec::new();
    order.push(&time_wait_armed(450, COOKIE), &mut out);
    assert!(out.is_empty(), "held back");
    let mut steps = Vec::new();
    expand(&client_life(), &mut steps).unwrap();
    for e in &steps {
        order.push(e, &mut out);
    }
    assert_eq!(
        kinds(&out),
        [(100, false), (200, false), (300, false), (400, false), (450, true), (500, false)]
    );
    // A re-arm after the CLOSE goes on at once.
    out.clear();
    order.push(&time_wait_armed(700, COOKIE), &mut out);
    assert_eq!(kinds(&out), [(700, true)]);
}

#[test]
fn a_birth_whose_close_never_comes_goes_on_after_the_deadline() {
    let mut order = TimeWaitOrder::new();
    let mut out = Vec::new();
    order.push(&time_wait_armed(1_000, 5), &mut out);
    order.push(&full_stream(1_000 + BIRTH_WAIT_NS / 2, S::Close, S::SynSent, None), &mut out);
    assert_eq!(out.len(), 1);
    order.push(&full_stream(2_000 + BIRTH_WAIT_NS, S::SynSent, S::Established, None), &mut out);
    assert_eq!(kinds(&out)[1..], [(1_000, true), (2_000 + BIRTH_WAIT_NS, false)]);
    order.push(&time_wait_armed(3_000 + BIRTH_WAIT_NS, 6), &mut out);
    let mut rest = Vec::new();
    order.release_all(&mut rest);
    assert_eq!(kinds(&rest), [(3_000 + BIRTH_WAIT_NS, true)]);
}

#[test]
fn a_bundle_is_its_events_in_order_without_the_empty_slots() {
    use crate::pipeline::decode::{BUNDLE_EVENTS, decode_into};
    let mut armed = base();
    armed.kind = kind::REQ_ARMED;
    armed.ts_ns = 1;
    let mut child = base_state();
    child.ts_ns = 2;
    child.old_state = S::Listen.to_u8();
    child.new_state = S::SynRecv.to_u8();
    let mut cancel = base();
    cancel.kind = kind::REQ_CANCELLED;
    cancel.ts_ns = 3;
    let bytes =
        |events: [RawEvent; BUNDLE_EVENTS]| -> Vec<u8> { events.iter().flat_map(raw_to_bytes).collect() };
    let mut out = Vec::new();
    decode_into(&bytes([armed, child, cancel]), &mut out).unwrap();
    assert_eq!(out.iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        out[1].kind,
        EventKind::State { old: crate::event::TcpState::Listen, new: crate::event::TcpState::SynRecv }
    );
    out.clear();
    decode_into(&bytes([RawEvent::ZERO, child, RawEvent::ZERO]), &mut out).unwrap();
    assert_eq!(out.len(), 1);
    // One bad event refuses the whole record.
    let mut bad = cancel;
    bad.family = 99;
    out.clear();
    assert_eq!(decode_into(&bytes([armed, child, bad]), &mut out), Err(DecodeError::Family(99)));
    assert!(out.is_empty());
}
