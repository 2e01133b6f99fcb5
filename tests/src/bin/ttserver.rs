//! Test server. Listens, then serves each connection in a thread according to
//! the one-line command the client sends first:
//!
//! - `C`: client closes first (reply, read to EOF, close)
//! - `S`: server closes first (reply, close)
//! - `H <ms>`: reply, hold the connection `ms`, then close first
//! - `L`: reply, then close with SO_LINGER 0 (RST)
//! - `B <bytes>`: reply and send `bytes` of data, read to EOF, close
//! - `E <ms>`: reply, read to EOF (the client closes first), wait `ms` (the
//!   ACK of the client's FIN leaves: its socket becomes a timewait socket),
//!   then close with SO_LINGER 0: the RST kills that timewait socket
//! - `U`: reply, wait until more data arrives, close without reading it
//!   (close() with unread data: the kernel resets, TCPAbortOnClose)
//!
//! Prints `listening <addr>` once ready and, per connection, `conn <local>
//! <remote> <mode> retrans=<tcpi_total_retrans> rtt=<tcpi_rtt µs>` just before closing.
//! Options: `--listen ADDR:PORT`, `--backlog N`, `--defer-accept SECS`,
//! `--no-accept` (never accept: for listen-queue overflow tests),
//! `--accept-delay MS` (once a connection waits in the accept queue, sleep
//! `MS` before accepting it, then print `accepted <remote> waited_us=<µs
//! from the queue becoming readable to accept() returning>`).
#![allow(clippy::unwrap_used, reason = "test program: a panic is the error report")]

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    sync::Mutex,
    thread,
    time::Duration,
};

use tcptrace_tests::peer;

static OUT: Mutex<()> = Mutex::new(());

fn say(line: &str) {
    let _guard = OUT.lock().unwrap();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn listen(addr: SocketAddr, backlog: i32, defer_accept: i32) -> TcpListener {
    let domain = if addr.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket syscalls on a fresh fd we own.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    peer::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32).unwrap();
    if defer_accept > 0 {
        peer::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, &defer_accept).unwrap();
    }
    let sockaddr = peer::sockaddr(addr);
    let rc = unsafe { libc::bind(fd, sockaddr.0.as_ptr().cast(), sockaddr.1) };
    assert_eq!(rc, 0, "bind {addr}: {}", std::io::Error::last_os_error());
    let rc = unsafe { libc::listen(fd, backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    let _ = listener.as_raw_fd();
    listener
}

fn serve(mut stream: TcpStream) {
    let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else { return };
    let Ok(command) = peer::read_line(&mut stream) else { return };
    let mut words = command.split_whitespace();
    let mode = words.next().unwrap_or("C").to_string();
    let arg: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let _ = stream.write_all(b"ok\n");
    match mode.as_str() {
        "S" => {}
        "H" => thread::sleep(Duration::from_millis(arg)),
        "L" => {
            // Let the reply reach the client before the reset.
            thread::sleep(Duration::from_millis(20));
            peer::set_linger_zero(&stream).unwrap();
        }
        "E" => {
            peer::drain(&mut stream);
            thread::sleep(Duration::from_millis(arg));
            peer::set_linger_zero(&stream).unwrap();
        }
        "U" => {
            // Blocks until the client's next bytes are in the receive queue.
            let _ = stream.peek(&mut [0u8; 1]);
        }
        "B" => {
            let chunk = vec![0x5au8; 65536];
            let mut left = arg as usize;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
            peer::drain(&mut stream);
        }
        _ => {
            peer::drain(&mut stream);
        }
    }
    let retrans = peer::total_retrans(&stream).unwrap_or(u32::MAX);
    let rtt = peer::rtt_us(&stream).unwrap_or(u32::MAX);
    say(&format!("conn {local} {remote} {mode} retrans={retrans} rtt={rtt}"));
    drop(stream);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut addr: Option<SocketAddr> = None;
    let (mut backlog, mut defer, mut accept, mut delay) = (1024, 0, true, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => addr = Some(args.next().unwrap().parse().unwrap()),
            "--backlog" => backlog = args.next().unwrap().parse().unwrap(),
            "--defer-accept" => defer = args.next().unwrap().parse().unwrap(),
            "--no-accept" => accept = false,
            "--accept-delay" => delay = Some(Duration::from_millis(args.next().unwrap().parse().unwrap())),
            other => panic!("unknown argument {other}"),
        }
    }
    let addr = addr.expect("--listen ADDR:PORT");
    let listener = listen(addr, backlog, defer);
    say(&format!("listening {}", listener.local_addr().unwrap()));
    if !accept {
        loop {
            thread::park();
        }
    }
    if let Some(delay) = delay {
        loop {
            let ready = peer::wait_readable(&listener);
            thread::sleep(delay);
            let (stream, remote) = listener.accept().unwrap();
            say(&format!("accepted {remote} waited_us={}", ready.elapsed().as_micros()));
            thread::spawn(move || serve(stream));
        }
    }
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || serve(stream));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}
