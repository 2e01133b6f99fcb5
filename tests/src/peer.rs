//! Socket helpers shared by the test peers `ttserver` and `ttclient`.

use std::{
    io::{self, Read},
    mem,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    time::Duration,
};

/// `SO_LINGER {on, 0}`: close() sends an RST instead of a FIN.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    setsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

pub fn setsockopt<T>(fd: i32, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the size passed.
    let rc =
        unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), mem::size_of::<T>() as u32) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The kernel's own retransmit count for this socket (`tcpi_total_retrans`).
pub fn total_retrans(stream: &TcpStream) -> io::Result<u32> {
    tcp_info(stream).map(|info| info.tcpi_total_retrans)
}

/// The kernel's smoothed round-trip time for this socket (`tcpi_rtt`, µs).
pub fn rtt_us(stream: &TcpStream) -> io::Result<u32> {
    tcp_info(stream).map(|info| info.tcpi_rtt)
}

/// `TCP_INFO` of this socket.
fn tcp_info(stream: &TcpStream) -> io::Result<libc::tcp_info> {
    tcp_info_of(stream.as_raw_fd())
}

fn tcp_info_of(fd: i32) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as u32;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 { Ok(info) } else { Err(io::Error::last_os_error()) }
}

/// Reads until EOF (or an error such as a reset); returns bytes read.
pub fn drain(stream: &mut TcpStream) -> usize {
    let mut buf = [0u8; 65536];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

/// Reads one `\n`-terminated line, byte by byte (no read-ahead past it).
pub fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof before newline"));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
}

/// Name of an errno for output lines.
pub fn errno_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(n) => format!("errno{n}"),
        None => err.kind().to_string(),
    }
}

/// A sockaddr_in/sockaddr_in6 for `addr`, as bytes and length.
pub fn sockaddr(addr: SocketAddr) -> (Vec<u8>, u32) {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            let bytes = unsafe {
                std::slice::from_raw_parts((&sin as *const libc::sockaddr_in).cast::<u8>(), size_of_val(&sin))
            };
            (bytes.to_vec(), size_of_val(&sin) as u32)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    size_of_val(&sin6),
                )
            };
            (bytes.to_vec(), size_of_val(&sin6) as u32)
        }
    }
}

/// Connects from a fixed source port (SO_REUSEADDR, bind, blocking connect).
pub fn connect_from(remote: SocketAddr, source_port: u16) -> io::Result<TcpStream> {
    let domain = if remote.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket syscalls on a fresh fd that TcpStream then owns.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
    let local = match remote {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], source_port)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], source_port)),
    };
    let (addr, len) = sockaddr(local);
    if unsafe { libc::bind(fd, addr.as_ptr().cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (addr, len) = sockaddr(remote);
    if unsafe { libc::connect(fd, addr.as_ptr().cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// The kernel's own view of a socket in SYN_SENT, read right after its SYN.
#[derive(Debug, Clone, Copy)]
pub struct SynSent {
    /// `tcpi_state` (2 is SYN_SENT).
    pub state: u8,
    /// `tcpi_rto`: the retry interval of the SYN, µs.
    pub rto_us: u32,
    /// `tcpi_backoff`: how often it was already doubled.
    pub backoff: u8,
}

/// Connects like [`TcpStream::connect_timeout`], but reads the socket's
/// `TCP_INFO` just after connect() sent the SYN (a non-blocking connect
/// returns at once with EINPROGRESS): no outside observer such as ss has to
/// catch the socket within its first retry interval.
pub fn connect_reading_syn_sent(remote: SocketAddr, timeout: Duration) -> io::Result<(TcpStream, SynSent)> {
    let domain = if remote.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket syscalls on a fresh fd that TcpStream then owns.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (addr, len) = sockaddr(remote);
    if unsafe { libc::connect(fd, addr.as_ptr().cast(), len) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    let info = tcp_info_of(fd)?;
    let syn_sent = SynSent { state: info.tcpi_state, rto_us: info.tcpi_rto, backoff: info.tcpi_backoff };
    let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd, owned here.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        0 => return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
        n if n < 0 => return Err(io::Error::last_os_error()),
        _ => {}
    }
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    stream.set_nonblocking(false)?;
    Ok((stream, syn_sent))
}

/// Waits (at most `timeout`) until the socket has an error or is closed
/// (poll's POLLERR/POLLHUP), and returns the error (SO_ERROR).
pub fn wait_for_error(stream: &TcpStream, timeout: Duration) -> Option<io::Error> {
    let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: 0, revents: 0 };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd, owned here.
    if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
        return None;
    }
    stream.take_error().ok().flatten()
}

/// Blocks until `listener` has a connection waiting in its accept queue;
/// returns when poll() said so.
pub fn wait_readable(listener: &std::net::TcpListener) -> std::time::Instant {
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, owned here; -1: no timeout.
    while unsafe { libc::poll(&mut pfd, 1, -1) } <= 0 {}
    std::time::Instant::now()
}
