//! `tcptrace demo [time-wait|syn-recv|retransmits]`: reproduces an incident in
//! two throwaway network namespaces (its own client and server threads, its
//! own nftables rules and sysctls, all removed afterwards, also on Ctrl-C)
//! and traces it live.

use std::{
    fs::File,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use crate::{
    cli::{DemoArgs, RunArgs, Thresholds, Tuning},
    error::EnvError,
    pipeline::filter::FilterArgs,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// A client opening short connections and closing first exhausts its
    /// 500-port range: TIME_WAIT, EADDRNOTAVAIL, the diagnosis.
    TimeWait,
    /// Handshakes: lost final ACKs (SYN-ACK retransmits, a second in
    /// SYN_RECV) and a TCP_DEFER_ACCEPT listener.
    SynRecv,
    /// Bulk downloads losing 5% of their data segments.
    Retransmits,
}

const CLIENT_NS: &str = "tcptrace-demo-client";
const SERVER_NS: &str = "tcptrace-demo-server";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| EnvError::new(format!("the demo needs iproute2 (`ip`): {e}")))?;
    if !out.status.success() {
        return Err(EnvError::new(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .into());
    }
    Ok(())
}

/// The two namespaces; deleted on drop (with their veth pair and nftables
/// tables), so also on Ctrl-C and on errors.
struct DemoNet;

impl DemoNet {
    fn create() -> Result<Self> {
        // Leftovers of a demo that was killed (SIGKILL cannot clean up).
        let _ = Command::new("ip").args(["netns", "del", CLIENT_NS]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", SERVER_NS]).stderr(Stdio::null()).status();
        ip(&["netns", "add", CLIENT_NS])?;
        let net = DemoNet;
        ip(&["netns", "add", SERVER_NS])?;
        ip(&[
            "link", "add", "tcptd0", "netns", CLIENT_NS, "type", "veth", "peer", "name", "tcptd1", "netns",
            SERVER_NS,
        ])?;
        for (ns, dev, addr) in [(CLIENT_NS, "tcptd0", CLIENT_IP), (SERVER_NS, "tcptd1", SERVER_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn inode(ns: &str) -> Result<u32> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(format!("/run/netns/{ns}"))?.ino() as u32)
    }

    fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
        in_netns(ns, {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            let value = value.to_string();
            move || std::fs::write(&path, value)
        })?
        .with_context(|| format!("sysctl {key}={value}"))
    }

    fn nft(ns: &str, ruleset: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EnvError::new(format!("the demo needs nftables (`nft`): {e}")))?;
        child.stdin.take().context("nft stdin")?.write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(EnvError::new(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())).into());
        }
        Ok(())
    }
}

impl Drop for DemoNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", CLIENT_NS]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", SERVER_NS]).stderr(Stdio::null()).status();
    }
}

