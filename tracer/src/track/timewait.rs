//! TIME_WAIT sockets from birth to end, per destination.
//!
//! The state tracepoint never shows TIME_WAIT (KERNEL-NOTES.md): a timewait
//! socket replaces the full socket at FIN_WAIT2/CLOSING -> CLOSE. Its life is
//! read from its timer (`tw_timer`, callback `tw_timer_handler`):
//!
//! - armed (`timer_start`) when it is created, and again when rescheduled;
//! - expired (`timer_expire_entry`): the normal end, 60 s (TCP_TIMEWAIT_LEN)
//!   plus timer-wheel slack;
//! - cancelled (`timer_cancel`) when it ends early, or just before a re-arm.
//!   An early end is classified by context: inside connect() toward the same
//!   peer = port reused (`tcp_tw_reuse`); a request socket for the same tuple
//!   right after = recycled by the peer's new SYN; namespace being destroyed =
//!   purged; otherwise killed by an RST (or an RST-worthy segment). A cancel
//!   waits [`CANCEL_GRACE_NS`] for the re-arm or the new request.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use foldhash::{HashMap, HashMapExt as _};

use serde::Serialize;

use super::{conn::Role, rows::BoundedRows};
use crate::{
    event::{Event, EventKind, Lifecycle, Owner, TcpState, Tuple},
    stats::{Histo, Precision},
};

/// A cancel is a re-arm or a recycle if the matching event follows within
/// this much event time (both happen in the same softirq, microseconds apart).
pub const CANCEL_GRACE_NS: u64 = 10_000_000;

/// Closers listed per destination before the rest are summed as "other".
const CLOSERS_PER_DESTINATION: usize = 8;

/// How a timewait socket ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TwEnd {
    Expired,
    Reused,
    Reset,
    Recycled,
    Purged,
}

impl TwEnd {
    pub const ALL: [TwEnd; 5] = [Self::Expired, Self::Reused, Self::Reset, Self::Recycled, Self::Purged];

    pub fn name(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Reused => "reused",
            Self::Reset => "reset",
            Self::Recycled => "recycled",
            Self::Purged => "purged",
        }
    }
}

/// The destination a TIME_WAIT belongs to. Ephemeral ports are folded to 0:
/// the local port of a client-side TIME_WAIT, the remote port of a
/// server-side one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestKey {
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// This side connected (its local ephemeral ports are what runs out).
    pub client_side: bool,
}

impl DestKey {
    pub fn new(netns: u32, tuple: &Tuple, role: Option<Role>) -> Self {
        let client_side = match role {
            Some(Role::Active) => true,
            Some(Role::Passive) | Some(Role::Listener) => false,
            // Not seen opening: the lower port is taken for the service port.
            _ => tuple.local.port() > tuple.remote.port(),
        };
        let (mut local, mut remote) = (tuple.local, tuple.remote);
        if client_side {
            local.set_port(0);
        } else {
            remote.set_port(0);
        }
        Self { netns, local, remote, client_side }
    }
}

/// Creations per second over the last minute, in one-second buckets.
#[derive(Clone, Debug)]
pub struct RateWindow {
    buckets: [u32; 60],
    last_sec: u64,
    /// First creation seen: the window never reaches back before it, so
    /// that two runs over the same traffic compute the same rate.
    first_ns: Option<u64>,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self { buckets: [0; 60], last_sec: 0, first_ns: None }
    }
}

impl RateWindow {
    fn advance(&mut self, sec: u64) {
        if sec <= self.last_sec {
            return;
        }
        let gap = (sec - self.last_sec).min(60);
        for i in 1..=gap {
            self.buckets[((self.last_sec + i) % 60) as usize] = 0;
        }
        self.last_sec = sec;
    }

    pub fn add(&mut self, ts_ns: u64) {
        self.first_ns.get_or_insert(ts_ns);
        let sec = ts_ns / 1_000_000_000;
        self.advance(sec);
        if self.last_sec.saturating_sub(sec) < 60 {
            self.buckets[(sec % 60) as usize] += 1;
        }
    }

