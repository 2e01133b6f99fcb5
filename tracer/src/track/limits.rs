//! The caps on the tracker's tables, and their testing override.

/// Memory bounds: every table the tracker keeps grows with what it sees, so
/// each has a cap, and what does not fit is counted (report: `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live full-socket records; the oldest is evicted beyond this.
    pub max_sockets: usize,
    /// TIME_WAIT records (born while tracing or listed at start); the oldest
    /// is evicted beyond this.
    pub max_time_wait: usize,
    /// Request sockets (SYN_RECV), and accepted children waiting to be paired
    /// with their request; the oldest is evicted beyond this.
    pub max_requests: usize,
    /// Rows per report table (processes x peers, listeners, destinations,
    /// connect() errors); further keys share an overflow row.
    pub max_rows: usize,
}

/// Testing only: lowers (or raises) the caps, e.g.
/// `TCPTRACE_DEBUG_LIMITS=sockets=100,time_wait=50,requests=20,rows=5`.
pub const LIMITS_ENV: &str = "TCPTRACE_DEBUG_LIMITS";

impl Limits {
    /// The built-in caps: about 1 KB per record at most, so a few hundred MB
    /// in the worst case, and a report that stays readable.
    pub const BUILT_IN: Limits =
        Limits { max_sockets: 1 << 20, max_time_wait: 1 << 20, max_requests: 1 << 18, max_rows: 10_000 };

    /// `self` with the overrides of a `TCPTRACE_DEBUG_LIMITS` value applied.
    pub fn with_overrides(mut self, spec: &str) -> Result<Self, String> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item.split_once('=').ok_or_else(|| format!("'{item}': expected NAME=N"))?;
            let value: usize = value
                .trim()
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("'{item}': bad number"))?;
            match name.trim() {
                "sockets" => self.max_sockets = value,
                "time_wait" => self.max_time_wait = value,
                "requests" => self.max_requests = value,
                "rows" => self.max_rows = value,
                other => return Err(format!("unknown limit '{other}' (sockets, time_wait, requests, rows)")),
            }
        }
        Ok(self)
    }
}

impl Default for Limits {
    /// [`Limits::BUILT_IN`]. The `TCPTRACE_DEBUG_LIMITS` overrides are read
    /// by the commands (`Limits::from_env`, commands/run.rs): this module does no I/O.
    fn default() -> Self {
        Self::BUILT_IN
    }
}
