//! The tracker on synthetic event sequences.

use std::net::SocketAddr;

use super::{end::EndReason, lifecycle::Step, *};
use crate::event::{CaState, Comm, Task, TcpState, Tuple};

pub(crate) const MS: u64 = 1_000_000;

/// Builds events for one socket.
pub(crate) struct Sock {
    pub cookie: u64,
    pub sock: u64,
    pub netns: u32,
    pub tuple: Tuple,
}

pub(crate) fn task(pid: u32, comm: &str) -> Task {
    Task { pid, tid: pid, comm: Comm::from_str_lossy(comm), cgroup: 1 }
}

/// The idle task, as softirq on an idle CPU shows it.
pub(crate) fn softirq() -> Task {
    task(0, "swapper/1")
}

impl Sock {
    pub fn new(cookie: u64, local: &str, remote: &str) -> Self {
        Self {
            cookie,
            // Wrapping: tests name sockets by masked kernel addresses too.
            sock: 0xffff_0000_u64.wrapping_add(cookie.wrapping_mul(0x100)),
            netns: 4026531840,
            tuple: Tuple { local: local.parse().expect("local"), remote: remote.parse().expect("remote") },
        }
    }

    pub fn event(&self, ts_ms: u64, kind: EventKind, task: Task, owned: bool) -> Event {
        Event {
            ts_ns: ts_ms * MS,
            kind,
            sock: self.sock,
            cookie: self.cookie,
            netns: self.netns,
            tuple: self.tuple,
            task,
            owned_by_task: owned,
            kernel_total_retrans: None,
            close_errno: 0,
            end_facts: None,
        }
    }

    /// A transition in the owner's system call.
    pub fn by(&self, ts_ms: u64, old: TcpState, new: TcpState, task: Task) -> Event {
        self.event(ts_ms, EventKind::State { old, new }, task, true)
    }

    /// A transition in softirq (the current task is unrelated).
    pub fn irq(&self, ts_ms: u64, old: TcpState, new: TcpState) -> Event {
        self.event(ts_ms, EventKind::State { old, new }, softirq(), false)
    }
}

use TcpState::*;

fn run(tracker: &mut Tracker, events: &[Event]) {
    for e in events {
        tracker.handle(e);
    }
    tracker.finish();
}

/// A tracker with the built-in caps and timer hooks, after `events` and the
/// end of the run.
fn traced(events: &[Event]) -> Tracker {
    let mut tracker = Tracker::new(Limits::default(), true);
    run(&mut tracker, events);
    tracker
}

/// A socket of the test client toward the test server.
fn client_sock(cookie: u64) -> Sock {
    Sock::new(cookie, "198.18.0.1:40000", "198.18.0.2:8080")
}

fn dwell(tracker: &Tracker, name: &str) -> crate::stats::Summary {
    let i = DWELL_STATES.iter().position(|(_, n)| *n == name).expect("state");
    tracker.dwell[i].summary()
}

/// Within the histogram's precision (3 significant digits).
#[track_caller]
fn assert_close(actual: u64, expected: u64) {
    assert!(actual.abs_diff(expected) <= expected / 1000 + 1, "{actual} vs {expected}");
}

fn client_first(c: &Sock, t0: u64, client: Task) -> Vec<Event> {
    vec![
        c.by(t0, Close, SynSent, client),
        c.irq(t0 + 2, SynSent, Established),
        c.by(t0 + 152, Established, FinWait1, client),
        c.irq(t0 + 153, FinWait1, FinWait2),
        c.event(t0 + 154, EventKind::TimeWaitArmed { substate: FinWait2 }, softirq(), false),
        c.irq(t0 + 154, FinWait2, Close),
    ]
}

#[test]
fn client_closing_first_is_the_active_closer_and_holds_time_wait() {
    let c = client_sock(1);
    let t = traced(&client_first(&c, 1000, task(10, "ttclient")));
    assert_eq!(t.counters.opened, 1);
    assert_eq!(t.counters.closed, 1);
    assert_eq!(t.counters.active_close_local, 1);
    assert_eq!(t.counters.time_wait, 1);
    assert_close(dwell(&t, "SYN_SENT").p50, 2000);
    assert_close(dwell(&t, "ESTABLISHED").p50, 150_000);
    assert_close(dwell(&t, "FIN_WAIT1").p50, 1000);
    assert_close(t.lifetime.summary().p50, 154_000);
    let rows: Vec<_> = t.closers.iter().collect();
    assert_eq!(rows.len(), 1);
    let (key, row) = rows[0];
    assert_eq!(key.owner.map(|o| o.pid), Some(10));
    assert_eq!(key.remote, "198.18.0.2:8080".parse::<SocketAddr>().expect("addr"));
    assert_eq!((row.closes, row.time_wait), (1, 1));
    assert_eq!(t.live(), 0, "closed records are dropped");
}

