//! Diagnoses: what the numbers mean and what to do. Pure functions of the
//! report's figures, unit-tested on synthetic inputs.
//!
//! The classic: a client makes many short connections to one destination and
//! closes first; every close leaves a TIME_WAIT socket for 60 s
//! (TCP_TIMEWAIT_LEN, fixed in the kernel), each holding one ephemeral port
//! toward that destination. At rate r the steady state is r x 60 sockets;
//! once that exceeds the namespace's ephemeral port range, connect() fails
//! with EADDRNOTAVAIL.

use serde::Serialize;

/// TIME_WAIT length in the Linux kernel (TCP_TIMEWAIT_LEN), seconds.
pub const TIME_WAIT_SECS: f64 = 60.0;
/// Utilization from which a destination is "about to run out".
pub const CRITICAL_UTILIZATION: f64 = 0.9;
/// Share of the range the steady state may reach before we warn.
pub const WARN_STEADY_SHARE: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    pub severity: Severity,
    pub summary: String,
    pub detail: String,
}

/// One destination's TIME_WAIT figures, as the report has them.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationFigures {
    pub netns: u32,
    pub local: String,
    pub remote: String,
    /// TIME_WAIT sockets alive now.
    pub count: u64,
    pub port_range: Option<(u32, u32)>,
    pub created_per_s: f64,
    /// Local ephemeral ports are what runs out (this side connected).
    pub client_side: bool,
    /// The process holding most of these TIME_WAIT sockets: (pid, comm, count).
    pub top_closer: Option<(Option<u32>, String, u64)>,
    /// How many processes closed connections toward this destination.
    pub closers: usize,
}

/// connect() failures toward one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectFailures {
    pub netns: u32,
    pub remote: String,
    pub pid: Option<u32>,
    pub comm: String,
    pub eaddrnotavail: u64,
}

/// Namespace settings quoted in the advice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetnsSettings {
    pub netns: u32,
    pub tw_reuse: Option<u32>,
    pub max_tw_buckets: Option<u32>,
    /// TCPTimeWaitOverflow during the run.
    pub tw_overflow: i64,
}

fn range_size(range: (u32, u32)) -> u32 {
    range.1.saturating_sub(range.0) + 1
}

fn who(closer: &Option<(Option<u32>, String, u64)>) -> String {
    match closer {
        Some((Some(pid), comm, _)) => format!("{comm} (pid {pid})"),
        Some((None, comm, _)) if !comm.is_empty() => comm.clone(),
        _ => "an unidentified process".to_string(),
    }
}

fn options(dest: &DestinationFigures, settings: Option<&NetnsSettings>, range: (u32, u32)) -> String {
    let size = range_size(range);
    let reuse = match settings.and_then(|s| s.tw_reuse) {
        Some(1) => "  - net.ipv4.tcp_tw_reuse is already 1: reuse needs TCP timestamps on both sides and \
                    TIME_WAIT older than 1 s; if connect() still fails, the rate is too high for it."
            .to_string(),
        Some(v) => format!(
            "  - net.ipv4.tcp_tw_reuse=1 on this client (now {v}{}): new outgoing connections may reuse a \
             TIME_WAIT port older than 1 s; safe with TCP timestamps (on by default).",
            if v == 2 { ", loopback only" } else { "" }
        ),
        None => "  - net.ipv4.tcp_tw_reuse=1 on this client: new outgoing connections may reuse a TIME_WAIT \
                 port older than 1 s; safe with TCP timestamps (on by default)."
            .to_string(),
    };
    let widen = if size < 60_000 {
        format!(
            "  - widen net.ipv4.ip_local_port_range (now {}-{}, {size} ports; at most about 64,500 with \
             1024-65535): buys {:.1}x headroom; keep listening ports out of it \
             (net.ipv4.ip_local_reserved_ports).",
            range.0,
            range.1,
            64_512.0 / f64::from(size)
        )
    } else {
        format!("  - the port range is already wide ({}-{}, {size} ports).", range.0, range.1)
    };
    [
        "What to do, best first:".to_string(),
        "  - reuse connections: HTTP keep-alive / a connection pool removes the churn itself.".to_string(),
        "  - let the server close first (TIME_WAIT then sits on the server, which needs no ephemeral \
         port per connection); needs protocol support (e.g. the server sends Connection: close and \
         closes)."
            .to_string(),
        reuse,
        widen,
        format!(
            "  - spread over more destination addresses or ports: each (local address, {}) pair has its \
             own {size} ports.",
            dest.remote
        ),
        "  - SO_LINGER {on, 0} on close avoids TIME_WAIT by sending an RST: last resort, unsent data is \
         lost, the peer sees ECONNRESET and delayed duplicates lose their protection."
            .to_string(),
        "Not a fix: net.ipv4.tcp_fin_timeout (it governs FIN_WAIT2, not TIME_WAIT, which is fixed at 60 s); \
         tcp_tw_recycle (removed in Linux 4.12)."
            .to_string(),
    ]
    .join("\n")
}

