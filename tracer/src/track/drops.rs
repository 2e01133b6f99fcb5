//! TCP segments the kernel threw away (`kfree_skb` with a reason), by
//! reason and by where each was going. A drop carries no socket owner: the
//! segment may never have reached one (`NO_SOCKET`), so it is counted for
//! the namespace and the destination, not for a process.

use std::net::SocketAddr;

use foldhash::{HashMap, HashMapExt as _};

use super::rows::BoundedRows;
use crate::event::Tuple;

/// TCP flags bits of a dropped segment.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub netns: u32,
    /// The kernel's `enum skb_drop_reason` value (names: [`crate::drop_reason`]).
    pub reason: u32,
    /// Where the segment was going (a listener for SYNs and final ACKs).
    pub destination: SocketAddr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropRow {
    pub segments: u64,
    /// Of those, SYNs without ACK (connection attempts), RSTs and FINs.
    pub syn: u64,
    pub rst: u64,
    pub fin: u64,
    /// A source of one of them (the last), to name the sender.
    pub last_source: Option<SocketAddr>,
}

pub struct DropTracker {
    pub total: u64,
    pub by_reason: HashMap<u32, u64>,
    pub rows: BoundedRows<DropKey, DropRow>,
}

impl DropTracker {
    pub fn new(max_rows: usize) -> Self {
        Self { total: 0, by_reason: HashMap::new(), rows: BoundedRows::new(max_rows) }
    }

    /// One dropped segment; `packet` is its (source, destination).
    pub fn dropped(&mut self, netns: u32, packet: &Tuple, reason: u32, tcp_flags: u8) {
        self.total += 1;
        *self.by_reason.entry(reason).or_default() += 1;
        let row = self.rows.row(&DropKey { netns, reason, destination: packet.remote });
        row.segments += 1;
        row.syn += u64::from(tcp_flags & (SYN | 0x10) == SYN);
        row.rst += u64::from(tcp_flags & RST != 0);
        row.fin += u64::from(tcp_flags & FIN != 0);
        row.last_source = Some(packet.local);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_count_by_reason_and_destination() {
        let mut t = DropTracker::new(8);
        let syn = Tuple {
            local: "198.18.0.2:40000".parse().expect("addr"),
            remote: "198.18.0.1:9".parse().expect("addr"),
        };
        t.dropped(7, &syn, 3, SYN);
        t.dropped(7, &syn, 3, SYN);
        t.dropped(7, &syn, 3, 0x10);
        t.dropped(8, &syn, 12, SYN | 0x10);
        assert_eq!(t.total, 4);
        assert_eq!(t.by_reason.get(&3), Some(&3));
        let key = DropKey { netns: 7, reason: 3, destination: syn.remote };
        let row = t.rows.iter().find(|(k, _)| **k == key).expect("row").1;
        assert_eq!((row.segments, row.syn, row.rst), (3, 2, 0));
        assert_eq!(row.last_source, Some(syn.local));
        let synack = DropKey { netns: 8, reason: 12, destination: syn.remote };
        assert_eq!(t.rows.iter().find(|(k, _)| **k == synack).expect("row").1.syn, 0, "a SYN-ACK");
    }
}
