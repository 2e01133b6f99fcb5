//! The Kubernetes manifests in deploy/kubernetes, checked offline:
//! `kubernetes-validate` (PyPI; `cargo xtask setup` installs it) validates
//! the built-in kinds against the Kubernetes OpenAPI schemas of the oldest
//! and newest versions it knows of those we claim, strictly (no unknown
//! fields); the ServiceMonitor, a Prometheus Operator kind no bundled schema
//! covers, is checked for what makes it work: it selects the Service, whose
//! port it names, which selects the DaemonSet's pods and port.

/// The pinned validator (`pip install kubernetes-validate==...`).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    use serde_json::Value;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
    }

    /// A manifest as JSON (PyYAML, which kubernetes-validate brings).
    fn load(name: &str) -> Value {
        let out = Command::new("python3")
            .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
            .arg(dir().join(name))
            .output()
            .expect("python3");
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    #[test]
    fn builtin_kinds_pass_kubernetes_validate_strictly() {
        for version in ["1.28.0", "1.37.0"] {
            let out = Command::new("python3")
                .args(["-m", "kubernetes_validate", "--strict", "-k", version])
                .args(["namespace.yaml", "daemonset.yaml", "service.yaml"])
                .current_dir(dir())
                .output()
                .unwrap_or_else(|e| panic!("kubernetes-validate: {e} (`cargo xtask setup` installs it)"));
            let text =
                String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "Kubernetes {version}: {text}");
            assert_eq!(text.matches(" passed for resource ").count(), 3, "Kubernetes {version}: {text}");
        }
    }

    #[test]
    fn the_service_monitor_reaches_the_daemonsets_port() {
        let (ds, svc, sm) = (load("daemonset.yaml"), load("service.yaml"), load("servicemonitor.yaml"));
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(sm["kind"], "ServiceMonitor");
        let labels = svc["metadata"]["labels"].as_object().expect("service labels");
        for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels") {
            assert_eq!(labels.get(k), Some(v), "the ServiceMonitor selects the Service by {k}");
        }
        let ns = svc["metadata"]["namespace"].clone();
        assert!(sm["spec"]["namespaceSelector"]["matchNames"].as_array().expect("matchNames").contains(&ns));
        let port = &svc["spec"]["ports"][0];
        assert_eq!(sm["spec"]["endpoints"][0]["port"], port["name"], "the endpoint names the Service's port");
        let pod_labels = ds["spec"]["template"]["metadata"]["labels"].as_object().expect("pod labels");
        for (k, v) in svc["spec"]["selector"].as_object().expect("service selector") {
            assert_eq!(pod_labels.get(k), Some(v), "the Service selects the DaemonSet's pods by {k}");
        }
        let container = &ds["spec"]["template"]["spec"]["containers"][0];
        let cport = &container["ports"][0];
        assert_eq!(port["targetPort"], cport["name"]);
        let args: Vec<&str> =
            container["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
        let listen = args.iter().skip_while(|a| **a != "--listen").nth(1).expect("--listen");
        assert_eq!(
            listen.rsplit(':').next(),
            Some(cport["containerPort"].to_string().as_str()),
            "serve listens on the container port"
        );
        assert_eq!(
            cport["containerPort"].as_u64(),
            Some(u64::from(crate::dist::image::PORT)),
            "the image's default command listens there too"
        );
    }
}