/// Kernels before 5.12 (no `bpf_get_socket_cookie` for tracing programs):
/// full sockets are named by masked address (top bit set) and the timewait
/// socket carries a cookie of its own (0, or one `ss` made): the timewait
/// socket is still credited to its full socket, found by namespace and tuple.
#[test]
fn without_socket_cookies_the_timewait_socket_finds_its_full_socket_by_tuple() {
    let named_by_address = 0xffff_8880_1234_5601_u64 ^ 0x0123_4567_89ab_cdef;
    assert_eq!(named_by_address >> 63, 1);
    let c = client_sock(named_by_address);
    let other = Sock::new(named_by_address ^ 0x1000, "198.18.0.1:40001", "198.18.0.2:8080");
    let mut events = vec![other.by(900, Close, SynSent, task(11, "other"))];
    for (tw_cookie, t0) in [(0, 1000), (77, 2000)] {
        for e in client_first(&c, t0, task(10, "ttclient")) {
            let armed = matches!(e.kind, EventKind::TimeWaitArmed { .. });
            events.push(Event { cookie: if armed { tw_cookie } else { e.cookie }, ..e });
        }
    }
    let t = traced(&events);
    assert_eq!(t.counters.time_wait, 2);
    let rows: Vec<_> = t.closers.iter().collect();
    assert_eq!(rows.len(), 1);
    let (key, row) = rows[0];
    assert_eq!(key.owner.map(|o| o.pid), Some(10));
    assert_eq!((row.closes, row.time_wait), (2, 2));
}

#[test]
fn softirq_tasks_never_become_owners() {
    let mut t = Tracker::new(Limits::default(), true);
    let c = client_sock(1);
    // The peer process happens to run the softirq: it must not be blamed.
    let peer = task(20, "ttserver");
    t.handle(&c.by(0, Close, SynSent, task(10, "ttclient")));
    let owner = t.handle(&c.event(1, EventKind::State { old: SynSent, new: Established }, peer, false));
    assert_eq!(owner.map(|o| o.pid), Some(10));
    // A socket first seen in softirq has no owner at all.
    let d = Sock::new(2, "198.18.0.1:40001", "198.18.0.2:8080");
    assert_eq!(
        t.handle(&d.event(2, EventKind::State { old: Established, new: CloseWait }, peer, false)),
        None
    );
}

#[test]
fn accepted_sockets_inherit_the_listener_owner_until_a_syscall_names_one() {
    let mut t = Tracker::new(Limits::default(), true);
    let server = task(20, "ttserver");
    let worker = task(21, "worker");
    let l = Sock::new(1, "0.0.0.0:8080", "0.0.0.0:0");
    let child = Sock::new(2, "198.18.0.2:8080", "198.18.0.1:40000");
    t.handle(&l.by(0, Close, Listen, server));
    let owner = t.handle(&child.irq(1, Listen, SynRecv));
    assert_eq!(owner.map(|o| o.pid), Some(20));
    assert!(t.conn(2).expect("child").has(Mark::OwnerInherited));
    // A different process (prefork worker) sends on it: that is the owner now.
    let owner = t.handle(&child.event(5, EventKind::Owner, worker, true));
    assert_eq!(owner.map(|o| o.pid), Some(21));
    t.handle(&child.irq(6, SynRecv, Established));
    t.handle(&child.by(10, Established, FinWait1, worker));
    t.handle(&child.irq(11, FinWait1, FinWait2));
    t.handle(&child.irq(12, FinWait2, Close));
    t.finish();
    let (key, _) = t.closers.iter().next().expect("row");
    assert_eq!(key.owner.map(|o| o.comm.to_string()), Some("worker".to_string()));
    // The child's microsecond SYN_RECV is reported under its own name.
    assert_eq!(dwell(&t, "SYN_RECV_CHILD").count, 1);
}

#[test]
fn reuseport_listeners_of_different_processes_give_no_guess() {
    let mut t = Tracker::new(Limits::default(), true);
    let a = Sock::new(1, "0.0.0.0:8080", "0.0.0.0:0");
    let b = Sock::new(2, "0.0.0.0:8080", "0.0.0.0:0");
    t.handle(&a.by(0, Close, Listen, task(20, "a")));
    t.handle(&b.by(0, Close, Listen, task(30, "b")));
    let child = Sock::new(3, "198.18.0.2:8080", "198.18.0.1:40000");
    assert_eq!(t.handle(&child.irq(1, Listen, SynRecv)), None);
}

