//! A cgroup path to a [`Workload`], by the names runtimes and the kubelet
//! give their cgroups. The path is read from its end, component by
//! component, so a prefix above the runtime's own tree (a nested cgroup
//! root, a kind node, the test's scratch cgroup) does not matter:
//!
//! - Kubernetes, systemd driver (kubelet `pkg/kubelet/cm/cgroup_manager_linux.go`,
//!   `ToSystemd`: each level becomes a slice named after its ancestors, the
//!   pod UID's `-` escaped to `_`): `kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid>.slice`, `kubepods-besteffort-pod<uid>.slice`,
//!   Guaranteed pods directly as `kubepods-pod<uid>.slice`; a kubelet with
//!   `--cgroup-root=/kubelet` (kind) adds a `kubelet-` prefix.
//! - Kubernetes, cgroupfs driver: `kubepods/burstable/pod<uid>/<id>`,
//!   `kubepods/besteffort/pod<uid>/<id>`, `kubepods/pod<uid>/<id>`.
//! - Containers under systemd are scopes `<prefix>-<64 hex>.scope` (runc's
//!   systemd driver turns `slice:prefix:id` into `prefix-id.scope`):
//!   `cri-containerd-` (containerd's CRI plugin), `crio-` (CRI-O;
//!   `crio-conmon-` is its monitor, not the container), `docker-` (Docker
//!   and cri-dockerd; Docker's runtime-metrics documentation:
//!   `/sys/fs/cgroup/system.slice/docker-<longid>.scope`), `libpod-`
//!   (podman, rootful under `machine.slice`, rootless under the user's
//!   `user@UID.service`; `libpod-conmon-` is its monitor; with a systemd
//!   container a `container` child follows), `nerdctl-` (containerd's
//!   nerdctl).
//! - Containers under cgroupfs: Docker's `docker/<64 hex>`, podman's
//!   `libpod_parent/libpod-<64 hex>`, CRI-O's `crio-<64 hex>`, and a bare
//!   `<64 hex>` below a pod (the runtime is not in the name).
//! - Anything else: the innermost systemd unit, `*.service` or `*.scope`
//!   (`system.slice/nginx.service`, `user@1000.service/app.slice/app.service`,
//!   `session-3.scope`).

use super::{Pod, Qos, Runtime, Workload};

/// Scope prefixes of containers under systemd, with their runtime.
const SCOPE_PREFIXES: &[(&str, Runtime)] = &[
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("docker-", Runtime::Docker),
    ("libpod-", Runtime::Podman),
    ("nerdctl-", Runtime::Containerd),
];

/// Monitors that sit beside their container: not the container itself.
const MONITOR_PREFIXES: &[&str] = &["crio-conmon-", "libpod-conmon-"];

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A pod UID as cgroups carry it: a UUID (36) or, for static pods, a
/// 32-digit hash; hex digits and dashes only.
fn is_pod_uid(s: &str) -> bool {
    (s.len() == 36 || s.len() == 32) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The container a path component names, if any.
fn container_of(component: &str, parent: Option<&str>) -> Option<(Option<Runtime>, String)> {
    if MONITOR_PREFIXES.iter().any(|p| component.starts_with(p)) {
        return None;
    }
    let bare = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in SCOPE_PREFIXES {
        if let Some(id) = bare.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((Some(*runtime), id.to_string()));
        }
    }
    if is_container_id(component) {
        let runtime = match parent {
            Some("docker") => Some(Runtime::Docker),
            _ => None,
        };
        return Some((runtime, component.to_string()));
    }
    None
}

/// The pod a path component names: a systemd slice
/// (`kubepods-burstable-pod<uid_escaped>.slice`) or a cgroupfs directory
/// (`pod<uid>` below `kubepods`, `burstable` or `besteffort`).
fn pod_of(component: &str, parent: Option<&str>) -> Option<Pod> {
    if let Some(slice) = component.strip_suffix(".slice")
        && slice.contains("kubepods")
        && let Some(at) = slice.rfind("-pod")
    {
        let uid = slice[at + 4..].replace('_', "-");
        if !is_pod_uid(&uid) {
            return None;
        }
        let tier = &slice[..at];
        let qos = if tier.ends_with("-besteffort") {
            Qos::BestEffort
        } else if tier.ends_with("-burstable") {
            Qos::Burstable
        } else {
            Qos::Guaranteed
        };
        return Some(Pod { uid, qos: Some(qos), ..Pod::default() });
    }
    let uid = component.strip_prefix("pod")?;
    let qos = match parent? {
        "besteffort" => Qos::BestEffort,
        "burstable" => Qos::Burstable,
        "kubepods" => Qos::Guaranteed,
        _ => return None,
    };
    is_pod_uid(uid).then(|| Pod { uid: uid.to_string(), qos: Some(qos), ..Pod::default() })
}

