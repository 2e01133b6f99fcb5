//! Raw packets for faults nftables cannot make: reading a segment's sequence
//! number off the wire and forging an in-window RST (TIME_WAIT assassination,
//! RFC 1337). IPv4 only.

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Runs `f` on a thread inside the network namespace `name` (`ip netns`).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let file = File::open(format!("/run/netns/{name}")).unwrap_or_else(|e| panic!("open netns {name}: {e}"));
    thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd, for this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
        f()
    })
}

/// What was seen of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub payload: u32,
    pub flags: u8,
}

pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

fn parse(packet: &[u8]) -> Option<Segment> {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    let tcp = packet.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let ip = |o: usize| Ipv4Addr::new(packet[o], packet[o + 1], packet[o + 2], packet[o + 3]);
    Some(Segment {
        src: SocketAddrV4::new(ip(12), u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: SocketAddrV4::new(ip(16), u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        payload: (tcp.len().saturating_sub(data_offset)) as u32,
        flags: tcp[13],
    })
}

/// Captures, in the calling thread's namespace, the first IPv4 TCP segment
/// that satisfies `pred` (AF_PACKET, cooked, all interfaces).
pub fn capture(timeout: Duration, pred: impl Fn(&Segment) -> bool) -> Option<Segment> {
    // SAFETY: plain socket syscalls on a fresh fd closed below.
    let fd = unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from((libc::ETH_P_IP as u16).to_be()))
    };
    assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: valid pointer and size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 65536];
    let mut found = None;
    while Instant::now() < deadline {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(seg) = parse(&buf[..n as usize])
            && pred(&seg)
        {
            found = Some(seg);
            break;
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    found
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends, from the calling thread's namespace, a bare RST from `src` to `dst`
/// with sequence number `seq` (raw IPv4, the kernel fills nothing in).
pub fn send_rst(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = RST;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
    let partial: u32 = pseudo.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    let sum = checksum(&tcp, partial);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut ip = [0u8; 40];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = libc::IPPROTO_TCP as u8;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum(&ip[..20], 0);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    ip[20..].copy_from_slice(&tcp);

    // SAFETY: raw socket, valid buffers; closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(n, 40, "sendto: {}", io::Error::last_os_error());
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071 example words: 0x0001 0xf203 0xf4f5 0xf6f7 -> sum 0xddf2, complement 0x220d
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0), 0x220d);
    }
}
