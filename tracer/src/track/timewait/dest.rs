//! Where TIME_WAIT sockets point: the destination rows of the report (ports
//! folded, creation rate, closers), and the compact key each record keeps.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::{
    event::{Owner, Tuple},
    track::conn::Role,
};

/// Closers listed per destination before the rest are summed as "other".
const CLOSERS_PER_DESTINATION: usize = 8;

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
    pub(super) fn count_closer(&mut self, closer: Option<Owner>) {
        if let Some(entry) = self.closers.iter_mut().find(|(o, _)| *o == closer) {
            entry.1 += 1;
        } else if self.closers.len() < CLOSERS_PER_DESTINATION {
            self.closers.push((closer, 1));
        } else {
            self.other_closers += 1;
        }
    }
}

/// A [`DestKey`] in 40 bytes instead of 72: one record per TIME_WAIT socket,
/// 100,000s of them (BENCHMARKS.md, memory at scale). Addresses as IPv6
/// (IPv4 mapped, flagged), and only the port that is not folded to 0.
#[derive(Clone, Copy, Debug)]
pub(super) struct PackedDest {
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

    pub(super) fn pack(key: &DestKey) -> Self {
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

    pub(super) fn unpack(&self) -> DestKey {
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