#[test]
fn a_reused_socket_address_starts_a_new_record() {
    let first = client_sock(1);
    let mut second = Sock::new(2, "198.18.0.1:40001", "198.18.0.2:8080");
    second.sock = first.sock; // same kernel address, new cookie
    let client = task(10, "ttclient");
    let mut events = client_first(&first, 0, client);
    events.extend(client_first(&second, 500, client));
    let t = traced(&events);
    assert_eq!((t.counters.opened, t.counters.closed), (2, 2));
    assert_eq!(dwell(&t, "ESTABLISHED").count, 2);
    assert_eq!(t.anomalies.sequence_gaps, 0);
}

#[test]
fn sockets_opened_before_tracing_are_tolerated() {
    let c = client_sock(1);
    // First event mid-life: the time already spent in ESTABLISHED is unknown.
    let t = traced(&[
        c.irq(0, Established, CloseWait),
        c.by(30, CloseWait, LastAck, task(10, "app")),
        c.irq(31, LastAck, Close),
    ]);
    assert_eq!(t.counters.preexisting, 1);
    assert_eq!(t.counters.opened, 0);
    assert_eq!(t.counters.closed, 1);
    assert_eq!(t.counters.active_close_remote, 1);
    assert_eq!(dwell(&t, "ESTABLISHED").count, 0);
    assert_close(dwell(&t, "CLOSE_WAIT").p50, 30_000);
    assert_eq!(t.lifetime.len(), 0, "no lifetime without a seen open");
}

#[test]
fn self_transitions_and_gaps_are_counted_not_trusted() {
    let c = client_sock(1);
    let client = task(10, "c");
    let t = traced(&[
        c.by(0, Close, SynSent, client),
        c.irq(1, SynSent, SynSent),
        c.irq(2, SynSent, Established),
        // FIN_WAIT1 missing (e.g. lost): no dwell can be computed for it.
        c.irq(10, FinWait1, FinWait2),
        c.irq(12, FinWait2, Close),
    ]);
    assert_eq!(t.anomalies.self_transitions, 1);
    assert_eq!(t.anomalies.sequence_gaps, 1);
    assert_close(dwell(&t, "SYN_SENT").p50, 2000);
    assert_eq!(dwell(&t, "FIN_WAIT1").count, 0);
    assert_close(dwell(&t, "FIN_WAIT2").p50, 2000);
}

#[test]
fn eviction_at_the_cap_is_counted() {
    let mut t = Tracker::new(Limits { max_sockets: 3, max_rows: 10, ..Limits::BUILT_IN }, true);
    for cookie in 1..=5 {
        let c = Sock::new(cookie, &format!("198.18.0.1:{}", 40000 + cookie), "198.18.0.2:8080");
        t.handle(&c.by(cookie, Close, SynSent, task(10, "c")));
    }
    assert_eq!(t.live(), 3);
    assert_eq!(t.counters.evicted, 2);
    assert!(t.conn(1).is_none() && t.conn(2).is_none() && t.conn(5).is_some(), "oldest evicted first");
}

#[test]
fn a_child_closed_before_it_was_established_is_no_connection() {
    // Two CPUs complete one request at once (final ACK and first data):
    // both create a child, the loser's ehash insert fails and it is closed.
    let mut t = Tracker::new(Limits::BUILT_IN, true);
    let winner = Sock::new(2, "198.18.0.2:8080", "198.18.0.1:40000");
    let mut loser = Sock::new(3, "198.18.0.2:8080", "198.18.0.1:40000");
    loser.sock = 0xdead_0000;
    run(
        &mut t,
        &[
            winner.irq(0, Listen, SynRecv),
            loser.irq(0, Listen, SynRecv),
            winner.irq(0, SynRecv, Established),
            loser.irq(0, SynRecv, Close),
            winner.irq(10, Established, CloseWait),
            winner.by(11, CloseWait, LastAck, task(20, "srv")),
            winner.irq(12, LastAck, Close),
        ],
    );
    assert_eq!((t.counters.opened, t.counters.closed, t.counters.aborted), (1, 1, 0));
    assert_eq!(t.anomalies.children_never_established, 1);
}

