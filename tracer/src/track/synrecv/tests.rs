//! The request-socket tracker on synthetic timer events.

use super::*;
use crate::{
    event::EventKind,
    track::tests::{Sock, softirq},
};

const LISTENER: u64 = 0xaaaa;

fn req(cookie: u64) -> Sock {
    Sock::new(cookie, "198.18.0.2:8080", &format!("198.18.0.1:{}", 40000 + cookie))
}

fn info() -> Option<ListenerInfo> {
    Some(ListenerInfo {
        local: "0.0.0.0:8080".parse().expect("addr"),
        owner: Some(Owner::of(&crate::track::tests::task(20, "ttserver"))),
    })
}

fn armed(s: &Sock, ms: u64) -> Event {
    s.event(ms, EventKind::RequestArmed { listener: LISTENER, retransmits: 0 }, softirq(), false)
}

fn cancelled(s: &Sock, ms: u64, retransmits: u8) -> Event {
    s.event(
        ms,
        EventKind::RequestCancelled { listener: LISTENER, retransmits, accept_queue: None },
        softirq(),
        false,
    )
}

fn child(s: &Sock, ms: u64) -> Event {
    let mut c = Sock::new(s.cookie + 1000, &s.tuple.local.to_string(), &s.tuple.remote.to_string());
    c.netns = s.netns;
    c.irq(ms, crate::event::TcpState::Listen, crate::event::TcpState::SynRecv)
}

/// The events of a request's timer handler (`timer_expire_entry`,
/// `timer_expire_exit`): the tracker reads only the socket and the time
/// from them, the handler's findings are arguments.
fn in_handler(s: &Sock, ms: u64) -> Event {
    s.event(ms, EventKind::RequestExpireDone, softirq(), false)
}

fn tracker() -> SynRecvTracker {
    let mut t = SynRecvTracker::new(1000, 100);
    t.emit_lifecycle = true;
    t
}

/// A tracker with one request, born at 0.
fn one_request() -> (SynRecvTracker, Sock) {
    let mut t = tracker();
    let r = req(1);
    t.armed(&armed(&r, 0), LISTENER, info());
    (t, r)
}

#[test]
fn completed_handshake_measures_syn_to_child() {
    let mut t = tracker();
    let r = req(1);
    t.armed(&armed(&r, 100), LISTENER, info());
    t.child_created(&child(&r, 350));
    t.cancelled(&cancelled(&r, 350, 0));
    assert_eq!((t.created, t.completed, t.current()), (1, 1, 0));
    assert!(t.dwell.summary().p50.abs_diff(250_000) <= 250);
    let row = t.listeners.get(&LISTENER).expect("row");
    assert_eq!(row.completed, 1);
    assert_eq!(row.owner.map(|o| o.pid), Some(20));
    assert_eq!(t.children_without_request, 0);
    let end = t.lifecycle.last().expect("line");
    assert!(matches!(end.step, Step::SynRecvEstablished { synack_retransmits: 0, .. }), "{end:?}");
}

#[test]
fn synack_retransmit_then_completion() {
    let (mut t, r) = one_request();
    t.expired(&in_handler(&r, 1000), false, false, 0);
    t.synack_retransmitted(
        &r.event(1000, EventKind::SynAckRetransmit { listener: LISTENER, retransmits: 1 }, softirq(), false),
        LISTENER,
    );
    t.armed(&armed(&r, 1000), LISTENER, info()); // re-arm in the handler
    t.expire_done(&in_handler(&r, 1000));
    assert_eq!(t.current(), 1, "re-armed: still alive");
    assert_eq!(t.retransmits_of(r.sock), Some(1));
    t.child_created(&child(&r, 1002));
    t.cancelled(&cancelled(&r, 1002, 1));
    assert_eq!((t.created, t.completed, t.synack_retransmits), (1, 1, 1));
    assert!(t.dwell.summary().p50.abs_diff(1_002_000) <= 1_100);
}

#[test]
fn drops_are_classified_by_what_the_handler_saw() {
    let cases = [
        ((false, false, 0), RequestDrop::SynackTimeout),
        ((true, false, 5), RequestDrop::DeferAcceptTimeout),
        ((true, false, 0), RequestDrop::AcceptQueueFull),
        ((false, true, 0), RequestDrop::ListenerClosed),
    ];
    for ((acked, gone, defer), expected) in cases {
        let (mut t, r) = one_request();
        t.expired(&in_handler(&r, 3000), acked, gone, defer);
        t.expire_done(&in_handler(&r, 3000));
        assert_eq!(t.dropped.get(&expected), Some(&1), "{expected:?}");
        assert_eq!(t.current(), 0);
        let end = t.lifecycle.last().expect("line");
        assert_eq!(end.step.duration_ns(), Some(3_000_000_000));
    }
}

