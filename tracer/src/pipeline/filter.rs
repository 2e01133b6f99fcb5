//! Which sockets to report: `--netns`, `--port`, `--laddr`, `--raddr`,
//! `--ipv4`, `--ipv6`. Applied to every event before the tracker sees it
//! (cheap per-event checks on the socket's identity).

use std::{
    collections::HashSet,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use clap::Args;
use ipnet::IpNet;

use crate::{
    event::{Comm, Event, EventKind, Owner},
    host::cgroup::CgroupNames,
    workload::resolve::{Selectors, Workloads},
};

fn selectors(args: &FilterArgs) -> Selectors {
    Selectors { containers: args.containers.clone(), pods: args.pods.clone(), units: args.units.clone() }
}

#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only sockets in this network namespace (inode, as in `ls -L -i /run/netns/NAME`
    /// or the NETNS column); repeatable.
    #[arg(long = "netns", value_name = "INODE")]
    pub netns: Vec<u32>,

    /// Only sockets whose local or remote port is PORT; repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only sockets whose local address is in CIDR (e.g. 10.0.0.0/8, ::1/128); repeatable.
    #[arg(long = "laddr", value_name = "CIDR", value_parser = parse_cidr)]
    pub laddr: Vec<IpNet>,

    /// Only sockets whose remote address is in CIDR; repeatable.
    #[arg(long = "raddr", value_name = "CIDR", value_parser = parse_cidr)]
    pub raddr: Vec<IpNet>,

    /// Only IPv4 sockets (IPv6 sockets talking to IPv4-mapped addresses,
    /// ::ffff:a.b.c.d, are IPv4 traffic and count here).
    #[arg(long, conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 sockets (not IPv4-mapped addresses: see --ipv4).
    #[arg(long)]
    pub ipv6: bool,

    /// Only sockets owned by this process (its connect, listen, accept or
    /// close); repeatable.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only sockets owned by a process with this name (as in `ps -o comm`,
    /// at most 15 characters); repeatable.
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,

    /// Only sockets owned by a process in this cgroup v2 or below (a path
    /// relative to the cgroup2 mount, e.g. /system.slice/nginx.service); repeatable.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,

    /// Only sockets owned by a process in this container: its id (at least
    /// 4 leading digits) or, under Kubernetes, its name; repeatable.
    #[arg(long = "container", value_name = "ID|NAME")]
    pub containers: Vec<String>,

    /// Only sockets owned by a process in this Kubernetes pod (or a pod
    /// UID); repeatable.
    #[arg(long = "pod", value_name = "NAMESPACE/NAME")]
    pub pods: Vec<String>,

    /// Only sockets owned by a process in this systemd unit (`nginx` means
    /// `nginx.service`); repeatable.
    #[arg(long = "unit", value_name = "NAME")]
    pub units: Vec<String>,

    /// Where the kubelet keeps its logs (`pods/` and `containers/`, whose
    /// names tie pod UIDs and container ids to names).
    #[arg(long = "kubelet-logs", value_name = "DIR", default_value = crate::workload::kubelet::DEFAULT_ROOT)]
    pub kubelet_logs: PathBuf,
}

fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 15 {
        return Err(format!("invalid process name '{text}': 1 to 15 bytes, as in ps -o comm"));
    }
    Ok(text.to_string())
}

/// A CIDR, or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid CIDR '{text}' (examples: 10.0.0.0/8, 2001:db8::/32, 127.0.0.1)"))
}

/// The owner-based part of the filters (`--pid`, `--comm`, `--cgroup`): it
/// needs the tracker's attribution, so the tracker applies it.
#[derive(Debug, Clone, Default)]
pub struct OwnerFilter {
    pids: Vec<u32>,
    comms: Vec<Comm>,
    /// Requested cgroup directories (absolute) and the ids found below them.
    cgroup_dirs: Vec<PathBuf>,
    cgroup_ids: HashSet<u64>,
    /// Unknown ids seen since the last walk (a walk at most every second).
    last_walk: Option<Instant>,
    /// Built from a recording: never walks the live filesystem.
    recorded: bool,
    /// `--container`, `--pod`, `--unit`, and the resolver they need.
    selectors: Selectors,
    workloads: Option<Arc<Mutex<Workloads>>>,
}