#[test]
fn sockets_an_owner_filter_leaves_out_never_take_the_room_of_wanted_ones() {
    let mut t = Tracker::new(Limits { max_sockets: 3, max_rows: 10, ..Limits::BUILT_IN }, true);
    let args = crate::pipeline::filter::FilterArgs { pids: vec![10], ..Default::default() };
    t.owner_filter = crate::pipeline::filter::OwnerFilter::new(&args, None).expect("filter");
    let sock = |cookie: u64| Sock::new(cookie, &format!("198.18.0.1:{}", 40000 + cookie), "198.18.0.2:8080");
    // Three wanted sockets, then five of another process (more than the cap).
    for cookie in 1..=3 {
        t.handle(&sock(cookie).by(cookie, Close, SynSent, task(10, "wanted")));
    }
    for cookie in 11..=15 {
        t.handle(&sock(cookie).by(cookie, Close, SynSent, task(11, "other")));
    }
    assert_eq!(t.live(), 3, "the wanted ones are all there");
    assert_eq!(t.counters.evicted, 0, "nothing wanted was evicted by foreign sockets");
    assert!((1..=3).all(|c| t.conn(c).is_some()));
    assert_eq!(t.excluded_usage(), (3, t.limits().max_time_wait + t.limits().max_requests + 3, 2));
    // A foreign socket that a wanted process takes over (sends on it)
    // becomes wanted: now it may push out the oldest wanted one.
    let handed = sock(15);
    t.handle(&handed.event(20, EventKind::Owner, task(10, "wanted"), true));
    assert_eq!((t.live(), t.counters.evicted), (3, 1));
    assert!(t.conn(1).is_none() && t.conn(15).is_some_and(|c| !c.has(Mark::Excluded)));
    assert_eq!(t.counters.opened, 3, "opened counts wanted ones only");
    // It counts as opened at its next transition, as any socket whose owner
    // becomes known late.
    t.handle(&handed.irq(21, SynSent, Established));
    assert_eq!(t.counters.opened, 4);
}

#[test]
fn a_closed_record_pushed_out_at_the_cap_is_still_counted_as_closed() {
    let mut t = Tracker::new(Limits { max_sockets: 1, ..Limits::BUILT_IN }, true);
    let client = task(10, "c");
    let a = client_sock(1);
    let b = Sock::new(2, "198.18.0.1:40001", "198.18.0.2:8080");
    for e in client_first(&a, 0, client) {
        t.handle(&e);
    }
    // `a` waits out its grace period at CLOSE when `b` needs the room.
    t.handle(&b.by(160, Close, SynSent, client));
    assert_eq!((t.counters.closed, t.counters.active_close_local, t.counters.evicted), (1, 1, 0));
    assert_eq!(t.closers.iter().next().map(|(_, r)| r.closes), Some(1));
}

#[test]
fn order_queue_stays_bounded_under_churn() {
    let mut t = Tracker::new(Limits::default(), true);
    let client = task(10, "c");
    for cookie in 1..=50_000u64 {
        let c = Sock::new(cookie, "198.18.0.1:40000", "198.18.0.2:8080");
        for e in client_first(&c, cookie * 200, client) {
            t.handle(&e);
        }
    }
    let order = t.conns.order_len(sockets::Class::Wanted);
    assert!(order <= 2 * t.live() + 1024, "order queue: {order}");
    assert!(t.live() < 10, "closed records are dropped after the grace period");
}

#[test]
fn linger_zero_close_is_a_reset_sent_even_when_the_rst_follows_close() {
    let s = Sock::new(1, "198.18.0.2:8080", "198.18.0.1:40000");
    let server = task(20, "ttserver");
    let t = traced(&[
        s.irq(0, Listen, SynRecv),
        s.irq(1, SynRecv, Established),
        // tcp_disconnect(): CLOSE first, then the RST.
        s.by(30, Established, Close, server),
        s.event(30, EventKind::ResetSent { in_reply: false }, server, true),
    ]);
    assert_eq!(t.counters.reset_sent, 1);
    assert_eq!(t.counters.active_close_local, 0);
    assert_eq!(t.counters.time_wait, 0);
}

#[test]
fn peer_reset_is_a_reset_received() {
    let c = client_sock(1);
    let t = traced(&[
        c.by(0, Close, SynSent, task(10, "c")),
        c.irq(1, SynSent, Established),
        c.event(30, EventKind::ResetReceived, softirq(), false),
        c.irq(30, Established, Close),
    ]);
    assert_eq!(t.counters.reset_received, 1);
    assert_eq!(t.counters.closed, 1);
}

