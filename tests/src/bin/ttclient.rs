//! Test client. Makes `--count` connections to `--connect ADDR:PORT`, one
//! after the other, sending `--mode` (see ttserver) and behaving accordingly:
//! `C` reads the reply and closes first; `S`, `H`, `L` read until EOF (or
//! RST) and then close; `B` downloads `--arg` bytes and closes first; `T`
//! prints `holding <local>` once the exchange is done, waits for the test's
//! "go on" (a line on stdin: its faults are in place), sends 2000 bytes and
//! waits for an answer or an error (printed as `error=ERRNO`).
//! `K` has the server close first (`S`), reads to EOF and closes with
//! SO_LINGER 0 (an RST answers the server's FIN).
//! `U` sends 100 bytes after the reply, which the server (mode `U`) leaves
//! unread when it closes, and reads until EOF or error; `W` has the server
//! close first (`S`), reads to EOF, then sends 100 bytes (data after the
//! peer's close) and waits for the error the peer's RST leaves; `I` (server mode `C`) sets
//! keepalive (idle 1 s, interval 1 s, 2 probes), prints `holding <local>`,
//! waits for the test's line on stdin and then only reads, until EOF or
//! error. `--user-timeout MS` sets TCP_USER_TIMEOUT after connecting.
//! `--connect-on-stdin` prints `waiting` and waits for the test's "go on"
//! before connecting. `--print-syn-sent` connects without blocking and
//! prints `syn-sent state=<tcpi_state> rto_us=<tcpi_rto> backoff=<n>`, the
//! socket's TCP_INFO read right after the SYN left.
//!
//! Prints per connection `conn <local> <remote> <mode> retrans=<n>`, and
//! `error <ERRNO> <remote>` for a failed connect. `--keep-going` continues
//! after errors; `--hold MS` keeps a `C` connection open that long before
//! closing; `--server-mode "H 400"` sends another command than `--mode`
//! (`--arg`) to the server; `--connect-timeout MS`; `--rate N` paces
//! connection starts at N per second; `--first-write-delay MS` waits after
//! connecting before sending anything, and prints `first-write <local> <us>`:
//! microseconds from the connect() call to the first write's return, which
//! bracket the server's SYN_RECV dwell (on a slow machine the sleep can
//! end well after MS); `--source-port P` binds the source
//! port; `--print-connected` prints `connected <local>` once connect() returns.
//!
//! `--comm-hex HEX` renames the process (prctl PR_SET_NAME) to those bytes
//! first. `--spread N` sends connection i to the IPv4 address `i % N` after
//! the one given. `--hold-all` (mode `C`) opens all `--count` connections,
//! prints `ready <n>`, waits for a line (or EOF) on stdin, then closes them
//! all (with `--silent`: connect only, send nothing). `--handoff NAME` (mode `C`): after the exchange the process forks and
//! exits at once, printing `handoff parent=<pid> child=<pid> <local>`; the
//! child, renamed NAME, waits until its parent is gone, sends a line, closes
//! first and prints the `conn` line.
#![allow(clippy::unwrap_used, reason = "test program: a panic is the error report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use tcptrace_tests::peer;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut remote: Option<SocketAddr> = None;
    let (mut count, mut mode, mut arg, mut hold, mut keep_going) = (1u64, "C".to_string(), 0u64, 0u64, false);
    let mut timeout = Duration::from_secs(30);
    let mut server_mode: Option<String> = None;
    let mut rate: Option<f64> = None;
    let mut first_write_delay = 0u64;
    let mut source_port: Option<u16> = None;
    let mut print_connected = false;
    let mut spread = 1u32;
    let mut hold_all = false;
    let mut silent = false;
    let mut handoff: Option<String> = None;
    let mut connect_on_stdin = false;
    let mut print_syn_sent = false;
    let mut user_timeout: Option<u32> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connect" => remote = Some(args.next().unwrap().parse().unwrap()),
            "--count" => count = args.next().unwrap().parse().unwrap(),
            "--mode" => mode = args.next().unwrap(),
            "--arg" => arg = args.next().unwrap().parse().unwrap(),
            "--hold" => hold = args.next().unwrap().parse().unwrap(),
            "--keep-going" => keep_going = true,
            "--server-mode" => server_mode = Some(args.next().unwrap()),
            "--rate" => rate = Some(args.next().unwrap().parse().unwrap()),
            "--first-write-delay" => first_write_delay = args.next().unwrap().parse().unwrap(),
            "--source-port" => source_port = Some(args.next().unwrap().parse().unwrap()),
            "--print-connected" => print_connected = true,
            "--connect-timeout" => timeout = Duration::from_millis(args.next().unwrap().parse().unwrap()),
            "--comm-hex" => set_comm(&hex(&args.next().unwrap())),
            "--spread" => spread = args.next().unwrap().parse().unwrap(),
            "--hold-all" => hold_all = true,
            "--silent" => silent = true,
            "--connect-on-stdin" => connect_on_stdin = true,
            "--print-syn-sent" => print_syn_sent = true,
            "--user-timeout" => user_timeout = Some(args.next().unwrap().parse().unwrap()),
            "--handoff" => handoff = Some(args.next().unwrap()),
            other => panic!("unknown argument {other}"),
        }
    }
    let remote = remote.expect("--connect ADDR:PORT");
    // `K`: the server closes first (`S`); the client answers its FIN with an RST.
    let command = server_mode.unwrap_or_else(|| match mode.as_str() {
        "K" | "W" => "S 0".into(),
        "I" => "C 0".into(),
        _ => format!("{mode} {arg}"),
    });
    if hold_all {
        return hold_all_then_close(remote, count, (!silent).then_some(command.as_str()), timeout);
    }
    if let Some(name) = handoff {
        return hand_off(remote, &command, timeout, &name);
    }
    if connect_on_stdin {
        say("waiting");
        wait_for_stdin_line();
    }
    let mut failures = 0;
    let start = std::time::Instant::now();
    for i in 0..count {
        if let Some(rate) = rate {
            // Pace connection starts at `rate` per second.
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                thread::sleep(wait);
            }
        }
        let remote = spread_target(remote, i, spread);
        let connecting = std::time::Instant::now();
        let connected = match source_port {
            Some(port) => peer::connect_from(remote, port),
            None if print_syn_sent => peer::connect_reading_syn_sent(remote, timeout).map(|(stream, syn)| {
                say(&format!("syn-sent state={} rto_us={} backoff={}", syn.state, syn.rto_us, syn.backoff));
                stream
            }),
            None => TcpStream::connect_timeout(&remote, timeout),
        };
        let mut stream = match connected {
            Ok(s) => s,
            Err(e) => {
                say(&format!("error {} {remote}", peer::errno_name(&e)));
                failures += 1;
                if keep_going {
                    continue;
                }
                std::process::exit(1);
            }
        };
        let local = stream.local_addr().unwrap();
        if let Some(ms) = user_timeout {
            peer::setsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, &ms).unwrap();
        }
        if print_connected {
            say(&format!("connected {local}"));
        }
        if first_write_delay > 0 {
            // TCP_DEFER_ACCEPT servers create the child only when data arrives.
            thread::sleep(Duration::from_millis(first_write_delay));
        }
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        if first_write_delay > 0 {
            say(&format!("first-write {local} {}", connecting.elapsed().as_micros()));
        }
        let reply = peer::read_line(&mut stream);
        let mut error = String::new();
        match mode.as_str() {
            "C" => {
                reply.unwrap();
                if hold > 0 {
                    thread::sleep(Duration::from_millis(hold));
                }
            }
            "B" => {
                // Bulk download of --arg bytes, then close first.
                reply.unwrap();
                let mut left = arg as usize;
                let mut buf = vec![0u8; 65536];
                while left > 0 {
                    match stream.read(&mut buf[..left.min(65536)]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left -= n,
                    }
                }
            }
            "K" => {
                reply.unwrap();
                peer::drain(&mut stream);
                peer::set_linger_zero(&stream).unwrap();
            }
            "U" => {
                reply.unwrap();
                stream.write_all(&[0x55; 100]).unwrap();
                error = read_until_end(&mut stream);
            }
            "W" => {
                reply.unwrap();
                peer::drain(&mut stream);
                let _ = stream.write_all(&[0x57; 100]);
                // Reads return the end of the stream at once: wait for the
                // reset itself (its error), so that this side's close comes
                // after it.
                error = match peer::wait_for_error(&stream, Duration::from_secs(10)) {
                    Some(e) => format!(" error={}", peer::errno_name(&e)),
                    None => " error=none".to_string(),
                };
            }
            "I" => {
                // Idle with keepalive until the network dies under it.
                reply.unwrap();
                let fd = stream.as_raw_fd();
                peer::setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &1i32).unwrap();
                peer::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, &1i32).unwrap();
                peer::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, &1i32).unwrap();
                peer::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, &2i32).unwrap();
                say(&format!("holding {local}"));
                wait_for_stdin_line();
                error = read_until_end(&mut stream);
            }
            "T" => {
                // Hold until told, then send and wait: used to meet a dead network.
                reply.unwrap();
                say(&format!("holding {local}"));
                wait_for_stdin_line();
                let _ = stream.write_all(&[0x42; 2000]);
                error = read_until_end(&mut stream);
            }
            _ => {
                peer::drain(&mut stream);
            }
        }
        let retrans = peer::total_retrans(&stream).unwrap_or(u32::MAX);
        say(&format!("conn {local} {remote} {mode} retrans={retrans}{error}"));
        drop(stream);
    }
    if failures > 0 && !keep_going {
        std::process::exit(1);
    }
}

