//! Network namespaces the tests create and always delete.

use std::{
    collections::HashMap,
    ffi::OsStr,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::sh;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A named network namespace (`ip netns add`), deleted on drop together with
/// its interfaces and nftables tables.
pub struct NetNs {
    pub name: String,
    /// Inode of the namespace: what tcptrace reports as `netns`.
    pub inode: u64,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("tt{}-{}-{tag}", std::process::id(), unique());
        sh("ip", &["netns", "add", &name]);
        // The guard exists from here on, so a failure below still deletes it.
        let mut ns = Self { inode: 0, name };
        sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns.inode = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .unwrap_or_else(|e| panic!("stat /run/netns/{}: {e}", ns.name))
            .ino();
        ns
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn sh(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&sh("ip", &full).stdout).into_owned()
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.sh("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Loads an nftables ruleset (`nft -f -`) in this namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nft: {e}"));
        child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft -f failed: {}\n{ruleset}", String::from_utf8_lossy(&out.stderr));
    }

    /// The namespace's TCP counters (`/proc/net/netstat` and `/proc/net/snmp`
    /// as seen from inside it), by name.
    pub fn tcp_counters(&self) -> HashMap<String, i64> {
        let mut counters = HashMap::new();
        for file in ["/proc/net/netstat", "/proc/net/snmp"] {
            let text = self.sh("cat", &[file]);
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [names, values] = pair else { continue };
                let (prefix, names) = names.split_once(':').unwrap_or(("", names));
                let values = values.split_once(':').map_or(*values, |(_, v)| v);
                for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                    if let Ok(v) = value.parse() {
                        counters.insert(format!("{prefix}:{name}"), v);
                    }
                }
            }
        }
        counters
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair: `a` (client side) and `b` (server
/// side), with addresses from the benchmarking ranges 198.18.0.0/15 and
/// 2001:db8::/32.
pub struct Pair {
    pub a: NetNs,
    pub b: NetNs,
    pub a4: Ipv4Addr,
    pub b4: Ipv4Addr,
    pub a6: Ipv6Addr,
    pub b6: Ipv6Addr,
}

impl Pair {
    pub fn new(tag: &str) -> Self {
        let a = NetNs::new(&format!("{tag}a"));
        let b = NetNs::new(&format!("{tag}b"));
        let n = unique();
        let subnet = (n % 500) as u16;
        let a4 = Ipv4Addr::new(198, 18 + (subnet / 256) as u8, (subnet % 256) as u8, 1);
        let b4 = Ipv4Addr::new(198, 18 + (subnet / 256) as u8, (subnet % 256) as u8, 2);
        let a6: Ipv6Addr = format!("2001:db8:{subnet:x}::1").parse().unwrap();
        let b6: Ipv6Addr = format!("2001:db8:{subnet:x}::2").parse().unwrap();
        let (va, vb) = (format!("va{n}"), format!("vb{n}"));
        sh(
            "ip",
            &["link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name],
        );
        for (ns, dev, v4, v6) in [(&a, &va, a4, a6), (&b, &vb, b4, b6)] {
            ns.sh("ip", &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.sh("ip", &["-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.sh("ip", &["link", "set", dev, "up"]);
        }
        Self { a, b, a4, b4, a6, b6 }
    }

    /// Client-side and server-side address of the chosen family.
    pub fn addrs(&self, ipv6: bool) -> (IpAddr, IpAddr) {
        if ipv6 { (self.a6.into(), self.b6.into()) } else { (self.a4.into(), self.b4.into()) }
    }
}
