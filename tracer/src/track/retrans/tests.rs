use super::*;
use crate::event::RetransmitTiming;

fn row(n: u32, port: u16) -> ConnRow {
    ConnRow::new(
        None,
        1,
        SocketAddr::from(([10, 0, 0, 1], port)),
        "10.0.0.2:80".parse().expect("addr"),
        n,
        TcpState::Established,
    )
}

#[test]
fn rows_order_by_count_then_pid_then_name_as_json_writes_it() {
    use crate::event::Comm;
    let owned = |n: u32, pid: u32, name: &[u8]| {
        let mut raw = [0u8; 16];
        raw[..name.len()].copy_from_slice(name);
        let mut r = row(n, 1);
        r.owner = Some(Owner { pid, comm: Comm::new(raw), cgroup: 1 });
        r
    };
    assert!(owned(1, 9, b"z") < owned(2, 1, b"a"), "the count first");
    assert!(row(3, 1) < owned(3, 1, b"a"), "no owner before any");
    assert!(owned(3, 1, b"z") < owned(3, 2, b"a"), "then the pid");
    // JSON writes "\xff" as U+FFFD, before an emoji (U+1F600) as text,
    // after it as bytes ("\xf0\x9f\x98\x80"): the text decides.
    assert!(owned(3, 1, b"a\xff") < owned(3, 1, b"a\xf0\x9f\x98\x80"));
    assert_eq!(owned(3, 1, b"a").cmp(&owned(3, 1, b"a")), std::cmp::Ordering::Equal);
}

const MS: u64 = 1_000_000;

fn timing(since_ack_ms: u32, rto_ms: u32, backoff: u8) -> Option<RetransmitTiming> {
    Some(RetransmitTiming { since_ack_us: since_ack_ms * 1000, rto_us: rto_ms * 1000, backoff })
}

#[test]
fn a_run_of_timeouts_stalls_as_the_rto_backs_off() {
    // Blackout: last ACK at 0, RTO 300 ms, then 600, 1200 ms; no ACK in between.
    let mut conn = ConnStalls::default();
    let mut seen = Vec::new();
    let mut at = 0;
    for (k, rto) in [300u32, 600, 1200].into_iter().enumerate() {
        at += u64::from(rto) * MS;
        let t = timing((at / MS) as u32, rto, k as u8);
        let s = Stall::measure(at, StallCause::Timeout, t, TcpState::Established, conn.last_ns(), None)
            .expect("measured");
        conn.add(at, Some(&s));
        assert_eq!((s.rto_us, s.backoff), (Some(rto * 1000), Some(k as u8)));
        seen.push(s.us / 1000);
    }
    assert_eq!(seen, [300, 600, 1200], "each the wait since the previous resend, not since the ACK");
    assert_eq!((conn.total_us(), conn.max_us()), (2_100_000, 1_200_000));
}

#[test]
fn a_fast_retransmit_stalls_since_the_last_ack() {
    // The dup ACK that triggered it arrived 0 jiffies ago.
    let s = Stall::measure(5 * MS, StallCause::Fast, timing(0, 200, 0), TcpState::Established, None, None);
    assert_eq!(s.map(|s| s.us), Some(0));
    // Without timing (an old recording) and no earlier resend: unknown.
    assert_eq!(Stall::measure(5 * MS, StallCause::Fast, None, TcpState::Established, None, None), None);
}

#[test]
fn a_syn_stalls_since_syn_sent_never_since_a_stale_ack_stamp() {
    // rcv_tstamp is meaningless in SYN_SENT (nothing received): ignored.
    let t = timing(1, 1000, 0);
    let first = Stall::measure(1_010 * MS, StallCause::Syn, t, TcpState::SynSent, None, Some(10 * MS));
    assert_eq!(first.map(|s| s.us), Some(1_000_000));
    let second =
        Stall::measure(3_010 * MS, StallCause::Syn, t, TcpState::SynSent, Some(1_010 * MS), Some(10 * MS));
    assert_eq!(second.map(|s| s.us), Some(2_000_000));
}

