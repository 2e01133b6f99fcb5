//! The test peers `ttserver` and `ttclient`, started inside a namespace.

use std::{
    net::SocketAddr,
    process::{Command, Output},
};

use crate::{
    background::Background,
    events::{ConnLine, parse_conns, stdout_lines},
    netns::{NetNs, Pair},
    workspace_binary,
};

/// A binary of this workspace run inside `ns`; with `cpu`, pinned to that
/// CPU by `taskset`.
pub fn peer_command(ns: &NetNs, program: &str, cpu: Option<u32>) -> Command {
    match cpu {
        None => ns.command(workspace_binary(program)),
        Some(cpu) => {
            let mut cmd = ns.command("taskset");
            cmd.args(["-c", &cpu.to_string()]).arg(workspace_binary(program));
            cmd
        }
    }
}

/// `ttserver --listen <addr> <extra>` in `ns`, not started.
pub fn server_command(ns: &NetNs, cpu: Option<u32>, addr: SocketAddr, extra: &[&str]) -> Command {
    let mut cmd = peer_command(ns, "ttserver", cpu);
    cmd.args(["--listen", &addr.to_string()]).args(extra);
    cmd
}

/// ttserver on `addr` in `ns`, once it listens; killed on drop.
pub fn server(ns: &NetNs, addr: SocketAddr, extra: &[&str]) -> Background {
    Background::start(server_command(ns, None, addr, extra), "listening")
}

/// The same, pinned to `cpu`.
pub fn server_pinned(ns: &NetNs, cpu: u32, addr: SocketAddr, extra: &[&str]) -> Background {
    Background::start(server_command(ns, Some(cpu), addr, extra), "listening")
}

/// ttserver on `pair.b`'s IPv4 address at `port`, once it listens; returns
/// that address and the server (killed on drop).
pub fn server_on_b(pair: &Pair, port: u16, extra: &[&str]) -> (SocketAddr, Background) {
    let addr = SocketAddr::new(pair.b4.into(), port);
    (addr, server(&pair.b, addr, extra))
}

/// `ttclient --connect <addr> <args>` in `ns`, not started.
pub fn client_command(ns: &NetNs, addr: SocketAddr, args: &[&str]) -> Command {
    client_command_on(ns, None, addr, args)
}

fn client_command_on(ns: &NetNs, cpu: Option<u32>, addr: SocketAddr, args: &[&str]) -> Command {
    let mut cmd = peer_command(ns, "ttclient", cpu);
    cmd.args(["--connect", &addr.to_string()]).args(args);
    cmd
}

/// ttclient in `ns` with `--print-connected` after `args`, once it has
/// connected; killed on drop.
pub fn connected_client(ns: &NetNs, addr: SocketAddr, args: &[&str]) -> Background {
    let mut cmd = client_command(ns, addr, args);
    cmd.arg("--print-connected");
    Background::start(cmd, "connected")
}

/// Runs ttclient to its end; panics unless it succeeds.
fn run_client(mut cmd: Command, args: &[&str]) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run ttclient: {e}"));
    assert!(out.status.success(), "ttclient {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs ttclient in `ns`; panics unless it succeeds; returns its stdout lines.
pub fn client_lines(ns: &NetNs, addr: SocketAddr, args: &[&str]) -> Vec<String> {
    stdout_lines(&run_client(client_command(ns, addr, args), args))
}

/// Runs ttclient in `ns`; panics unless it succeeds; returns its connections.
pub fn client(ns: &NetNs, addr: SocketAddr, args: &[&str]) -> Vec<ConnLine> {
    parse_conns(&client_lines(ns, addr, args))
}

/// The same, pinned to `cpu`.
pub fn client_pinned(ns: &NetNs, cpu: u32, addr: SocketAddr, args: &[&str]) -> Vec<ConnLine> {
    parse_conns(&stdout_lines(&run_client(client_command_on(ns, Some(cpu), addr, args), args)))
}

/// Runs ttclient in `ns`, whether it succeeds or not (some tests expect it to
/// fail part way); returns its connections and all its stdout lines.
pub fn client_unchecked(ns: &NetNs, addr: SocketAddr, args: &[&str]) -> (Vec<ConnLine>, Vec<String>) {
    let out = client_command(ns, addr, args).output().unwrap_or_else(|e| panic!("cannot run ttclient: {e}"));
    let lines = stdout_lines(&out);
    (parse_conns(&lines), lines)
}
