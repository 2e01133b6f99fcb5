//! The OCI image: the static binary alone, no base image (`FROM scratch`),
//! built with buildah (Debian's package) into an OCI archive,
//! `tcptrace-<version>-<arch>.oci.tar`, for `skopeo copy
//! oci-archive:... docker://REGISTRY/tcptrace:<version>` and the DaemonSet
//! (deploy/kubernetes/daemonset.yaml). buildah runs with a storage of its
//! own under target/ (vfs driver): the host's container storage is not
//! touched.
//!
//! [`check`] reads the archive back: one layer holding exactly `/tcptrace`,
//! byte for byte the release binary; the entrypoint, the default command
//! (`serve` on the DaemonSet's port), the exposed port and the
//! architecture; then it runs the image's entrypoint with `--version`
//! (`buildah run`, chroot isolation) where this machine can run containers.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use super::Arch;
use crate::setup;

/// The port `serve` listens on in the image (and in the DaemonSet).
pub const PORT: u16 = 9400;

pub fn archive_name(arch: Arch, version: &str) -> String {
    format!("tcptrace-{version}-{}.oci.tar", arch.deb_arch())
}

/// buildah with a storage of its own.
fn buildah(state: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--root").arg(state.join("root")).arg("--runroot").arg(state.join("run"));
    cmd.args(["--storage-driver", "vfs"]);
    cmd
}

/// Builds the image of `binary` for `arch` into `dist/<archive_name>`.
pub fn build(dist: &Path, arch: Arch, version: &str, binary: &Path) -> Result<PathBuf> {
    setup::install_packages(&["buildah"])?;
    let state = dist.join("buildah");
    // A storage of this build's own, so that images of earlier builds do
    // not pile up (vfs keeps a full copy of each).
    if state.exists() {
        let _ = setup::output(buildah(&state).args(["rm", "--all"]));
        fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    let archive = dist.join(archive_name(arch, version));
    let _ = fs::remove_file(&archive);
    let tag = format!("tcptrace:{version}-{}", arch.deb_arch());
    let container = setup::output(buildah(&state).args(["from", "--arch", arch.deb_arch(), "scratch"]))?;
    let container = container.trim();
    setup::run(buildah(&state).args(["copy", "--chmod", "0755", container]).arg(binary).arg("/tcptrace"))?;
    let cmd = format!(r#"["serve","--listen","0.0.0.0:{PORT}"]"#);
    setup::run(buildah(&state).args([
        "config",
        "--entrypoint",
        r#"["/tcptrace"]"#,
        "--cmd",
        &cmd,
        "--port",
        &format!("{PORT}/tcp"),
        "--arch",
        arch.deb_arch(),
        "--os",
        "linux",
        "--label",
        "org.opencontainers.image.title=tcptrace",
        "--label",
        &format!("org.opencontainers.image.version={version}"),
        "--label",
        "org.opencontainers.image.description=eBPF TCP connection-lifecycle tracer",
        container,
    ]))?;
    setup::run(buildah(&state).args(["commit", "--rm", container, &tag]))?;
    setup::run(buildah(&state).args(["push", &tag]).arg(format!("oci-archive:{}", archive.display())))?;
    Ok(archive)
}

/// Reads a blob of an unpacked OCI layout by its digest.
fn blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let (algo, hex) = digest.split_once(':').context("a digest")?;
    let path = dir.join("blobs").join(algo).join(hex);
    fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn json(bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).context("parsing JSON")
}

/// Checks the archive against the binary it was built from (module doc).
pub fn check(dist: &Path, archive: &Path, arch: Arch, binary: &Path) -> Result<()> {
    let unpacked = dist.join("oci-check");
    let _ = fs::remove_dir_all(&unpacked);
    fs::create_dir_all(&unpacked)?;
    setup::run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&unpacked))?;
    let index = json(&fs::read(unpacked.join("index.json")).context("index.json")?)?;
    let manifests = index["manifests"].as_array().context("index.json: manifests")?;
    ensure!(manifests.len() == 1, "one manifest expected: {index}");
    let manifest = json(&blob(&unpacked, manifests[0]["digest"].as_str().context("digest")?)?)?;
    let config = json(&blob(&unpacked, manifest["config"]["digest"].as_str().context("config digest")?)?)?;
    let c = &config["config"];
    ensure!(c["Entrypoint"] == serde_json::json!(["/tcptrace"]), "entrypoint: {c}");
    ensure!(c["Cmd"] == serde_json::json!(["serve", "--listen", format!("0.0.0.0:{PORT}")]), "cmd: {c}");
    ensure!(c["ExposedPorts"].get(format!("{PORT}/tcp")).is_some(), "exposed port: {c}");
    ensure!(config["architecture"] == arch.deb_arch() && config["os"] == "linux", "platform: {config}");
    let layers = manifest["layers"].as_array().context("layers")?;
    ensure!(layers.len() == 1, "one layer expected (no base image): {manifest}");
    let layer = unpacked.join("layer.tar");
    fs::write(&layer, blob(&unpacked, layers[0]["digest"].as_str().context("layer digest")?)?)?;
    let listing = setup::output(Command::new("tar").arg("-tvf").arg(&layer))?;
    let files: Vec<&str> = listing.lines().filter(|l| !l.starts_with('d')).collect();
    ensure!(files.len() == 1 && files[0].ends_with(" tcptrace"), "the layer holds only /tcptrace: {listing}");
    let extracted = unpacked.join("rootfs");
    fs::create_dir_all(&extracted)?;
    setup::run(Command::new("tar").arg("-xf").arg(&layer).arg("-C").arg(&extracted))?;
    let (inside, built) = (fs::read(extracted.join("tcptrace"))?, fs::read(binary)?);
    ensure!(inside == built, "the image's /tcptrace differs from {}", binary.display());
    eprintln!(
        "  image {}: one layer, /tcptrace = {} ({} bytes), entrypoint and `serve` on :{PORT}",
        archive.file_name().unwrap_or_default().to_string_lossy(),
        binary.display(),
        built.len()
    );
    let _ = fs::remove_dir_all(&unpacked);
    Ok(())
}

