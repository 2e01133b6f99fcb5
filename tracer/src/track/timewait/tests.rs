//! The TIME_WAIT tracker on synthetic timer events.

use super::*;
use crate::track::tests::{MS, Sock, softirq, task};

fn tw(cookie: u64) -> Sock {
    Sock::new(cookie, "198.18.0.1:40000", "198.18.0.2:8080")
}

/// The `i`th of several client-side timewait sockets toward one server:
/// its own port, cookie and kernel address.
fn client_tw(i: u64) -> Sock {
    Sock::new(10 + i, &format!("198.18.0.1:{}", 40000 + i), "198.18.0.2:8080")
}

fn armed(s: &Sock, ms: u64) -> Event {
    s.event(ms, EventKind::TimeWaitArmed { substate: TcpState::TimeWait }, softirq(), false)
}

fn expiry(s: &Sock, ms: u64) -> Event {
    s.event(ms, EventKind::TimeWaitExpired { substate: TcpState::TimeWait }, softirq(), false)
}

fn cancelled(s: &Sock, ms: u64, in_connect: bool) -> Event {
    let kind = EventKind::TimeWaitCancelled { substate: TcpState::TimeWait, in_connect, netns_dying: false };
    s.event(ms, kind, task(10, "c"), in_connect)
}

fn tracker() -> TimeWaitTracker {
    let mut t = TimeWaitTracker::new(1000, 100);
    t.add_preexisting([]);
    t
}

/// A tracker with one client-side timewait socket, born at 0, whose port a
/// connect() reuses at 1.5 s (the cancel waits out its grace).
fn reused_by_connect() -> (TimeWaitTracker, Sock) {
    let mut t = tracker();
    let s = tw(1);
    arm(&mut t, &s, 0, Role::Active);
    cancel(&mut t, &s, 1_500, true);
    (t, s)
}

/// Lifetimes of the timewait sockets that ended this way.
fn lifetime(t: &TimeWaitTracker, end: TwEnd) -> crate::stats::Summary {
    t.lifetime_by_end.iter().find(|(e, _)| *e == end).expect("an end kind").1.summary()
}

fn closer() -> Option<Owner> {
    Some(Owner::of(&task(10, "ttclient")))
}

/// `s`'s timewait timer armed at `ms`, by the test client.
fn arm(t: &mut TimeWaitTracker, s: &Sock, ms: u64, role: Role) {
    t.armed(&armed(s, ms), closer(), Some(role));
}

/// `s`'s timewait timer cancelled at `ms`, inside connect() or not.
fn cancel(t: &mut TimeWaitTracker, s: &Sock, ms: u64, in_connect: bool) {
    t.cancelled(&cancelled(s, ms, in_connect), in_connect, false);
}

#[test]
fn natural_expiry_measures_the_lifetime() {
    let mut t = tracker();
    let s = tw(1);
    arm(&mut t, &s, 1_000, Role::Active);
    assert_eq!(t.current(), 1);
    t.expired(&expiry(&s, 62_000));
    assert_eq!(t.current(), 0);
    assert_eq!(t.ended.expired, 1);
    assert!(t.lifetime.summary().p50.abs_diff(61_000_000) < 61_000);
}

#[test]
fn a_cancel_followed_by_a_rearm_is_not_an_end() {
    let mut t = tracker();
    let s = tw(1);
    arm(&mut t, &s, 0, Role::Active);
    cancel(&mut t, &s, 100, false);
    arm(&mut t, &s, 100, Role::Active);
    t.tick(10_000 * MS);
    assert_eq!(t.current(), 1);
    assert_eq!(t.ended, Ended::default());
    assert_eq!(t.created, 1);
}

#[test]
fn packed_destinations_unpack_to_the_same_key() {
    let v4 = Sock::new(1, "198.18.0.1:40000", "198.18.0.2:8080");
    let v6 = Sock::new(2, "[2001:db8::1]:8080", "[2001:db8::2]:51000");
    let mapped = Sock::new(3, "[::ffff:10.0.0.1]:8080", "10.0.0.2:40000");
    for (s, role) in [(&v4, Some(Role::Active)), (&v6, Some(Role::Passive)), (&mapped, None)] {
        let key = DestKey::new(4026531840, &s.tuple, role);
        assert_eq!(PackedDest::pack(&key).unpack(), key, "{:?}", s.tuple);
    }
    assert!(std::mem::size_of::<PackedDest>() <= 40);
}

