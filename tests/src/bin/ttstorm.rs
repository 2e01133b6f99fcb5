//! Load generator for the benchmark (`cargo xtask bench`).
//!
//! - `ttstorm serve --listen ADDR:PORT [--threads N] [--hold | --wait-eof]`:
//!   accepts connections; closes each at once (the server closes first, so
//!   TIME_WAIT lands on the server and the client never runs out of ports),
//!   with `--wait-eof` reads to EOF first (the client closes first), or with
//!   `--hold` keeps every one open until stdin closes. Prints `listening`.
//! - `ttstorm storm --connect ADDR:PORT[,...] (--seconds S | --count N)
//!   [--threads N] [--close-first]`: short connections as fast as possible
//!   (connect, read to EOF, close; or with `--close-first` connect and close)
//!   for S seconds or N connections; prints `connections N errors E seconds T`.
//! - `ttstorm spin --connect ADDR:PORT --bind IP`: non-blocking connect()
//!   calls in a loop (each socket closed at once) until stdin closes, so
//!   that the process is inside connect() most of the time; prints `ready`.
//! - `ttstorm open --connect ADDR:PORT[,ADDR:PORT...] --count N`: opens N
//!   concurrent connections (round-robin over the addresses), prints `open N`
//!   and holds them until stdin closes.
#![allow(clippy::unwrap_used, reason = "load generator: a panic is the error report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// As many file descriptors as the kernel allows (the memory benchmark holds
/// 100,000+ sockets per process).
fn raise_fd_limit() {
    let max = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let limit = libc::rlimit { rlim_cur: max, rlim_max: max };
    // SAFETY: plain setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        return;
    }
    // Without CAP_SYS_RESOURCE the hard limit stays: take all of it (the
    // benchmark spreads its sockets over processes to fit).
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter().position(|a| a == name).map(|i| {
        args.get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: missing or invalid value"))
    })
}

fn threads(args: &[String]) -> usize {
    arg(args, "--threads").unwrap_or_else(|| thread::available_parallelism().map_or(2, usize::from))
}

fn serve(args: &[String]) {
    let addr: SocketAddr = arg(args, "--listen").expect("--listen ADDR:PORT");
    let hold = args.iter().any(|a| a == "--hold");
    let wait_eof = args.iter().any(|a| a == "--wait-eof");
    let listener = Arc::new(TcpListener::bind(addr).unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..threads(args) {
        let (listener, held) = (listener.clone(), held.clone());
        thread::spawn(move || {
            loop {
                let Ok((mut stream, _)) = listener.accept() else { continue };
                if hold {
                    held.lock().unwrap().push(stream);
                } else if wait_eof {
                    let mut buf = [0u8; 64];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                }
                // Otherwise dropped here: the server closes first.
            }
        });
    }
    say(&format!("listening {addr}"));
    // Until stdin closes (the benchmark ends us).
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
}

fn storm(args: &[String]) {
    let targets: String = arg(args, "--connect").expect("--connect ADDR:PORT[,...]");
    let targets: Arc<Vec<SocketAddr>> = Arc::new(targets.split(',').map(|t| t.parse().unwrap()).collect());
    let seconds: Option<f64> = arg(args, "--seconds");
    let count: Option<u64> = arg(args, "--count");
    assert!(seconds.is_some() != count.is_some(), "one of --seconds S or --count N");
    let close_first = args.iter().any(|a| a == "--close-first");
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads(args))
        .map(|t| {
            let (done, errors, stop, targets) = (done.clone(), errors.clone(), stop.clone(), targets.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    if count.is_some_and(|n| done.load(Ordering::Relaxed) >= n) {
                        break;
                    }
                    i += 1;
                    match TcpStream::connect(targets[i % targets.len()]) {
                        Ok(mut s) => {
                            if !close_first {
                                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    if let Some(seconds) = seconds {
        thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    }
    for w in workers {
        w.join().unwrap();
    }
    say(&format!(
        "connections {} errors {} seconds {:.3}",
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    ));
}

fn open(args: &[String]) {
    let targets: String = arg(args, "--connect").expect("--connect ADDR:PORT[,...]");
    let targets: Vec<SocketAddr> = targets.split(',').map(|t| t.parse().unwrap()).collect();
    let count: usize = arg(args, "--count").expect("--count N");
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let target = targets[i % targets.len()];
        let stream = TcpStream::connect(target).unwrap_or_else(|e| panic!("connection {i} to {target}: {e}"));
        streams.push(stream);
    }
    say(&format!("open {}", streams.len()));
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
}

fn spin(args: &[String]) {
    let target: SocketAddr = arg(args, "--connect").expect("--connect ADDR:PORT");
    let bind: std::net::IpAddr = arg(args, "--bind").expect("--bind IP");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = stop.clone();
    thread::spawn(move || {
        let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
        watcher.store(true, Ordering::Relaxed);
    });
    let domain = if target.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
    let (to, to_len) = tcptrace_tests::peer::sockaddr(target);
    let (from, from_len) = tcptrace_tests::peer::sockaddr(SocketAddr::new(bind, 0));
    say("ready");
    let mut spins = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: plain socket syscalls on a fresh fd that is closed here.
        unsafe {
            let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            libc::bind(fd, from.as_ptr().cast(), from_len);
            libc::connect(fd, to.as_ptr().cast(), to_len);
            libc::close(fd);
        }
        spins += 1;
    }
    say(&format!("spins {spins}"));
}

fn main() {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args),
        Some("storm") => storm(&args),
        Some("open") => open(&args),
        Some("spin") => spin(&args),
        _ => panic!("usage: ttstorm serve|storm|open|spin ... (see the source)"),
    }
}
