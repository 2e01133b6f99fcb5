//! The `"drops"` section: TCP segments the kernel threw away, by reason
//! (the kernel's own `enum skb_drop_reason`) and by destination; what the
//! common reasons mean; and diagnoses for the ones that explain failing
//! connections.

use serde::Serialize;

use super::diagnose::{Diagnosis, Severity};
use crate::{drop_reason, track::Tracker};

/// Rows listed in the report (largest first); the totals count them all.
pub const MAX_LISTED: usize = 20;
/// Drops of one reason worth a diagnosis.
pub const MIN_DIAGNOSED: u64 = 5;

#[derive(Debug, Clone, Serialize)]
pub struct ReasonCount {
    pub reason: String,
    pub segments: u64,
    /// What it means, for the reasons tcptrace knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meaning: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DropRowOut {
    pub netns: u32,
    pub reason: String,
    /// Where the segments were going.
    pub destination: String,
    pub segments: u64,
    pub syn: u64,
    pub rst: u64,
    pub fin: u64,
    /// One sender (the last seen).
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DropsSection {
    /// False where the kernel gives no drop reasons (before 5.17): then
    /// nothing below is measured.
    pub available: bool,
    pub segments: u64,
    pub by_reason: Vec<ReasonCount>,
    pub rows: Vec<DropRowOut>,
}

/// What the TCP-relevant reasons mean (names as the kernel spells them,
/// without `SKB_DROP_REASON_`; include/net/dropreason-core.h).
pub fn meaning(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "NO_SOCKET" => {
            "no socket for the segment: nothing listens on that port, or the connection is gone (an RST went back)"
        }
        "TCP_LISTEN_OVERFLOW" => {
            "the listener's accept queue was full: the final ACK of a handshake was thrown away"
        }
        "NETFILTER_DROP" => "a firewall rule (nftables/iptables) dropped it",
        "TCP_CSUM" => "bad TCP checksum (corruption on the path or a NIC offload bug)",
        "SOCKET_BACKLOG" => "the socket's backlog was full while its owner held the lock (receiver too slow)",
        "SOCKET_RCVBUFF" => "the receive buffer was full (the application reads too slowly)",
        "PROTO_MEM" => "TCP memory pressure (net.ipv4.tcp_mem)",
        "TCP_RFC7323_PAWS" => {
            "old timestamp (PAWS): a NATed peer with clashing timestamps, or a delayed duplicate"
        }
        "TCP_OLD_DATA" => "data already received (a retransmission of something that had arrived)",
        "TCP_OLD_ACK" | "TCP_TOO_OLD_ACK" => "an ACK for data acknowledged long ago",
        "TCP_INVALID_SEQUENCE" | "TCP_OVERWINDOW" | "TCP_OLD_SEQUENCE" => {
            "outside the receive window (a confused or spoofing peer, or middlebox trouble)"
        }
        "TCP_ZEROWINDOW" => "the receive window was zero: the application does not read",
        "TCP_OFOMERGE" | "TCP_OFO_DROP" | "TCP_OFO_QUEUE_PRUNE" => {
            "out-of-order data that did not fit (reordering or loss upstream, memory limits)"
        }
        "TCP_RESET" => "a segment arriving on a connection being reset",
        "TCP_FLAGS" | "TCP_INVALID_SYN" => "a segment with invalid flags for the connection's state",
        "TCP_CLOSE" => "a segment for a closed connection",
        "TCP_MINTTL" => "below the socket's IP_MINTTL",
        "TCP_MD5NOTFOUND" | "TCP_MD5UNEXPECTED" | "TCP_MD5FAILURE" | "TCP_AONOTFOUND" | "TCP_AOFAILURE" => {
            "TCP-MD5/TCP-AO signature missing or wrong"
        }
        "NOT_SPECIFIED" => "the kernel gave no reason",
        _ => return None,
    })
}

