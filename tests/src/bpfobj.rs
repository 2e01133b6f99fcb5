//! BPF objects as the kernel lists them: what a process holds (its file
//! descriptors' fdinfo), what is loaded host-wide (`bpftool`), what is pinned.

use std::{collections::BTreeSet, path::PathBuf};

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