impl OwnerFilter {
    /// Resolves `--cgroup` paths under the cgroup v2 mount `root`.
    pub fn new(args: &FilterArgs, root: Option<&Path>) -> Result<Self, String> {
        let mut filter = Self {
            pids: args.pids.clone(),
            comms: args.comms.iter().map(|c| Comm::from_str_lossy(c)).collect(),
            selectors: selectors(args),
            ..Self::default()
        };
        if !filter.selectors.is_empty() {
            let root = root.ok_or_else(|| {
                "--container, --pod and --unit need a mounted cgroup v2 hierarchy".to_string()
            })?;
            let names = Workloads::new(CgroupNames::with_root(root), Some(&args.kubelet_logs));
            filter.workloads = Some(Arc::new(Mutex::new(names)));
        }
        for path in &args.cgroups {
            let root = root.ok_or_else(|| "--cgroup needs a mounted cgroup v2 hierarchy".to_string())?;
            let dir = root.join(path.trim_start_matches('/'));
            if !dir.is_dir() {
                return Err(format!("cgroup {path} not found under {}", root.display()));
            }
            filter.cgroup_dirs.push(dir);
        }
        filter.walk();
        Ok(filter)
    }

    /// For a replay: `--cgroup` paths matched against the recorded names.
    pub fn recorded(
        args: &FilterArgs,
        names: &std::collections::HashMap<u64, String>,
    ) -> Result<Self, String> {
        let mut filter = Self {
            pids: args.pids.clone(),
            comms: args.comms.iter().map(|c| Comm::from_str_lossy(c)).collect(),
            selectors: selectors(args),
            ..Self::default()
        };
        if !filter.selectors.is_empty() {
            let recorded = Workloads::new(CgroupNames::recorded(names.clone()), None);
            filter.workloads = Some(Arc::new(Mutex::new(recorded)));
        }
        for path in &args.cgroups {
            let path = format!("/{}", path.trim_matches('/'));
            let below = format!("{}/", path.trim_end_matches('/'));
            filter.cgroup_ids.extend(
                names
                    .iter()
                    .filter(|(_, p)| **p == path || p.starts_with(&below) || path == "/")
                    .map(|(id, _)| *id),
            );
            // A marker so that the filter is not empty even with no match.
            filter.cgroup_dirs.push(PathBuf::from(&path));
        }
        // Recorded names never change: no re-walk.
        filter.last_walk = Some(Instant::now());
        filter.recorded = true;
        Ok(filter)
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.comms.is_empty()
            && self.cgroup_dirs.is_empty()
            && self.selectors.is_empty()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        for dir in self.cgroup_dirs.clone() {
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                if let Ok(meta) = std::fs::metadata(&d) {
                    self.cgroup_ids.insert(meta.ino());
                }
                if let Ok(entries) = std::fs::read_dir(&d) {
                    stack.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
        }
    }

    /// Whether a socket with this owner is wanted. An unknown owner never
    /// matches a non-empty filter.
    pub fn matches(&mut self, owner: Option<&Owner>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(owner) = owner else { return false };
        if !self.pids.is_empty() && !self.pids.contains(&owner.pid) {
            return false;
        }
        if !self.comms.is_empty() && !self.comms.contains(&owner.comm) {
            return false;
        }
        if let Some(workloads) = &self.workloads {
            // A poisoned lock only means a panic elsewhere: the data is a cache.
            let workload = workloads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .of_process(owner.cgroup, owner.pid);
            if !self.selectors.matches(workload.as_deref()) {
                return false;
            }
        }
        if !self.cgroup_dirs.is_empty() && !self.cgroup_ids.contains(&owner.cgroup) {
            // A cgroup created since the last walk (a new container): look again.
            if !self.recorded && self.last_walk.is_none_or(|t| t.elapsed().as_secs() >= 1) {
                self.walk();
            }
            return self.cgroup_ids.contains(&owner.cgroup);
        }
        true
    }
}

impl FilterArgs {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.ports.is_empty()
            && self.laddr.is_empty()
            && self.raddr.is_empty()
            && !self.ipv4
            && !self.ipv6
    }

    /// Whether a socket listed by sock_diag is one the user asked for.
    pub fn matches_socket(&self, netns: u32, tuple: &crate::event::Tuple) -> bool {
        let (local, remote) = (tuple.local, tuple.remote);
        (self.netns.is_empty() || self.netns.contains(&netns))
            && (!self.ipv4 || local.is_ipv4())
            && (!self.ipv6 || local.is_ipv6())
            && (self.ports.is_empty() || self.ports.iter().any(|&p| local.port() == p || remote.port() == p))
            && (self.laddr.is_empty() || self.laddr.iter().any(|n| n.contains(&local.ip())))
            && (self.raddr.is_empty() || self.raddr.iter().any(|n| n.contains(&remote.ip())))
    }

