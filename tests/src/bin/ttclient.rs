//! Test client. Makes `--count` connections to `--connect ADDR:PORT`, one
//! after the other, sending `--mode` (see ttserver) and behaving accordingly:
//! `C` reads the reply and closes first; `S`, `H`, `L` read until EOF (or
//! RST) and then close; `B` downloads `--arg` bytes and closes first; `T`
//! holds `--hold` ms, sends 2000 bytes and waits for an answer or an error
//! (printed as `error=ERRNO`).
//!
//! Prints per connection `conn <local> <remote> <mode> retrans=<n>`, and
//! `error <ERRNO> <remote>` for a failed connect. `--keep-going` continues
//! after errors; `--hold MS` keeps a `C` connection open that long before
//! closing; `--server-mode "H 400"` sends another command than `--mode`
//! (`--arg`) to the server; `--connect-timeout MS`; `--rate N` paces
//! connection starts at N per second; `--first-write-delay MS` waits after
//! connecting before sending anything; `--source-port P` binds the source
//! port; `--print-connected` prints `connected <local>` once connect() returns.
#![allow(clippy::unwrap_used, reason = "test program: a panic is the error report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
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
            other => panic!("unknown argument {other}"),
        }
    }
    let remote = remote.expect("--connect ADDR:PORT");
    let command = server_mode.unwrap_or_else(|| format!("{mode} {arg}"));
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
        let connected = match source_port {
            Some(port) => peer::connect_from(remote, port),
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
        if print_connected {
            say(&format!("connected {local}"));
        }
        if first_write_delay > 0 {
            // TCP_DEFER_ACCEPT servers create the child only when data arrives.
            thread::sleep(Duration::from_millis(first_write_delay));
        }
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
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
            "T" => {
                // Hold, then send and wait: used to meet a dead network.
                reply.unwrap();
                thread::sleep(Duration::from_millis(hold));
                let _ = stream.write_all(&[0x42; 2000]);
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            error = format!(" error={}", peer::errno_name(&e));
                            break;
                        }
                    }
                }
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