#[test]
fn a_new_timewait_at_a_freed_address_ends_its_predecessor() {
    // connect() reuses the port: the first is cancelled and freed; the new
    // connection closes first and its timewait socket gets the same
    // address (same sock, new cookie) within the grace period.
    let (mut t, first) = reused_by_connect();
    let mut second = tw(2);
    second.sock = first.sock;
    arm(&mut t, &second, 1_510, Role::Active);
    t.tick(10_000 * MS);
    assert_eq!(t.created, 2);
    assert_eq!(t.ended, Ended { reused: 1, ..Ended::default() });
    assert_eq!(t.current(), 1);
    assert!(lifetime(&t, TwEnd::Reused).max.abs_diff(1_500_000) < 2_000);
}

#[test]
fn early_ends_are_classified() {
    let (mut t, _) = reused_by_connect();
    // An expiry on top of a task inside connect(): the detach looks like a
    // cancel in connect(), the expiry right after says what it was.
    let d = client_tw(3);
    arm(&mut t, &d, 0, Role::Active);
    cancel(&mut t, &d, 60_000, true);
    t.expired(&expiry(&d, 60_000));
    // Recycled by the peer's SYN: a request socket with the same tuple follows.
    let b = Sock::new(2, "198.18.0.2:8080", "198.18.0.1:40001");
    arm(&mut t, &b, 0, Role::Passive);
    cancel(&mut t, &b, 2_000, false);
    t.request_armed(&b.event(
        2_000,
        EventKind::RequestArmed { listener: 1, retransmits: 0 },
        softirq(),
        false,
    ));
    // Killed: nothing follows within the grace period.
    let c = client_tw(2);
    arm(&mut t, &c, 0, Role::Active);
    cancel(&mut t, &c, 3_000, false);
    t.tick(3_005 * MS);
    assert_eq!(t.ended.reset, 0, "still within the grace period");
    t.tick(3_011 * MS);
    t.tick(60_011 * MS);
    assert_eq!(t.ended, Ended { expired: 1, reused: 1, reset: 1, recycled: 1, purged: 0 });
    assert!(lifetime(&t, TwEnd::Reused).p50.abs_diff(1_500_000) < 2_000);
    assert_eq!(t.current(), 0);
}

#[test]
fn destinations_fold_ephemeral_ports_and_count_closers() {
    let mut t = tracker();
    for i in 0..5u64 {
        arm(&mut t, &client_tw(i), i * 100, Role::Active);
    }
    assert_eq!(t.destinations.len(), 1);
    let (key, row) = t.destinations.iter().next().expect("row");
    assert!(key.client_side);
    assert_eq!(key.local.port(), 0);
    assert_eq!(key.remote.port(), 8080);
    assert_eq!((row.current, row.created), (5, 5));
    assert_eq!(row.closers, vec![(closer(), 5)]);
}

#[test]
fn listed_sockets_are_counted_once_and_never_resurrected() {
    let mut t = TimeWaitTracker::new(1000, 100);
    let born = tw(1);
    let ended = tw(2);
    // Events before the listing arrives: one born, one (old) ended.
    arm(&mut t, &born, 10, Role::Active);
    t.expired(&expiry(&ended, 20));
    let tuple = born.tuple;
    t.add_preexisting([(born.netns, tuple, 1), (born.netns, tuple, 2), (born.netns, tuple, 3)]);
    assert_eq!(t.preexisting_count, 1, "only cookie 3 is really pre-existing");
    assert_eq!(t.current(), 2);
    // A listed one ends: found by cookie, no lifetime (age unknown).
    let old = tw(3);
    t.expired(&expiry(&old, 30));
    assert_eq!(t.current(), 1);
    assert_eq!(t.lifetime.len(), 0);
}

#[test]
fn a_listing_taken_before_a_recycle_does_not_resurrect_the_socket() {
    // The race of the server-side recycle test (tcptrace 49 TIME_WAIT,
    // ss 47): the start-up listing is taken while traffic runs and
    // arrives after some of the sockets it names have ended. Born and
    // ended while tracing: never pre-existing.
    let mut t = TimeWaitTracker::new(1000, 100);
    let mut socks = Vec::new();
    for i in 0..3u64 {
        let s = Sock::new(10 + i, "198.18.0.2:8081", &format!("198.18.0.1:{}", 40000 + i));
        arm(&mut t, &s, i, Role::Passive);
        socks.push(s);
    }
    // The listing is taken now (all three alive)... then two are
    // recycled by new SYNs before it arrives.
    let listing: Vec<_> = socks.iter().map(|s| (s.netns, s.tuple, s.cookie)).collect();
    for s in &socks[..2] {
        cancel(&mut t, s, 100, false);
        t.request_armed(&s.event(
            100,
            EventKind::RequestArmed { listener: 1, retransmits: 0 },
            softirq(),
            false,
        ));
    }
    assert_eq!((t.current(), t.ended.recycled), (1, 2));
    t.add_preexisting(listing);
    assert_eq!(t.current(), 1, "the recycled ones stay ended");
    assert_eq!(t.preexisting_count, 0);
    let row = t.destinations.iter().map(|(_, r)| r.current).sum::<u64>();
    assert_eq!(row, 1);
}