/// Reads until EOF (`""`) or an error (` error=ERRNO`).
fn read_until_end(stream: &mut TcpStream) -> String {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return String::new(),
            Ok(_) => {}
            Err(e) => return format!(" error={}", peer::errno_name(&e)),
        }
    }
}

/// Blocks until the test writes a line to stdin (or closes it).
fn wait_for_stdin_line() {
    let _ = std::io::stdin().read_line(&mut String::new());
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// Renames this process (the kernel's `comm`, at most 15 bytes).
fn set_comm(name: &[u8]) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
    assert_eq!(rc, 0, "prctl(PR_SET_NAME): {}", std::io::Error::last_os_error());
}

/// Connection `i` of `--spread N`: the IPv4 address `i % N` after `base`.
fn spread_target(base: SocketAddr, i: u64, spread: u32) -> SocketAddr {
    match base {
        SocketAddr::V4(a) if spread > 1 => {
            let ip = u32::from(*a.ip()) + (i % u64::from(spread)) as u32;
            SocketAddr::new(std::net::Ipv4Addr::from(ip).into(), a.port())
        }
        _ => base,
    }
}

/// Connects and does the `C` exchange (command, reply), unless `command` is None.
fn exchange(remote: SocketAddr, command: Option<&str>, timeout: Duration) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&remote, timeout)
        .unwrap_or_else(|e| panic!("connect {remote}: {}", peer::errno_name(&e)));
    if let Some(command) = command {
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        peer::read_line(&mut stream).unwrap();
    }
    stream
}