/// The workload of the processes in cgroup `path` (relative to the cgroup
/// root or absolute, `/`-separated), None when the path names none.
pub fn decode(path: &str) -> Option<Workload> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let parent = |i: usize| i.checked_sub(1).map(|p| parts[p]);
    let container = parts.iter().enumerate().rev().find_map(|(i, c)| Some((i, container_of(c, parent(i))?)));
    let pod = parts
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, _)| container.as_ref().is_none_or(|(at, _)| i < at))
        .find_map(|(i, c)| pod_of(c, parent(i)));
    if let Some((_, (runtime, id))) = container {
        return Some(Workload::Container { runtime, id, pod, name: None });
    }
    if let Some(pod) = pod {
        return Some(Workload::Pod(pod));
    }
    parts
        .iter()
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(|unit| Workload::Unit((*unit).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9ab2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const UID: &str = "3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    const UID_ESCAPED: &str = "3f1c2a4b_5d6e_4f70_8a9b_0c1d2e3f4a5b";

    fn container(runtime: Option<Runtime>, pod: Option<(&str, Qos)>) -> Workload {
        Workload::Container {
            runtime,
            id: ID.to_string(),
            pod: pod.map(|(uid, qos)| Pod { uid: uid.to_string(), qos: Some(qos), ..Pod::default() }),
            name: None,
        }
    }

    /// Every naming case, each a path as the runtime or kubelet writes it.
    #[test]
    fn every_runtime_and_driver_naming_case() {
        use Qos::*;
        use Runtime::*;
        let k8s_systemd = |tier: &str, scope: &str| {
            let (parent, pod) = match tier {
                "" => (String::new(), format!("kubepods-pod{UID_ESCAPED}.slice")),
                t => (format!("kubepods-{t}.slice/"), format!("kubepods-{t}-pod{UID_ESCAPED}.slice")),
            };
            format!("/kubepods.slice/{parent}{pod}/{scope}")
        };
        let cases: Vec<(String, Option<Workload>)> = vec![
            // Kubernetes, systemd driver, one per runtime and QoS tier.
            (
                k8s_systemd("burstable", &format!("cri-containerd-{ID}.scope")),
                Some(container(Some(Containerd), Some((UID, Burstable)))),
            ),
            (
                k8s_systemd("besteffort", &format!("crio-{ID}.scope")),
                Some(container(Some(CriO), Some((UID, BestEffort)))),
            ),
            (
                k8s_systemd("", &format!("docker-{ID}.scope")),
                Some(container(Some(Docker), Some((UID, Guaranteed)))),
            ),
            // CRI-O's monitor is not the container: the pod remains.
            (
                k8s_systemd("burstable", &format!("crio-conmon-{ID}.scope")),
                Some(Workload::Pod(Pod { uid: UID.into(), qos: Some(Burstable), ..Pod::default() })),
            ),
            // kind: the kubelet's --cgroup-root=/kubelet prefixes the slices.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                     kubelet-kubepods-besteffort-pod{UID_ESCAPED}.slice/cri-containerd-{ID}.scope"
                ),
                Some(container(Some(Containerd), Some((UID, BestEffort)))),
            ),
            // Kubernetes, cgroupfs driver: the runtime is not in the name.
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Some(container(None, Some((UID, Burstable))))),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Some(container(None, Some((UID, BestEffort))))),
            (format!("/kubepods/pod{UID}/{ID}"), Some(container(None, Some((UID, Guaranteed))))),
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                Some(container(Some(CriO), Some((UID, Burstable)))),
            ),
            // A static pod's UID is a 32-digit hash.
            (
                format!("/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}"),
                Some(container(None, Some(("0123456789abcdef0123456789abcdef", Burstable)))),
            ),
            // Rootless kubelet (KubeletInUserNamespace): the user's systemd.
            (
                format!("/user.slice/user-1001.slice/user@1001.service/user.slice/cri-containerd-{ID}.scope"),
                Some(container(Some(Containerd), None)),
            ),
            // Docker alone: systemd and cgroupfs drivers.
            (format!("/system.slice/docker-{ID}.scope"), Some(container(Some(Docker), None))),
            (format!("/docker/{ID}"), Some(container(Some(Docker), None))),
            // Podman: rootful, rootless, with a systemd container's child, cgroupfs.
            (format!("/machine.slice/libpod-{ID}.scope"), Some(container(Some(Podman), None))),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                Some(container(Some(Podman), None)),
            ),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some(container(Some(Podman), None))),
            (format!("/libpod_parent/libpod-{ID}"), Some(container(Some(Podman), None))),
            (
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                Some(Workload::Unit(format!("libpod-conmon-{ID}.scope"))),
            ),
            // nerdctl (containerd without Kubernetes).
            (format!("/system.slice/nerdctl-{ID}.scope"), Some(container(Some(Containerd), None))),
            // systemd units.
            ("/system.slice/nginx.service".into(), Some(Workload::Unit("nginx.service".into()))),
            ("/system.slice/nginx.service/workers".into(), Some(Workload::Unit("nginx.service".into()))),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.service".into(),
                Some(Workload::Unit("app-foo.service".into())),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                Some(Workload::Unit("session-3.scope".into())),
            ),
            // Nothing to say.
            ("/".into(), None),
            ("/tcptrace-test/worker".into(), None),
            // Not a container id (63 digits; upper case), not a pod UID.
            (format!("/docker/{}", &ID[1..]), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
            ("/kubepods/burstable/podnot-a-uid".into(), None),
        ];
        for (path, expected) in cases {
            assert_eq!(decode(&path), expected, "{path}");
            // The same below a prefix (a nested root, a test's scratch cgroup).
            assert_eq!(decode(&format!("/scratch/t1{path}")), expected, "under a prefix: {path}");
        }
    }

    #[test]
    fn labels_are_short_and_say_what_is_known() {
        let mut w = container(Some(Runtime::Containerd), Some((UID, Qos::Burstable)));
        assert_eq!(w.label(), "pod 3f1c2a4b/containerd:9ab2c3d4e5f6");
        if let Workload::Container { pod: Some(pod), name, .. } = &mut w {
            pod.namespace = Some("default".into());
            pod.name = Some("web-5d8f".into());
            *name = Some("nginx".into());
        }
        assert_eq!(w.label(), "default/web-5d8f/nginx");
        assert_eq!(container(None, None).label(), "container:9ab2c3d4e5f6");
        assert_eq!(Workload::Unit("nginx.service".into()).label(), "nginx.service");
    }
}
