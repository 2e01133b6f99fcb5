//! Compact forms of what every socket record holds, so that a host with
//! hundreds of thousands of live sockets costs little (BENCHMARKS.md,
//! memory at scale): a timestamp without an `Option`'s 8 bytes, a tuple in
//! 37 bytes instead of 64, and owners shared between the records of one
//! process instead of 40 bytes per record and role.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::Arc,
};

// foldhash, as the rest of the tracker: keys from our own kernel programs.
use foldhash::{HashMap, HashMapExt as _};

use crate::event::{Owner, Tuple};

/// A timestamp (ns, `bpf_ktime_get_ns`) that may be unknown, in 8 bytes:
/// `u64::MAX`, which the clock never reaches, stands for unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u64);

impl Stamp {
    pub const UNKNOWN: Stamp = Stamp(u64::MAX);

    pub fn at(ns: u64) -> Self {
        debug_assert_ne!(ns, u64::MAX);
        Self(ns)
    }

    pub fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }

    pub fn is_some(self) -> bool {
        self.0 != u64::MAX
    }

    pub fn is_none(self) -> bool {
        self.0 == u64::MAX
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Self::UNKNOWN
    }
}

/// A [`Tuple`] in 37 bytes: addresses as IPv6 (an IPv4 one mapped, and
/// flagged, since a dual-stack socket's mapped addresses must stay IPv6).
/// Both ends of a socket have the same family. (`SocketAddr`'s flow info
/// and scope id are always 0 here: events carry neither.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedTuple {
    local: [u8; 16],
    remote: [u8; 16],
    local_port: [u8; 2],
    remote_port: [u8; 2],
    v4: bool,
}

impl PackedTuple {
    pub fn pack(tuple: &Tuple) -> Self {
        let octets = |a: &SocketAddr| match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Self {
            local: octets(&tuple.local),
            remote: octets(&tuple.remote),
            local_port: tuple.local.port().to_ne_bytes(),
            remote_port: tuple.remote.port().to_ne_bytes(),
            v4: tuple.local.is_ipv4(),
        }
    }

    pub fn unpack(&self) -> Tuple {
        let addr = |octets: &[u8; 16], port: [u8; 2]| -> SocketAddr {
            let port = u16::from_ne_bytes(port);
            match octets {
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] if self.v4 => {
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(*a, *b, *c, *d), port))
                }
                _ => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(*octets), port, 0, 0)),
            }
        };
        Tuple { local: addr(&self.local, self.local_port), remote: addr(&self.remote, self.remote_port) }
    }

    pub fn local_port(&self) -> u16 {
        u16::from_ne_bytes(self.local_port)
    }
}

/// An owner as socket records hold it: 8 bytes, shared by every record of
/// the same process (pid, comm and cgroup) through [`Owners`].
pub type SharedOwner = Arc<Owner>;

/// Interns owners: one allocation per distinct owner, however many sockets
/// it has. Entries no record holds any more are dropped when the table has
/// doubled since the last sweep, so it stays within twice the number of
/// owners in use (plus a floor), however long the run.
pub struct Owners {
    table: HashMap<Owner, SharedOwner>,
    sweep_at: usize,
}

impl Owners {
    const MIN_SWEEP: usize = 1024;

    pub fn new() -> Self {
        Self { table: HashMap::new(), sweep_at: Self::MIN_SWEEP }
    }

    pub fn intern(&mut self, owner: Owner) -> SharedOwner {
        if let Some(shared) = self.table.get(&owner) {
            return Arc::clone(shared);
        }
        if self.table.len() >= self.sweep_at {
            // Only the table's own reference left: no record holds it.
            self.table.retain(|_, shared| Arc::strong_count(shared) > 1);
            self.sweep_at = (self.table.len() * 2).max(Self::MIN_SWEEP);
        }
        let shared = Arc::new(owner);
        self.table.insert(owner, Arc::clone(&shared));
        shared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

impl Default for Owners {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Comm;

    #[test]
    fn tuples_round_trip_in_both_families_and_mapped() {
        let v4 = |a: [u8; 4], p| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), p));
        let v6 = |a: Ipv6Addr, p| SocketAddr::new(IpAddr::V6(a), p);
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        for tuple in [
            Tuple::UNSPECIFIED,
            Tuple { local: v4([10, 0, 0, 1], 80), remote: v4([10, 0, 0, 2], 65535) },
            Tuple {
                local: v6(Ipv6Addr::LOCALHOST, 443),
                remote: v6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2), 1),
            },
            Tuple { local: v6(mapped, 8080), remote: v6(mapped, 40000) },
            Tuple { local: v6(Ipv6Addr::UNSPECIFIED, 0), remote: v6(Ipv6Addr::UNSPECIFIED, 0) },
        ] {
            let packed = PackedTuple::pack(&tuple);
            assert_eq!(packed.unpack(), tuple);
            assert_eq!(packed.local_port(), tuple.local.port());
        }
        assert!(size_of::<PackedTuple>() <= 37);
    }

    #[test]
    fn stamps_hold_zero_and_know_unknown() {
        assert_eq!(Stamp::at(0).get(), Some(0));
        assert_eq!(Stamp::default().get(), None);
        assert!(Stamp::UNKNOWN.is_none() && Stamp::at(5).is_some());
        assert_eq!(size_of::<Stamp>(), 8);
    }

    #[test]
    fn owners_are_shared_and_the_table_stays_bounded() {
        let owner = |pid| Owner { pid, comm: Comm::from_str_lossy("x"), cgroup: 1 };
        let mut owners = Owners::new();
        let a = owners.intern(owner(1));
        let b = owners.intern(owner(1));
        assert!(Arc::ptr_eq(&a, &b), "one allocation per owner");
        // 100,000 short-lived owners (nobody keeps them) and one kept.
        for pid in 2..100_002 {
            drop(owners.intern(owner(pid)));
        }
        assert!(owners.len() <= 2 * Owners::MIN_SWEEP, "{} entries", owners.len());
        assert!(Arc::ptr_eq(&owners.intern(owner(1)), &a), "a held owner survives the sweeps");
    }
}