pub fn build(tracker: &Tracker, available: bool) -> DropsSection {
    let d = &tracker.drops;
    let mut by_reason: Vec<ReasonCount> = d
        .by_reason
        .iter()
        .map(|(&reason, &segments)| {
            let reason = drop_reason::name(reason);
            ReasonCount { meaning: meaning(&reason), reason, segments }
        })
        .collect();
    by_reason.sort_by(|a, b| b.segments.cmp(&a.segments).then_with(|| a.reason.cmp(&b.reason)));
    let mut rows: Vec<DropRowOut> = d
        .rows
        .iter()
        .map(|(key, row)| DropRowOut {
            netns: key.netns,
            reason: drop_reason::name(key.reason),
            destination: key.destination.to_string(),
            segments: row.segments,
            syn: row.syn,
            rst: row.rst,
            fin: row.fin,
            source: row.last_source.map(|s| s.to_string()).unwrap_or_default(),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.segments
            .cmp(&a.segments)
            .then_with(|| a.reason.cmp(&b.reason))
            .then_with(|| a.destination.cmp(&b.destination))
            .then_with(|| a.netns.cmp(&b.netns))
    });
    rows.truncate(MAX_LISTED);
    DropsSection { available, segments: d.total, by_reason, rows }
}

/// A diagnosis for each reason that explains failing connections, with the
/// destination that got most of them.
pub fn diagnoses(section: &DropsSection) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    for r in section.by_reason.iter().filter(|r| r.segments >= MIN_DIAGNOSED) {
        let (severity, advice) = match r.reason.as_str() {
            "TCP_LISTEN_OVERFLOW" => (
                Severity::Critical,
                "the application accepts too slowly for the arrival rate: see the accept queue section; make the \
                 accept loop faster, then raise the listen() backlog and net.core.somaxconn",
            ),
            "NO_SOCKET" => (
                Severity::Warning,
                "clients connect to a port where nothing listens (a service down or restarting, a wrong port \
                 in their configuration), or send on connections this host already forgot: check `ss -ltn` \
                 for the port and the clients' configuration",
            ),
            "NETFILTER_DROP" => (
                Severity::Warning,
                "a firewall rule drops TCP traffic here: `nft list ruleset` / `iptables -L -v` and the \
                 counters of its drop rules",
            ),
            "SOCKET_BACKLOG" | "SOCKET_RCVBUFF" | "TCP_ZEROWINDOW" | "PROTO_MEM" => (
                Severity::Warning,
                "a receiver does not keep up: the application reads too slowly, or TCP memory is short \
                 (net.ipv4.tcp_rmem, tcp_mem)",
            ),
            "TCP_RFC7323_PAWS" => (
                Severity::Warning,
                "segments with old timestamps: several clients behind one NAT with different clocks \
                 (net.ipv4.tcp_timestamps), or a middlebox rewriting them",
            ),
            _ => continue,
        };
        let top = section.rows.iter().find(|row| row.reason == r.reason);
        let whereto = top.map_or_else(String::new, |t| {
            format!(
                ", most to {} in netns {} ({} of them, from e.g. {})",
                t.destination, t.netns, t.segments, t.source
            )
        });
        out.push(Diagnosis {
            severity,
            summary: format!("{} TCP segments dropped by the kernel: {}{}", r.segments, r.reason, whereto),
            detail: format!(
                "The kernel dropped {} TCP segments with reason {} ({}).\nWhat to do: {}.",
                r.segments,
                r.reason,
                r.meaning.unwrap_or("see include/net/dropreason-core.h"),
                advice
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(reason: &str, segments: u64) -> DropsSection {
        DropsSection {
            available: true,
            segments,
            by_reason: vec![ReasonCount { reason: reason.into(), segments, meaning: meaning(reason) }],
            rows: vec![DropRowOut {
                netns: 7,
                reason: reason.into(),
                destination: "198.18.0.1:9".into(),
                segments,
                syn: segments,
                rst: 0,
                fin: 0,
                source: "198.18.0.2:40000".into(),
            }],
        }
    }

    #[test]
    fn reasons_that_explain_failures_are_diagnosed_with_their_top_destination() {
        let d = diagnoses(&section("NO_SOCKET", 5));
        assert_eq!(d.len(), 1);
        assert!(
            d[0].summary.contains("5 TCP segments dropped by the kernel: NO_SOCKET, most to 198.18.0.1:9")
        );
        assert_eq!(diagnoses(&section("TCP_LISTEN_OVERFLOW", 9))[0].severity, Severity::Critical);
        assert!(diagnoses(&section("NO_SOCKET", 4)).is_empty(), "below the threshold");
        assert!(diagnoses(&section("TCP_OLD_DATA", 500)).is_empty(), "harmless in loss recovery");
    }
}
