//! Workloads named from real cgroups: the test makes cgroups with the exact
//! names each runtime and kubelet driver gives theirs (the cases of
//! tracer/src/workload/cgroup_path.rs, which cites where each rule comes
//! from), runs its clients and server inside them, and gives tcptrace a
//! kubelet log tree of its own. Ground truth: which cgroup the test put
//! each process in, and the names it wrote in the log tree.
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{net::SocketAddr, path::Path};

use serde_json::Value;
use tcptrace_tests::{
    background::Background,
    cgroups::{ScratchCgroups, enter},
    http::{free_port, http_get},
    netns::Pair,
    peers::{client_command, server_command},
    require_root,
    tracer::Tracer,
};

const ID_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_B: &str = "b1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_C: &str = "c1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_D: &str = "d1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_E: &str = "e1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_F: &str = "f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_G: &str = "11b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_H: &str = "21b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_I: &str = "31b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_J: &str = "41b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_K: &str = "51b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_L: &str = "61b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_M: &str = "71b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const UID_A: &str = "3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
const UID_B: &str = "7a1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
const UID_E: &str = "9e1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
const UID_J: &str = "4a1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
const UID_K: &str = "5b1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b";
/// A static pod's UID: the kubelet's hash of its manifest, 32 hex digits.
const UID_STATIC: &str = "0123456789abcdef0123456789abcdef";

/// A kubelet log tree naming pods A and E and their containers (B has none).
fn kubelet_tree(dir: &Path) {
    for (ns, pod, uid, container, id) in
        [("default", "web", UID_A, "app", ID_A), ("kube-system", "dns", UID_E, "coredns", ID_E)]
    {
        let pod_dir = dir.join("pods").join(format!("{ns}_{pod}_{uid}")).join(container);
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::write(pod_dir.join("0.log"), "").unwrap();
        std::fs::create_dir_all(dir.join("containers")).unwrap();
        std::fs::write(dir.join("containers").join(format!("{pod}_{ns}_{container}-{id}.log")), "").unwrap();
    }
}

/// The active-closer row of the client whose container id is `id`.
fn closer_in<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["active_closers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"]["container_id"] == id)
        .unwrap_or_else(|| panic!("no active-closer row in container {id}: {}", report["active_closers"]))
}

