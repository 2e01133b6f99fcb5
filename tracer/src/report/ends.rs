//! The `"connection_ends"` section: why connections ended, overall, by
//! the state a peer's reset hit, and by process and peer.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    diagnose::{Diagnosis, Severity},
    owner::RowOwner,
    timewait::beyond_listing,
};
use crate::track::{Tracker, end::EndReason, endpoint};

#[derive(Debug, Clone, Serialize)]
pub struct EndsSection {
    /// Closed connections by reason: every reason, zeros included, so
    /// that the keys are stable.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Orderly closes and failures (every reason but the three orderly ones).
    pub orderly: u64,
    pub failed: u64,
    /// Resets by the peer by the state they hit (`ESTABLISHED`, ...).
    pub reset_by_peer_in: BTreeMap<&'static str, u64>,
    /// Connections open at the end of the run (no end yet).
    pub still_open: u64,
    /// By process, peer and reason: failures first, then by count.
    pub rows: Vec<EndRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndRow {
    #[serde(flatten)]
    pub owner: RowOwner,
    pub netns: u32,
    pub local: String,
    pub remote: String,
    pub reason: EndReason,
    pub count: u64,
}

pub fn build(tracker: &Tracker) -> EndsSection {
    let ends = &tracker.ends;
    let by_reason = ends.iter().map(|(r, n)| (r.name(), n)).collect();
    let failed = ends.iter().filter(|(r, _)| r.is_failure()).map(|(_, n)| n).sum();
    let orderly = ends.iter().filter(|(r, _)| !r.is_failure()).map(|(_, n)| n).sum();
    let reset_by_peer_in = ends.reset_by_peer_states().map(|(s, n)| (s.name(), n)).collect();
    let mut rows: Vec<EndRow> = tracker
        .end_rows
        .iter()
        .map(|(key, count)| EndRow {
            owner: key.owner.into(),
            netns: key.netns,
            local: endpoint(&key.local),
            remote: endpoint(&key.remote),
            reason: key.reason,
            count: *count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.reason
            .is_failure()
            .cmp(&a.reason.is_failure())
            .then_with(|| b.count.cmp(&a.count))
            .then_with(|| a.reason.cmp(&b.reason))
            .then_with(|| a.remote.cmp(&b.remote))
            .then_with(|| a.owner.pid().cmp(&b.owner.pid()))
            .then_with(|| a.local.cmp(&b.local))
    });
    // Rows beyond the cap (in memory) and beyond the listing limit: one
    // last row, so that every end stays counted.
    if let Some((label, count)) = beyond_listing(&mut rows, |r| r.count, &tracker.end_rows) {
        rows.push(EndRow {
            owner: RowOwner::Label(label),
            netns: 0,
            local: String::new(),
            remote: String::new(),
            reason: EndReason::Unknown,
            count,
        });
    }
    EndsSection { by_reason, orderly, failed, reset_by_peer_in, still_open: tracker.still_open(), rows }
}

/// Failures of one reason, one process, one peer from which a row is
/// diagnosed.
pub const MIN_FAILURES: u64 = 5;

/// One diagnosis per failure row with at least [`MIN_FAILURES`], largest
/// first, at most five: who, toward whom, why, what to do.
pub fn diagnoses(section: &EndsSection) -> Vec<Diagnosis> {
    section
        .rows
        .iter()
        .filter(|r| {
            r.reason.is_failure() && r.count >= MIN_FAILURES && !matches!(r.owner, RowOwner::Label(_))
        })
        .take(5)
        .map(|r| {
            let process = match (r.owner.comm(), r.owner.pid()) {
                (Some(comm), Some(pid)) => format!("{comm} (pid {pid})"),
                _ => "an unknown process".to_string(),
            };
            // The service's side: the remote for connections this side
            // opened, the local listener for those it accepted.
            let peer = if r.remote.contains(':') && !r.local.contains(':') { &r.remote } else { &r.local };
            Diagnosis {
                severity: Severity::Warning,
                summary: format!(
                    "{} connections of {process} with {peer} ended: {}",
                    r.count,
                    r.reason.describe()
                ),
                detail: format!(
                    "{} connections of {process} (netns {}, {} -> {}) ended as `{}`.\nWhat to do: {}.",
                    r.count,
                    r.netns,
                    r.local,
                    r.remote,
                    r.reason.name(),
                    advice(r.reason)
                ),
            }
        })
        .collect()
}

fn advice(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Refused => {
            "nothing listens there, or a firewall rejects: check that the service runs and is bound to that address and port (`ss -ltn` on its host)"
        }
        EndReason::ResetByPeer => {
            "the peer aborted them: its logs first; a load balancer or NAT idle timeout shorter than this side's; a peer that closes with SO_LINGER 0"
        }
        EndReason::ResetLingerZero => {
            "this process closes with SO_LINGER 0 (often to avoid TIME_WAIT): its peers see a reset, and unsent data is lost; prefer a normal close, and tcp_tw_reuse on the client side"
        }
        EndReason::ResetUnreadData => {
            "this process closes connections with received data it never read (the kernel must reset them, and what was in flight is lost): read to the end, or shutdown(SHUT_WR) and drain before close()"
        }
        EndReason::ResetDataAfterClose => {
            "the peer kept sending after this side closed: keep-alive races (this side's idle timeout shorter than the peer's), or pipelined requests after a close"
        }
        EndReason::ResetKilled => {
            "something killed these sockets (ss -K, SOCK_DESTROY, a network policy agent)"
        }
        EndReason::TimeoutSyn => {
            "no answer to the SYNs: the host is down, a firewall drops them, or its listen queue overflows (see SYN_RECV and the retransmits)"
        }
        EndReason::TimeoutRetransmit | EndReason::Timeout => {
            "the peer or the path died mid-connection: retransmissions went unanswered until tcp_retries2 (see the retransmit stalls toward it)"
        }
        EndReason::TimeoutKeepalive => {
            "idle connections whose peer vanished (a host that went down, a NAT entry that expired); keepalive found them"
        }
        EndReason::TimeoutUser => {
            "the application's TCP_USER_TIMEOUT expired with data unacknowledged: the peer or the path stalled"
        }
        EndReason::Unreachable => {
            "a router reported the host or network unreachable: routing, or the host is gone"
        }
        EndReason::ConnectAbandoned => {
            "the application gave up connecting (its connect timeout, or an ICMP unreachable it read): compare with the SYN retransmits toward it"
        }
        _ => "look at the peer and the path",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, Owner};

