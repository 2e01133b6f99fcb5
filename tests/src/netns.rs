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

use crate::{rtnl, run_checked, sh};

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
        let mut ns = if rtnl::wanted() {
            // The guard first: deleting a namespace that was never made is harmless.
            let ns = Self { inode: 0, name };
            rtnl::add_netns(&ns.name).unwrap_or_else(|e| panic!("creating netns {}: {e}", ns.name));
            ns
        } else {
            sh("ip", &["netns", "add", &name]);
            // The guard exists from here on, so a failure below still deletes it.
            let ns = Self { inode: 0, name };
            sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
            ns
        };
        ns.inode = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .unwrap_or_else(|e| panic!("stat /run/netns/{}: {e}", ns.name))
            .ino();
        ns
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        if rtnl::wanted() {
            return rtnl::command(&self.name, program);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn sh(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = self.command(program);
        cmd.args(args);
        String::from_utf8_lossy(&run_checked(&mut cmd).stdout).into_owned()
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

    /// Packets counted so far by the named counter `counter` of the nftables
    /// table `inet table` in this namespace.
    pub fn nft_counter(&self, table: &str, counter: &str) -> u64 {
        let text = self.sh("nft", &["list", "counter", "inet", table, counter]);
        let mut words = text.split_whitespace();
        while let Some(word) = words.next() {
            if word == "packets" {
                return words.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{text}"));
            }
        }
        panic!("no packet count in: {text}")
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
        if rtnl::wanted() {
            rtnl::del_netns(&self.name);
        } else {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }
}

/// Two namespaces joined by a veth pair: `a` (client side) and `b` (server
/// side), with addresses from the benchmarking ranges 198.18.0.0/15 and
/// 2001:db8::/32.
pub struct Pair {
    pub a: NetNs,
    pub b: NetNs,
    /// The veth ends in `a` and in `b`.
    pub a_dev: String,
    pub b_dev: String,
    pub a4: Ipv4Addr,
    pub b4: Ipv4Addr,
    pub a6: Ipv6Addr,
    pub b6: Ipv6Addr,
}

/// The /24 (and /64) the background noise (`ttnoise`) uses: tests never
/// get it, so an address filter of a test never matches the noise.
pub const NOISE_SUBNET: u16 = 511;

impl Pair {
    pub fn new(tag: &str) -> Self {
        // Subnets 0-499 of 198.18.0.0/15 (NOISE_SUBNET is outside).
        Self::in_subnet(tag, (unique() % 500) as u16)
    }

    /// A pair addressed from subnet `subnet` (0-511) of 198.18.0.0/15 and
    /// 2001:db8::/32.
    pub fn in_subnet(tag: &str, subnet: u16) -> Self {
        let a = NetNs::new(&format!("{tag}a"));
        let b = NetNs::new(&format!("{tag}b"));
        let n = unique();
        let a4 = Ipv4Addr::new(198, 18 + (subnet / 256) as u8, (subnet % 256) as u8, 1);
        let b4 = Ipv4Addr::new(198, 18 + (subnet / 256) as u8, (subnet % 256) as u8, 2);
        let a6: Ipv6Addr = format!("2001:db8:{subnet:x}::1").parse().unwrap();
        let b6: Ipv6Addr = format!("2001:db8:{subnet:x}::2").parse().unwrap();
        let (va, vb) = (format!("va{n}"), format!("vb{n}"));
        if rtnl::wanted() {
            rtnl::add_veth(&a.name, &va, &b.name, &vb)
                .unwrap_or_else(|e| panic!("creating veth {va}/{vb}: {e}"));
            for (ns, dev, v4, v6) in [(&a, &va, a4, a6), (&b, &vb, b4, b6)] {
                rtnl::add_addr_and_up(&ns.name, dev, &[(v4.into(), 24), (v6.into(), 64)])
                    .unwrap_or_else(|e| panic!("configuring {dev} in {}: {e}", ns.name));
            }
            return Self { a, b, a_dev: va, b_dev: vb, a4, b4, a6, b6 };
        }
        sh(
            "ip",
            &["link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name],
        );
        for (ns, dev, v4, v6) in [(&a, &va, a4, a6), (&b, &vb, b4, b6)] {
            ns.sh("ip", &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.sh("ip", &["-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.sh("ip", &["link", "set", dev, "up"]);
        }
        Self { a, b, a_dev: va, b_dev: vb, a4, b4, a6, b6 }
    }

    /// Both namespaces, client side first.
    pub fn both(&self) -> [&NetNs; 2] {
        [&self.a, &self.b]
    }

    /// Client-side and server-side address of the chosen family.
    pub fn addrs(&self, ipv6: bool) -> (IpAddr, IpAddr) {
        if ipv6 { (self.a6.into(), self.b6.into()) } else { (self.a4.into(), self.b4.into()) }
    }
}