#[test]
fn simultaneous_close() {
    let c = client_sock(1);
    let client = task(10, "c");
    let t = traced(&[
        c.by(0, Close, SynSent, client),
        c.irq(1, SynSent, Established),
        c.by(10, Established, FinWait1, client),
        c.irq(11, FinWait1, Closing),
        c.event(12, EventKind::TimeWaitArmed { substate: TimeWait }, softirq(), false),
        c.irq(12, Closing, Close),
    ]);
    assert_eq!(t.counters.simultaneous_close, 1);
    assert_eq!(t.counters.time_wait, 1);
    assert_close(dwell(&t, "CLOSING").p50, 1000);
}

#[test]
fn without_timer_hooks_time_wait_is_inferred_from_the_transition() {
    let mut t = Tracker::new(Limits::default(), false);
    let c = client_sock(1);
    let mut events = client_first(&c, 0, task(10, "c"));
    events.retain(|e| !matches!(e.kind, EventKind::TimeWaitArmed { .. }));
    run(&mut t, &events);
    assert_eq!(t.counters.time_wait, 1);
}

#[test]
fn a_closed_socket_that_connects_again_starts_a_new_life() {
    let c = client_sock(1);
    let client = task(10, "c");
    let t = traced(&[
        c.by(0, Close, SynSent, client),
        c.event(1, EventKind::ResetReceived, softirq(), false),
        c.irq(1, SynSent, Close),
        c.by(5, Close, SynSent, client),
        c.irq(6, SynSent, Established),
        c.by(50, Established, FinWait1, client),
        c.irq(51, FinWait1, FinWait2),
        c.irq(52, FinWait2, Close),
    ]);
    assert_eq!(t.counters.opened, 2);
    assert_eq!(t.counters.closed, 2);
    assert_eq!(t.counters.reset_received, 1);
    assert_eq!(t.counters.active_close_local, 1);
}

#[test]
fn closer_rows_are_bounded() {
    let mut t = Tracker::new(Limits { max_sockets: 1000, max_rows: 2, ..Limits::BUILT_IN }, true);
    for cookie in 1..=5u64 {
        let c = Sock::new(cookie, "198.18.0.1:40000", &format!("198.18.0.{}:8080", cookie + 1));
        for e in client_first(&c, cookie * 200, task(10, "c")) {
            t.handle(&e);
        }
    }
    t.finish();
    assert_eq!(t.closers.len(), 2);
    assert_eq!(t.closers.overflow().closes, 3);
    assert_eq!(t.closers.overflowed_keys(), 3);
}

#[test]
fn debug_limits_override_the_built_in_caps() {
    let l = Limits::BUILT_IN.with_overrides("sockets=100, time_wait=50,requests=20,rows=5").expect("valid");
    assert_eq!(l, Limits { max_sockets: 100, max_time_wait: 50, max_requests: 20, max_rows: 5 });
    assert_eq!(Limits::BUILT_IN.with_overrides(""), Ok(Limits::BUILT_IN));
    assert!(Limits::BUILT_IN.with_overrides("sockets=0").is_err());
    assert!(Limits::BUILT_IN.with_overrides("sockets").is_err());
    assert!(Limits::BUILT_IN.with_overrides("memory=5").is_err());
}

#[test]
fn retransmits_are_counted_per_connection_by_kind_and_timeouts_reported() {
    let mut t = Tracker::new(Limits::default(), true);
    let c = client_sock(1);
    let client = task(10, "c");
    let rt = |ms, state, syn, ca| {
        c.event(
            ms,
            EventKind::Retransmit { state, segs: 2, syn, fin: false, ca_state: ca, timing: None },
            softirq(),
            false,
        )
    };
    run(
        &mut t,
        &[
            c.by(0, Close, SynSent, client),
            // The RTO resends a SYN after tcp_enter_loss(): CA_Loss.
            rt(1000, SynSent, true, CaState::Loss),
            c.irq(1001, SynSent, Established),
            rt(2000, Established, false, CaState::Loss),
            rt(2100, Established, false, CaState::Recovery),
            c.event(9000, EventKind::SockError { errno: libc::ETIMEDOUT as u32 }, softirq(), false),
            c.irq(9000, Established, Close),
        ],
    );
    let r = &t.retrans;
    assert_eq!((r.segments.syn, r.segments.data), (2, 4));
    assert_eq!((r.causes.timeout, r.causes.fast, r.causes.other), (4, 2, 0));
    assert_eq!(r.timeouts, 1);
    assert_eq!(r.killed[0].retransmits, 6);
    assert_eq!(r.killed[0].owner.map(|o| o.pid), Some(10));
    assert_eq!(r.per_connection.summary().max, 6);
}