    /// Average per second over the last minute, or since the first creation
    /// when that is more recent (at least one second).
    pub fn per_second(&mut self, now_ns: u64) -> f64 {
        self.advance(now_ns / 1_000_000_000);
        let since = self.first_ns.unwrap_or(now_ns);
        let window = ((now_ns.saturating_sub(since)) as f64 / 1e9).clamp(1.0, 60.0);
        f64::from(self.buckets.iter().sum::<u32>()) / window
    }
}

#[derive(Clone, Debug, Default)]
pub struct DestRow {
    /// TIME_WAIT sockets alive now.
    pub current: u64,
    /// Created while tracing.
    pub created: u64,
    pub rate: RateWindow,
    /// TIME_WAIT sockets per closing process (largest few), plus the rest.
    pub closers: Vec<(Option<Owner>, u64)>,
    pub other_closers: u64,
}

impl DestRow {
    fn count_closer(&mut self, closer: Option<Owner>) {
        if let Some(entry) = self.closers.iter_mut().find(|(o, _)| *o == closer) {
            entry.1 += 1;
        } else if self.closers.len() < CLOSERS_PER_DESTINATION {
            self.closers.push((closer, 1));
        } else {
            self.other_closers += 1;
        }
    }
}

#[derive(Clone, Debug)]
struct TwRecord {
    cookie: u64,
    /// Birth (`bpf_ktime_get_ns`), [`Self::UNKNOWN`] when not seen (listed
    /// at start). Not an `Option`: 8 bytes less per record.
    born_ns: u64,
    dest: PackedDest,
}

impl TwRecord {
    const UNKNOWN: u64 = u64::MAX;

    fn born(&self) -> Option<u64> {
        (self.born_ns != Self::UNKNOWN).then_some(self.born_ns)
    }
}

/// A [`DestKey`] in 40 bytes instead of 72: one record per TIME_WAIT socket,
/// 100,000s of them (BENCHMARKS.md, memory at scale). Addresses as IPv6
/// (IPv4 mapped, flagged), and only the port that is not folded to 0.
#[derive(Clone, Copy, Debug)]
struct PackedDest {
    netns: u32,
    local: [u8; 16],
    remote: [u8; 16],
    port: u16,
    /// `CLIENT_SIDE`, `LOCAL_V4`, `REMOTE_V4`.
    flags: u8,
}

impl PackedDest {
    const CLIENT_SIDE: u8 = 1;
    const LOCAL_V4: u8 = 2;
    const REMOTE_V4: u8 = 4;

    fn pack(key: &DestKey) -> Self {
        let ip = |a: &SocketAddr, v4_flag: u8| match a.ip() {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), v4_flag),
            IpAddr::V6(v6) => (v6.octets(), 0),
        };
        let (local, lf) = ip(&key.local, Self::LOCAL_V4);
        let (remote, rf) = ip(&key.remote, Self::REMOTE_V4);
        let port = if key.client_side { key.remote.port() } else { key.local.port() };
        let side = if key.client_side { Self::CLIENT_SIDE } else { 0 };
        Self { netns: key.netns, local, remote, port, flags: side | lf | rf }
    }

    fn unpack(&self) -> DestKey {
        let ip = |octets: [u8; 16], v4: bool| -> IpAddr {
            let v6 = Ipv6Addr::from(octets);
            match v6.to_ipv4_mapped() {
                Some(a) if v4 => IpAddr::V4(a),
                _ => IpAddr::V6(v6),
            }
        };
        let client_side = self.flags & Self::CLIENT_SIDE != 0;
        let (lport, rport) = if client_side { (0, self.port) } else { (self.port, 0) };
        DestKey {
            netns: self.netns,
            local: SocketAddr::new(ip(self.local, self.flags & Self::LOCAL_V4 != 0), lport),
            remote: SocketAddr::new(ip(self.remote, self.flags & Self::REMOTE_V4 != 0), rport),
            client_side,
        }
    }
}

