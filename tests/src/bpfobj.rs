//! BPF objects as the kernel lists them: what a process holds (its file
//! descriptors' fdinfo), what is loaded host-wide (`bpftool`), what is pinned.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use serde_json::Value;

/// Kernel ids of BPF programs, links and maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BpfIds {
    pub progs: BTreeSet<u64>,
    pub links: BTreeSet<u64>,
    pub maps: BTreeSet<u64>,
}

impl BpfIds {
    pub fn is_empty(&self) -> bool {
        self.progs.is_empty() && self.links.is_empty() && self.maps.is_empty()
    }

    /// The ids of `self` that are also in `other`.
    pub fn still_in(&self, other: &BpfIds) -> BpfIds {
        BpfIds {
            progs: self.progs.intersection(&other.progs).copied().collect(),
            links: self.links.intersection(&other.links).copied().collect(),
            maps: self.maps.intersection(&other.maps).copied().collect(),
        }
    }
}

/// The BPF objects `pid` holds file descriptors for (`prog_id`, `link_id`,
/// `map_id` lines of `/proc/PID/fdinfo/*`). Links name their program too.
pub fn held_by(pid: u32) -> BpfIds {
    let mut ids = BpfIds::default();
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir}: {e}"));
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        for line in info.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let Ok(value) = value.trim().parse::<u64>() else { continue };
            match key.trim() {
                "prog_id" => ids.progs.insert(value),
                "link_id" => ids.links.insert(value),
                "map_id" => ids.maps.insert(value),
                _ => false,
            };
        }
    }
    ids
}

fn bpftool_ids(kind: &str) -> BTreeSet<u64> {
    let out = crate::sh("bpftool", &[kind, "show", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    list.as_array().map(|a| a.iter().filter_map(|o| o["id"].as_u64()).collect()).unwrap_or_default()
}

/// Every BPF program, link and map loaded on the host.
pub fn loaded() -> BpfIds {
    BpfIds { progs: bpftool_ids("prog"), links: bpftool_ids("link"), maps: bpftool_ids("map") }
}

/// Ids of loaded programs whose name starts with `tcptrace`.
pub fn tcptrace_programs() -> BTreeSet<u64> {
    let out = crate::sh("bpftool", &["prog", "show", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    list.as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("tcptrace")))
                .filter_map(|p| p["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// A file descriptor of the loaded program with kernel id `id`
/// (`BPF_PROG_GET_FD_BY_ID`): while it is open the program stays loaded, also
/// after the process that loaded it has detached it or exited.
pub fn hold_program(id: u64) -> OwnedFd {
    /// `BPF_PROG_GET_FD_BY_ID` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    /// The `union bpf_attr` member of the `*_GET_FD_BY_ID` commands.
    #[repr(C)]
    struct GetFdById {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = GetFdById { prog_id: u32::try_from(id).unwrap(), next_id: 0, open_flags: 0 };
    // SAFETY: `attr` is a valid attr of the size passed and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            std::ptr::from_mut(&mut attr),
            size_of::<GetFdById>() as libc::c_uint,
        )
    };
    assert!(fd >= 0, "BPF_PROG_GET_FD_BY_ID {id}: {}", std::io::Error::last_os_error());
    // SAFETY: a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Name and `recursion_misses` of each loaded program among `ids`, as
/// `bpftool prog show --json` prints them (it omits `recursion_misses` when it
/// is 0).
pub fn recursion_misses(ids: &BTreeSet<u64>) -> BTreeMap<u64, (String, u64)> {
    let out = crate::sh("bpftool", &["prog", "show", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64().filter(|id| ids.contains(id))?;
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let misses = match &p["recursion_misses"] {
                Value::Null => 0,
                n => n.as_u64().unwrap_or_else(|| panic!("recursion_misses of program {id}: {n}")),
            };
            Some((id, (name, misses)))
        })
        .collect()
}

/// Every path below /sys/fs/bpf (empty when no bpffs is mounted there).
pub fn pinned() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/bpf")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    found
}