/// All diagnoses for one report, most severe first.
pub fn diagnose(
    destinations: &[DestinationFigures],
    failures: &[ConnectFailures],
    settings: &[NetnsSettings],
) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let settings_of = |netns: u32| settings.iter().find(|s| s.netns == netns);
    for dest in destinations.iter().filter(|d| d.client_side) {
        let Some(range) = dest.port_range else { continue };
        let size = f64::from(range_size(range));
        let count = dest.count as f64;
        let utilization = count / size;
        let steady = dest.created_per_s * TIME_WAIT_SECS;
        let mut failed: Vec<&ConnectFailures> = failures
            .iter()
            .filter(|f| f.netns == dest.netns && f.remote == dest.remote && f.eaddrnotavail > 0)
            .collect();
        failed.sort_by(|a, b| b.eaddrnotavail.cmp(&a.eaddrnotavail).then_with(|| a.pid.cmp(&b.pid)));
        let failed_total: u64 = failed.iter().map(|f| f.eaddrnotavail).sum();
        let closer = match dest.closers {
            0 | 1 => who(&dest.top_closer),
            2 => format!("{} and one other process", who(&dest.top_closer)),
            n => format!("{} and {} other processes", who(&dest.top_closer), n - 1),
        };
        let numbers = format!(
            "{} TIME_WAIT sockets toward {} from {} (netns {}) hold {:.0}% of the {} ephemeral ports \
             ({}-{}); new ones appear at {:.1}/s and each lasts {TIME_WAIT_SECS:.0} s, so the steady \
             state is {:.0} sockets. Closing first, and so holding the TIME_WAIT: {closer}.",
            dest.count,
            dest.remote,
            dest.local,
            dest.netns,
            100.0 * utilization,
            size,
            range.0,
            range.1,
            dest.created_per_s,
            steady
        );
        let advice = options(dest, settings_of(dest.netns), range);
        if failed_total > 0 {
            let victims: Vec<String> = failed
                .iter()
                .map(|f| match f.pid {
                    Some(pid) => format!("{} (pid {pid}) x{}", f.comm, f.eaddrnotavail),
                    None => format!("{} x{}", f.comm, f.eaddrnotavail),
                })
                .collect();
            out.push(Diagnosis {
                severity: Severity::Critical,
                summary: format!(
                    "Ephemeral ports exhausted toward {}: connect() failed with EADDRNOTAVAIL {failed_total} \
                     times; {} TIME_WAIT sockets ({:.0}% of {} ports) held by {closer}",
                    dest.remote,
                    dest.count,
                    100.0 * utilization,
                    size
                ),
                detail: format!("{numbers} Failing: {}.\n{advice}", victims.join(", ")),
            });
        } else if utilization >= CRITICAL_UTILIZATION {
            out.push(Diagnosis {
                severity: Severity::Critical,
                summary: format!(
                    "About to run out of ephemeral ports toward {}: {:.0}% used by TIME_WAIT ({closer})",
                    dest.remote,
                    100.0 * utilization
                ),
                detail: format!("{numbers}\n{advice}"),
            });
        } else if steady >= WARN_STEADY_SHARE * size && dest.created_per_s > 0.0 {
            let when = if steady >= size {
                let seconds = ((size - count) / dest.created_per_s).max(0.0);
                format!("at the current rate the range runs out in about {seconds:.0} s")
            } else {
                format!("at the current rate TIME_WAIT will fill {:.0}% of the range", 100.0 * steady / size)
            };
            out.push(Diagnosis {
                severity: Severity::Warning,
                summary: format!("Ephemeral port exhaustion predicted toward {}: {when}", dest.remote),
                detail: format!("{numbers}\n{advice}"),
            });
        }
    }
    for s in settings.iter().filter(|s| s.tw_overflow > 0) {
        out.push(Diagnosis {
            severity: Severity::Warning,
            summary: format!(
                "{} connections skipped TIME_WAIT in netns {}: tcp_max_tw_buckets{} reached",
                s.tw_overflow,
                s.netns,
                s.max_tw_buckets.map(|m| format!(" ({m})")).unwrap_or_default()
            ),
            detail:
                "The kernel freed their ports at once (TCPTimeWaitOverflow) instead of keeping them 60 s: \
                     delayed segments of an old connection can then corrupt a new one with the same ports. \
                     Raise net.ipv4.tcp_max_tw_buckets or reduce connection churn."
                    .to_string(),
        });
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.severity));
    out
}