/// A cancel waiting to be told apart: the timer core's detach before an
/// expiry, a re-arm, a recycle, or an early end.
#[derive(Clone, Copy, Debug)]
struct Pending {
    sock: u64,
    cookie: u64,
    ts_ns: u64,
    netns: u32,
    tuple: Tuple,
    /// What the cancel becomes if nothing else explains it.
    otherwise: TwEnd,
}

/// `"ended"` counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ended {
    pub expired: u64,
    pub reused: u64,
    pub reset: u64,
    pub recycled: u64,
    /// Namespace destroyed.
    pub purged: u64,
}

impl Ended {
    fn bump(&mut self, end: TwEnd) {
        match end {
            TwEnd::Expired => self.expired += 1,
            TwEnd::Reused => self.reused += 1,
            TwEnd::Reset => self.reset += 1,
            TwEnd::Recycled => self.recycled += 1,
            TwEnd::Purged => self.purged += 1,
        }
    }
}

pub struct TimeWaitTracker {
    /// Timewait sockets by kernel address (unique while alive).
    live: HashMap<u64, TwRecord>,
    /// Listed by sock_diag at start, by cookie, until their end is seen.
    preexisting: HashMap<u64, TwRecord>,
    /// Until the start-up listing arrives: cookies of timewait sockets whose
    /// end was already seen, so that the listing does not resurrect them.
    ended_before_listing: Option<foldhash::HashSet<u64>>,
    pending: VecDeque<Pending>,
    /// (sock, born) in creation order, for evicting the oldest at the cap.
    order: VecDeque<(u64, u64)>,
    max_records: usize,
    pub created: u64,
    /// TIME_WAIT sockets that existed when tracing started (age unknown).
    pub preexisting_count: u64,
    pub ended: Ended,
    /// Ends of timewait sockets born before tracing and not listed.
    pub ended_unknown_birth: u64,
    /// Records dropped at the cap (`max_records`): their end, if seen, counts
    /// as of unknown birth.
    pub evicted: u64,
    pub lifetime: Histo,
    pub lifetime_by_end: Vec<(TwEnd, Histo)>,
    pub destinations: BoundedRows<DestKey, DestRow>,
    pub started_ns: u64,
    /// Lifecycle lines for the event stream (only collected when wanted).
    pub emit_lifecycle: bool,
    pub lifecycle: Vec<Lifecycle>,
}

impl TimeWaitTracker {
    pub fn new(max_records: usize, max_rows: usize) -> Self {
        Self {
            live: HashMap::new(),
            preexisting: HashMap::new(),
            ended_before_listing: Some(Default::default()),
            pending: VecDeque::new(),
            order: VecDeque::new(),
            max_records,
            created: 0,
            preexisting_count: 0,
            ended: Ended::default(),
            ended_unknown_birth: 0,
            evicted: 0,
            lifetime: Histo::new(Precision::Fine),
            lifetime_by_end: TwEnd::ALL.iter().map(|e| (*e, Histo::new(Precision::Fine))).collect(),
            destinations: BoundedRows::new(max_rows),
            started_ns: 0,
            emit_lifecycle: false,
            lifecycle: Vec::new(),
        }
    }

    /// TIME_WAIT sockets alive now.
    pub fn current(&self) -> u64 {
        (self.live.len() + self.preexisting.len()) as u64
    }

