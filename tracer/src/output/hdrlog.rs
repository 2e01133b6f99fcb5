//! `--hdr-log FILE`: every histogram in the standard HdrHistogram interval
//! log format (what HdrHistogram's plotting and analysis tools read), one
//! interval per `--interval`, each tagged with the histogram's name.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::{
    Histogram,
    serialization::{
        V2DeflateSerializer,
        interval_log::{IntervalLogWriterBuilder, Tag},
    },
};

use crate::{
    host::clock::Clock,
    track::{DWELL_STATES, Tracker},
};

pub struct HdrLog {
    out: BufWriter<File>,
    clock: Clock,
    /// CLOCK_MONOTONIC at the start: interval timestamps count from here.
    base_ns: u64,
    last_ns: u64,
    headers_done: bool,
    previous: HashMap<String, Histogram<u64>>,
}

/// The histograms written, by tag (tags may not contain spaces or commas).
pub fn histograms(tracker: &Tracker) -> Vec<(String, &Histogram<u64>)> {
    let mut all: Vec<(String, &Histogram<u64>)> = DWELL_STATES
        .iter()
        .zip(&tracker.dwell)
        .map(|((_, name), h)| (format!("dwell_{name}"), h.inner()))
        .collect();
    all.push(("connection_lifetime".into(), tracker.lifetime.inner()));
    all.push(("syn_recv_request".into(), tracker.synrecv.dwell.inner()));
    all.push(("time_wait_lifetime".into(), tracker.timewait.lifetime.inner()));
    all.push(("retransmits_per_connection".into(), tracker.retrans.per_connection.inner()));
    all
}

impl HdrLog {
    pub fn create(path: &Path, clock: Clock, started_ns: u64) -> io::Result<Self> {
        let out = BufWriter::new(File::create(path)?);
        Ok(Self {
            out,
            clock,
            base_ns: started_ns,
            last_ns: started_ns,
            headers_done: false,
            previous: HashMap::new(),
        })
    }

    /// Writes what each histogram gained since the previous interval.
    pub fn interval(&mut self, tracker: &Tracker, now_ns: u64) -> io::Result<()> {
        let mut serializer = V2DeflateSerializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        if !self.headers_done {
            let base = self.clock.wall(self.base_ns);
            builder
                .add_comment("tcptrace: TCP state dwell and lifetimes, microseconds; retransmits per connection, count")
                .with_start_time(base)
                .with_base_time(base);
            self.headers_done = true;
        }
        let mut writer = builder.begin_log_with(&mut self.out, &mut serializer)?;
        let start = Duration::from_nanos(self.last_ns.saturating_sub(self.base_ns));
        let length = Duration::from_nanos(now_ns.saturating_sub(self.last_ns));
        for (tag, histogram) in histograms(tracker) {
            let mut delta = histogram.clone();
            if let Some(prev) = self.previous.get(&tag) {
                // Cumulative histograms only grow: the subtraction cannot underflow.
                let _ = delta.subtract(prev);
            }
            self.previous.insert(tag.clone(), histogram.clone());
            writer
                .write_histogram(&delta, start, length, Tag::new(&tag))
                .map_err(|e| io::Error::other(format!("{e}")))?;
        }
        self.last_ns = now_ns;
        self.out.flush()
    }
}

/// Seconds since the epoch of a SystemTime (for tests reading the log).
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use hdrhistogram::serialization::{
        Deserializer,
        interval_log::{IntervalLogIterator, LogEntry},
    };

    use super::*;
    use crate::track::{Limits, tests::*};

    #[test]
    fn writes_readable_interval_logs_of_deltas() {
        let path = std::env::temp_dir().join(format!("tcptrace-hdr-{}.hlog", std::process::id()));
        let clock = Clock::with_offset_ns(1_700_000_000_000_000_000);
        let mut t = Tracker::new(Limits::default(), true);
        let mut log = HdrLog::create(&path, clock, 0).expect("create");
        let c = Sock::new(1, "198.18.0.1:40000", "198.18.0.2:8080");
        let client = task(1, "c");
        use crate::event::TcpState::*;
        t.handle(&c.by(0, Close, SynSent, client));
        t.handle(&c.irq(2, SynSent, Established));
        log.interval(&t, 1_000 * MS).expect("interval 1");
        let d = Sock::new(2, "198.18.0.1:40001", "198.18.0.2:8080");
        t.handle(&d.by(1_100, Close, SynSent, client));
        t.handle(&d.irq(1_105, SynSent, Established));
        log.interval(&t, 2_000 * MS).expect("interval 2");
        drop(log);

        let text = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        let mut deserializer = Deserializer::new();
        let mut syn_sent = Vec::new();
        for entry in IntervalLogIterator::new(&text) {
            if let Ok(LogEntry::Interval(h)) = entry
                && h.tag().map(|t| t.as_str()) == Some("dwell_SYN_SENT")
            {
                let bytes = base64_decode(h.encoded_histogram());
                let hist: Histogram<u64> = deserializer.deserialize(&mut &bytes[..]).expect("histogram");
                syn_sent.push((h.start_timestamp().as_secs_f64(), hist.len(), hist.max()));
            }
        }
        assert_eq!(syn_sent.len(), 2, "one interval each");
        assert_eq!((syn_sent[0].1, syn_sent[1].1), (1, 1), "each interval holds only its own sample");
        assert!(syn_sent[0].2.abs_diff(2000) <= 2 && syn_sent[1].2.abs_diff(5000) <= 5);
        assert!((syn_sent[1].0 - 1.0).abs() < 1e-6, "second interval starts 1 s after the base");
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}
