//! Cgroup ids, as the kernel programs report them, to workloads with the
//! names the node knows; and the `--container`, `--pod`, `--unit`
//! selectors.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use super::{Workload, cgroup_path, kubelet::KubeletNames};
use crate::host::cgroup::CgroupNames;

/// Resolves cgroup ids to workloads, remembering each answer; the
/// kubelet's names are read again (at most once a second) when a pod or
/// container has none yet.
#[derive(Debug)]
pub struct Workloads {
    cgroups: CgroupNames,
    kubelet_root: Option<PathBuf>,
    kubelet: KubeletNames,
    kubelet_read: Option<Instant>,
    cache: HashMap<u64, Option<Arc<Workload>>>,
    /// What `/proc/PID/cgroup` said, for owners whose v2 id names nothing.
    by_pid: HashMap<u32, Option<Arc<Workload>>>,
}

/// Entries each cache holds before it starts over (bounded memory however
/// many cgroups and processes come and go).
const MAX_CACHED: usize = 65_536;

impl Workloads {
    /// `kubelet_root`: the kubelet's log directory (`/var/log`), None to
    /// leave pod and container names out.
    pub fn new(cgroups: CgroupNames, kubelet_root: Option<&Path>) -> Self {
        Self {
            cgroups,
            kubelet_root: kubelet_root.map(Path::to_path_buf),
            kubelet: KubeletNames::default(),
            kubelet_read: None,
            cache: HashMap::new(),
            by_pid: HashMap::new(),
        }
    }

    /// This host's cgroups, and the kubelet's names under its log
    /// directory `kubelet_logs` (`--kubelet-logs`).
    pub fn discover(kubelet_logs: &Path) -> Self {
        Self::new(CgroupNames::discover(), Some(kubelet_logs))
    }

    /// The cgroup path of `id` (relative to the cgroup v2 root).
    pub fn path(&mut self, id: u64) -> Option<String> {
        self.cgroups.path(id)
    }

    /// The workload of the processes in cgroup `id`.
    pub fn of(&mut self, id: u64) -> Option<Arc<Workload>> {
        if let Some(known) = self.cache.get(&id) {
            return known.clone();
        }
        // An id not (yet) in the cgroup tree is not remembered: it may be
        // a cgroup created since the last index.
        let path = self.cgroups.path(id)?;
        let Some(mut workload) = cgroup_path::decode(&path) else {
            self.remember(id, None);
            return None;
        };
        let complete = self.name(&mut workload);
        let workload = Some(Arc::new(workload));
        // A pod the kubelet's logs do not name yet is looked up again later.
        if complete {
            self.remember(id, workload.clone());
        }
        workload
    }

    fn remember(&mut self, id: u64, workload: Option<Arc<Workload>>) {
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(id, workload);
    }

    /// The workload of a process: from its cgroup v2 id, else (a host with
    /// only cgroup v1, where that id says nothing, or a cgroup already
    /// gone) from the v1 paths in `/proc/PID/cgroup` while it runs.
    pub fn of_process(&mut self, cgroup: u64, pid: u32) -> Option<Arc<Workload>> {
        if let Some(workload) = self.of(cgroup) {
            return Some(workload);
        }
        if let Some(known) = self.by_pid.get(&pid) {
            return known.clone();
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let workload = v1_workload(&text).map(|mut w| {
            self.name(&mut w);
            Arc::new(w)
        });
        if self.by_pid.len() >= MAX_CACHED {
            self.by_pid.clear();
        }
        self.by_pid.insert(pid, workload.clone());
        workload
    }

    /// Adds the kubelet's names to a pod's workload; false when a name is
    /// still missing.
    fn name(&mut self, workload: &mut Workload) -> bool {
        let Some(root) = self.kubelet_root.clone() else { return true };
        let lookup = |names: &KubeletNames, w: &mut Workload| -> bool {
            let mut complete = true;
            if let Workload::Container { id, name, pod: Some(_), .. } = w {
                *name = names.containers.get(id.as_str()).cloned();
                complete &= name.is_some();
            }
            let pod = match w {
                Workload::Container { pod: Some(pod), .. } | Workload::Pod(pod) => pod,
                _ => return complete,
            };
            if let Some((namespace, name)) = names.pods.get(&pod.uid) {
                pod.namespace = Some(namespace.clone());
                pod.name = Some(name.clone());
            } else {
                complete = false;
            }
            complete
        };
        if lookup(&self.kubelet, workload) {
            return true;
        }
        // A pod newer than the last reading: read again, at most once a second.
        if self.kubelet_read.is_none_or(|t| t.elapsed().as_secs() >= 1) {
            self.kubelet = KubeletNames::read(&root);
            self.kubelet_read = Some(Instant::now());
            return lookup(&self.kubelet, workload);
        }
        false
    }
}

/// The workload a `/proc/PID/cgroup` text names through its cgroup v1
/// hierarchies (`ID:CONTROLLERS:PATH`), the systemd one first: runtimes
/// name their cgroups alike in every hierarchy.
pub fn v1_workload(text: &str) -> Option<Workload> {
    let paths: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            Some((controllers, path))
        })
        .collect();
    let rank = |c: &str| match c {
        "name=systemd" => 0,
        "" => 1,
        c if c.contains("memory") => 2,
        _ => 3,
    };
    let mut ordered = paths;
    ordered.sort_by_key(|(c, _)| rank(c));
    ordered.into_iter().find_map(|(_, path)| cgroup_path::decode(path))
}

