//! The table of full-socket records, by cookie, in two classes: the ones the
//! owner filter wants, and the ones it leaves out (tracked all the same:
//! attribution needs their events). Each class has its own cap and its own
//! eviction order, so that sockets the user did not ask for never take the
//! room of ones they did.
//!
//! Not a pair of [`CappedMap`](super::capped::CappedMap)s, which would
//! change one eviction order: a record changes class in place when its
//! owner changes, and one that comes back to a class it was in keeps its
//! first place in that class's order (its old order entry is current
//! again, unless the queue was compacted meanwhile); two maps would make it
//! the newest there. It only shows at the cap, with an owner filter, for a
//! socket whose owner changed twice.

use std::collections::VecDeque;

// foldhash, as the rest of the tracker: cookies from our own kernel programs.
use foldhash::{HashMap, HashMapExt as _};

use super::{
    compact::PackedTuple,
    conn::{Conn, Mark},
};
use crate::event::Tuple;

/// The class of a record: its `Mark::Excluded` says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Wanted,
    Excluded,
}

impl Class {
    fn of(conn: &Conn) -> Self {
        if conn.has(Mark::Excluded) { Self::Excluded } else { Self::Wanted }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub struct SocketTable {
    conns: HashMap<u64, Conn>,
    /// Records of each class, by [`Class::index`].
    class_len: [usize; 2],
    /// (cookie, seq) in insertion order per class, for evicting the oldest
    /// record of a class (entries of records since moved or gone are skipped).
    order: [VecDeque<(u64, u64)>; 2],
    /// Numbers records in insertion order: with the cookie, it names one
    /// life of a socket (a cookie comes back when a closed socket connects
    /// again).
    next_seq: u64,
    /// Records per class beyond which [`Self::over_cap`] says so.
    cap: usize,
}

impl SocketTable {
    pub fn new(cap: usize) -> Self {
        Self {
            conns: HashMap::new(),
            class_len: [0, 0],
            order: [VecDeque::new(), VecDeque::new()],
            next_seq: 0,
            cap,
        }
    }

    pub fn get(&self, cookie: &u64) -> Option<&Conn> {
        self.conns.get(cookie)
    }

    pub fn get_mut(&mut self, cookie: &u64) -> Option<&mut Conn> {
        self.conns.get_mut(cookie)
    }

    /// The cookie of the open record (not at CLOSE) with this namespace and
    /// tuple: the kernel lets one full socket at a time have a tuple there.
    /// A scan, for the one event that needs it on kernels whose timewait
    /// sockets do not carry the full socket's name (`Tracker::timewait_origin`).
    pub fn open_by_tuple(&self, netns: u32, tuple: &Tuple) -> Option<u64> {
        let packed = PackedTuple::pack(tuple);
        self.conns
            .iter()
            .find(|(_, c)| c.closed_at.is_none() && c.netns == netns && c.has_tuple(&packed))
            .map(|(cookie, _)| *cookie)
    }

    pub fn contains(&self, cookie: &u64) -> bool {
        self.conns.contains_key(cookie)
    }

    pub fn values(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Conn)> {
        self.conns.iter()
    }

    /// Records of `class`.
    pub fn len(&self, class: Class) -> usize {
        self.class_len[class.index()]
    }

    /// Inserts the record `new` builds from its sequence number, as the
    /// newest wanted one. The cap is not enforced here: the event that
    /// created the record decides its owner right after, and with it the
    /// class whose cap applies.
    pub fn insert_with(&mut self, cookie: u64, new: impl FnOnce(u64) -> Conn) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let conn = new(seq);
        debug_assert!(!conn.has(Mark::Excluded) && conn.seq == seq);
        self.conns.insert(cookie, conn);
        self.class_len[Class::Wanted.index()] += 1;
        self.order[Class::Wanted.index()].push_back((cookie, seq));
        for class in [Class::Wanted, Class::Excluded] {
            let i = class.index();
            if self.order[i].len() > 2 * self.class_len[i] + 1024 {
                let conns = &self.conns;
                self.order[i].retain(|(cookie, seq)| {
                    conns.get(cookie).is_some_and(|c| c.seq == *seq && Class::of(c) == class)
                });
            }
        }
    }

    /// Moves the record of `cookie` to `class` (the newest of it), if it is
    /// not there already.
    pub fn set_class(&mut self, cookie: u64, class: Class) {
        let Some(conn) = self.conns.get_mut(&cookie) else { return };
        let from = Class::of(conn);
        if from != class {
            conn.set_mark(Mark::Excluded, class == Class::Excluded);
            self.class_len[from.index()] -= 1;
            self.class_len[class.index()] += 1;
            self.order[class.index()].push_back((cookie, conn.seq));
        }
    }

    /// Takes a record out of the table.
    pub fn remove(&mut self, cookie: u64) -> Option<Conn> {
        let conn = self.conns.remove(&cookie)?;
        self.class_len[Class::of(&conn).index()] -= 1;
        Some(conn)
    }

    /// `class` holds more records than the cap.
    pub fn over_cap(&self, class: Class) -> bool {
        self.len(class) > self.cap
    }

    /// Takes out the oldest record of `class`.
    pub fn pop_oldest(&mut self, class: Class) -> Option<(u64, Conn)> {
        while let Some((cookie, seq)) = self.order[class.index()].pop_front() {
            let current = |c: &Conn| c.seq == seq && Class::of(c) == class;
            if self.conns.get(&cookie).is_some_and(current) {
                return self.remove(cookie).map(|conn| (cookie, conn));
            }
        }
        None
    }

    /// Order entries held for `class` (live and stale), for the test that
    /// they stay bounded.
    #[cfg(test)]
    pub fn order_len(&self, class: Class) -> usize {
        self.order[class.index()].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{TcpState, Tuple},
        track::conn::Role,
    };

    fn table(cookies: &[u64]) -> SocketTable {
        let mut t = SocketTable::new(2);
        for &cookie in cookies {
            // The cookie doubles as the namespace, to tell records apart.
            t.insert_with(cookie, |seq| {
                Conn::new(seq, cookie as u32, Tuple::UNSPECIFIED, Role::Active, TcpState::Close)
            });
        }
        t
    }

    fn oldest(t: &mut SocketTable, class: Class) -> Option<u64> {
        t.pop_oldest(class).map(|(cookie, _)| cookie)
    }

    #[test]
    fn each_class_has_its_own_count_cap_and_order() {
        let mut t = table(&[1, 2, 3]);
        assert!(t.over_cap(Class::Wanted));
        t.set_class(1, Class::Excluded);
        t.set_class(3, Class::Excluded);
        assert_eq!((t.len(Class::Wanted), t.len(Class::Excluded)), (1, 2));
        assert!(!t.over_cap(Class::Wanted) && !t.over_cap(Class::Excluded));
        assert!(t.get(&3).is_some_and(|c| c.has(Mark::Excluded)));
        assert_eq!(oldest(&mut t, Class::Excluded), Some(1));
        assert_eq!(t.remove(2).map(|c| c.netns), Some(2));
        assert_eq!(oldest(&mut t, Class::Wanted), None);
        assert_eq!((t.len(Class::Wanted), t.len(Class::Excluded)), (0, 1));
    }

    #[test]
    fn a_record_back_in_its_class_keeps_its_place() {
        let mut t = table(&[1, 2]);
        t.set_class(1, Class::Excluded);
        t.set_class(1, Class::Wanted);
        assert_eq!(oldest(&mut t, Class::Wanted), Some(1));
        assert_eq!(oldest(&mut t, Class::Wanted), Some(2));
        assert_eq!(oldest(&mut t, Class::Excluded), None, "its excluded entry is stale");
    }
}
