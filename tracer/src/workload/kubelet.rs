//! Pod and container names from the kubelet's log tree, the one place on a
//! node that ties a pod UID to its namespace and name, and a container id
//! to its name, without the API server:
//!
//! - `<root>/pods/<namespace>_<name>_<uid>/<container>/<n>.log` (the
//!   kubelet's `BuildPodLogsDirectory`);
//! - `<root>/containers/<pod>_<namespace>_<container>-<id>.log`, symlinks
//!   into the first (the kubelet's `BuildContainerLogsPath`, the names log
//!   agents parse).
//!
//! Namespaces, pod and container names are DNS labels or subdomains: no
//! `_`, so the separators are unambiguous.

use std::{collections::HashMap, path::Path};

/// The default root: `/var/log` (`--kubelet-logs` changes it).
pub const DEFAULT_ROOT: &str = "/var/log";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletNames {
    /// Pod UID -> (namespace, name).
    pub pods: HashMap<String, (String, String)>,
    /// Container id (64 hex) -> container name.
    pub containers: HashMap<String, String>,
}

impl KubeletNames {
    /// Reads the tree under `root`; what is missing or malformed is skipped
    /// (a node without Kubernetes has neither directory).
    pub fn read(root: &Path) -> Self {
        let mut names = Self::default();
        for entry in std::fs::read_dir(root.join("pods")).into_iter().flatten().flatten() {
            if let Some(name) = entry.file_name().to_str()
                && let Some((uid, pod)) = parse_pod_dir(name)
            {
                names.pods.insert(uid, pod);
            }
        }
        for entry in std::fs::read_dir(root.join("containers")).into_iter().flatten().flatten() {
            if let Some(name) = entry.file_name().to_str()
                && let Some((id, container)) = parse_container_log(name)
            {
                names.containers.insert(id, container);
            }
        }
        names
    }
}

/// `<namespace>_<name>_<uid>` -> (uid, (namespace, name)).
pub fn parse_pod_dir(name: &str) -> Option<(String, (String, String))> {
    let mut parts = name.splitn(3, '_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if namespace.is_empty() || pod.is_empty() || uid.is_empty() || uid.contains('_') {
        return None;
    }
    Some((uid.to_string(), (namespace.to_string(), pod.to_string())))
}

/// `<pod>_<namespace>_<container>-<64 hex>.log` -> (id, container).
pub fn parse_container_log(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.splitn(3, '_');
    let (_pod, _namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    (!container.is_empty() && !container.contains('_')).then(|| (id.to_string(), container.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tree_names_parse_and_malformed_ones_are_skipped() {
        let uid = "3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            parse_pod_dir(&format!("kube-system_coredns-5d78c9869d-x2x7q_{uid}")),
            Some((uid.to_string(), ("kube-system".into(), "coredns-5d78c9869d-x2x7q".into())))
        );
        assert_eq!(parse_pod_dir("no-separators"), None);
        let id = "9ab2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        assert_eq!(
            parse_container_log(&format!("coredns-5d78c9869d-x2x7q_kube-system_coredns-{id}.log")),
            Some((id.to_string(), "coredns".into()))
        );
        assert_eq!(parse_container_log(&format!("web_default_app-{}.log", &id[1..])), None, "63 digits");
        assert_eq!(parse_container_log("web_default_app.log"), None);
    }
}