/// `--container`, `--pod`, `--unit`: which workloads a run keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// Container ids (a prefix of at least 4 digits) or names.
    pub containers: Vec<String>,
    /// `NAMESPACE/NAME`, or a pod UID.
    pub pods: Vec<String>,
    /// systemd unit names (`nginx.service`, or `nginx` for its service).
    pub units: Vec<String>,
}

impl Selectors {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.pods.is_empty() && self.units.is_empty()
    }

    /// Whether `workload` is selected: any one selector suffices.
    pub fn matches(&self, workload: Option<&Workload>) -> bool {
        let Some(workload) = workload else { return false };
        let pod = workload.pod();
        let pod_matches = |sel: &String| {
            pod.is_some_and(|p| {
                *sel == p.uid
                    || matches!((&p.namespace, &p.name), (Some(ns), Some(n)) if *sel == format!("{ns}/{n}"))
            })
        };
        if self.pods.iter().any(pod_matches) {
            return true;
        }
        if let Workload::Container { id, name, .. } = workload
            && self
                .containers
                .iter()
                .any(|sel| (sel.len() >= 4 && id.starts_with(sel.as_str())) || name.as_deref() == Some(sel))
        {
            return true;
        }
        if let Workload::Unit(unit) = workload {
            return self.units.iter().any(|sel| unit == sel || *unit == format!("{sel}.service"));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Pod, Qos, Runtime};

    #[test]
    fn cgroup_v1_paths_name_the_workload_systemd_hierarchy_first() {
        let id = "9ab2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        let text = format!(
            "12:pids:/docker/{id}\n4:memory:/docker/{id}\n1:name=systemd:/system.slice/docker-{id}.scope\n0::/\n"
        );
        let w = v1_workload(&text).expect("a container");
        assert!(matches!(w, Workload::Container { runtime: Some(Runtime::Docker), .. }), "{w:?}");
        assert_eq!(v1_workload("0::/\n1:name=systemd:/\n"), None);
        assert_eq!(
            v1_workload("1:name=systemd:/system.slice/nginx.service\n"),
            Some(Workload::Unit("nginx.service".into()))
        );
    }

    #[test]
    fn selectors_match_ids_names_pods_and_units() {
        let pod = Pod {
            uid: "3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b".into(),
            qos: Some(Qos::Burstable),
            namespace: Some("default".into()),
            name: Some("web".into()),
        };
        let c = Workload::Container {
            runtime: Some(Runtime::Containerd),
            id: "9ab2c3d4e5f6".repeat(6)[..64].to_string(),
            pod: Some(pod),
            name: Some("nginx".into()),
        };
        let sel = |containers: &[&str], pods: &[&str], units: &[&str]| Selectors {
            containers: containers.iter().map(ToString::to_string).collect(),
            pods: pods.iter().map(ToString::to_string).collect(),
            units: units.iter().map(ToString::to_string).collect(),
        };
        assert!(sel(&["9ab2c3"], &[], &[]).matches(Some(&c)));
        assert!(sel(&["nginx"], &[], &[]).matches(Some(&c)));
        assert!(!sel(&["9ab"], &[], &[]).matches(Some(&c)), "a prefix needs 4 digits");
        assert!(sel(&[], &["default/web"], &[]).matches(Some(&c)));
        assert!(sel(&[], &["3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b"], &[]).matches(Some(&c)));
        assert!(!sel(&[], &["default/api"], &[]).matches(Some(&c)));
        let unit = Workload::Unit("nginx.service".into());
        assert!(sel(&[], &[], &["nginx"]).matches(Some(&unit)));
        assert!(sel(&[], &[], &["nginx.service"]).matches(Some(&unit)));
        assert!(!sel(&[], &[], &["nginx"]).matches(Some(&c)));
        assert!(!sel(&["nginx"], &[], &[]).matches(None));
    }
}