/// Runs `f` on a new thread inside namespace `ns`, named `name` (the name
/// is the `comm` tcptrace shows).
fn spawn_in<T: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<io::Result<T>>> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    Ok(thread::Builder::new().name(name.into()).spawn(move || {
        // SAFETY: setns on a valid namespace fd, for this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })?)
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in(ns, "tcptrace-demo", f)?
        .join()
        .map_err(|_| anyhow::anyhow!("demo thread panicked"))?
        .map_err(Into::into)
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: valid fd and pointer to an int.
    unsafe { libc::setsockopt(fd, level, name, (&value as *const i32).cast(), 4) };
}

/// A server: for each connection, read a one-byte request and answer with
/// `reply` bytes, then wait for the client to close (client closes first).
fn server(port: u16, backlog: i32, defer_accept: i32, reply: usize, stop: Arc<AtomicBool>) -> Result<()> {
    spawn_in(SERVER_NS, "demo-server", move || -> io::Result<()> {
        // SAFETY: plain socket calls on a fresh fd owned by the listener below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        if defer_accept > 0 {
            setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, defer_accept);
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(SERVER_IP.octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: valid sockaddr_in of the size passed.
        if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), 16) } != 0
            || unsafe { libc::listen(fd, backlog) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        listener.set_nonblocking(true)?;
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false)?;
                    thread::Builder::new().name("demo-server".into()).spawn(move || {
                        let mut byte = [0u8; 1];
                        if stream.read_exact(&mut byte).is_ok() {
                            let _ = stream.write_all(&vec![b'x'; reply]);
                            let mut rest = Vec::new();
                            let _ = stream.read_to_end(&mut rest);
                        }
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// A client making `rate` connections per second for `seconds`: request a
/// byte, read `reply` bytes, close first.
fn client(
    port: u16,
    rate: f64,
    count: usize,
    reply: usize,
    first_write_delay: Duration,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    spawn_in(CLIENT_NS, "demo-client", move || {
        let remote = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, port));
        let start = Instant::now();
        for i in 0..count {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let Ok(mut stream) = TcpStream::connect_timeout(&remote, Duration::from_secs(5)) else {
                continue;
            };
            thread::sleep(first_write_delay);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            if stream.write_all(b"?").is_ok() {
                let mut buf = vec![0u8; reply];
                let _ = stream.read_exact(&mut buf);
            }
        }
    })?;
    Ok(())
}

pub fn demo(args: DemoArgs) -> Result<()> {
    crate::kernel::env::check_privileges()?;
    let net = DemoNet::create()?;
    let stop = Arc::new(AtomicBool::new(false));
    let scenario = args.scenario;
    let intro = match scenario {
        Scenario::TimeWait => {
            DemoNet::sysctl(CLIENT_NS, "net.ipv4.ip_local_port_range", "40000 40499")?;
            DemoNet::sysctl(CLIENT_NS, "net.ipv4.tcp_tw_reuse", "0")?;
            "demo-client opens 250 short HTTP-like connections per second to 198.18.250.2:8080 and closes \
             first; its namespace has 500 ephemeral ports and tcp_tw_reuse=0. Every close leaves a \
             TIME_WAIT for 60 s: the range runs out after 2 seconds and connect() fails with \
             EADDRNOTAVAIL. Watch TIME_WAIT and USED climb, then read the diagnosis."
        }
        Scenario::SynRecv => {
            DemoNet::sysctl(SERVER_NS, "net.ipv4.tcp_synack_retries", "1")?;
            DemoNet::nft(
                SERVER_NS,
                "table inet tcptrace_demo {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    \
                 tcp dport 8443 tcp flags & (syn | ack | fin | rst | psh) == ack numgen random mod 4 == 0 drop\n  }\n}\n",
            )?;
            "demo-client connects to :8443, where a quarter of the handshakes' final ACKs are lost \
             (SYN-ACK retransmits, one second in SYN_RECV each) and to :8444, a TCP_DEFER_ACCEPT \
             listener that only creates the connection when the first byte arrives, 300 ms later."
        }
        Scenario::Retransmits => {
            DemoNet::nft(
                CLIENT_NS,
                "table inet tcptrace_demo {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    \
                 tcp sport 8095 meta length > 100 numgen random mod 20 == 0 drop\n  }\n}\n",
            )?;
            "demo-client downloads 2 MB twice a second from demo-server; 5% of the data segments are \
             lost on arrival, so demo-server retransmits (fast recovery and timeouts)."
        }
    };
    eprintln!("tcptrace demo: {intro}");
    let filters = FilterArgs {
        netns: vec![DemoNet::inode(CLIENT_NS)?, DemoNet::inode(SERVER_NS)?],
        ..Default::default()
    };
    let run = RunArgs {
        duration: Some(args.duration),
        format: args.format,
        events: args.events,
        interval: Duration::from_secs(1),
        quiet: false,
        hdr_log: None,
        thresholds: Thresholds::default(),
        filters,
        tuning: Tuning::default(),
    };
    // Traffic starts once tracing has: listeners and connections are seen
    // from their first transition, owners included.
    let traffic_stop = stop.clone();
    let result = crate::commands::run::run_with(run, move || start_traffic(scenario, &traffic_stop));
    stop.store(true, Ordering::Relaxed);
    drop(net);
    result
}

fn start_traffic(scenario: Scenario, stop: &Arc<AtomicBool>) -> Result<()> {
    match scenario {
        Scenario::TimeWait => {
            server(8080, 1024, 0, 64, stop.clone())?;
            client(8080, 250.0, 5000, 64, Duration::ZERO, stop.clone())
        }
        Scenario::SynRecv => {
            server(8443, 1024, 0, 64, stop.clone())?;
            server(8444, 1024, 5, 64, stop.clone())?;
            // The clients wait before sending: only a retransmitted SYN-ACK
            // can then complete a handshake whose final ACK was lost.
            for _ in 0..8 {
                client(8443, 20.0, 50, 64, Duration::from_millis(1200), stop.clone())?;
            }
            client(8444, 10.0, 100, 64, Duration::from_millis(300), stop.clone())
        }
        Scenario::Retransmits => {
            server(8095, 1024, 0, 2_000_000, stop.clone())?;
            client(8095, 2.0, 30, 2_000_000, Duration::ZERO, stop.clone())
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            ring_buffer_size: 8 << 20,
            drain_interval: Duration::from_millis(10),
            wakeup_fraction: 4,
            all_events: false,
            calibrate_empty: false,
            ablate: 0,
            summaries: false,
        }
    }
}