#[test]
fn cancel_without_a_child_is_a_reset() {
    let (mut t, r) = one_request();
    t.cancelled(&cancelled(&r, 5, 0));
    t.tick(5 * crate::track::tests::MS + CANCEL_GRACE_NS - 1);
    assert_eq!(t.dropped.get(&RequestDrop::Reset), None, "within the grace period");
    t.tick(5 * crate::track::tests::MS + CANCEL_GRACE_NS);
    assert_eq!(t.dropped.get(&RequestDrop::Reset), Some(&1));
}

#[test]
fn a_cancel_before_its_child_is_a_completion() {
    let (mut t, r) = one_request();
    t.cancelled(&cancelled(&r, 1000, 1));
    let done = t.child_created(&child(&r, 1001));
    assert!(done.is_some(), "completed by the child");
    t.tick(5000 * crate::track::tests::MS);
    assert_eq!(t.completed, 1);
    assert!(t.dropped.is_empty(), "{:?}", t.dropped);
    assert_eq!(t.current(), 0);
}

#[test]
fn the_detach_before_an_expiry_is_not_a_cancel() {
    let (mut t, r) = one_request();
    // expire_timers(): timer_cancel, then timer_expire_entry, then re-arm.
    t.cancelled(&cancelled(&r, 1000, 0));
    t.expired(&in_handler(&r, 1000), false, false, 0);
    t.armed(&armed(&r, 1000), LISTENER, info());
    t.expire_done(&in_handler(&r, 1000));
    t.tick(2000 * crate::track::tests::MS);
    assert_eq!((t.created, t.current()), (1, 1));
    assert!(t.dropped.is_empty());
}

#[test]
fn child_without_request_is_counted_and_duplicates_do_not_confuse() {
    let mut t = tracker();
    let r = req(1);
    // Syncookie: child, no request.
    t.child_created(&child(&r, 10));
    assert_eq!(t.children_without_request, 1);
    // Same tuple reused later by a real request: its own child pairs with it.
    t.armed(&armed(&r, 2_000), LISTENER, info());
    t.armed(&armed(&r, 2_000), LISTENER, info()); // duplicate arm = re-arm
    assert_eq!(t.created, 1);
    t.child_created(&child(&r, 2_100));
    t.cancelled(&cancelled(&r, 2_100, 0));
    assert_eq!(t.completed, 1);
    assert!(t.dwell.summary().p50.abs_diff(100_000) <= 100);
}

#[test]
fn requests_beyond_the_cap_are_evicted_and_their_rearms_are_not_new_requests() {
    let mut t = SynRecvTracker::new(2, 100);
    let reqs: Vec<Sock> = (1..=5).map(req).collect();
    for (i, r) in reqs.iter().enumerate() {
        t.armed(&armed(r, i as u64), LISTENER, info());
    }
    assert_eq!((t.created, t.current(), t.evicted), (5, 2, 3));
    // The SYN-ACK timer of an evicted request fires and re-arms.
    let old = &reqs[0];
    t.expired(&in_handler(old, 1000), false, false, 0);
    t.armed(&armed(old, 1000), LISTENER, info());
    t.expire_done(&in_handler(old, 1000));
    assert_eq!((t.created, t.current(), t.evicted, t.untracked_rearms), (5, 2, 3, 1));
    // A fresh SYN reusing that address later is a new request again.
    t.armed(&armed(old, 2000), LISTENER, info());
    assert_eq!((t.created, t.evicted), (6, 4));
}

#[test]
fn children_waiting_for_their_request_are_capped() {
    let mut t = SynRecvTracker::new(2, 100);
    for i in 1..=5 {
        t.child_created(&child(&req(i), 10));
    }
    assert_eq!((t.children_waiting(), t.children_evicted), (2, 3));
}

#[test]
fn reused_request_address_starts_a_new_request() {
    let mut t = tracker();
    let a = req(1);
    let mut b = req(2);
    b.sock = a.sock;
    t.armed(&armed(&a, 0), LISTENER, info());
    t.armed(&armed(&b, 10), LISTENER, info());
    assert_eq!((t.created, t.evicted, t.current()), (2, 1, 1));
}
