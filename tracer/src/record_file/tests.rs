//! Round trips, old files, truncation and corruption.

use std::{collections::HashMap, io};

use serde::Deserialize;
use tracer_common::{EVENT_LAYOUT_VERSION, RawEvent};

use super::*;
use crate::pipeline::collect::{KernelCounters, ProgramMisses};

fn header() -> Header {
    let mut h = empty_header();
    h.tool_version = "0.1.0".into();
    h.event_layout_version = EVENT_LAYOUT_VERSION;
    h.hostname = "test".into();
    h
}

fn footer() -> Footer {
    Footer {
        ended_ns: 10,
        duration_s: 1.0,
        kernel: RecordedCounters {
            seen: 3,
            submitted: 3,
            lost: 0,
            read_errors: 0,
            recursion: Some(vec![
                ProgramMisses {
                    program: "tcptrace_state".into(),
                    misses: Some(2),
                    run_cnt: 0,
                    run_time_ns: 0,
                },
                ProgramMisses {
                    program: "tcptrace_sendmsg".into(),
                    misses: None,
                    run_cnt: 0,
                    run_time_ns: 0,
                },
            ]),
        },
        received: 3,
        decoded: Some(3),
        decode_errors: 0,
        netns: HashMap::new(),
        cgroups: HashMap::from([(1, "/".to_string())]),
    }
}

fn sample() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &header()).expect("header");
    let mut raw = RawEvent::ZERO;
    raw.kind = tracer_common::kind::STATE;
    raw.family = tracer_common::AF_INET;
    raw.old_state = 7;
    raw.new_state = 2;
    for i in 0..3 {
        raw.ts_ns = i;
        w.event(&raw).expect("event");
    }
    w.listed(&[]).expect("listed");
    w.finish(&footer()).expect("footer")
}

fn read_all(bytes: &[u8]) -> anyhow::Result<(Header, Vec<RawEvent>, Footer)> {
    let mut r = Reader::new(bytes)?;
    let mut events = Vec::new();
    while let Some(block) = r.next_block()? {
        if let Block::Events(e) = block {
            events.extend(e);
        }
    }
    let footer = r.footer.clone().ok_or_else(|| anyhow::anyhow!("no footer"))?;
    Ok((r.header, events, footer))
}

#[test]
fn round_trips() {
    let (h, events, f) = read_all(&sample()).expect("valid file");
    assert_eq!(h, header());
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].ts_ns, 2);
    assert_eq!(f, footer());
}

#[test]
fn a_footer_without_decoded_still_reads() {
    let mut json = serde_json::to_value(footer()).expect("json");
    json.as_object_mut().expect("object").remove("decoded");
    let old: Footer = serde_json::from_value(json).expect("older footer");
    assert_eq!(old, Footer { decoded: None, ..footer() });
}

#[test]
fn counters_of_files_written_before_recursion_misses_still_read() {
    // The footer's counters as tcptrace wrote them before it counted
    // recursion misses (format 1 all along: the field is optional).
    let old: RecordedCounters =
        serde_json::from_str(r#"{"seen":3,"submitted":3,"lost":1,"read_errors":0}"#).expect("old footer");
    assert_eq!(old.recursion, None, "unknown, not zero");
    assert_eq!(KernelCounters::from(old).recursion, vec![]);
    // And a reader that does not know the field ignores it.
    #[derive(Deserialize)]
    #[allow(dead_code, reason = "the shape of the old struct")]
    struct Before {
        seen: u64,
        submitted: u64,
        lost: u64,
        read_errors: u64,
    }
    let new = serde_json::to_string(&footer().kernel).expect("json");
    assert!(new.contains(r#""recursion":[{"program":"tcptrace_state","misses":2,"run_cnt":0"#), "{new}");
    // Files written before the run counts: still read, the counts zero.
    let without_runs: crate::pipeline::collect::ProgramMisses =
        serde_json::from_str(r#"{"program":"tcptrace_state","misses":2}"#).expect("older entry");
    assert_eq!((without_runs.run_cnt, without_runs.run_time_ns), (0, 0));
    let before: Before = serde_json::from_str(&new).expect("an older reader");
    assert_eq!(before.seen, 3);
}

#[test]
fn every_truncation_is_a_clear_error() {
    let bytes = sample();
    for len in 0..bytes.len() {
        let err = read_all(&bytes[..len]).expect_err("truncated file must fail");
        let text = format!("{err:#}");
        assert!(text.starts_with("not a valid tcptrace recording"), "at {len}: {text}");
    }
}

#[test]
fn skipping_to_the_footer_finds_it_and_truncation_is_still_an_error() {
    let bytes = sample();
    let mut r = Reader::new(io::Cursor::new(bytes.clone())).expect("header");
    r.skip_to_footer().expect("footer");
    assert_eq!(r.footer, Some(footer()));
    for len in 30..bytes.len() {
        let Ok(mut r) = Reader::new(io::Cursor::new(bytes[..len].to_vec())) else { continue };
        let err = r.skip_to_footer().expect_err("truncated file must fail");
        assert!(format!("{err:#}").starts_with("not a valid tcptrace recording"), "at {len}: {err:#}");
    }
}

#[test]
fn future_versions_and_garbage_are_refused() {
    let mut bytes = sample();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let text = format!("{:#}", read_all(&bytes).expect_err("future format"));
    assert!(text.contains("newer than this tcptrace"), "{text}");
    let text = format!("{:#}", read_all(b"hello world, not a recording").expect_err("garbage"));
    assert!(text.contains("wrong magic"), "{text}");
    let mut trailing = sample();
    trailing.push(0);
    assert!(read_all(&trailing).is_err(), "data after the footer");
}

#[test]
fn random_corruption_never_panics() {
    let bytes = sample();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..5000 {
        let mut copy = bytes.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % copy.len();
            copy[at] = (x >> 32) as u8;
        }
        let _ = read_all(&copy);
    }
}