    /// Registers the TIME_WAIT sockets listed at start (age unknown). Those
    /// already seen being born or ending since tracing started are skipped.
    pub fn add_preexisting(&mut self, listed: impl IntoIterator<Item = (u32, Tuple, u64)>) {
        let ended = self.ended_before_listing.take().unwrap_or_default();
        for (netns, tuple, cookie) in listed {
            // Keyed like the events' tuples (IPv4-mapped addresses as IPv4).
            let tuple = crate::decode::unmap_tuple(tuple);
            if cookie == 0 || ended.contains(&cookie) || self.preexisting.contains_key(&cookie) {
                continue;
            }
            if self.live.values().any(|r| r.cookie == cookie) {
                continue;
            }
            if self.live.len() + self.preexisting.len() >= self.max_records {
                // At the cap: listed sockets are the ones to leave out (their
                // end will count as of unknown birth).
                self.evicted += 1;
                continue;
            }
            let dest = DestKey::new(netns, &tuple, None);
            self.destinations.row(&dest).current += 1;
            self.preexisting.insert(
                cookie,
                TwRecord { cookie, born_ns: TwRecord::UNKNOWN, dest: PackedDest::pack(&dest) },
            );
            self.preexisting_count += 1;
        }
    }

    /// `timer_start` on a timewait timer: a new socket, or a re-arm.
    pub fn armed(&mut self, ev: &Event, closer: Option<Owner>, role: Option<Role>) {
        if let Some(i) = self.pending.iter().position(|p| p.sock == ev.sock)
            && let Some(p) = self.pending.remove(i)
        {
            if p.cookie == ev.cookie {
                return; // rescheduled: still the same TIME_WAIT
            }
            // A new timewait socket at the address its predecessor was freed
            // from (the slab hands it out again at once, e.g. when a connect()
            // reuses the port and closes first again): the cancel was an end.
            self.end_sock(p.sock, p.cookie, p.ts_ns, p.otherwise, p.netns, &p.tuple);
        }
        if let Some(existing) = self.live.get(&ev.sock) {
            if existing.cookie == ev.cookie {
                return;
            }
            // The address was reused by a new timewait socket whose
            // predecessor's end we missed (lost events): drop the stale one.
            if let Some(stale) = self.live.remove(&ev.sock) {
                let row = self.destinations.row(&stale.dest.unpack());
                row.current = row.current.saturating_sub(1);
                self.evicted += 1;
            }
        }
        if ev.cookie != 0 && self.preexisting.remove(&ev.cookie).is_some() {
            // Listed at start but born after attaching: it is a traced one.
            self.preexisting_count -= 1;
            let dest = DestKey::new(ev.netns, &ev.tuple, None);
            let row = self.destinations.row(&dest);
            row.current = row.current.saturating_sub(1);
        }
        if self.live.len() + self.preexisting.len() >= self.max_records {
            self.evict_one();
        }
        let dest = DestKey::new(ev.netns, &ev.tuple, role);
        let row = self.destinations.row(&dest);
        row.current += 1;
        row.created += 1;
        row.rate.add(ev.ts_ns);
        row.count_closer(closer);
        self.created += 1;
        self.live.insert(
            ev.sock,
            TwRecord { cookie: ev.cookie, born_ns: ev.ts_ns, dest: PackedDest::pack(&dest) },
        );
        if self.emit_lifecycle {
            let substate = match ev.kind {
                EventKind::TimeWaitArmed { substate } => substate,
                _ => TcpState::TimeWait,
            };
            let detail = if substate == TcpState::FinWait2 {
                "TIME_WAIT socket created (waiting for the peer's FIN first: FIN_WAIT2)".to_string()
            } else {
                "TIME_WAIT begins".to_string()
            };
            self.lifecycle.push(Lifecycle {
                ts_ns: ev.ts_ns,
                event: "time_wait_start",
                netns: ev.netns,
                tuple: ev.tuple,
                owner: closer,
                outcome: None,
                duration_ns: None,
                detail,
            });
        }
        self.order.push_back((ev.sock, ev.ts_ns));
        if self.order.len() > 2 * self.live.len() + 1024 {
            let live = &self.live;
            self.order.retain(|(sock, born)| live.get(sock).is_some_and(|r| r.born() == Some(*born)));
        }
    }

    /// `timer_expire_entry`: the normal end.
    pub fn expired(&mut self, ev: &Event) {
        self.pending.retain(|p| p.sock != ev.sock);
        self.end(ev, TwEnd::Expired);
    }

