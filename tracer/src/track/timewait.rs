//! TIME_WAIT sockets from birth to end, per destination.
//!
//! The state tracepoint never shows TIME_WAIT (docs/KERNEL-FACTS.md §2.1): a timewait
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

pub mod dest;

use foldhash::{HashMap, HashMapExt as _};

use serde::Serialize;

use self::dest::PackedDest;
pub use self::dest::{DestKey, DestRow, RateWindow};
use super::{
    CANCEL_GRACE_NS,
    capped::CappedMap,
    conn::Role,
    grace::GraceQueue,
    lifecycle::{Lifecycle, Step},
    rows::BoundedRows,
};
use crate::{
    event::{Event, EventKind, Owner, TcpState, Tuple},
    stats::{Histo, Precision},
};

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

/// A cancel waiting to be told apart: the timer core's detach before an
/// expiry, a re-arm, a recycle, or an early end.
#[derive(Clone, Copy, Debug)]
struct Pending {
    sock: u64,
    cookie: u64,
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

/// A timewait socket seen before the start-up listing: by cookie, or, when
/// it had none (kernels before 5.12 give one only to sockets someone asked
/// about, and the listing itself asks: the listed cookie is new), by
/// namespace and tuple, which one timewait socket at a time has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Seen {
    Cookie(u64),
    Tuple(u32, Tuple),
}

pub struct TimeWaitTracker {
    /// Timewait sockets by kernel address (unique while alive), oldest
    /// first for eviction. Its cap is enforced by `evict_one`, over these and
    /// the `preexisting` ones together.
    live: CappedMap<u64, TwRecord>,
    /// Listed by sock_diag at start, by cookie, until their end is seen.
    preexisting: HashMap<u64, TwRecord>,
    /// Until the start-up listing arrives: cookies of timewait sockets whose
    /// birth or end was already seen, so that the listing neither resurrects
    /// nor counts again one that tracing knows (also when its record was
    /// evicted at the cap since: the listing can come late on a host with
    /// many namespaces). Bounded; past the bound, `seen_overflow`.
    seen_before_listing: Option<foldhash::HashSet<Seen>>,
    /// `seen_before_listing` was full: the listing falls back to the live
    /// records to recognise sockets born while tracing.
    seen_overflow: bool,
    /// Cancels waiting out [`CANCEL_GRACE_NS`].
    pending: GraceQueue<Pending>,
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
            live: CappedMap::new(max_records),
            preexisting: HashMap::new(),
            seen_before_listing: Some(Default::default()),
            seen_overflow: false,
            pending: GraceQueue::new(CANCEL_GRACE_NS),
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
        let seen = self.seen_before_listing.take().unwrap_or_default();
        let live_cookies: foldhash::HashSet<u64> = if self.seen_overflow {
            self.live.values().map(|r| r.cookie).collect()
        } else {
            Default::default()
        };
        for (netns, tuple, cookie) in listed {
            // Keyed like the events' tuples (IPv4-mapped addresses as IPv4).
            let tuple = crate::pipeline::decode::unmap_tuple(tuple);
            if cookie == 0
                || seen.contains(&Seen::Cookie(cookie))
                || seen.contains(&Seen::Tuple(netns, tuple))
                || live_cookies.contains(&cookie)
                || self.preexisting.contains_key(&cookie)
            {
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
        if let Some((cancelled_ns, p)) = self.pending.take_matching(|p| p.sock == ev.sock) {
            if p.cookie == ev.cookie {
                return; // rescheduled: still the same TIME_WAIT
            }
            // A new timewait socket at the address its predecessor was freed
            // from (the slab hands it out again at once, e.g. when a connect()
            // reuses the port and closes first again): the cancel was an end.
            self.end_sock(p.sock, p.cookie, cancelled_ns, p.otherwise, p.netns, &p.tuple);
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
        self.remember_before_listing(ev.cookie, ev.netns, &ev.tuple);
        self.live
            .push(ev.sock, TwRecord { cookie: ev.cookie, born_ns: ev.ts_ns, dest: PackedDest::pack(&dest) });
        if self.emit_lifecycle {
            let substate = match ev.kind {
                EventKind::TimeWaitArmed { substate } => substate,
                _ => TcpState::TimeWait,
            };
            self.lifecycle.push(Lifecycle {
                ts_ns: ev.ts_ns,
                netns: ev.netns,
                tuple: ev.tuple,
                owner: closer,
                step: Step::TimeWaitStart { substate },
            });
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
        self.pending.push(
            ev.ts_ns,
            Pending { sock: ev.sock, cookie: ev.cookie, netns: ev.netns, tuple: ev.tuple, otherwise },
        );
    }

    /// A request socket appeared: if a cancelled timewait socket had the same
    /// tuple, the peer's new SYN recycled it.
    pub fn request_armed(&mut self, ev: &Event) {
        if let Some((_, p)) = self.pending.take_matching(|p| p.netns == ev.netns && p.tuple == ev.tuple) {
            self.end_sock(p.sock, p.cookie, ev.ts_ns, TwEnd::Recycled, p.netns, &p.tuple);
        }
    }

    /// Resolves cancels older than the grace period: reused (inside
    /// connect()), purged (namespace dying) or killed by an RST.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some((cancelled_ns, p)) = self.pending.pop_expired(now_ns) {
            self.end_sock(p.sock, p.cookie, cancelled_ns, p.otherwise, p.netns, &p.tuple);
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
            self.remember_before_listing(cookie, netns, tuple);
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
            self.lifecycle.push(Lifecycle {
                ts_ns,
                netns,
                tuple: *tuple,
                owner: None,
                step: Step::TimeWaitEnd { end: how, age_ns: age },
            });
        }
    }

    /// Until the listing arrives (moments after attaching): notes a timewait
    /// socket that tracing has seen ([`Seen`]). Bounded by twice the record cap; past it the
    /// listing recognises what is still live, and an evicted socket may be
    /// listed as pre-existing (said by `seen_overflow`).
    fn remember_before_listing(&mut self, cookie: u64, netns: u32, tuple: &Tuple) {
        let bound = 2 * self.max_records;
        if let Some(seen) = self.seen_before_listing.as_mut() {
            if seen.len() < bound {
                seen.insert(if cookie != 0 { Seen::Cookie(cookie) } else { Seen::Tuple(netns, *tuple) });
            } else {
                self.seen_overflow = true;
            }
        }
    }

    /// Drops the oldest record born while tracing, or else one listed at
    /// start, and counts it.
    fn evict_one(&mut self) {
        let mut victim = self.live.pop_oldest().map(|(_, record)| record);
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
mod tests;
