//! Recording files (`tcptrace record`, `tcptrace report FILE`).
//!
//! ```text
//! magic    8 bytes  "TCPTRACE"
//! version  u32 LE   FORMAT_VERSION
//! blocks:  tag u8, length u32 LE, payload
//!   HEADER  (1)  JSON Header: tool version, kernel, hostname, boot id, clock
//!                offset, start time, namespace facts at start, notes
//!   EVENTS  (2)  n x RAW_EVENT_SIZE bytes: the kernel's records, as read
//!   LISTED  (3)  JSON list of TIME_WAIT sockets existing at start
//!   FOOTER  (4)  JSON Footer: end time, event accounting, namespace facts at
//!                the end, cgroup paths; its presence means "complete"
//! ```
//!
//! Events are stored raw (120 bytes each, the kernel's own layout, checked by
//! `EVENT_LAYOUT_VERSION`) so that a replay runs exactly the code a live run
//! runs. Every length and field is checked when reading: a truncated, corrupt
//! or future-version file is a clear error, never a panic.

mod reader;
#[cfg(test)]
mod tests;
mod writer;

pub(crate) use reader::corrupt;
pub use reader::{Block, Reader};
pub use writer::Writer;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracer_common::EVENT_LAYOUT_VERSION;

use crate::{
    host::netns::NetnsFacts,
    pipeline::collect::{KernelCounters, ProgramMisses},
};

pub const MAGIC: &[u8; 8] = b"TCPTRACE";
pub const FORMAT_VERSION: u32 = 1;
/// Largest block accepted when reading (a corrupt length must not make us
/// allocate gigabytes).
pub const MAX_BLOCK: u32 = 64 << 20;
/// Events per EVENTS block when writing.
pub const EVENTS_PER_BLOCK: usize = 4096;

const TAG_HEADER: u8 = 1;
const TAG_EVENTS: u8 = 2;
const TAG_LISTED: u8 = 3;
const TAG_FOOTER: u8 = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub tool_version: String,
    pub event_layout_version: u32,
    pub kernel_release: String,
    pub hostname: String,
    pub boot_id: String,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at the start, nanoseconds.
    pub realtime_minus_monotonic_ns: i64,
    /// CLOCK_MONOTONIC at the start of tracing.
    pub started_ns: u64,
    pub timers_available: bool,
    /// The command line's filters, for the record (a replay applies its own).
    pub filters: Vec<String>,
    pub notes: Vec<String>,
    /// Namespace facts at the start (baselines for counter deltas).
    pub netns: HashMap<u32, NetnsFacts>,
    /// The recording kernel's drop reasons, (value, name) (see
    /// [`crate::drop_reason`]); absent in older recordings.
    #[serde(default)]
    pub drop_reasons: Vec<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footer {
    /// CLOCK_MONOTONIC at the end of tracing.
    pub ended_ns: u64,
    pub duration_s: f64,
    pub kernel: RecordedCounters,
    pub received: u64,
    /// Absent from recordings made before it was counted on its own.
    #[serde(default)]
    pub decoded: Option<u64>,
    pub decode_errors: u64,
    /// Namespace facts at the end.
    pub netns: HashMap<u32, NetnsFacts>,
    /// cgroup v2 paths of the cgroup ids seen in events.
    pub cgroups: HashMap<u64, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedCounters {
    pub seen: u64,
    pub submitted: u64,
    pub lost: u64,
    pub read_errors: u64,
    /// Runs of each program the kernel skipped (recursion). Added within
    /// format 1 as an optional field: `None` in files written before it
    /// (their replay says the count is unknown), and older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursion: Option<Vec<ProgramMisses>>,
}

impl From<KernelCounters> for RecordedCounters {
    fn from(k: KernelCounters) -> Self {
        Self {
            seen: k.seen,
            submitted: k.submitted,
            lost: k.lost,
            read_errors: k.read_errors,
            recursion: Some(k.recursion),
        }
    }
}

impl From<RecordedCounters> for KernelCounters {
    fn from(r: RecordedCounters) -> Self {
        Self {
            seen: r.seen,
            submitted: r.submitted,
            lost: r.lost,
            read_errors: r.read_errors,
            // Recordings take the full stream: never in summary mode.
            summary_fallbacks: 0,
            recursion: r.recursion.unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ListedEntry {
    netns: u32,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    cookie: u64,
    state: u8,
    /// The process holding the socket, when the recorder found it (absent
    /// in older files and for timewait sockets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<ListedOwner>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ListedOwner {
    pid: u32,
    /// The name's bytes, as the kernel keeps them (not always UTF-8).
    comm: Vec<u8>,
    cgroup: u64,
}

impl ListedOwner {
    fn of(owner: &crate::event::Owner) -> Self {
        Self { pid: owner.pid, comm: owner.comm.bytes().to_vec(), cgroup: owner.cgroup }
    }

    fn owner(&self) -> crate::event::Owner {
        let mut raw = [0u8; 16];
        let n = self.comm.len().min(15);
        raw[..n].copy_from_slice(&self.comm[..n]);
        crate::event::Owner { pid: self.pid, comm: crate::event::Comm::new(raw), cgroup: self.cgroup }
    }
}

fn empty_header() -> Header {
    Header {
        tool_version: String::new(),
        event_layout_version: 0,
        kernel_release: String::new(),
        hostname: String::new(),
        boot_id: String::new(),
        realtime_minus_monotonic_ns: 0,
        started_ns: 0,
        timers_available: false,
        filters: Vec::new(),
        notes: Vec::new(),
        netns: HashMap::new(),
        drop_reasons: Vec::new(),
    }
}

/// A header for this host, now.
pub fn header_for_this_host(
    started_ns: u64,
    clock_offset_ns: i128,
    timers_available: bool,
    filters: Vec<String>,
    notes: Vec<String>,
    netns: HashMap<u32, NetnsFacts>,
) -> Header {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default();
    Header {
        // The commit and the kernel programs' hash too: a recording names
        // exactly what produced it.
        tool_version: crate::cli::VERSION.to_string(),
        event_layout_version: EVENT_LAYOUT_VERSION,
        kernel_release: read("/proc/sys/kernel/osrelease"),
        hostname: read("/proc/sys/kernel/hostname"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        realtime_minus_monotonic_ns: clock_offset_ns as i64,
        started_ns,
        timers_available,
        filters,
        notes,
        netns,
        drop_reasons: crate::drop_reason::table(),
    }
}