/// p99 retransmission stall toward a destination from which we warn: the
/// kernel's smallest RTO (TCP_RTO_MIN, 200 ms); a fast retransmit costs a
/// round trip, far less.
pub const STALL_P99_WARN_US: u64 = 200_000;
/// RTO expiries in a row (backoff count before the last one's increment)
/// from which a destination is critical: 3 means a fourth consecutive
/// timeout, 1.5 s or more without progress at the smallest RTO.
pub const CRITICAL_BACKOFF: u8 = 3;

/// Retransmission stalls toward one destination, as the report has them.
#[derive(Debug, Clone, PartialEq)]
pub struct StallFigures {
    pub netns: u32,
    pub remote: String,
    pub pid: Option<u32>,
    pub comm: String,
    /// Retransmissions with a measured stall, all causes.
    pub count: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Of them, timeout retransmissions.
    pub timeouts: u64,
    pub max_backoff: u8,
}

/// Destinations where retransmissions, not the network's round trip,
/// dominate latency: p99 stall at least [`STALL_P99_WARN_US`] (warning) or
/// [`CRITICAL_BACKOFF`] timeouts in a row (critical).
pub fn retransmit_stalls(rows: &[StallFigures]) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    for r in rows {
        let backoffs = r.max_backoff >= CRITICAL_BACKOFF;
        if !backoffs && r.p99_us < STALL_P99_WARN_US {
            continue;
        }
        let process = match (r.pid, r.comm.is_empty()) {
            (Some(pid), false) => format!("{} (pid {pid})", r.comm),
            (None, false) => r.comm.clone(),
            _ => "an unidentified process".to_string(),
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let numbers = format!(
            "{} retransmissions toward {} (netns {}) by {process}: p99 stall {:.0} ms, longest {:.0} ms; {} were retransmission timeouts, up to {} in a row (icsk_backoff {}). A timeout costs the RTO (200 ms or more, doubling each time); a fast retransmit costs about one round trip.",
            r.count,
            r.remote,
            r.netns,
            ms(r.p99_us),
            ms(r.max_us),
            r.timeouts,
            u32::from(r.max_backoff) + 1,
            r.max_backoff
        );
        let advice = "What to look at: loss on the path (drops, a black hole, a flapping route or middlebox) rather than the application; `ss -ti` shows rto and backoff live; tail loss probes (net.ipv4.tcp_early_retrans) and SACK turn many timeouts into fast retransmits; a route's rto_min sets the smallest RTO.";
        out.push(Diagnosis {
            severity: if backoffs { Severity::Critical } else { Severity::Warning },
            summary: if backoffs {
                format!(
                    "{} retransmission timeouts in a row toward {} ({process}): stalls up to {:.1} s",
                    u32::from(r.max_backoff) + 1,
                    r.remote,
                    ms(r.max_us) / 1000.0
                )
            } else {
                format!(
                    "Retransmissions stall connections toward {} ({process}): p99 {:.0} ms",
                    r.remote,
                    ms(r.p99_us)
                )
            },
            detail: format!("{numbers}\n{advice}"),
        });
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalls(p99_ms: u64, max_backoff: u8) -> StallFigures {
        StallFigures {
            netns: 7,
            remote: "198.18.0.2:8080".into(),
            pid: Some(42),
            comm: "curl".into(),
            count: 10,
            p99_us: p99_ms * 1000,
            max_us: p99_ms * 1000,
            timeouts: 4,
            max_backoff,
        }
    }

    #[test]
    fn stalls_dominating_a_destination_are_diagnosed_naming_it_and_the_process() {
        assert!(retransmit_stalls(&[stalls(150, 0)]).is_empty(), "below one minimum RTO");
        let warn = retransmit_stalls(&[stalls(300, 1)]);
        assert_eq!(warn.len(), 1);
        assert_eq!(warn[0].severity, Severity::Warning);
        assert!(warn[0].summary.contains("198.18.0.2:8080") && warn[0].summary.contains("curl (pid 42)"));
        assert!(warn[0].summary.contains("p99 300 ms"), "{}", warn[0].summary);
        let crit = retransmit_stalls(&[stalls(300, 0), stalls(2400, 3)]);
        assert_eq!(
            crit.iter().map(|d| d.severity).collect::<Vec<_>>(),
            [Severity::Critical, Severity::Warning]
        );
        assert!(crit[0].summary.contains("4 retransmission timeouts in a row"), "{}", crit[0].summary);
        assert!(crit[0].detail.contains("icsk_backoff 3"), "{}", crit[0].detail);
    }

    fn dest(count: u64, range: (u32, u32), rate: f64) -> DestinationFigures {
        DestinationFigures {
            netns: 7,
            local: "198.18.0.1".into(),
            remote: "198.18.0.2:8080".into(),
            count,
            port_range: Some(range),
            created_per_s: rate,
            client_side: true,
            top_closer: Some((Some(42), "ttclient".into(), count)),
            closers: 1,
        }
    }

    fn failure(n: u64) -> ConnectFailures {
        ConnectFailures {
            netns: 7,
            remote: "198.18.0.2:8080".into(),
            pid: Some(42),
            comm: "ttclient".into(),
            eaddrnotavail: n,
        }
    }

    #[test]
    fn exhaustion_happening_is_critical_and_names_destination_and_process() {
        let d = diagnose(&[dest(100, (40000, 40099), 500.0)], &[failure(50)], &[]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].severity, Severity::Critical);
        assert!(d[0].summary.contains("198.18.0.2:8080"), "{}", d[0].summary);
        assert!(d[0].summary.contains("EADDRNOTAVAIL 50 times"), "{}", d[0].summary);
        assert!(d[0].summary.contains("ttclient (pid 42)"), "{}", d[0].summary);
        assert!(d[0].detail.contains("keep-alive"));
        assert!(d[0].detail.contains("tcp_tw_reuse=1"));
        assert!(d[0].detail.contains("tcp_fin_timeout (it governs FIN_WAIT2"), "never advised as a fix");
    }

    #[test]
    fn the_classic_710_per_second_is_predicted_with_time_to_run_out() {
        // 710/s x 60 s = 42,600 > 28,232 ports (32768-60999); 7,100 in use after 10 s.
        let d = diagnose(&[dest(7_100, (32768, 60999), 710.0)], &[], &[]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].severity, Severity::Warning);
        // (28232 - 7100) / 710 = 29.8 s
        assert!(d[0].summary.contains("runs out in about 30 s"), "{}", d[0].summary);
        assert!(d[0].detail.contains("steady state is 42600"), "{}", d[0].detail);
    }

    #[test]
    fn nearly_full_range_is_critical_even_before_failures() {
        let d = diagnose(&[dest(95, (40000, 40099), 0.5)], &[], &[]);
        assert_eq!(d[0].severity, Severity::Critical);
        assert!(d[0].summary.contains("95%"), "{}", d[0].summary);
    }

    #[test]
    fn healthy_rates_and_server_side_time_wait_give_nothing() {
        // 10/s x 60 = 600 of 28,232: fine.
        assert!(diagnose(&[dest(600, (32768, 60999), 10.0)], &[], &[]).is_empty());
        let mut server = dest(50_000, (32768, 60999), 900.0);
        server.client_side = false;
        assert!(diagnose(&[server], &[], &[]).is_empty(), "server-side TIME_WAIT uses no ephemeral ports");
    }

    #[test]
    fn failures_toward_another_destination_do_not_count() {
        let mut f = failure(5);
        f.remote = "198.18.0.9:443".into();
        let d = diagnose(&[dest(10, (40000, 40099), 0.1)], &[f], &[]);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn advice_follows_current_settings() {
        let settings = NetnsSettings { netns: 7, tw_reuse: Some(1), ..Default::default() };
        let d = diagnose(&[dest(100, (40000, 40099), 500.0)], &[failure(1)], &[settings]);
        assert!(d[0].detail.contains("tcp_tw_reuse is already 1"), "{}", d[0].detail);
        let wide = diagnose(&[dest(64_000, (1024, 65535), 2000.0)], &[failure(1)], &[]);
        assert!(wide[0].detail.contains("already wide"), "{}", wide[0].detail);
    }

    #[test]
    fn time_wait_bucket_overflow_is_reported() {
        let settings =
            NetnsSettings { netns: 3, max_tw_buckets: Some(100), tw_overflow: 12, ..Default::default() };
        let d = diagnose(&[], &[], &[settings]);
        assert_eq!(d.len(), 1);
        assert!(d[0].summary.contains("12 connections skipped TIME_WAIT"));
        assert!(d[0].summary.contains("(100)"));
    }
}