    /// Whether an event concerns a socket the user asked for.
    pub fn matches(&self, ev: &Event) -> bool {
        // A request timer's exit carries no socket identity: it only closes
        // an expiry that passed the filter.
        if matches!(ev.kind, EventKind::RequestExpireDone) {
            return true;
        }
        if !self.netns.is_empty() && !self.netns.contains(&ev.netns) {
            return false;
        }
        // connect() errors have no local side and a request timer's exit no
        // tuple at all: judge them on what they have.
        let has_local = !matches!(ev.kind, EventKind::ConnectError { .. });
        let (local, remote) = (ev.tuple.local, ev.tuple.remote);
        if self.ipv4 && !local.is_ipv4() && !remote.is_ipv4() {
            return false;
        }
        if self.ipv6 && (local.is_ipv4() || remote.is_ipv4()) {
            return false;
        }
        if !self.ports.is_empty()
            && !self.ports.iter().any(|&p| remote.port() == p || (has_local && local.port() == p))
        {
            return false;
        }
        if has_local && !self.laddr.is_empty() && !self.laddr.iter().any(|n| n.contains(&local.ip())) {
            return false;
        }
        if !self.raddr.is_empty() && !self.raddr.iter().any(|n| n.contains(&remote.ip())) {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::tests::{Sock, task};

    fn event(local: &str, remote: &str, netns: u32) -> Event {
        let mut s = Sock::new(1, local, remote);
        s.netns = netns;
        s.by(0, crate::event::TcpState::Close, crate::event::TcpState::SynSent, task(1, "x"))
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(FilterArgs::default().matches(&event("10.0.0.1:4000", "10.0.0.2:80", 7)));
    }

    #[test]
    fn ports_match_either_side() {
        let f = FilterArgs { ports: vec![80], ..Default::default() };
        assert!(f.matches(&event("10.0.0.1:4000", "10.0.0.2:80", 7)));
        assert!(f.matches(&event("10.0.0.2:80", "10.0.0.1:4000", 7)));
        assert!(!f.matches(&event("10.0.0.2:81", "10.0.0.1:4000", 7)));
    }

    #[test]
    fn addresses_netns_and_family() {
        let f = FilterArgs {
            raddr: vec![parse_cidr("10.0.0.0/24").expect("cidr")],
            netns: vec![7],
            ..Default::default()
        };
        assert!(f.matches(&event("10.0.1.1:4000", "10.0.0.2:80", 7)));
        assert!(!f.matches(&event("10.0.1.1:4000", "10.0.1.2:80", 7)));
        assert!(!f.matches(&event("10.0.1.1:4000", "10.0.0.2:80", 8)));
        let v6 = FilterArgs { ipv6: true, ..Default::default() };
        assert!(v6.matches(&event("[2001:db8::1]:4000", "[2001:db8::2]:80", 7)));
        assert!(!v6.matches(&event("10.0.0.1:4000", "10.0.0.2:80", 7)));
        let l = FilterArgs { laddr: vec![parse_cidr("2001:db8::1").expect("addr")], ..Default::default() };
        assert!(l.matches(&event("[2001:db8::1]:4000", "[2001:db8::2]:80", 7)));
    }

    #[test]
    fn owner_filters_need_a_known_matching_owner() {
        let args = FilterArgs { pids: vec![10], comms: vec!["ttclient".into()], ..Default::default() };
        let mut f = OwnerFilter::new(&args, None).expect("valid");
        assert!(f.matches(Some(&Owner::of(&task(10, "ttclient")))));
        assert!(!f.matches(Some(&Owner::of(&task(11, "ttclient")))));
        assert!(!f.matches(Some(&Owner::of(&task(10, "curl")))));
        assert!(!f.matches(None), "unknown owners are not guessed into a match");
        assert!(OwnerFilter::default().matches(None));
        assert!(parse_comm("a-very-long-process-name").is_err());
    }

    #[test]
    fn cgroup_filter_covers_the_subtree() {
        let root = std::env::temp_dir().join(format!("tcptrace-cgf-{}", std::process::id()));
        std::fs::create_dir_all(root.join("pods/a/inner")).expect("mkdir");
        std::fs::create_dir_all(root.join("other")).expect("mkdir");
        let ino = |p: &str| std::fs::metadata(root.join(p)).expect("stat").ino();
        let args = FilterArgs { cgroups: vec!["/pods/a".into()], ..Default::default() };
        let mut f = OwnerFilter::new(&args, Some(&root)).expect("valid");
        let mut owner = Owner::of(&task(1, "x"));
        owner.cgroup = ino("pods/a/inner");
        assert!(f.matches(Some(&owner)));
        owner.cgroup = ino("other");
        assert!(!f.matches(Some(&owner)));
        let missing = FilterArgs { cgroups: vec!["/nope".into()], ..Default::default() };
        assert!(OwnerFilter::new(&missing, Some(&root)).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn bad_cidrs_are_errors() {
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("banana").is_err());
        assert_eq!(parse_cidr("10.1.2.3/8").expect("cidr").to_string(), "10.0.0.0/8");
    }
}
