//! The Kubernetes DaemonSet (deploy/kubernetes/daemonset.yaml) asks for
//! exactly the capabilities tcptrace needs: with that set and nothing more,
//! `tcptrace check` passes every privilege-related check and a run has no
//! capability note; without any one of them, the check that needs it says
//! so. Ground truth: the kernel's own capability checks, exercised by
//! running tcptrace as root with its bounding set cut to the list (capsh).
#![allow(clippy::unwrap_used, reason = "tests: a panic with context is the failure report")]

use std::{path::Path, process::Command};

use tcptrace_tests::{require_root, workspace_binary};

/// The `capabilities.add` list of the DaemonSet's container, as Linux names
/// them (`cap_sys_admin`).
fn daemonset_caps() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines().skip_while(|l| l.trim() != "add:").skip(1);
    let mut caps = Vec::new();
    while let Some(item) = lines.next().and_then(|l| l.trim().strip_prefix("- ")) {
        caps.push(format!("cap_{}", item.to_lowercase()));
    }
    assert!(!caps.is_empty(), "no capabilities.add in {}", path.display());
    caps
}

/// Every capability this kernel knows, by Linux name (capsh's bounding set).
fn all_caps() -> Vec<String> {
    let out = Command::new("capsh").arg("--print").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("Bounding set =")).unwrap();
    line.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
}

/// `tcptrace <args>` as root with only `keep` in its bounding set (so only
/// those capabilities after exec).
fn tcptrace_with_only(keep: &[String], args: &str) -> (bool, String, String) {
    let drop: Vec<String> = all_caps().into_iter().filter(|c| !keep.contains(c)).collect();
    let bin = workspace_binary("tcptrace");
    let out = Command::new("capsh")
        .arg(format!("--drop={}", drop.join(",")))
        .args(["--", "-c"])
        .arg(format!("exec {} {args}", bin.display()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kernel.kptr_restrict` set while it lives, then as it was: with 1,
/// kallsyms shows addresses only to CAP_SYSLOG, whatever perf_event_paranoid.
struct KptrRestrict(String);

impl KptrRestrict {
    const PATH: &str = "/proc/sys/kernel/kptr_restrict";

    fn set(value: &str) -> Self {
        let was = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, value).unwrap();
        Self(was.trim().to_string())
    }
}

impl Drop for KptrRestrict {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// The `check` line about `what` (`privileges`, `namespaces`, `kallsyms`).
fn line<'a>(stdout: &'a str, what: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&format!("{what}:")))
        .unwrap_or_else(|| panic!("no {what} line in:\n{stdout}"))
}

#[test]
fn the_daemonset_asks_for_exactly_the_capabilities_check_needs() {
    require_root();
    let caps = daemonset_caps();
    let _restrict = KptrRestrict::set("1");
    let (ok, stdout, stderr) = tcptrace_with_only(&caps, "check");
    eprintln!("measured: with {caps:?}:\n{stdout}");
    assert!(ok, "{stdout}{stderr}");
    for what in ["privileges", "namespaces", "kallsyms"] {
        assert!(line(&stdout, what).starts_with("OK "), "{what} with the DaemonSet's set:\n{stdout}");
    }
    let (ok, stdout, stderr) = tcptrace_with_only(&caps, "run --duration 1s --format json --quiet");
    assert!(ok, "{stdout}{stderr}");
    assert!(!stdout.contains("no CAP_"), "a capability note with the DaemonSet's set: {stdout}");

    // Each one is needed: without it, the check that needs it is not OK.
    let needs =
        [("cap_sys_admin", "privileges"), ("cap_sys_ptrace", "namespaces"), ("cap_syslog", "kallsyms")];
    assert_eq!(caps.len(), needs.len(), "every capability of the DaemonSet is checked here: {caps:?}");
    for (cap, what) in needs {
        assert!(caps.iter().any(|c| c == cap), "{cap} not in the DaemonSet: {caps:?}");
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        let (_, stdout, _) = tcptrace_with_only(&fewer, "check");
        assert!(!line(&stdout, what).starts_with("OK "), "{what} without {cap}:\n{stdout}");
    }
}