#[test]
fn every_runtime_and_driver_naming_case_names_the_workload() {
    require_root();
    let mut cg = ScratchCgroups::new("wl");
    let pair = Pair::new("wl");
    let logs = std::env::temp_dir().join(format!("tcptrace-kubelet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    kubelet_tree(&logs);
    let logs_arg = logs.to_string_lossy().into_owned();
    let esc = |uid: &str| uid.replace('-', "_");
    let clients: Vec<(&str, String)> = vec![
        // Kubernetes, systemd driver, containerd, Burstable.
        (
            ID_A,
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID_A}.scope",
                esc(UID_A)
            ),
        ),
        // Kubernetes, cgroupfs driver, BestEffort (runtime not in the name).
        (ID_B, format!("kubepods/besteffort/pod{UID_B}/{ID_B}")),
        // Docker, systemd driver.
        (ID_C, format!("system.slice/docker-{ID_C}.scope")),
        // Podman, rootful.
        (ID_D, format!("machine.slice/libpod-{ID_D}.scope")),
        // Kubernetes, systemd driver, CRI-O, Guaranteed.
        (ID_E, format!("kubepods.slice/kubepods-pod{}.slice/crio-{ID_E}.scope", esc(UID_E))),
        // Docker, cgroupfs driver.
        (ID_F, format!("docker/{ID_F}")),
        // Podman, rootless (the user's systemd).
        (ID_G, format!("user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID_G}.scope")),
        // Podman, cgroupfs manager.
        (ID_H, format!("libpod_parent/libpod-{ID_H}")),
        // nerdctl (containerd without Kubernetes).
        (ID_I, format!("system.slice/nerdctl-{ID_I}.scope")),
        // kind: the kubelet's --cgroup-root=/kubelet prefixes every slice.
        (
            ID_J,
            format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/\
                 kubelet-kubepods-burstable-pod{}.slice/cri-containerd-{ID_J}.scope",
                esc(UID_J)
            ),
        ),
        // Kubernetes, cgroupfs driver, CRI-O.
        (ID_K, format!("kubepods/burstable/pod{UID_K}/crio-{ID_K}")),
        // A static pod, cgroupfs driver, Guaranteed.
        (ID_L, format!("kubepods/pod{UID_STATIC}/{ID_L}")),
        // Podman with a systemd container: the processes sit in a child.
        (ID_M, format!("machine.slice/libpod-{ID_M}.scope/container")),
    ];
    let unit = "system.slice/ttserver.service";
    let server_dir = cg.create(unit);
    let dirs: Vec<_> = clients.iter().map(|(_, rel)| cg.create(rel)).collect();

    let addr = SocketAddr::new(pair.b4.into(), 8140);
    let mut cmd = server_command(&pair.b, None, addr, &[]);
    enter(&mut cmd, &server_dir);
    let _server = Background::start(cmd, "listening");
    let netns = [pair.a.inode.to_string(), pair.b.inode.to_string()];
    let scoped = |extra: &[&str]| -> Tracer {
        let mut args: Vec<&str> = vec!["run", "--format", "json", "--quiet", "--kubelet-logs", &logs_arg];
        for ns in &netns {
            args.extend(["--netns", ns.as_str()]);
        }
        args.extend(extra);
        Tracer::start(&args)
    };
    let all = scoped(&["--events"]);
    let web = scoped(&["--pod", "default/web"]);
    let server_and_docker = scoped(&["--unit", "ttserver", "--container", &ID_C[..8]]);
    // Per-program run counts need the kernel's statistics on (restored after).
    let _stats = tcptrace_tests::BpfStats::on();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen_arg = listen.to_string();
    let serve = Tracer::start(&[
        "serve",
        "--listen",
        &listen_arg,
        "--interval",
        "200ms",
        "--kubelet-logs",
        &logs_arg,
        "--netns",
        &netns[0],
    ]);
    for dir in &dirs {
        let mut cmd = client_command(&pair.a, addr, &["--count", "2", "--mode", "C"]);
        enter(&mut cmd, dir);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // /metrics: the per-process series carry the workload's label.
    let series = format!(
        "tcptrace_active_closes_total{{netns=\"{}\",local=\"{}\",remote=\"{addr}\",comm=\"ttclient\",workload=\"default/web/app\"}} 2",
        netns[0], pair.a4
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let (status, body) = http_get(listen, "/metrics");
        assert_eq!(status, 200);
        if body.lines().any(|l| l == series) || std::time::Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(metrics.lines().any(|l| l == series), "{series} not in:\n{metrics}");
    // The tracer's own health: what it is, its tables, its ring buffer, and
    // its programs' runs (at least the five client transitions of each
    // connection).
    let value = |prefix: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    assert_eq!(value("tcptrace_build_info{version="), 1.0);
    assert!(value("tcptrace_table_capacity{table=\"sockets\"}") > 0.0);
    let fill = value("tcptrace_ring_buffer_peak_fill_ratio");
    assert!((0.0..=1.0).contains(&fill), "{fill}");
    let connections = 2 * clients.len() as u64;
    assert!(
        value("tcptrace_program_runs_total{program=\"tcptrace_state\"}") >= (5 * connections) as f64,
        "{metrics}"
    );
    assert!(value("tcptrace_program_run_time_seconds_total{program=\"tcptrace_state\"}") > 0.0);
    let served = serve.stop();
    assert!(served.status.success(), "{}", served.stderr);
    let all_finished = all.stop();
    let (all, web, server_and_docker) =
        (all_finished.report(), web.stop().report(), server_and_docker.stop().report());
    let _ = std::fs::remove_dir_all(&logs);
    eprintln!("measured: {}", all["active_closers"]);

    // Each client's row names its workload exactly.
    let pod = |uid: &str, qos: &str| serde_json::json!({"uid": uid, "qos": qos});
    let named = |uid: &str, qos: &str, ns: &str, name: &str| serde_json::json!({"uid": uid, "qos": qos, "namespace": ns, "name": name});
    let expected = [
        (
            ID_A,
            "containerd",
            Some("app"),
            Some(named(UID_A, "burstable", "default", "web")),
            "default/web/app",
        ),
        (ID_B, "", None, Some(pod(UID_B, "besteffort")), "pod 7a1c2a4b/container:b1b2c3d4e5f6"),
        (ID_C, "docker", None, None, "docker:c1b2c3d4e5f6"),
        (ID_D, "podman", None, None, "podman:d1b2c3d4e5f6"),
        (
            ID_E,
            "cri-o",
            Some("coredns"),
            Some(named(UID_E, "guaranteed", "kube-system", "dns")),
            "kube-system/dns/coredns",
        ),
        (ID_F, "docker", None, None, "docker:f1b2c3d4e5f6"),
        (ID_G, "podman", None, None, "podman:11b2c3d4e5f6"),
        (ID_H, "podman", None, None, "podman:21b2c3d4e5f6"),
        (ID_I, "containerd", None, None, "containerd:31b2c3d4e5f6"),
        (ID_J, "containerd", None, Some(pod(UID_J, "burstable")), "pod 4a1c2a4b/containerd:41b2c3d4e5f6"),
        (ID_K, "cri-o", None, Some(pod(UID_K, "burstable")), "pod 5b1c2a4b/cri-o:51b2c3d4e5f6"),
        (ID_L, "", None, Some(pod(UID_STATIC, "guaranteed")), "pod 01234567/container:61b2c3d4e5f6"),
        (ID_M, "podman", None, None, "podman:71b2c3d4e5f6"),
    ];
    assert_eq!(expected.len(), clients.len(), "every client's row is checked");
    for (id, runtime, container, pod, label) in expected {
        let row = closer_in(&all, id);
        let w = &row["workload"];
        assert_eq!(row["closes"], 2, "{row}");
        assert_eq!(w["kind"], "container", "{row}");
        assert_eq!(w["label"], label, "{row}");
        assert_eq!(w["runtime"].as_str().unwrap_or(""), runtime, "{row}");
        assert_eq!(w["container"].as_str(), container, "{row}");
        assert_eq!(w.get("pod").cloned(), pod, "{row}");
        let rel = &clients.iter().find(|(i, _)| *i == id).unwrap().1;
        assert_eq!(row["cgroup"], cg.reported(rel), "{row}");
    }
    // The event stream names the owner's workload on every line it knows
    // the owner of: each line of pod A's client says so.
    let pid_a = closer_in(&all, ID_A)["pid"].clone();
    let lines: Vec<Value> =
        all_finished.json().into_iter().filter(|l| l["type"] != "report" && l["pid"] == pid_a).collect();
    assert!(!lines.is_empty(), "no event lines of pod A's client");
    assert!(lines.iter().all(|l| l["workload"] == "default/web/app"), "{lines:?}");
    // The server's accepted connections are its unit's.
    let ends = all["connection_ends"]["rows"].as_array().unwrap();
    let server_rows: Vec<&Value> = ends.iter().filter(|r| r["comm"] == "ttserver").collect();
    assert!(!server_rows.is_empty(), "{ends:?}");
    for r in &server_rows {
        assert_eq!(r["workload"]["kind"], "unit", "{r}");
        assert_eq!(r["workload"]["unit"], "ttserver.service", "{r}");
    }

    // --pod default/web: only pod A's client.
    let closers = web["active_closers"].as_array().unwrap();
    assert_eq!(closers.len(), 1, "{closers:?}");
    assert_eq!(closers[0]["workload"]["container_id"], ID_A);
    assert_eq!(web["connection_ends"]["orderly"], 2, "{}", web["connection_ends"]);
    // --unit ttserver --container <C's prefix>: the server's side of every
    // connection, and client C's two.
    let e = &server_and_docker["connection_ends"]["by_reason"];
    assert_eq!(
        (e["closed_remote_first"].as_u64(), e["closed_local_first"].as_u64()),
        (Some(connections), Some(2)),
        "{e}"
    );
    let closers = server_and_docker["active_closers"].as_array().unwrap();
    assert_eq!(closers.len(), 1, "{closers:?}");
    assert_eq!(closers[0]["workload"]["container_id"], ID_C);
}
