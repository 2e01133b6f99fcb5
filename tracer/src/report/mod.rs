//! The final report: one value built from the tracker's state, rendered as
//! text for people ([`text`]) or as one JSON line for machines (`serde`).

pub mod text;

use serde::Serialize;

use crate::collect::{KernelCounters, UserCounters};

/// Event accounting: `seen == received + lost` when nothing is left unread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Events the kernel programs produced.
    pub seen: u64,
    /// Events lost because the ring buffer was full (counted in the kernel).
    pub lost: u64,
    /// Events read by userspace.
    pub received: u64,
    /// Records userspace could not decode (counted, not used).
    pub decode_errors: u64,
    /// Kernel reads that failed while filling an event (fields left zero).
    pub read_errors: u64,
}

impl EventCounts {
    pub fn new(kernel: &KernelCounters, user: &UserCounters) -> Self {
        Self {
            seen: kernel.seen,
            lost: kernel.lost,
            received: user.received(),
            decode_errors: user.decode_errors(),
            read_errors: kernel.read_errors,
        }
    }

    /// Whether numbers built on these events may be incomplete.
    pub fn lossy(&self) -> bool {
        self.lost > 0 || self.decode_errors > 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `"report"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub duration_s: f64,
    pub events: EventCounts,
    /// Capabilities unavailable on this host and other caveats.
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(duration_s: f64, events: EventCounts, notes: Vec<String>) -> Self {
        Self { kind: "report", duration_s, events, notes }
    }

    pub fn to_json_line(&self) -> String {
        // Serializing plain data cannot fail; keep the line even if it did.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"type\":\"report\",\"error\":\"{e}\"}}"))
    }
}
