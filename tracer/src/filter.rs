//! Which sockets to report: `--netns`, `--port`, `--laddr`, `--raddr`,
//! `--ipv4`, `--ipv6`. Applied to every event before the tracker sees it
//! (cheap per-event checks on the socket's identity).

use std::net::IpAddr;

use clap::Args;
use ipnet::IpNet;

use crate::event::{Event, EventKind};

#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only sockets in this network namespace (inode, as in `ls -L -i /run/netns/NAME`
    /// or the NETNS column); repeatable.
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u32>,

    /// Only sockets whose local or remote port is PORT; repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only sockets whose local address is in CIDR (e.g. 10.0.0.0/8, ::1/128); repeatable.
    #[arg(long = "laddr", value_name = "CIDR", value_parser = parse_cidr)]
    pub laddr: Vec<IpNet>,

    /// Only sockets whose remote address is in CIDR; repeatable.
    #[arg(long = "raddr", value_name = "CIDR", value_parser = parse_cidr)]
    pub raddr: Vec<IpNet>,

    /// Only IPv4 sockets.
    #[arg(long, conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 sockets (IPv4-mapped addresses count as IPv6).
    #[arg(long)]
    pub ipv6: bool,
}

/// A CIDR, or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid CIDR '{text}' (examples: 10.0.0.0/8, 2001:db8::/32, 127.0.0.1)"))
}

impl FilterArgs {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.ports.is_empty()
            && self.laddr.is_empty()
            && self.raddr.is_empty()
            && !self.ipv4
            && !self.ipv6
    }

    /// Whether a socket listed by sock_diag is one the user asked for.
    pub fn matches_socket(&self, netns: u32, tuple: &crate::event::Tuple) -> bool {
        let (local, remote) = (tuple.local, tuple.remote);
        (self.netns.is_empty() || self.netns.contains(&netns))
            && (!self.ipv4 || local.is_ipv4())
            && (!self.ipv6 || local.is_ipv6())
            && (self.ports.is_empty() || self.ports.iter().any(|&p| local.port() == p || remote.port() == p))
            && (self.laddr.is_empty() || self.laddr.iter().any(|n| n.contains(&local.ip())))
            && (self.raddr.is_empty() || self.raddr.iter().any(|n| n.contains(&remote.ip())))
    }

    /// Whether an event concerns a socket the user asked for.
    pub fn matches(&self, ev: &Event) -> bool {
        // A request timer's exit carries no socket identity: it only closes
        // an expiry that passed the filter.
        if matches!(ev.kind, EventKind::RequestExpireDone) {
            return true;
        }
        if !self.netns.is_empty() && !self.netns.contains(&ev.netns) {
            return false;
        }
        // connect() errors have no local side and a request timer's exit no
        // tuple at all: judge them on what they have.
        let has_local = !matches!(ev.kind, EventKind::ConnectError { .. });
        let (local, remote) = (ev.tuple.local, ev.tuple.remote);
        if self.ipv4 && !local.is_ipv4() && !remote.is_ipv4() {
            return false;
        }
        if self.ipv6 && (local.is_ipv4() || remote.is_ipv4()) {
            return false;
        }
        if !self.ports.is_empty()
            && !self.ports.iter().any(|&p| remote.port() == p || (has_local && local.port() == p))
        {
            return false;
        }
        if has_local && !self.laddr.is_empty() && !self.laddr.iter().any(|n| n.contains(&local.ip())) {
            return false;
        }
        if !self.raddr.is_empty() && !self.raddr.iter().any(|n| n.contains(&remote.ip())) {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::tests::{Sock, task};

    fn event(local: &str, remote: &str, netns: u32) -> Event {
        let mut s = Sock::new(1, local, remote);
        s.netns = netns;
        s.by(0, crate::event::TcpState::Close, crate::event::TcpState::SynSent, task(1, "x"))
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(FilterArgs::default().matches(&event("10.0.0.1:4000", "10.0.0.2:80", 7)));
    }

    #[test]
    fn ports_match_either_side() {
        let f = FilterArgs { ports: vec![80], ..Default::default() };
        assert!(f.matches(&event("10.0.0.1:4000", "10.0.0.2:80", 7)));
        assert!(f.matches(&event("10.0.0.2:80", "10.0.0.1:4000", 7)));
        assert!(!f.matches(&event("10.0.0.2:81", "10.0.0.1:4000", 7)));
    }

    #[test]
    fn addresses_netns_and_family() {
        let f = FilterArgs {
            raddr: vec![parse_cidr("10.0.0.0/24").expect("cidr")],
            netns: vec![7],
            ..Default::default()
        };
        assert!(f.matches(&event("10.0.1.1:4000", "10.0.0.2:80", 7)));
        assert!(!f.matches(&event("10.0.1.1:4000", "10.0.1.2:80", 7)));
        assert!(!f.matches(&event("10.0.1.1:4000", "10.0.0.2:80", 8)));
        let v6 = FilterArgs { ipv6: true, ..Default::default() };
        assert!(v6.matches(&event("[2001:db8::1]:4000", "[2001:db8::2]:80", 7)));
        assert!(!v6.matches(&event("10.0.0.1:4000", "10.0.0.2:80", 7)));
        let l = FilterArgs { laddr: vec![parse_cidr("2001:db8::1").expect("addr")], ..Default::default() };
        assert!(l.matches(&event("[2001:db8::1]:4000", "[2001:db8::2]:80", 7)));
    }

    #[test]
    fn bad_cidrs_are_errors() {
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("banana").is_err());
        assert_eq!(parse_cidr("10.1.2.3/8").expect("cidr").to_string(), "10.0.0.0/8");
    }
}
