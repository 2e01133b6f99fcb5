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

use std::{
    collections::HashMap,
    io::{self, Read, Seek, Write},
};

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tracer_ebpf::{EVENT_LAYOUT_VERSION, RAW_EVENT_SIZE, RawEvent};

use crate::{
    collect::KernelCounters, decode, error::EnvError, event::Tuple, netns::NetnsFacts, snapshot::ListedSocket,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footer {
    /// CLOCK_MONOTONIC at the end of tracing.
    pub ended_ns: u64,
    pub duration_s: f64,
    pub kernel: RecordedCounters,
    pub received: u64,
    pub decode_errors: u64,
    /// Namespace facts at the end.
    pub netns: HashMap<u32, NetnsFacts>,
    /// cgroup v2 paths of the cgroup ids seen in events.
    pub cgroups: HashMap<u64, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedCounters {
    pub seen: u64,
    pub submitted: u64,
    pub lost: u64,
    pub read_errors: u64,
}

impl From<KernelCounters> for RecordedCounters {
    fn from(k: KernelCounters) -> Self {
        Self { seen: k.seen, submitted: k.submitted, lost: k.lost, read_errors: k.read_errors }
    }
}

impl From<RecordedCounters> for KernelCounters {
    fn from(r: RecordedCounters) -> Self {
        Self { seen: r.seen, submitted: r.submitted, lost: r.lost, read_errors: r.read_errors }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ListedEntry {
    netns: u32,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    cookie: u64,
    state: u8,
}

/// Writes a recording. Blocks go out as they are complete.
pub struct Writer<W: Write> {
    out: W,
    events: BytesMut,
    pending: usize,
    pub events_written: u64,
}

fn json_error(e: serde_json::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        let mut writer = Self { out, events: BytesMut::new(), pending: 0, events_written: 0 };
        writer.block(TAG_HEADER, &serde_json::to_vec(header).map_err(json_error)?)?;
        Ok(writer)
    }

    fn block(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("block too large"))?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(payload)
    }

    pub fn event(&mut self, raw: &RawEvent) -> io::Result<()> {
        self.events.put_slice(&decode::raw_to_bytes(raw));
        self.pending += 1;
        self.events_written += 1;
        if self.pending >= EVENTS_PER_BLOCK {
            self.flush_events()?;
        }
        Ok(())
    }

    pub fn flush_events(&mut self) -> io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let payload = self.events.split().freeze();
        self.pending = 0;
        self.block(TAG_EVENTS, &payload)
    }

    pub fn listed(&mut self, listed: &[ListedSocket]) -> io::Result<()> {
        self.flush_events()?;
        let entries: Vec<ListedEntry> = listed
            .iter()
            .map(|s| ListedEntry {
                netns: s.netns,
                local: s.tuple.local,
                remote: s.tuple.remote,
                cookie: s.cookie,
                state: s.state,
            })
            .collect();
        self.block(TAG_LISTED, &serde_json::to_vec(&entries).map_err(json_error)?)
    }

    pub fn finish(mut self, footer: &Footer) -> io::Result<W> {
        self.flush_events()?;
        self.block(TAG_FOOTER, &serde_json::to_vec(footer).map_err(json_error)?)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One block of a recording, decoded.
#[derive(Debug)]
pub enum Block {
    Events(Vec<RawEvent>),
    Listed(Vec<ListedSocket>),
}

/// Reads and validates a recording.
pub struct Reader<R: Read> {
    input: R,
    pub header: Header,
    pub footer: Option<Footer>,
}

fn corrupt(what: impl Into<String>) -> anyhow::Error {
    EnvError::new(format!("not a valid tcptrace recording: {}", what.into())).into()
}

/// Reads exactly `buf.len()` bytes; a short read is a truncated file.
fn read_exact_or_truncated<R: Read>(input: &mut R, buf: &mut [u8], what: &str) -> anyhow::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(corrupt(format!("truncated in the middle of {what}"))),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvError::new(format!("cannot read recording: {e}")).into()),
        }
    }
    Ok(true)
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> anyhow::Result<Self> {
        let mut start = [0u8; 12];
        if !read_exact_or_truncated(&mut input, &mut start, "the file header")? {
            return Err(corrupt("empty file"));
        }
        if &start[..8] != MAGIC {
            return Err(corrupt("wrong magic bytes (not made by tcptrace record)"));
        }
        let version = (&start[8..12]).get_u32_le();
        if version > FORMAT_VERSION {
            return Err(EnvError::new(format!(
                "recording format {version} is newer than this tcptrace understands ({FORMAT_VERSION}); \
                 use a newer tcptrace"
            ))
            .into());
        }
        if version == 0 {
            return Err(corrupt("format version 0"));
        }
        let mut reader = Self { input, header: empty_header(), footer: None };
        match reader.raw_block()? {
            Some((TAG_HEADER, payload)) => {
                reader.header =
                    serde_json::from_slice(&payload).map_err(|e| corrupt(format!("header: {e}")))?;
            }
            _ => return Err(corrupt("no header block")),
        }
        if reader.header.event_layout_version != EVENT_LAYOUT_VERSION {
            return Err(EnvError::new(format!(
                "recording uses event layout {} but this tcptrace reads layout {EVENT_LAYOUT_VERSION}",
                reader.header.event_layout_version
            ))
            .into());
        }
        Ok(reader)
    }

    fn raw_block(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        let mut head = [0u8; 5];
        if !read_exact_or_truncated(&mut self.input, &mut head, "a block header")? {
            return Ok(None);
        }
        let tag = head[0];
        let len = (&head[1..5]).get_u32_le();
        if len > MAX_BLOCK {
            return Err(corrupt(format!("block of {len} bytes (at most {MAX_BLOCK})")));
        }
        let mut payload = vec![0u8; len as usize];
        if len > 0 && !read_exact_or_truncated(&mut self.input, &mut payload, "a block")? {
            return Err(corrupt("truncated after a block header"));
        }
        Ok(Some((tag, payload)))
    }

    /// Reads only as far as the footer, seeking over event blocks (a replay
    /// needs the footer before the events; decoding them twice would double
    /// its cost). Corrupt event blocks are found by the pass that reads them.
    pub fn skip_to_footer(&mut self) -> anyhow::Result<()>
    where
        R: Seek,
    {
        while self.footer.is_none() {
            let mut head = [0u8; 5];
            if !read_exact_or_truncated(&mut self.input, &mut head, "a block header")? {
                return Err(corrupt("truncated: no footer (the recording was interrupted)"));
            }
            let len = (&head[1..5]).get_u32_le();
            if head[0] == TAG_EVENTS && len <= MAX_BLOCK {
                self.input
                    .seek(io::SeekFrom::Current(i64::from(len)))
                    .map_err(|e| EnvError::new(format!("cannot read recording: {e}")))?;
            } else {
                // Anything else is small (or invalid): the normal path judges it.
                self.input
                    .seek(io::SeekFrom::Current(-5))
                    .map_err(|e| EnvError::new(format!("cannot read recording: {e}")))?;
                self.next_block()?;
            }
        }
        Ok(())
    }

    /// The next events or listing block; None after the footer. A file
    /// without a footer (the recording was interrupted) is an error.
    pub fn next_block(&mut self) -> anyhow::Result<Option<Block>> {
        if self.footer.is_some() {
            return Ok(None);
        }
        let Some((tag, payload)) = self.raw_block()? else {
            return Err(corrupt("truncated: no footer (the recording was interrupted)"));
        };
        match tag {
            TAG_EVENTS => {
                if payload.len() % RAW_EVENT_SIZE != 0 {
                    return Err(corrupt(format!("events block of {} bytes", payload.len())));
                }
                let events = payload
                    .chunks_exact(RAW_EVENT_SIZE)
                    .map(decode::raw_from_bytes)
                    .collect::<Result<_, _>>();
                Ok(Some(Block::Events(events.map_err(|e| corrupt(e.to_string()))?)))
            }
            TAG_LISTED => {
                let entries: Vec<ListedEntry> =
                    serde_json::from_slice(&payload).map_err(|e| corrupt(format!("listing: {e}")))?;
                Ok(Some(Block::Listed(
                    entries
                        .into_iter()
                        .map(|e| ListedSocket {
                            netns: e.netns,
                            tuple: Tuple { local: e.local, remote: e.remote },
                            cookie: e.cookie,
                            state: e.state,
                        })
                        .collect(),
                )))
            }
            TAG_FOOTER => {
                self.footer =
                    Some(serde_json::from_slice(&payload).map_err(|e| corrupt(format!("footer: {e}")))?);
                let mut rest = [0u8; 1];
                if read_exact_or_truncated(&mut self.input, &mut rest, "trailing data")? {
                    return Err(corrupt("data after the footer"));
                }
                Ok(None)
            }
            TAG_HEADER => Err(corrupt("a second header")),
            other => Err(corrupt(format!("unknown block type {other}"))),
        }
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
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            kernel: RecordedCounters { seen: 3, submitted: 3, lost: 0, read_errors: 0 },
            received: 3,
            decode_errors: 0,
            netns: HashMap::new(),
            cgroups: HashMap::from([(1, "/".to_string())]),
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).expect("header");
        let mut raw = RawEvent::ZERO;
        raw.kind = tracer_ebpf::kind::STATE;
        raw.family = tracer_ebpf::AF_INET;
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
}