/// `ss -K` kills a socket in its own system call (the lock owned, the
/// killer's task): the socket keeps its owner, and ends as killed.
#[test]
fn a_socket_killed_from_outside_keeps_its_owner() {
    let mut t = Tracker::new(Limits::default(), true);
    let c = client_sock(1);
    let (client, ss) = (task(10, "ttclient"), task(99, "ss"));
    run(
        &mut t,
        &[
            c.by(0, Close, SynSent, client),
            c.irq(1, SynSent, Established),
            // tcp_abort(): the error report, the reset, then the CLOSE, all
            // in the killer's system call.
            c.event(50, EventKind::SockError { errno: libc::ECONNABORTED as u32 }, ss, true),
            c.event(50, EventKind::ResetSent { in_reply: false }, ss, true),
            Event { close_errno: libc::ECONNABORTED as u32, ..c.by(50, Established, Close, ss) },
        ],
    );
    t.finish();
    let rows: Vec<_> =
        t.end_rows.iter().map(|(k, n)| (k.owner.map(|o| o.pid), k.reason.name(), *n)).collect();
    assert_eq!(rows, [(Some(10), "reset_killed", 1)]);
}

/// Without the `inet_sk_error_report` hook (5.10): the kill by timeout is
/// known from the error the socket has at its CLOSE; another error (a reset)
/// is no timeout.
#[test]
fn a_timeout_is_known_from_the_error_at_close_without_an_error_report() {
    let mut t = Tracker::new(Limits::default(), true);
    let (timed_out, reset) = (client_sock(1), Sock::new(2, "198.18.0.1:40001", "198.18.0.2:8080"));
    let client = task(10, "c");
    let close_with =
        |c: &Sock, errno: i32| Event { close_errno: errno as u32, ..c.irq(9000, Established, Close) };
    run(
        &mut t,
        &[
            timed_out.by(0, Close, SynSent, client),
            timed_out.irq(1, SynSent, Established),
            reset.by(0, Close, SynSent, client),
            reset.irq(1, SynSent, Established),
            close_with(&timed_out, libc::ETIMEDOUT),
            close_with(&reset, libc::ECONNRESET),
        ],
    );
    assert_eq!(t.retrans.timeouts, 1);
    assert_eq!(t.retrans.killed.len(), 1);
    assert_eq!(t.retrans.killed[0].owner.map(|o| o.pid), Some(10));
}

/// The three sockets of one passive handshake: a listener on :8080 (sock
/// 1), the request socket of a client's SYN (2) and its child (3, cookie 3).
pub(crate) fn passive_handshake() -> (Sock, Sock, Sock) {
    (
        Sock::new(1, "0.0.0.0:8080", "0.0.0.0:0"),
        Sock::new(2, "198.18.0.2:8080", "198.18.0.1:40000"),
        Sock::new(3, "198.18.0.2:8080", "198.18.0.1:40000"),
    )
}

#[test]
fn an_accepted_socket_carries_its_requests_synack_retransmits() {
    let mut t = Tracker::new(Limits::default(), true);
    let server = task(20, "ttserver");
    let (l, req, child) = passive_handshake();
    let listener = l.sock;
    t.handle(&l.by(0, Close, Listen, server));
    t.handle(&req.event(10, EventKind::RequestArmed { listener, retransmits: 0 }, softirq(), false));
    t.handle(&req.event(1010, EventKind::SynAckRetransmit { listener, retransmits: 0 }, softirq(), false));
    t.handle(&child.irq(1011, Listen, SynRecv));
    let cancel = EventKind::RequestCancelled { listener, retransmits: 1, accept_queue: Some((4, 128)) };
    t.handle(&req.event(1011, cancel, softirq(), false));
    assert_eq!(t.conn(3).expect("child").retransmits, 1);
    assert_eq!(t.retrans.segments.synack, 1);
    assert_eq!(t.retrans.causes.timeout, 1, "the request's timer resent it");
    assert_eq!(t.synrecv.completed, 1);
    assert_eq!(t.accepts.waiting(), 1, "in the accept queue");
}

