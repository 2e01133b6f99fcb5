//! Tarballs, Debian packages and SHA256SUMS, made with Debian's own tools
//! (tar, gzip, dpkg-deb, sha256sum). Timestamps come from the commit
//! (SOURCE_DATE_EPOCH), owners are root, so a rebuild of the same commit
//! gives the same archives.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::Arch;
use crate::setup;

/// The Debian package's Maintainer (and changelog signer): `DEBFULLNAME
/// <DEBEMAIL>` when both are set, as for Debian's own tools (dch), else a
/// placeholder that lintian flags (bogus-mail-host).
fn maintainer() -> String {
    match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(email)) if !name.is_empty() && !email.is_empty() => format!("{name} <{email}>"),
        _ => "tcptrace developers <tcptrace@localhost>".to_string(),
    }
}

pub fn tarball_name(arch: Arch, version: &str) -> String {
    format!("tcptrace-{version}-{}.tar.gz", arch.name())
}

pub fn deb_name(arch: Arch, version: &str) -> String {
    format!("tcptrace_{version}_{}.deb", arch.deb_arch())
}

/// `tcptrace-<version>-<arch>.tar.gz`: one directory with the binary, the
/// man pages and a README. Returns its path relative to `dist`.
pub fn tarball(dist: &Path, arch: Arch, version: &str, man: &Path) -> Result<PathBuf> {
    let top = format!("tcptrace-{version}-{}", arch.name());
    let stage = fresh(&dist.join("stage").join(arch.name()))?;
    let dir = stage.join(&top);
    install(&dist.join(arch.triple()).join("tcptrace"), &dir.join("tcptrace"), 0o755)?;
    for page in man_pages(man)? {
        install(&page, &dir.join("man").join(page.file_name().context("man page name")?), 0o644)?;
    }
    let readme = include_str!("README.txt").replace("{version}", version).replace("{arch}", arch.name());
    write(&dir.join("README"), &readme, 0o644)?;
    normalize_modes(&stage)?;
    let name = tarball_name(arch, version);
    setup::run(
        Command::new("tar")
            .current_dir(&stage)
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .arg(format!("--mtime=@{}", source_date_epoch()))
            .args(["-I", "gzip -9n", "-cf"])
            .arg(dist.join(&name))
            .arg(&top),
    )?;
    Ok(PathBuf::from(name))
}