#[test]
fn stall_causes_follow_segment_kind_then_congestion_state() {
    use StallCause as C;
    assert_eq!(C::of(SegmentKind::Syn, CaState::Loss), C::Syn);
    assert_eq!(C::of(SegmentKind::SynAck, CaState::Open), C::SynAck);
    assert_eq!(C::of(SegmentKind::Data, CaState::Loss), C::Timeout);
    assert_eq!(C::of(SegmentKind::Fin, CaState::Recovery), C::Fast);
    assert_eq!(C::of(SegmentKind::Data, CaState::Open), C::Probe);
}

#[test]
fn stalls_are_kept_by_cause_destination_and_process() {
    use crate::track::{conn::Role, timewait::DestKey};
    let mut s = RetransStats::default();
    let tuple = crate::event::Tuple {
        local: "10.0.0.1:40000".parse().expect("addr"),
        remote: "10.0.0.2:80".parse().expect("addr"),
    };
    let dest = DestKey::new(1, &tuple, Some(Role::Active));
    let owner = Owner { pid: 7, comm: Comm::new(*b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), cgroup: 1 };
    for (us, backoff) in [(300_000, 0), (600_000, 1), (1_200_000, 2)] {
        let stall = Stall { cause: StallCause::Timeout, us, rto_us: Some(us as u32), backoff: Some(backoff) };
        s.stall(&stall, dest, Some(owner));
    }
    s.stall(&Stall { cause: StallCause::Fast, us: 50, rto_us: None, backoff: None }, dest, None);
    assert_eq!(s.stalls.get(StallCause::Timeout).len(), 3);
    assert_eq!(s.stalls.get(StallCause::Fast).len(), 1);
    assert_eq!(s.stalls.all().len(), 4);
    let row = &s.stall_dests[&dest];
    assert_eq!((row.max_backoff, row.owner), (2, Some(owner)));
    assert_eq!(row.stalls.all().len(), 4);
    let by_proc = &s.stall_procs[&ProcessKey { pid: 7, comm: owner.comm }];
    assert_eq!(by_proc.stalls.all().len(), 3, "the stall without an owner is not a process's");
}

#[test]
fn classifies_segments_by_state_and_flags() {
    let mut s = RetransStats::default();
    // A SYN is resent by the RTO, after tcp_enter_loss().
    s.segment(TcpState::SynSent, 1, true, false, CaState::Loss);
    s.segment(TcpState::SynRecv, 1, true, false, CaState::Open);
    s.segment(TcpState::Established, 3, false, false, CaState::Recovery);
    s.segment(TcpState::CloseWait, 1, false, false, CaState::Loss);
    s.segment(TcpState::FinWait1, 1, false, true, CaState::Loss);
    s.segment(TcpState::LastAck, 1, false, true, CaState::Open);
    s.segment(TcpState::Closing, 1, false, true, CaState::Open);
    s.synack();
    assert_eq!(s.segments, Segments { syn: 1, synack: 2, data: 4, fin: 3 });
    assert_eq!(s.causes, Causes { timeout: 4, fast: 3, other: 3 });
}

#[test]
fn a_fin_on_a_multi_segment_skb_is_one_fin_and_data() {
    let mut s = RetransStats::default();
    s.segment(TcpState::FinWait1, 4, false, true, CaState::Recovery);
    assert_eq!(s.segments, Segments { syn: 0, synack: 0, data: 3, fin: 1 });
    assert_eq!(s.causes, Causes { timeout: 0, fast: 4, other: 0 });
}

#[test]
fn per_connection_counts_zeros_and_top_keeps_the_largest() {
    let mut s = RetransStats::default();
    for i in 0..100u32 {
        s.closed(row(i % 5, 1000 + i as u16), false);
    }
    s.closed(row(50, 1), true);
    let h = s.per_connection.summary();
    assert_eq!(h.count, 101);
    assert_eq!(h.min, 0, "zeros are recorded");
    assert_eq!(h.max, 50);
    let top = s.top();
    assert_eq!(top.len(), LISTED);
    assert_eq!(top[0].retransmits, 50);
    assert!(top.iter().all(|r| r.retransmits >= 4), "{top:?}");
    assert_eq!(s.timeouts, 1);
    assert_eq!(s.killed.len(), 1);
}