/// accept() ends the child's wait in the queue and names its owner, the
/// process that accepted it, over the listener's.
#[test]
fn accept_ends_the_queue_wait_and_names_the_acceptor() {
    let mut t = Tracker::new(Limits::default(), true);
    let (server, worker) = (task(20, "ttserver"), task(21, "worker"));
    let (l, req, child) = passive_handshake();
    let listener = l.sock;
    t.handle(&l.by(0, Close, Listen, server));
    t.handle(&req.event(10, EventKind::RequestArmed { listener, retransmits: 0 }, softirq(), false));
    t.handle(&child.irq(11, Listen, SynRecv));
    let cancel = EventKind::RequestCancelled { listener, retransmits: 0, accept_queue: Some((2, 16)) };
    t.handle(&req.event(11, cancel, softirq(), false));
    t.handle(&child.irq(11, SynRecv, Established));
    let owner = t.handle(&child.event(261, EventKind::Accepted, worker, true));
    assert_eq!(owner.map(|o| o.pid), Some(21), "the acceptor owns the child");
    assert_eq!(t.accepts.accepted, 1);
    let (_, row) = t.accepts.listeners.iter().next().expect("the listener's row");
    assert_eq!((row.depth_max, row.limit), (3, Some(16)));
    let wait = row.wait.summary();
    assert!((249_000..=251_000).contains(&wait.p50), "250 ms from handshake to accept: {wait:?}");
}

/// With the kernel's retransmit total, a retransmission that no event showed
/// is still counted: on the connection (as `tcpi_total_retrans`) and as
/// `unseen`, never as a kind or a cause.
#[test]
fn retransmits_no_event_showed_are_counted_from_the_kernels_total() {
    let mut t = Tracker::new(Limits::default(), true);
    let c = client_sock(1);
    let with_total = |mut ev: Event, total: u16| {
        ev.kernel_total_retrans = Some(total);
        ev
    };
    let rt = |ms, segs, total| {
        let kind = EventKind::Retransmit {
            state: Established,
            segs,
            syn: false,
            fin: false,
            ca_state: CaState::Loss,
            timing: None,
        };
        with_total(c.event(ms, kind, softirq(), false), total)
    };
    run(
        &mut t,
        &[
            c.by(0, Close, SynSent, task(10, "c")),
            c.irq(1, SynSent, Established),
            rt(200, 1, 1),
            // The RTO at 600 ms (total 2) reached no program.
            rt(1400, 1, 3),
            rt(1401, 4, 7),
            // Two more after the last event seen, then the close.
            with_total(c.irq(5000, Established, Close), 9),
        ],
    );
    let r = &t.retrans;
    assert_eq!(r.segments.data, 6, "only what events showed");
    assert_eq!(r.causes.timeout, 6);
    assert_eq!(r.unseen, 3);
    assert_eq!(r.per_connection.summary().max, 9, "the connection's count is the kernel's");
}

/// A socket open before tracing has retransmits the tracer never saw: its
/// first reading of the kernel's total is its starting point, not a loss.
#[test]
fn a_preexisting_sockets_earlier_retransmits_are_not_unseen() {
    let mut t = Tracker::new(Limits::default(), true);
    let c = client_sock(1);
    let mut rt = c.event(
        100,
        EventKind::Retransmit {
            state: Established,
            segs: 2,
            syn: false,
            fin: false,
            ca_state: CaState::Recovery,
            timing: None,
        },
        softirq(),
        false,
    );
    rt.kernel_total_retrans = Some(40);
    let mut close = c.irq(200, Established, Close);
    close.kernel_total_retrans = Some(40);
    run(&mut t, &[rt, close]);
    assert_eq!((t.retrans.causes.fast, t.retrans.unseen), (2, 0));
}

/// Why connections ended, from the sequences the kernel paths produce
/// (track/end.rs): the RST of a linger-zero close comes after its CLOSE
/// (the grace keeps the record for it), a refusal is the CLOSE's errno.
#[test]
fn end_reasons_from_the_close_and_the_resets_around_it() {
    use tracer_common::EndFacts;
    let client = task(7, "curl");
    let facts = EndFacts { linger_zero: true, ..EndFacts::default() };
    // Closed with SO_LINGER 0: CLOSE in close(), then the RST.
    let linger = client_sock(1);
    let mut close = linger.by(10, Established, Close, client);
    close.end_facts = Some(facts);
    // Refused: the RST answering the SYN, ECONNREFUSED at the CLOSE.
    let refused = Sock::new(2, "198.18.0.1:40001", "198.18.0.2:9");
    let refused_close = Event { close_errno: libc::ECONNREFUSED as u32, ..refused.irq(21, SynSent, Close) };
    let events = [
        linger.by(0, Close, SynSent, client),
        linger.irq(1, SynSent, Established),
        close,
        linger.event(11, EventKind::ResetSent { in_reply: false }, client, true),
        refused.by(20, Close, SynSent, client),
        refused.event(21, EventKind::ResetReceived, softirq(), false),
        refused_close,
    ];
    let mut tracker = Tracker::new(Limits::default(), true);
    tracker.emit_lifecycle = true;
    run(&mut tracker, &events);
    assert_eq!(tracker.ends.count(EndReason::ResetLingerZero), 1);
    assert_eq!(tracker.ends.count(EndReason::Refused), 1);
    assert_eq!(tracker.ends.iter().map(|(_, n)| n).sum::<u64>(), 2);
    let rows: Vec<(u32, u16, EndReason, u64)> = tracker
        .end_rows
        .iter()
        .map(|(k, n)| (k.owner.map_or(0, |o| o.pid), k.remote.port(), k.reason, *n))
        .collect();
    assert!(rows.contains(&(7, 8080, EndReason::ResetLingerZero, 1)), "{rows:?}");
    assert!(rows.contains(&(7, 9, EndReason::Refused, 1)), "{rows:?}");
    let steps: Vec<Step> = tracker.drain_lifecycle().into_iter().map(|l| l.step).collect();
    assert!(
        steps.contains(&Step::ConnectionEnd {
            reason: EndReason::ResetLingerZero,
            closed_from: Some(Established),
            lifetime_ns: Some(10 * MS)
        }),
        "{steps:?}"
    );
}