    /// `timer_cancel`: an early end, the first half of a re-arm, or the timer
    /// core detaching the timer to run it (softirq, possibly on top of a task
    /// that is inside connect(): the expiry that follows decides).
    pub fn cancelled(&mut self, ev: &Event, in_connect: bool, netns_dying: bool) {
        let otherwise = if netns_dying {
            TwEnd::Purged
        } else if in_connect {
            TwEnd::Reused
        } else {
            TwEnd::Reset
        };
        self.pending.push_back(Pending {
            sock: ev.sock,
            cookie: ev.cookie,
            ts_ns: ev.ts_ns,
            netns: ev.netns,
            tuple: ev.tuple,
            otherwise,
        });
    }

    /// A request socket appeared: if a cancelled timewait socket had the same
    /// tuple, the peer's new SYN recycled it.
    pub fn request_armed(&mut self, ev: &Event) {
        let hit = self.pending.iter().position(|p| p.netns == ev.netns && p.tuple == ev.tuple);
        if let Some(p) = hit.and_then(|i| self.pending.remove(i)) {
            self.end_sock(p.sock, p.cookie, ev.ts_ns, TwEnd::Recycled, p.netns, &p.tuple);
        }
    }

    /// Resolves cancels older than the grace period: reused (inside
    /// connect()), purged (namespace dying) or killed by an RST.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some(p) = self.pending.front().copied() {
            if now_ns != u64::MAX && now_ns.saturating_sub(p.ts_ns) < CANCEL_GRACE_NS {
                break;
            }
            self.pending.pop_front();
            self.end_sock(p.sock, p.cookie, p.ts_ns, p.otherwise, p.netns, &p.tuple);
        }
    }

    fn end(&mut self, ev: &Event, how: TwEnd) {
        self.end_sock(ev.sock, ev.cookie, ev.ts_ns, how, ev.netns, &ev.tuple);
    }

    fn end_sock(&mut self, sock: u64, cookie: u64, ts_ns: u64, how: TwEnd, netns: u32, tuple: &Tuple) {
        let record = self
            .live
            .remove(&sock)
            .or_else(|| if cookie != 0 { self.preexisting.remove(&cookie) } else { None });
        let Some(record) = record else {
            // Born before tracing, not (yet) listed: count the end, nothing else.
            self.ended_unknown_birth += 1;
            self.ended.bump(how);
            if let Some(ended) = self.ended_before_listing.as_mut()
                && cookie != 0
            {
                // Only until the listing arrives (moments after attaching);
                // bounded all the same.
                if ended.len() < self.max_records {
                    ended.insert(cookie);
                } else {
                    self.evicted += 1;
                }
            }
            return;
        };
        self.ended.bump(how);
        let row = self.destinations.row(&record.dest.unpack());
        row.current = row.current.saturating_sub(1);
        let age = record.born().map(|born| ts_ns.saturating_sub(born));
        if let Some(age) = age {
            self.lifetime.record_ns(age);
            if let Some((_, h)) = self.lifetime_by_end.iter_mut().find(|(e, _)| *e == how) {
                h.record_ns(age);
            }
        }
        if self.emit_lifecycle {
            let after = age.map_or_else(
                || "(born before tracing)".to_string(),
                |a| format!("after {:.3} s", a as f64 / 1e9),
            );
            let why = match how {
                TwEnd::Expired => "expired",
                TwEnd::Reused => "reused by a new connect() (tcp_tw_reuse)",
                TwEnd::Reset => "killed by an RST",
                TwEnd::Recycled => "recycled by a new SYN from the peer",
                TwEnd::Purged => "purged with its namespace",
            };
            self.lifecycle.push(Lifecycle {
                ts_ns,
                event: "time_wait_end",
                netns,
                tuple: *tuple,
                owner: None,
                outcome: Some(how.name()),
                duration_ns: age,
                detail: format!("TIME_WAIT ends: {why} {after}"),
            });
        }
    }

    /// Drops the oldest record born while tracing, or else one listed at
    /// start, and counts it.
    fn evict_one(&mut self) {
        let mut victim = None;
        while let Some((sock, born)) = self.order.pop_front() {
            if self.live.get(&sock).is_some_and(|r| r.born() == Some(born)) {
                victim = self.live.remove(&sock);
                break;
            }
        }
        if victim.is_none()
            && let Some(cookie) = self.preexisting.keys().next().copied()
        {
            victim = self.preexisting.remove(&cookie);
            self.preexisting_count = self.preexisting_count.saturating_sub(1);
        }
        if let Some(record) = victim {
            let row = self.destinations.row(&record.dest.unpack());
            row.current = row.current.saturating_sub(1);
            self.evicted += 1;
        }
    }

    /// The cap on records (born while tracing plus listed at start).
    pub fn max_records(&self) -> usize {
        self.max_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::tests::{MS, Sock, softirq, task};

    fn tw(cookie: u64) -> Sock {
        Sock::new(cookie, "198.18.0.1:40000", "198.18.0.2:8080")
    }

    fn armed(s: &Sock, ms: u64) -> Event {
        s.event(ms, EventKind::TimeWaitArmed { substate: TcpState::TimeWait }, softirq(), false)
    }

    fn cancelled(s: &Sock, ms: u64, in_connect: bool) -> Event {
        let kind =
            EventKind::TimeWaitCancelled { substate: TcpState::TimeWait, in_connect, netns_dying: false };
        s.event(ms, kind, task(10, "c"), in_connect)
    }

    fn tracker() -> TimeWaitTracker {
        let mut t = TimeWaitTracker::new(1000, 100);
        t.add_preexisting([]);
        t
    }

    fn closer() -> Option<Owner> {
        Some(Owner::of(&task(10, "ttclient")))
    }

    #[test]
    fn natural_expiry_measures_the_lifetime() {
        let mut t = tracker();
        let s = tw(1);
        t.armed(&armed(&s, 1_000), closer(), Some(Role::Active));
        assert_eq!(t.current(), 1);
        t.expired(&s.event(
            62_000,
            EventKind::TimeWaitExpired { substate: TcpState::TimeWait },
            softirq(),
            false,
        ));
        assert_eq!(t.current(), 0);
        assert_eq!(t.ended.expired, 1);
        assert!(t.lifetime.summary().p50.abs_diff(61_000_000) < 61_000);
    }

    #[test]
    fn a_cancel_followed_by_a_rearm_is_not_an_end() {
        let mut t = tracker();
        let s = tw(1);
        t.armed(&armed(&s, 0), closer(), Some(Role::Active));
        t.cancelled(&cancelled(&s, 100, false), false, false);
        t.armed(&armed(&s, 100), closer(), Some(Role::Active));
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
        let mut t = tracker();
        let first = tw(1);
        t.armed(&armed(&first, 0), closer(), Some(Role::Active));
        // connect() reuses the port: the first is cancelled and freed; the new
        // connection closes first and its timewait socket gets the same
        // address (same sock, new cookie) within the grace period.
        t.cancelled(&cancelled(&first, 1_500, true), true, false);
        let mut second = tw(2);
        second.sock = first.sock;
        t.armed(&armed(&second, 1_510), closer(), Some(Role::Active));
        t.tick(10_000 * MS);
        assert_eq!(t.created, 2);
        assert_eq!(t.ended, Ended { reused: 1, ..Ended::default() });
        assert_eq!(t.current(), 1);
        let reused = &t.lifetime_by_end.iter().find(|(e, _)| *e == TwEnd::Reused).expect("reused").1;
        assert!(reused.summary().max.abs_diff(1_500_000) < 2_000);
    }

    #[test]
    fn early_ends_are_classified() {
        let mut t = tracker();
        // Reused inside connect().
        let a = tw(1);
        t.armed(&armed(&a, 0), closer(), Some(Role::Active));
        t.cancelled(&cancelled(&a, 1_500, true), true, false);
        // An expiry on top of a task inside connect(): the detach looks like a
        // cancel in connect(), the expiry right after says what it was.
        let mut d = Sock::new(4, "198.18.0.1:40003", "198.18.0.2:8080");
        d.sock = 0xdddd;
        t.armed(&armed(&d, 0), closer(), Some(Role::Active));
        t.cancelled(&cancelled(&d, 60_000, true), true, false);
        t.expired(&d.event(
            60_000,
            EventKind::TimeWaitExpired { substate: TcpState::TimeWait },
            softirq(),
            false,
        ));
        // Recycled by the peer's SYN: a request socket with the same tuple follows.
        let mut b = Sock::new(2, "198.18.0.2:8080", "198.18.0.1:40001");
        b.sock = 0xbbbb;
        t.armed(&armed(&b, 0), closer(), Some(Role::Passive));
        t.cancelled(&cancelled(&b, 2_000, false), false, false);
        t.request_armed(&b.event(
            2_000,
            EventKind::RequestArmed { listener: 1, retransmits: 0 },
            softirq(),
            false,
        ));
        // Killed: nothing follows within the grace period.
        let mut c = Sock::new(3, "198.18.0.1:40002", "198.18.0.2:8080");
        c.sock = 0xcccc;
        t.armed(&armed(&c, 0), closer(), Some(Role::Active));
        t.cancelled(&cancelled(&c, 3_000, false), false, false);
        t.tick(3_005 * MS);
        assert_eq!(t.ended.reset, 0, "still within the grace period");
        t.tick(3_011 * MS);
        t.tick(60_011 * MS);
        assert_eq!(t.ended, Ended { expired: 1, reused: 1, reset: 1, recycled: 1, purged: 0 });
        let reused = &t.lifetime_by_end.iter().find(|(e, _)| *e == TwEnd::Reused).expect("reused").1;
        assert!(reused.summary().p50.abs_diff(1_500_000) < 2_000);
        assert_eq!(t.current(), 0);
    }

    #[test]
    fn destinations_fold_ephemeral_ports_and_count_closers() {
        let mut t = tracker();
        for i in 0..5u64 {
            let mut s = Sock::new(10 + i, &format!("198.18.0.1:{}", 40000 + i), "198.18.0.2:8080");
            s.sock = 0x1000 + i;
            t.armed(&armed(&s, i * 100), closer(), Some(Role::Active));
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
        let mut ended = tw(2);
        ended.sock = 0x2;
        // Events before the listing arrives: one born, one (old) ended.
        t.armed(&armed(&born, 10), closer(), Some(Role::Active));
        t.expired(&ended.event(
            20,
            EventKind::TimeWaitExpired { substate: TcpState::TimeWait },
            softirq(),
            false,
        ));
        let tuple = born.tuple;
        t.add_preexisting([(born.netns, tuple, 1), (born.netns, tuple, 2), (born.netns, tuple, 3)]);
        assert_eq!(t.preexisting_count, 1, "only cookie 3 is really pre-existing");
        assert_eq!(t.current(), 2);
        // A listed one ends: found by cookie, no lifetime (age unknown).
        let mut old = tw(3);
        old.sock = 0x3;
        t.expired(&old.event(
            30,
            EventKind::TimeWaitExpired { substate: TcpState::TimeWait },
            softirq(),
            false,
        ));
        assert_eq!(t.current(), 1);
        assert_eq!(t.lifetime.len(), 0);
    }

    #[test]
    fn records_are_capped_oldest_first_and_listed_ones_count_toward_the_cap() {
        let mut t = TimeWaitTracker::new(3, 100);
        let listed = tw(100);
        t.add_preexisting([(listed.netns, listed.tuple, 100)]);
        for i in 0..4u64 {
            let mut s = Sock::new(10 + i, &format!("198.18.0.1:{}", 40000 + i), "198.18.0.2:8080");
            s.sock = 0x1000 + i;
            t.armed(&armed(&s, i * 100), closer(), Some(Role::Active));
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
}