/// `--hold-all`: every connection open at once until told to close them.
fn hold_all_then_close(remote: SocketAddr, count: u64, command: Option<&str>, timeout: Duration) {
    let streams: Vec<TcpStream> = (0..count).map(|_| exchange(remote, command, timeout)).collect();
    say(&format!("ready {}", streams.len()));
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    for stream in streams {
        let local = stream.local_addr().unwrap();
        let retrans = peer::total_retrans(&stream).unwrap_or(u32::MAX);
        drop(stream);
        say(&format!("conn {local} {remote} C retrans={retrans}"));
    }
}

/// `--handoff NAME`: the connection outlives the process that opened it.
fn hand_off(remote: SocketAddr, command: &str, timeout: Duration, name: &str) {
    let mut stream = exchange(remote, Some(command), timeout);
    let local = stream.local_addr().unwrap();
    // SAFETY: no other thread exists in this process (no lock can be held
    // across fork); both sides only use async-signal-safe-enough std calls.
    let parent = std::process::id();
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child > 0 {
        say(&format!("handoff parent={parent} child={child} {local}"));
        // Exit without touching the socket: the child's descriptor keeps it.
        std::process::exit(0);
    }
    set_comm(name.as_bytes());
    // Wait for the parent to be gone (we are reparented), a condition, not a delay.
    // SAFETY: getppid cannot fail.
    while unsafe { libc::getppid() } == parent as i32 {
        thread::sleep(Duration::from_millis(5));
    }
    stream.write_all(b"from the child\n").unwrap();
    let retrans = peer::total_retrans(&stream).unwrap_or(u32::MAX);
    drop(stream);
    say(&format!("conn {local} {remote} C retrans={retrans}"));
}
