//! Sockets that already exist when tracing starts, from the kernel's socket
//! table (sock_diag netlink, as `ss` does; rust-netlink crates). Used to count
//! TIME_WAIT sockets whose birth we did not see, and to know the sockets
//! already sitting in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK (stuck sockets, with
//! their owner from /proc: `host::owners`).

use std::{io, net::SocketAddr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, Timer},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

use crate::event::{TcpState, Tuple};

/// A socket listed by sock_diag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedSocket {
    pub netns: u32,
    pub tuple: Tuple,
    /// Socket cookie (the same value the kernel programs report).
    pub cookie: u64,
    pub state: u8,
    /// The socket's inode (0 for timewait sockets, and in recordings).
    pub inode: u32,
    /// The process holding it, when looked up (`host::owners`).
    pub owner: Option<crate::event::Owner>,
}

fn cookie(raw: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let high = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(low) | (u64::from(high) << 32)
}

/// Lists TCP sockets in `states` of the calling thread's namespace.
pub fn list(states: StateFlags, netns: u32) -> io::Result<Vec<ListedSocket>> {
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump(family, states.clone(), netns, &mut found)?;
    }
    Ok(found)
}

/// The states whose sockets the tracker wants from before tracing: TIME_WAIT
/// and those a socket can be stuck in (CLOSE_WAIT, FIN_WAIT2, LAST_ACK).
pub fn existing_states() -> StateFlags {
    StateFlags::TIME_WAIT | StateFlags::CLOSE_WAIT | StateFlags::FIN_WAIT2 | StateFlags::LAST_ACK
}

/// Those sockets of every namespace in `registry` (unreachable ones are
/// skipped: the report then counts their ends as of unknown birth).
pub fn existing_everywhere(registry: &crate::host::netns::NetnsRegistry) -> Vec<ListedSocket> {
    let mut all = Vec::new();
    for (&inode, path) in registry.paths() {
        match crate::host::netns::in_netns(path, move || list(existing_states(), inode)) {
            Ok(Ok(list)) => all.extend(list),
            Ok(Err(e)) | Err(e) => log::debug!("cannot list the sockets of netns {inode}: {e}"),
        }
    }
    all
}

/// [`existing_everywhere`], with the owner of each socket not in TIME_WAIT
/// looked up in /proc (timewait sockets have no owner).
pub fn existing_with_owners(registry: &crate::host::netns::NetnsRegistry) -> Vec<ListedSocket> {
    let mut listed = existing_everywhere(registry);
    let inodes: std::collections::HashSet<u32> =
        listed.iter().filter(|s| s.inode != 0).map(|s| s.inode).collect();
    let cgroup_root =
        std::fs::read_to_string("/proc/mounts").ok().and_then(|m| crate::host::cgroup::cgroup2_mount(&m));
    let owners =
        crate::host::owners::by_inode(&inodes, std::path::Path::new("/proc"), cgroup_root.as_deref());
    for socket in &mut listed {
        socket.owner = owners.get(&socket.inode).copied();
    }
    listed
}

fn dump(family: u8, states: StateFlags, netns: u32, found: &mut Vec<ListedSocket>) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < datagram.len() {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&datagram[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {e}")))?;
            let length = message.header.length as usize;
            match message.payload {
                // A timewait socket still in its FIN_WAIT2 substate (listed
                // with that state): not a full socket that could be stuck.
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response))
                    if response.header.state != TcpState::TimeWait.to_u8()
                        && response.header.timer == Some(Timer::TimeWait) => {}
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let id = &response.header.socket_id;
                    found.push(ListedSocket {
                        netns,
                        tuple: Tuple {
                            local: SocketAddr::new(id.source_address, id.source_port),
                            remote: SocketAddr::new(id.destination_address, id.destination_port),
                        },
                        cookie: cookie(id.cookie),
                        state: response.header.state,
                        inode: response.header.inode,
                        owner: None,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(err) => {
                    return Err(io::Error::other(format!("sock_diag dump failed: {err:?}")));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_halves_are_host_order_words() {
        let value: u64 = 0x0000_0001_0000_2002;
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&(value as u32).to_ne_bytes());
        raw[4..].copy_from_slice(&((value >> 32) as u32).to_ne_bytes());
        assert_eq!(cookie(raw), value);
    }

    /// sock_diag needs no privileges for listing: list this namespace's
    /// listening sockets after opening one.
    #[test]
    fn lists_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sockets = list(StateFlags::LISTEN, 0).expect("sock_diag dump");
        assert!(sockets.iter().any(|s| s.tuple.local == addr && s.cookie != 0), "{addr} not in {sockets:?}");
    }
}
