//! Per network namespace facts a report needs (ephemeral port range, TCP
//! sysctls, the kernel's own TCP counters), read from *inside* each namespace:
//! a short-lived thread `setns()`s into it, so tcptrace itself stays where it is.

use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
};

/// Every network namespace we can open, by inode: named ones (`ip netns`)
/// and those of running processes.
pub fn discover() -> HashMap<u32, PathBuf> {
    let mut found = HashMap::new();
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            if let Ok(meta) = fs::metadata(entry.path()) {
                found.entry(meta.ino() as u32).or_insert(entry.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = entry.path().join("ns/net");
            if let Ok(meta) = fs::metadata(&path) {
                found.entry(meta.ino() as u32).or_insert(path);
            }
        }
    }
    found
}

/// The inode of this process's own network namespace.
pub fn own() -> Option<u32> {
    fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino() as u32)
}

/// Runs `read` on a thread inside namespace `path`.
pub fn in_netns<T: Send + 'static>(
    path: &PathBuf,
    read: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = File::open(path)?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; affects only this thread,
        // which exits right after.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(read())
    })
    .join()
    .map_err(|_| io::Error::other("namespace reader thread panicked"))?
}

/// TCP settings of one namespace that the diagnoses quote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetnsFacts {
    /// `ip_local_port_range` (low, high).
    pub port_range: Option<(u32, u32)>,
    pub tw_reuse: Option<u32>,
    pub max_tw_buckets: Option<u32>,
    pub fin_timeout: Option<u32>,
    pub synack_retries: Option<u32>,
    pub syncookies: Option<u32>,
    /// `/proc/net/netstat` + `/proc/net/snmp`, `"TcpExt:ListenOverflows"` style keys.
    pub counters: HashMap<String, i64>,
}

impl NetnsFacts {
    /// Number of ephemeral ports.
    pub fn port_range_size(&self) -> Option<u32> {
        self.port_range.map(|(lo, hi)| hi.saturating_sub(lo) + 1)
    }

    /// Reads the calling thread's namespace.
    pub fn read_current() -> Self {
        let sysctl = |name: &str| -> Option<String> {
            fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok().map(|s| s.trim().to_string())
        };
        let number = |name: &str| sysctl(name).and_then(|s| s.parse().ok());
        let port_range = sysctl("ip_local_port_range").and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|x| x.parse().ok());
            Some((it.next()?, it.next()?))
        });
        let mut counters = HashMap::new();
        for file in ["/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"] {
            if let Ok(text) = fs::read_to_string(file) {
                parse_counters(&text, &mut counters);
            }
        }
        Self {
            port_range,
            tw_reuse: number("tcp_tw_reuse"),
            max_tw_buckets: number("tcp_max_tw_buckets"),
            fin_timeout: number("tcp_fin_timeout"),
            synack_retries: number("tcp_synack_retries"),
            syncookies: number("tcp_syncookies"),
            counters,
        }
    }

    pub fn read(path: &PathBuf) -> io::Result<Self> {
        in_netns(path, Self::read_current)
    }

    pub fn counter(&self, name: &str) -> i64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Parses the two-line `Prefix: names` / `Prefix: values` format.
pub fn parse_counters(text: &str, into: &mut HashMap<String, i64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((prefix, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse() {
                into.insert(format!("{prefix}:{name}"), v);
            }
        }
    }
}

/// Facts of every namespace, read at the start of a run (for counter deltas)
/// and again when the report is built; or both taken from a recording.
#[derive(Debug, Default)]
pub struct NetnsRegistry {
    paths: HashMap<u32, PathBuf>,
    pub baseline: HashMap<u32, NetnsFacts>,
    /// Replay: the facts at the end of the recorded run (no live reads).
    recorded_end: Option<HashMap<u32, NetnsFacts>>,
}

impl NetnsRegistry {
    /// Reads every namespace that exists now (the baseline for deltas).
    pub fn snapshot() -> Self {
        let paths = discover();
        let baseline =
            paths.iter().filter_map(|(ino, path)| Some((*ino, NetnsFacts::read(path).ok()?))).collect();
        Self { paths, baseline, recorded_end: None }
    }

    /// A registry that answers from a recording only.
    pub fn recorded(baseline: HashMap<u32, NetnsFacts>, end: HashMap<u32, NetnsFacts>) -> Self {
        Self { paths: HashMap::new(), baseline, recorded_end: Some(end) }
    }

    /// Current facts of namespace `inode` (None if it is gone or unreachable).
    pub fn current(&mut self, inode: u32) -> Option<NetnsFacts> {
        if let Some(end) = &self.recorded_end {
            return end.get(&inode).cloned();
        }
        if !self.paths.contains_key(&inode) {
            self.paths = discover();
        }
        NetnsFacts::read(self.paths.get(&inode)?).ok()
    }

    /// `counter` now minus at the start (a namespace born during the run
    /// started from zero).
    pub fn delta(&self, inode: u32, now: &NetnsFacts, counter: &str) -> i64 {
        let before = self.baseline.get(&inode).map_or(0, |b| b.counter(counter));
        now.counter(counter) - before
    }

    pub fn path(&self, inode: u32) -> Option<&PathBuf> {
        self.paths.get(&inode)
    }

    pub fn paths(&self) -> impl Iterator<Item = (&u32, &PathBuf)> {
        self.paths.iter()
    }

    /// The known namespaces without their facts (for a listing thread).
    pub fn paths_snapshot(&self) -> Self {
        Self { paths: self.paths.clone(), baseline: HashMap::new(), recorded_end: None }
    }

    /// Keeps only the namespaces `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.paths.retain(|inode, _| keep(*inode));
    }
}

/// Ephemeral port range sizes by namespace, each read once (they rarely
/// change, and reading means entering the namespace).
pub struct PortRanges {
    registry: NetnsRegistry,
    known: HashMap<u32, Option<u32>>,
}

impl PortRanges {
    pub fn new(registry: NetnsRegistry) -> Self {
        Self { registry, known: HashMap::new() }
    }

    /// Number of ports in `ip_local_port_range` of namespace `netns`.
    pub fn size(&mut self, netns: u32) -> Option<u32> {
        if let Some(known) = self.known.get(&netns) {
            return *known;
        }
        let size = self.registry.current(netns).and_then(|f| f.port_range_size());
        self.known.insert(netns, size);
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netstat_format() {
        let text = "TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 3 17\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let mut map = HashMap::new();
        parse_counters(text, &mut map);
        assert_eq!(map.get("TcpExt:ListenOverflows"), Some(&17));
        assert_eq!(map.get("TcpExt:SyncookiesSent"), Some(&3));
        assert_eq!(map.get("IpExt:InNoRoutes"), Some(&0));
    }

    #[test]
    fn reads_the_current_namespace() {
        // Plain procfs reads: no privileges needed.
        let facts = NetnsFacts::read_current();
        let size = facts.port_range_size().expect("ip_local_port_range is readable");
        assert!(size > 0);
        assert!(facts.counters.contains_key("TcpExt:ListenOverflows"), "{:?}", facts.counters.keys());
    }
}