    fn row(reason: EndReason, count: u64, local: &str, remote: &str) -> EndRow {
        EndRow {
            owner: RowOwner::Process(Owner { pid: 7, comm: Comm::from_str_lossy("curl"), cgroup: 0 }),
            netns: 1,
            local: local.into(),
            remote: remote.into(),
            reason,
            count,
        }
    }

    #[test]
    fn failures_from_five_up_are_diagnosed_with_the_service_side() {
        let section = EndsSection {
            by_reason: BTreeMap::new(),
            orderly: 0,
            failed: 0,
            reset_by_peer_in: BTreeMap::new(),
            still_open: 0,
            rows: vec![
                row(EndReason::Refused, 6, "10.0.0.1", "10.0.0.2:8080"),
                row(EndReason::ResetUnreadData, 5, "10.0.0.1:80", "10.0.0.9"),
                row(EndReason::TimeoutSyn, 4, "10.0.0.1", "10.0.0.3:443"),
                row(EndReason::ClosedLocal, 90, "10.0.0.1", "10.0.0.2:8080"),
            ],
        };
        let d = diagnoses(&section);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            d[0].summary,
            "6 connections of curl (pid 7) with 10.0.0.2:8080 ended: refused: RST answered the SYN"
        );
        assert!(d[0].detail.contains("nothing listens there"), "{}", d[0].detail);
        assert!(
            d[1].summary.starts_with("5 connections of curl (pid 7) with 10.0.0.1:80 ended: reset sent"),
            "{}",
            d[1].summary
        );
    }
}
