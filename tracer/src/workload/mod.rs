//! Which workload a process belongs to, from its cgroup: a systemd unit, a
//! container (docker, containerd, CRI-O, podman) and, under Kubernetes, its
//! pod (UID and QoS class, and the namespace and name where the node keeps
//! the kubelet's log tree). No API client: the cgroup path says it all, by
//! the naming rules of the runtimes and the kubelet (`cgroup_path.rs`, with
//! a real example of each rule and its source).
//!
//! - `cgroup_path`: a cgroup v2 (or v1) path to a [`Workload`];
//! - `kubelet`: pod and container names from `/var/log/pods` and
//!   `/var/log/containers`;
//! - `resolve`: cgroup ids (what the kernel programs see) to workloads,
//!   cached, and the `--container`/`--pod`/`--unit` selectors.

pub mod cgroup_path;
pub mod kubelet;
pub mod resolve;

use serde::Serialize;

/// The container runtime whose naming a cgroup follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
        }
    }
}

/// A pod's Kubernetes quality-of-service class (the kubelet's cgroup tier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// A Kubernetes pod, as its cgroup and the kubelet's log tree name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Pod {
    pub uid: String,
    pub qos: Option<Qos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What a cgroup path says about the processes in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// A systemd unit outside any container (`nginx.service`,
    /// `session-3.scope`).
    Unit(String),
    /// A container: its runtime when the name tells it, its full id, its
    /// pod under Kubernetes, and its name where the kubelet's logs give it.
    Container { runtime: Option<Runtime>, id: String, pod: Option<Pod>, name: Option<String> },
    /// A pod's own cgroup (no container below it named).
    Pod(Pod),
}

/// Characters of a container id shown in text (as `docker ps` does).
pub const SHORT_ID: usize = 12;

impl Workload {
    pub fn pod(&self) -> Option<&Pod> {
        match self {
            Self::Container { pod, .. } => pod.as_ref(),
            Self::Pod(pod) => Some(pod),
            Self::Unit(_) => None,
        }
    }

    /// One short label for a table cell: `nginx.service`,
    /// `default/web-5d8f/nginx`, `pod 3f1c2a4b/containerd:9ab2c3d4e5f6`,
    /// `docker:9ab2c3d4e5f6`.
    pub fn label(&self) -> String {
        let pod_label = |pod: &Pod| match (&pod.namespace, &pod.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => format!("pod {}", &pod.uid[..pod.uid.len().min(8)]),
        };
        match self {
            Self::Unit(unit) => unit.clone(),
            Self::Pod(pod) => pod_label(pod),
            Self::Container { runtime, id, pod, name } => {
                let container = match name {
                    Some(name) => name.clone(),
                    None => format!(
                        "{}:{}",
                        runtime.map_or("container", Runtime::name),
                        &id[..id.len().min(SHORT_ID)]
                    ),
                };
                match pod {
                    Some(pod) => format!("{}/{container}", pod_label(pod)),
                    None => container,
                }
            }
        }
    }
}

/// The JSON form: flat, null-free fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadOut {
    /// `unit`, `container` or `pod`.
    pub kind: &'static str,
    /// What the text tables show.
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

impl From<&Workload> for WorkloadOut {
    fn from(w: &Workload) -> Self {
        let mut out = Self {
            kind: "unit",
            label: w.label(),
            unit: None,
            runtime: None,
            container_id: None,
            container: None,
            pod: w.pod().cloned(),
        };
        match w {
            Workload::Unit(unit) => out.unit = Some(unit.clone()),
            Workload::Pod(_) => out.kind = "pod",
            Workload::Container { runtime, id, name, .. } => {
                out.kind = "container";
                out.runtime = *runtime;
                out.container_id = Some(id.clone());
                out.container = name.clone();
            }
        }
        out
    }
}