#[test]
fn a_late_listing_does_not_count_sockets_born_while_tracing_again() {
    // Cap 3; 5 born before the (late) listing arrives: 2 evicted. The
    // listing names all 5 (they still exist in the kernel) and one that
    // really existed before: only that one is new.
    let mut t = TimeWaitTracker::new(3, 100);
    let socks: Vec<Sock> = (0..5u64).map(client_tw).collect();
    for (i, s) in socks.iter().enumerate() {
        arm(&mut t, s, i as u64 * 100, Role::Active);
    }
    assert_eq!((t.current(), t.evicted), (3, 2));
    let old = tw(99);
    let listing = socks.iter().chain([&old]).map(|s| (s.netns, s.tuple, s.cookie));
    t.add_preexisting(listing);
    assert_eq!(t.evicted, 3, "the 2 forced out by births, and the old one that does not fit");
    assert_eq!(t.preexisting_count, 0);
    assert_eq!(t.current(), 3);
    let mut roomy = TimeWaitTracker::new(10, 100);
    for (i, s) in socks.iter().enumerate() {
        arm(&mut roomy, s, i as u64 * 100, Role::Active);
    }
    roomy.add_preexisting(socks.iter().chain([&old]).map(|s| (s.netns, s.tuple, s.cookie)));
    assert_eq!((roomy.current(), roomy.preexisting_count, roomy.evicted), (6, 1, 0));
}

/// Kernels before 5.12: a timewait socket born while tracing has no cookie
/// (0) unless someone asked for one, and the listing asks, so it lists the
/// same socket under a new cookie. Recognised by namespace and tuple; its end
/// (carrying the listed cookie) ends it, and nothing stays behind.
#[test]
fn a_socket_born_without_a_cookie_is_not_listed_again_under_the_listings_cookie() {
    let mut t = TimeWaitTracker::new(10, 100);
    let born = Sock { cookie: 0, ..client_tw(0) };
    arm(&mut t, &born, 0, Role::Active);
    let old = Sock::new(99, "198.18.0.1:41000", "198.18.0.2:8080");
    let listed_cookie = 12345;
    t.add_preexisting([(born.netns, born.tuple, listed_cookie), (old.netns, old.tuple, old.cookie)]);
    assert_eq!((t.current(), t.preexisting_count, t.created), (2, 1, 1));
    t.expired(&expiry(&Sock { cookie: listed_cookie, ..client_tw(0) }, 60_000));
    assert_eq!(t.current(), 1, "only the one that existed before tracing is left");
}

#[test]
fn records_are_capped_oldest_first_and_listed_ones_count_toward_the_cap() {
    let mut t = TimeWaitTracker::new(3, 100);
    let listed = tw(100);
    t.add_preexisting([(listed.netns, listed.tuple, 100)]);
    for i in 0..4u64 {
        arm(&mut t, &client_tw(i), i * 100, Role::Active);
    }
    // 1 listed + 4 born = 5 records for a cap of 3: the two oldest born
    // while tracing go first (the listed one only when no other is left).
    assert_eq!(t.current(), 3);
    assert_eq!(t.evicted, 2);
    assert_eq!(t.preexisting_count, 1);
    let row = t.destinations.iter().map(|(_, r)| r.current).sum::<u64>();
    assert_eq!(row, 3, "destination rows follow evictions");
    // A listing beyond the cap is counted, not kept.
    let mut u = TimeWaitTracker::new(2, 100);
    let s = tw(1);
    u.add_preexisting([(s.netns, s.tuple, 1), (s.netns, s.tuple, 2), (s.netns, s.tuple, 3)]);
    assert_eq!((u.current(), u.evicted), (2, 1));
}

#[test]
fn rate_window_averages_the_last_minute() {
    let mut r = RateWindow::default();
    let start = 1_000 * 1_000_000_000;
    for i in 0..120u64 {
        // 10 per second for two minutes
        for _ in 0..10 {
            r.add(start + i * 1_000_000_000);
        }
    }
    let now = start + 119 * 1_000_000_000 + 500_000_000;
    assert!((r.per_second(now) - 10.0).abs() < 0.2, "{}", r.per_second(now));
    // One minute of silence later, the rate is zero.
    assert_eq!(r.per_second(now + 61 * 1_000_000_000), 0.0);
    // A destination active for 3 s divides by 3 s.
    let mut short = RateWindow::default();
    for _ in 0..30 {
        short.add(start);
    }
    assert!((short.per_second(start + 3_000_000_000) - 10.0).abs() < 0.01);
}
