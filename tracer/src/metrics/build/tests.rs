use super::*;
use crate::{
    host::netns::NetnsRegistry,
    pipeline::collect::ProgramMisses,
    track::{Limits, Tracker},
};

#[test]
fn recursion_misses_are_a_counter_per_program_known_only() {
    let mut builder = MetricsBuilder::new(10, PortRanges::new(NetnsRegistry::default()), Arc::default());
    let tracker = Tracker::new(Limits::default(), true);
    let kernel = KernelCounters {
        recursion: vec![
            ProgramMisses { program: "tcptrace_state".into(), misses: Some(3), run_cnt: 0, run_time_ns: 0 },
            ProgramMisses { program: "tcptrace_sendmsg".into(), misses: Some(0), run_cnt: 0, run_time_ns: 0 },
            ProgramMisses {
                program: "tcptrace_timer_start".into(),
                misses: None,
                run_cnt: 0,
                run_time_ns: 0,
            },
        ],
        ..Default::default()
    };
    let snapshot = builder.snapshot(&tracker, &kernel);
    let family = snapshot.family("tcptrace_recursion_misses").expect("family");
    let series: Vec<(String, Value)> =
        family.series.iter().map(|s| (s.labels[0].1.clone(), s.value.clone())).collect();
    assert_eq!(
        series,
        [
            ("tcptrace_state".to_string(), Value::Counter(3)),
            ("tcptrace_sendmsg".to_string(), Value::Counter(0))
        ],
        "unknown counts get no series"
    );
}

#[test]
fn retransmit_stalls_are_histograms_by_cause_destination_and_process() {
    use crate::{
        event::{Comm, Owner, Tuple},
        track::{
            Role,
            retrans::{Stall, StallCause},
            timewait::DestKey,
        },
    };
    let mut builder = MetricsBuilder::new(10, PortRanges::new(NetnsRegistry::default()), Arc::default());
    let mut tracker = Tracker::new(Limits::default(), true);
    let tuple = Tuple {
        local: "10.0.0.2:80".parse().expect("addr"),
        remote: "10.0.0.1:40000".parse().expect("addr"),
    };
    let dest = DestKey::new(7, &tuple, Some(Role::Passive));
    let owner = Owner { pid: 9, comm: Comm::new(*b"server\0\0\0\0\0\0\0\0\0\0"), cgroup: 1 };
    for us in [304_000, 608_000, 1_216_000] {
        let stall = Stall { cause: StallCause::Timeout, us, rto_us: Some(us as u32), backoff: Some(0) };
        tracker.retrans.stall(&stall, dest, Some(owner));
    }
    let snapshot = builder.snapshot(&tracker, &KernelCounters::default());
    let by_cause = snapshot.family("tcptrace_retransmit_stall").expect("family");
    assert_eq!(by_cause.series.len(), StallCause::ALL.len(), "a series per cause, empty ones too");
    let timeout = by_cause.series.iter().find(|s| s.labels[0].1 == "timeout").expect("timeout series");
    let Value::Histogram(h) = &timeout.value else { panic!("{:?}", timeout.value) };
    assert_eq!(h.count, 3);
    assert!((h.sum - 2.128).abs() < 0.01, "{}", h.sum);
    let dest = snapshot.family("tcptrace_retransmit_stall_by_destination").expect("family");
    let labels: Vec<&str> = dest.series[0].labels.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(labels, ["7", "10.0.0.1", "server", ""], "no resolver: an empty workload label");
    let procs = snapshot.family("tcptrace_retransmit_stall_by_process").expect("family");
    assert_eq!(procs.series[0].labels[0].1, "server");
}

#[test]
fn unseen_retransmits_are_a_counter() {
    let mut builder = MetricsBuilder::new(10, PortRanges::new(NetnsRegistry::default()), Arc::default());
    let mut tracker = Tracker::new(Limits::default(), true);
    tracker.retrans.unseen = 3;
    let snapshot = builder.snapshot(&tracker, &KernelCounters::default());
    let unseen = snapshot.family("tcptrace_retransmitted_segments_unseen").expect("family");
    assert!(matches!(unseen.series[0].value, Value::Counter(3)), "{:?}", unseen.series[0].value);
}
