//! The `"accept_queue"` section: per listener, how long handshake-complete
//! children waited for `accept()` and how full the queue was against its
//! limit; and the slow-acceptor diagnosis.

use serde::Serialize;

use super::{
    diagnose::{Diagnosis, Severity},
    owner::RowOwner,
};
use crate::{
    stats::{Summary, human_us},
    track::Tracker,
};

/// A queue this full (of its limit) at its peak is about to overflow.
pub const NEARLY_FULL: f64 = 0.8;
/// Children waiting this long for accept() (p99) point at the acceptor.
pub const SLOW_ACCEPT_US: u64 = 100_000;

#[derive(Debug, Clone, Serialize)]
pub struct AcceptListener {
    pub local: String,
    pub netns: u32,
    #[serde(flatten)]
    pub owner: RowOwner,
    pub accepted: u64,
    /// Handshake complete to accept() returned, microseconds.
    pub wait: Summary,
    /// Children in the queue when each joined, itself included.
    pub queue_depth: Summary,
    pub queue_max: u32,
    /// The listener's limit (`listen()` backlog capped by `net.core.somaxconn`).
    pub queue_limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AcceptSection {
    pub accepted: u64,
    pub wait: Summary,
    /// Children in an accept queue at the end.
    pub waiting: usize,
    /// accept() returned a socket whose handshake was not seen (older than
    /// tracing, or syncookies).
    pub unmatched: u64,
    pub listeners: Vec<AcceptListener>,
}

pub fn build(tracker: &Tracker) -> AcceptSection {
    let a = &tracker.accepts;
    let mut listeners: Vec<AcceptListener> = a
        .listeners
        .iter()
        .map(|(listener, row)| {
            let known = tracker.synrecv.listeners.get(listener);
            AcceptListener {
                local: known.map_or_else(String::new, |l| l.local.to_string()),
                netns: known.map_or(0, |l| l.netns),
                owner: known.and_then(|l| l.owner).into(),
                accepted: row.accepted,
                wait: row.wait.summary(),
                queue_depth: row.depth.summary(),
                queue_max: row.depth_max,
                queue_limit: row.limit,
            }
        })
        .collect();
    listeners.sort_by(|a, b| {
        b.queue_max.cmp(&a.queue_max).then_with(|| a.local.cmp(&b.local)).then_with(|| a.netns.cmp(&b.netns))
    });
    listeners.truncate(super::timewait::MAX_LISTED);
    AcceptSection {
        accepted: a.accepted,
        wait: a.wait.summary(),
        waiting: a.waiting(),
        unmatched: a.unmatched,
        listeners,
    }
}

/// A listener whose queue came near its limit, or whose children wait long
/// for accept(): the application accepts too slowly.
pub fn diagnoses(section: &AcceptSection) -> Vec<Diagnosis> {
    section
        .listeners
        .iter()
        .filter_map(|l| {
            let limit = l.queue_limit?;
            let share = f64::from(l.queue_max) / f64::from(limit.max(1));
            let slow = l.wait.count > 0 && l.wait.p99 >= SLOW_ACCEPT_US;
            if share < NEARLY_FULL && !slow {
                return None;
            }
            let who = match (l.owner.comm(), l.owner.pid()) {
                (Some(comm), Some(pid)) => format!("{comm} (pid {pid})"),
                _ => "its process".to_string(),
            };
            let full = share >= 1.0;
            Some(Diagnosis {
                severity: if full { Severity::Critical } else { Severity::Warning },
                summary: format!(
                    "accept queue of {} {}: {} of {} at its peak{}",
                    l.local,
                    if full { "full" } else if share >= NEARLY_FULL { "nearly full" } else { "slow" },
                    l.queue_max,
                    limit,
                    if l.wait.count > 0 {
                        format!(", accept() after {} (p99)", human_us(l.wait.p99))
                    } else {
                        String::new()
                    }
                ),
                detail: format!(
                    "{who} (netns {}) takes handshake-complete connections off {} slowly: the queue held up to {} \
                     of its limit {}, {} connections waited for accept() {} at the median and {} at p99.\n\
                     When the queue is full the kernel drops final ACKs (ListenOverflows, drop reason \
                     TCP_LISTEN_OVERFLOW) and SYN_RECV piles up; clients see slow or failed connects.\n\
                     What to do: make the accept loop faster (more acceptor threads, no blocking work between \
                     accept() calls, SO_REUSEPORT with several listeners); then raise the limit: the listen() \
                     backlog and net.core.somaxconn (the smaller one wins).",
                    l.netns,
                    l.local,
                    l.queue_max,
                    limit,
                    l.accepted,
                    human_us(l.wait.p50),
                    human_us(l.wait.p99),
                ),
            })
        })
        .take(5)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Histo, Precision};

    fn listener(max: u32, limit: u32, wait_us: u64) -> AcceptListener {
        let mut h = Histo::new(Precision::Coarse);
        h.record_us(wait_us);
        AcceptListener {
            local: "0.0.0.0:8080".into(),
            netns: 1,
            owner: RowOwner::Unknown,
            accepted: 1,
            wait: h.summary(),
            queue_depth: Summary::default(),
            queue_max: max,
            queue_limit: Some(limit),
        }
    }

    fn section(listeners: Vec<AcceptListener>) -> AcceptSection {
        AcceptSection { accepted: 1, wait: Summary::default(), waiting: 0, unmatched: 0, listeners }
    }

    #[test]
    fn a_queue_near_its_limit_or_a_slow_acceptor_is_diagnosed() {
        assert!(diagnoses(&section(vec![listener(3, 128, 50)])).is_empty(), "healthy");
        let nearly = diagnoses(&section(vec![listener(110, 128, 50)]));
        assert_eq!(nearly.len(), 1);
        assert_eq!(nearly[0].severity, Severity::Warning);
        assert!(nearly[0].summary.contains("nearly full: 110 of 128"), "{}", nearly[0].summary);
        let full = diagnoses(&section(vec![listener(129, 128, 50)]));
        assert_eq!(full[0].severity, Severity::Critical);
        let slow = diagnoses(&section(vec![listener(2, 128, 400_000)]));
        assert!(slow[0].summary.contains("slow"), "{}", slow[0].summary);
    }
}
