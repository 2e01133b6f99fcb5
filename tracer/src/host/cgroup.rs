//! cgroup v2 ids (what `bpf_get_current_cgroup_id()` returns: the inode of the
//! cgroup's directory) resolved to paths, so that a container can be named.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Directories visited at most when indexing (bounds the cost on hosts with
/// huge cgroup trees).
const MAX_DIRS: usize = 100_000;

#[derive(Debug)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    index: Option<HashMap<u64, String>>,
}

impl CgroupNames {
    /// Names known in advance (a recording): no filesystem access.
    pub fn recorded(names: HashMap<u64, String>) -> Self {
        Self { root: None, index: Some(names) }
    }
}

/// The cgroup v2 mount point, from a `/proc/mounts`-format text.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

impl CgroupNames {
    pub fn discover() -> Self {
        let root = fs::read_to_string("/proc/mounts").ok().and_then(|m| cgroup2_mount(&m));
        Self { root, index: None }
    }

    pub fn with_root(root: &Path) -> Self {
        Self { root: Some(root.to_path_buf()), index: None }
    }

    /// The cgroup's path relative to the v2 root (`/` for the root itself),
    /// None when unknown (id 0, removed cgroup, no cgroup v2).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        let Some(root) = self.root.clone() else {
            return self.index.as_ref()?.get(&id).cloned();
        };
        if self.index.is_none() || !self.index.as_ref().is_some_and(|i| i.contains_key(&id)) {
            // Build (or rebuild: cgroups come and go) the index lazily.
            self.index = Some(index(&root));
        }
        self.index.as_ref()?.get(&id).cloned()
    }
}

fn index(root: &Path) -> HashMap<u64, String> {
    let mut map = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > MAX_DIRS {
            break;
        }
        if let Ok(meta) = fs::metadata(&dir) {
            let rel = dir.strip_prefix(root).map(|p| format!("/{}", p.display())).unwrap_or_default();
            map.insert(meta.ino(), if rel == "/" { "/".to_string() } else { rel });
        }
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn resolves_directory_inodes_to_relative_paths() {
        let dir = std::env::temp_dir().join(format!("tcptrace-cg-{}", std::process::id()));
        fs::create_dir_all(dir.join("system.slice/app.service")).expect("mkdir");
        let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
        let mut names = CgroupNames::with_root(&dir);
        assert_eq!(names.path(ino(&dir)), Some("/".to_string()));
        assert_eq!(
            names.path(ino(&dir.join("system.slice/app.service"))),
            Some("/system.slice/app.service".to_string())
        );
        assert_eq!(names.path(0), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
