//! Which process holds a socket, by the socket's inode: the `socket:[N]`
//! links in `/proc/<pid>/fd`, as `ss -p` finds them. Only for sockets that
//! existed before tracing (no event of theirs named an owner), once, at
//! the start.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::event::{Comm, Owner};

/// The owner of each of `inodes` found under `proc_root` (`/proc`): the
/// lowest pid holding it (a socket shared after fork() has several). The
/// cgroup id is that of the process's cgroup v2 directory under
/// `cgroup_root` (0 when unknown).
pub fn by_inode(inodes: &HashSet<u32>, proc_root: &Path, cgroup_root: Option<&Path>) -> HashMap<u32, Owner> {
    let mut found: HashMap<u32, Owner> = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(entries) = fs::read_dir(proc_root) else { return found };
    let mut pids: Vec<u32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Ok(fds) = fs::read_dir(dir.join("fd")) else { continue };
        let mut owner = None;
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path()).ok().and_then(|l| socket_inode(&l)) else { continue };
            if !inodes.contains(&inode) || found.contains_key(&inode) {
                continue;
            }
            let owner = *owner.get_or_insert_with(|| process(&dir, pid, cgroup_root));
            found.insert(inode, owner);
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &Path) -> Option<u32> {
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn process(dir: &Path, pid: u32, cgroup_root: Option<&Path>) -> Owner {
    let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
    let cgroup = cgroup_root
        .and_then(|root| {
            let text = fs::read_to_string(dir.join("cgroup")).ok()?;
            let path = unified_path(&text)?;
            fs::metadata(root.join(path.strip_prefix("/").unwrap_or(&path))).ok()
        })
        .map_or(0, |m| m.ino());
    Owner { pid, comm: Comm::from_str_lossy(comm.trim_end_matches('\n')), cgroup }
}

/// The cgroup v2 path in `/proc/<pid>/cgroup` (its `0::` line).
fn unified_path(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn parses_socket_links_and_the_unified_cgroup_line() {
        assert_eq!(socket_inode(Path::new("socket:[4242]")), Some(4242));
        assert_eq!(socket_inode(Path::new("pipe:[4242]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
        let text = "12:cpu:/legacy\n0::/system.slice/nginx.service\n";
        assert_eq!(unified_path(text), Some(PathBuf::from("/system.slice/nginx.service")));
        assert_eq!(unified_path("1:name=systemd:/x\n"), None);
    }

    /// This process's own listening socket is found in /proc (no
    /// privileges needed for one's own descriptors).
    #[test]
    fn finds_this_process_as_the_owner_of_its_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let link = fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).expect("fd link");
        let inode = socket_inode(&link).expect("a socket");
        let found = by_inode(&HashSet::from([inode]), Path::new("/proc"), None);
        let owner = found.get(&inode).expect("found");
        assert_eq!(owner.pid, std::process::id());
    }
}