#[test]
fn connections_still_open_are_counted_as_such() {
    let c = client_sock(1);
    let events = [c.by(0, Close, SynSent, task(7, "curl")), c.irq(1, SynSent, Established)];
    let tracker = traced(&events);
    assert_eq!(tracker.still_open(), 1);
    assert_eq!(tracker.ends.iter().map(|(_, n)| n).sum::<u64>(), 0);
}

/// Summary mode: a socket whose steps still wait in the kernel is stuck (and
/// live) as the reading says, until its own events arrive; a closed one
/// read late is not.
#[test]
fn pending_sockets_count_as_stuck_and_live_until_their_events_arrive() {
    let mut t = Tracker::new(Limits::default(), true);
    t.start(0);
    let server = task(7, "ttserver");
    // Known to the tracker (its LISTEN -> SYN_RECV went at once), the rest
    // pending: it sits in CLOSE_WAIT since 100 ms.
    let child = Sock::new(1, "198.18.0.2:8080", "198.18.0.1:40000");
    t.handle(&child.irq(1, Listen, SynRecv));
    // Unknown to the tracker: a client in FIN_WAIT2 since 200 ms.
    let client = Sock::new(2, "198.18.0.1:40001", "198.18.0.2:9090");
    let pending = |sock: &Sock, state, since_ms, owner: Option<Owner>, role| {
        (
            sock.cookie,
            stuck::PendingSocket {
                netns: sock.netns,
                tuple: sock.tuple,
                state,
                since_ns: since_ms * MS,
                owner,
                role,
            },
        )
    };
    let live_before = t.live();
    t.set_pending([
        pending(&child, CloseWait, 100, Some(Owner::of(&server)), Role::Passive),
        pending(&client, FinWait2, 200, None, Role::Active),
    ]);
    assert_eq!(t.live(), live_before + 1, "the unknown one counts as live");
    let rows = t.stuck(3_000 * MS, 2_000 * MS);
    let states: Vec<(TcpState, u64)> = rows.iter().map(|(k, r)| (k.state, r.count)).collect();
    assert_eq!(states, [(FinWait2, 1), (CloseWait, 1)], "{rows:?}");
    let close_wait = rows.iter().find(|(k, _)| k.state == CloseWait).expect("a CLOSE_WAIT row");
    assert_eq!(close_wait.0.owner.map(|o| o.0), Some(7));
    assert_eq!(close_wait.1.oldest_ns, 2_900 * MS);
    // Too young for a longer threshold.
    assert!(t.stuck(3_000 * MS, 2_850 * MS).iter().all(|(k, _)| k.state == CloseWait));
    // The client's events arrive: its own record takes over (it closed).
    t.handle(&client.by(150, Close, SynSent, task(9, "curl")));
    t.handle(&client.irq(160, SynSent, Established));
    t.handle(&client.by(170, Established, FinWait1, task(9, "curl")));
    t.handle(&client.irq(200, FinWait1, FinWait2));
    t.handle(&client.irq(2_500, FinWait2, Close));
    assert!(t.stuck(3_000 * MS, 2_000 * MS).iter().all(|(k, _)| k.state == CloseWait));
    // A reading that lags behind what the tracker knows changes nothing.
    t.set_pending([pending(&client, FinWait2, 200, None, Role::Active)]);
    assert!(t.stuck(3_000 * MS, 2_000 * MS).is_empty(), "the child's steps went out since");
}