/// `tcptrace_<version>_<debarch>.deb`: /usr/bin/tcptrace, gzipped man pages,
/// copyright, changelog and a lintian override (static on purpose); no
/// Depends (the binary is static). Built by `dpkg-deb --build
/// --root-owner-group`. Returns its path relative to `dist`.
pub fn deb(dist: &Path, arch: Arch, version: &str, man: &Path) -> Result<PathBuf> {
    let root = fresh(&dist.join("stage").join(format!("deb-{}", arch.deb_arch())))?;
    install(&dist.join(arch.triple()).join("tcptrace"), &root.join("usr/bin/tcptrace"), 0o755)?;
    for page in man_pages(man)? {
        let name = page.file_name().context("man page name")?.to_string_lossy().into_owned();
        let dest = root.join("usr/share/man/man1").join(format!("{name}.gz"));
        gzip(&page, &dest)?;
    }
    let doc = root.join("usr/share/doc/tcptrace");
    let epoch = source_date_epoch();
    let date = setup::output(Command::new("date").args(["-R", "-u", "-d"]).arg(format!("@{epoch}")))?;
    // "Tue, 01 Dec 2026 06:22:37 +0000"
    let year = date.split_whitespace().nth(3).unwrap_or("1970");
    write(
        &doc.join("copyright"),
        &format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: tcptrace\n\n\
             Files: *\n\
             Copyright: {year} the tcptrace developers\n\
             License: GPL-2\n \
             On Debian systems, the full text of the GNU General Public License\n \
             version 2 can be found in /usr/share/common-licenses/GPL-2.\n"
        ),
        0o644,
    )?;
    let maintainer = maintainer();
    let changelog = doc.join("changelog");
    write(
        &changelog,
        &format!(
            "tcptrace ({version}) unstable; urgency=medium\n\n  \
             * Built by `cargo xtask dist` from commit {}.\n\n \
             -- {maintainer}  {}\n",
            commit(),
            date.trim()
        ),
        0o644,
    )?;
    gzip(&changelog, &doc.join("changelog.gz"))?;
    fs::remove_file(&changelog)?;
    write(
        &root.join("usr/share/lintian/overrides/tcptrace"),
        "# static on purpose: one binary that runs on any host with the kernel features\n\
         tcptrace: statically-linked-binary [usr/bin/tcptrace]\n",
        0o644,
    )?;
    let installed_kib = du_kib(&root)?;
    let control = format!(
        "Package: tcptrace\n\
         Version: {version}\n\
         Architecture: {}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {installed_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Description: eBPF TCP connection-lifecycle tracer\n \
         tcptrace follows every TCP socket on the host from connect/accept to\n \
         close with eBPF and reports how long connections spend in each state,\n \
         SYN_RECV and TIME_WAIT by listener and destination, who closes first,\n \
         retransmits and connect() errors, as text, JSON or Prometheus metrics.\n \
         .\n \
         A static binary with its kernel programs embedded; needs a kernel\n \
         with BTF (/sys/kernel/btf/vmlinux). Run `sudo tcptrace check` first.\n",
        arch.deb_arch()
    );
    write(&root.join("DEBIAN/control"), &control, 0o644)?;
    normalize_modes(&root)?;
    let name = deb_name(arch, version);
    setup::run(
        Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", source_date_epoch())
            .args(["--build", "--root-owner-group"])
            .arg(&root)
            .arg(dist.join(&name))
            .stdout(Stdio::null()),
    )?;
    let field =
        setup::output(Command::new("dpkg-deb").arg("--field").arg(dist.join(&name)).arg("Architecture"))?;
    if field.trim() != arch.deb_arch() {
        bail!("{name}: Architecture is {field:?}, expected {}", arch.deb_arch());
    }
    Ok(PathBuf::from(name))
}

/// `SHA256SUMS` in `dist` over `artifacts` (relative to it), in sha256sum's
/// format, then checked with `sha256sum -c` as a user would.
pub fn sha256sums(dist: &Path, artifacts: &[PathBuf]) -> Result<()> {
    let sums = setup::output(Command::new("sha256sum").current_dir(dist).args(artifacts))?;
    fs::write(dist.join("SHA256SUMS"), sums)?;
    setup::run(Command::new("sha256sum").current_dir(dist).args(["-c", "--quiet", "SHA256SUMS"]))
}

fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut pages: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.retain(|p| p.extension().is_some_and(|e| e == "1"));
    pages.sort();
    if pages.is_empty() {
        bail!("no man pages in {}", dir.display());
    }
    Ok(pages)
}

/// HEAD's abbreviated hash, or "unknown" without git.
fn commit() -> String {
    git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The commit's time, for reproducible archives; 0 without git.
fn source_date_epoch() -> String {
    git(&["log", "-1", "--format=%ct"]).unwrap_or_else(|| "0".to_string())
}

fn fresh(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// Directories 0755 and files 0644 or 0755, whatever the umask.
fn normalize_modes(dir: &Path) -> Result<()> {
    setup::run(Command::new("chmod").args(["-R", "u+rwX,go=rX"]).arg(dir))
}

fn parent_dirs(path: &Path) -> Result<()> {
    let parent = path.parent().context("no parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    parent_dirs(to)?;
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    parent_dirs(to)?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip(from: &Path, to: &Path) -> Result<()> {
    parent_dirs(to)?;
    let out = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    setup::run(Command::new("gzip").args(["-9n", "-c"]).arg(from).stdout(out))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Installed-Size: the payload in KiB (`du`, as dpkg-gencontrol counts it).
fn du_kib(root: &Path) -> Result<u64> {
    let out = setup::output(Command::new("du").args(["-sk", "--exclude=DEBIAN"]).arg(root))?;
    out.split_whitespace().next().and_then(|n| n.parse().ok()).context("du -sk: no size")
}
