//! Scratch cgroups named as container runtimes and the kubelet name theirs,
//! made under the cgroup v2 root for one test and removed after it (also
//! on failure), and commands that start inside one of them.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

/// The cgroup v2 mount point (`/proc/mounts`).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a mounted cgroup v2 hierarchy")
}

/// A tree of cgroups below `<cgroup2 root>/tcptrace-test-<tag>-<pid>`;
/// removed deepest first when dropped. Drop it after the processes in it
/// have exited (declare it before them).
pub struct ScratchCgroups {
    root: PathBuf,
    /// The test's top directory, relative to the cgroup2 root.
    pub top: String,
    created: Vec<PathBuf>,
}

impl ScratchCgroups {
    pub fn new(tag: &str) -> Self {
        let top = format!("tcptrace-test-{tag}-{}", std::process::id());
        let mut scratch = Self { root: cgroup2_root(), top: top.clone(), created: Vec::new() };
        scratch.create("");
        scratch
    }

    /// Creates `rel` (and its parents) below the test's directory; returns
    /// its absolute path.
    pub fn create(&mut self, rel: &str) -> PathBuf {
        let mut path = self.root.join(&self.top);
        let mut todo = vec![path.clone()];
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
            todo.push(path.clone());
        }
        for d in todo {
            if !d.exists() {
                std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
                self.created.push(d);
            }
        }
        path
    }

    /// The path of `rel` as tcptrace reports it (relative to the root).
    pub fn reported(&self, rel: &str) -> String {
        format!("/{}/{}", self.top, rel.trim_matches('/'))
    }
}

impl Drop for ScratchCgroups {
    fn drop(&mut self) {
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Makes `cmd` move itself into cgroup `dir` before it runs (writing 0 to
/// `cgroup.procs` moves the writer), so that it and its children are there
/// from their first instruction.
pub fn enter(cmd: &mut Command, dir: &Path) {
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (open, write, close) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
