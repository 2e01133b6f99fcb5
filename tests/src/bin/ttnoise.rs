//! Background noise for the integration suite (`cargo xtask test` runs it
//! for the whole run): a namespace pair of its own that churns TCP
//! connections both ways, so that every test proves its numbers exact on a
//! host that is never quiet.
//!
//! `ttnoise [--rate N]`: N connection attempts per second in all (default
//! 600), split evenly between the two directions; in each direction, in turn:
//! - `C` client closes first (TIME_WAIT on the client side),
//! - `S` server closes first (TIME_WAIT on the server side),
//! - `R` client closes with SO_LINGER 0 (RST, no TIME_WAIT),
//! - `K` server closes first, the client answers its FIN with an RST
//!   (SO_LINGER 0): the server's timewait socket, still in FIN_WAIT2, is
//!   killed by that RST,
//! - besides, 4 attempts per second go to a port where 1 in 3 SYN-ACKs
//!   arriving at the client is dropped (SYN and SYN-ACK retransmits, request
//!   sockets that wait a second in SYN_RECV).
//!
//! Both namespaces allow `tcp_tw_reuse` (some TIME_WAIT ends by reuse). The
//! noise has addresses (`NOISE_SUBNET`), service ports and an ephemeral port
//! range that no test uses, so a test's address or port filter never
//! matches it: only tracking it is shared, which is what the suite proves. Prints `ready <inode-a> <inode-b>` once traffic flows,
//! runs until stdin closes or SIGTERM/SIGINT, then prints `noise
//! connections=N errors=E seconds=S` and deletes its namespaces.
#![allow(clippy::unwrap_used, reason = "test program: a panic is the error report")]

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tcptrace_tests::{
    netns::{NOISE_SUBNET, NetNs, Pair},
    peer,
};

/// Service port for plain connections and the one whose SYN-ACKs are lost:
/// no test uses them (tests filter on their own ports, 8000-8999 and
/// 20000-29999), nor does the noise's ephemeral range.
const PORT: u16 = 7001;
const LOSSY_PORT: u16 = 7003;
/// Ephemeral ports of the noise's clients: above the ports tests filter on.
const PORT_RANGE: &str = "45000 65000";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate: u64 = args
        .iter()
        .position(|a| a == "--rate")
        .map_or(600, |i| args.get(i + 1).and_then(|v| v.parse().ok()).expect("--rate N"));
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let pair = Pair::in_subnet("noise", NOISE_SUBNET);
    for ns in [&pair.a, &pair.b] {
        ns.sysctl("net.ipv4.ip_local_port_range", PORT_RANGE);
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
        // SYN-ACKs for the lossy port are dropped where they arrive (the
        // client), 1 in 3, so that both ends retransmit.
        ns.nft(&format!(
            "table inet tt_noise {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp sport {LOSSY_PORT} tcp flags & (syn | ack) == syn | ack numgen random mod 3 == 0 drop
  }}
}}"
        ));
    }
    let counts = Arc::new(Counts::default());
    let (a, b) = (IpAddr::from(pair.a4), IpAddr::from(pair.b4));
    let (a6, b6) = (IpAddr::from(pair.a6), IpAddr::from(pair.b6));
    for (ns, addrs) in [(&pair.a, [a, a6]), (&pair.b, [b, b6])] {
        for addr in addrs {
            for port in [PORT, LOSSY_PORT] {
                serve(ns, SocketAddr::new(addr, port));
            }
        }
    }
    // Each direction: half the rate over 4 threads (IPv4 and IPv6), and one
    // thread for the lossy port (a lost SYN-ACK blocks it for a second).
    let per_thread = (rate / 8).max(1);
    let directions = [(&pair.a, [b, b6]), (&pair.b, [a, a6])];
    let mut workers = Vec::new();
    for (ns, targets) in directions {
        for t in 0..5usize {
            let (name, counts) = (ns.name.clone(), counts.clone());
            let target = targets[t % 2];
            let (port, per_second) = if t == 4 { (LOSSY_PORT, 2) } else { (PORT, per_thread) };
            workers.push(thread::spawn(move || {
                enter(&name);
                churn(SocketAddr::new(target, port), per_second, t as u64, &counts);
            }));
        }
    }
    let started = Instant::now();
    wait_until_flowing(&counts);
    say(&format!("ready {} {}", pair.a.inode, pair.b.inode));
    // Stdin closing is the normal stop; a thread watches it.
    thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        STOP.store(true, Ordering::Relaxed);
    });
    while !STOP.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(50));
    }
    for w in workers {
        let _ = w.join();
    }
    say(&format!(
        "noise connections={} errors={} seconds={:.1}",
        counts.connections.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    ));
    drop(pair);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_until_flowing(counts: &Counts) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.connections.load(Ordering::Relaxed) < 10 {
        assert!(Instant::now() < deadline, "ttnoise: no connection completed in 30 s");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Moves the calling thread into the named network namespace.
fn enter(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns on a namespace fd we hold open; affects this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// A listener in `ns` whose connections get a thread each: it reads the
/// mode byte, answers, and closes first (`S`) or waits for the client.
fn serve(ns: &NetNs, addr: SocketAddr) {
    let name = ns.name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        enter(&name);
        let listener = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut mode = [0u8; 1];
                if stream.read_exact(&mut mode).is_err() || stream.write_all(&mode).is_err() {
                    return;
                }
                if mode[0] != b'S' && mode[0] != b'K' {
                    let mut rest = [0u8; 16];
                    while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("noise listener bound");
}

/// Connections from this thread to `target`, paced at `per_second`.
fn churn(target: SocketAddr, per_second: u64, seed: u64, counts: &Counts) {
    let interval = Duration::from_nanos(1_000_000_000 / per_second);
    let mut next = Instant::now();
    let mut i = seed;
    while !STOP.load(Ordering::Relaxed) {
        i += 1;
        let mode = [b'C', b'S', b'R', b'K'][(i % 4) as usize];
        match one(target, mode) {
            Ok(()) => counts.connections.fetch_add(1, Ordering::Relaxed),
            Err(_) => counts.errors.fetch_add(1, Ordering::Relaxed),
        };
        next += interval;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now; // fell behind (a lost SYN-ACK): do not burst to catch up
        }
    }
}

fn one(addr: SocketAddr, mode: u8) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&[mode])?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    if mode == b'S' || mode == b'K' {
        // Read to the server's FIN, then close: TIME_WAIT on the server.
        let mut rest = [0u8; 16];
        while stream.read(&mut rest)? > 0 {}
    }
    match mode {
        b'R' | b'K' => {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            peer::setsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
        }
        _ => {}
    }
    Ok(())
}