/// Runs the image as the DaemonSet does (its capabilities, host network,
/// read-only BTF, tracefs and cgroup mounts; `buildah run` with chroot
/// isolation, no runtime daemon) and scrapes its `/metrics`: Ok(None) where
/// this machine cannot run a container (the reason is printed), else the
/// scraped `tcptrace_build_info` line.
pub fn run_and_scrape(dist: &Path, arch: Arch, version: &str) -> Result<Option<String>> {
    use std::os::unix::process::CommandExt as _;
    let state = dist.join("buildah");
    let tag = format!("tcptrace:{version}-{}", arch.deb_arch());
    let container = setup::output(buildah(&state).args(["from", &tag]))?;
    let container = container.trim().to_string();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], tcptrace_tests::http::free_port()));
    let mut run = buildah(&state);
    run.args(["run", "--isolation", "chroot", "--network", "host"]);
    for cap in ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYSLOG"] {
        run.args(["--cap-add", cap]);
    }
    for dir in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        run.args(["-v", &format!("{dir}:{dir}:ro")]);
    }
    run.args([&container, "--", "/tcptrace", "serve", "--listen", &listen.to_string()]);
    run.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).process_group(0);
    let mut child = run.spawn().context("running buildah run")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let scraped = loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            eprintln!(
                "  image: cannot run a container here ({status}: {}): checked by inspection only",
                stderr.lines().last().unwrap_or_default()
            );
            break None;
        }
        if std::net::TcpStream::connect(listen).is_ok() {
            let (status, body) = tcptrace_tests::http::http_get(listen, "/metrics");
            ensure!(status == 200, "GET /metrics from the image: {status}");
            break body.lines().find(|l| l.starts_with("tcptrace_build_info{")).map(str::to_string);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the image's tcptrace serve never listened on {listen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // SAFETY: kill(2) on the process group this function started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let _ = child.wait();
    let _ = buildah(&state).args(["rm", &container]).output();
    let Some(line) = scraped else { return Ok(None) };
    let value: Option<f64> = line.rsplit(' ').next().and_then(|v| v.parse().ok());
    ensure!(
        line.contains(&format!("version=\"{version} ")) && value == Some(1.0),
        "the image's build info: {line}"
    );
    Ok(Some(line))
}
