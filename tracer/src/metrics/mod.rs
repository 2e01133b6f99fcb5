//! Prometheus exposition for `tcptrace serve`: the tracker's state as
//! counters, gauges and histograms, rebuilt at every tick into a
//! [`Snapshot`] and encoded by `prometheus-client` at every scrape.
//!
//! Label cardinality is bounded per family by a [`budget::Budget`]: the first
//! N label sets seen keep their own series, later ones are summed into a
//! series whose labels all read `other`.

pub mod budget;
pub mod build;

use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder},
    metrics::MetricType,
    registry::{Registry, Unit},
};

/// Label names and values of one series.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(u64),
    /// A counter of a quantity with fractions (seconds).
    FloatCounter(f64),
    Gauge(f64),
    Histogram(Buckets),
}

/// A histogram in Prometheus form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub sum: f64,
    pub count: u64,
    /// `(upper bound, count in this bucket)`, not cumulative; the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

/// Upper bounds for durations, in seconds: sub-millisecond handshakes up to
/// an hour, with 60 s and 63 s around the TIME_WAIT lifetime (60 s plus the
/// timer wheel's slack).
pub const SECONDS_BOUNDS: [f64; 23] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 63.0, 120.0, 300.0, 600.0, 3600.0,
];

/// Upper bounds for retransmits per connection.
pub const COUNT_BOUNDS: [f64; 9] = [0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];

impl Buckets {
    /// Converts an HdrHistogram whose values are `value * scale` in the
    /// exported unit (1e-6 for microseconds to seconds). Each recorded value
    /// is placed by its median equivalent, so the error is the histogram's
    /// own precision (0.1 % or 1 %).
    pub fn from_hdr(h: &Histogram<u64>, bounds: &[f64], scale: f64) -> Self {
        let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
        buckets.push((f64::INFINITY, 0));
        let mut sum = 0.0;
        for v in h.iter_recorded() {
            let value = h.median_equivalent(v.value_iterated_to()) as f64 * scale;
            let count = v.count_at_value();
            sum += value * count as f64;
            let index = bounds.partition_point(|b| *b < value);
            buckets[index].1 += count;
        }
        Self { sum, count: h.len(), buckets }
    }

    pub fn add(&mut self, other: &Buckets) {
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        self.sum += other.sum;
        self.count += other.count;
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.1 += theirs.1;
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub struct Family {
    /// Without the unit and `_total` suffixes, which the encoder adds.
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub kind: MetricType,
    pub series: Vec<Series>,
}

/// Everything `/metrics` shows, as of the last tick.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub families: Vec<Family>,
}

impl Snapshot {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// The snapshot shared between the tracker thread (writes it every tick)
/// and the HTTP server (encodes it on every scrape).
#[derive(Debug, Clone, Default)]
pub struct SharedSnapshot(Arc<Mutex<Snapshot>>);

impl SharedSnapshot {
    pub fn replace(&self, snapshot: Snapshot) {
        // A panic elsewhere cannot leave a half-written snapshot: keep serving.
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// A registry that encodes this snapshot.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        registry
    }
}

impl Collector for SharedSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for family in &snapshot.families {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, family.unit.as_ref(), family.kind)?;
            for series in &family.series {
                if series.labels.is_empty() {
                    encode_value(&mut metric, &series.value)?;
                } else {
                    encode_value(&mut metric.encode_family(&series.labels)?, &series.value)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(encoder: &mut MetricEncoder, value: &Value) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::NoLabelSet;
    match value {
        Value::Counter(v) => encoder.encode_counter::<NoLabelSet, _, u64>(v, None),
        Value::FloatCounter(v) => encoder.encode_counter::<NoLabelSet, _, u64>(v, None),
        Value::Gauge(v) => encoder.encode_gauge(v),
        Value::Histogram(h) => encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None),
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition,
/// for scrapers that do not ask for OpenMetrics (`curl`, `promtool check
/// metrics`, older agents): a counter family is named with its `_total`
/// suffix, as its samples are; `# UNIT` and `# EOF` go.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The OpenMetrics text for `registry`.
pub fn exposition(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a
    // family definition, shown to the scraper rather than hidden.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        text = format!("# tcptrace: encoding failed: {e}\n# EOF\n");
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counter_families_with_total_and_has_no_eof() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 3\n\
                  # HELP b_size Size.\n# TYPE b_size gauge\n# UNIT b_size bytes\nb_size 1.0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 3\n\
             # HELP b_size Size.\n# TYPE b_size gauge\nb_size 1.0\n"
        );
    }

    #[test]
    fn buckets_place_each_value_and_keep_count_and_sum() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 86_400_000_000, 3).unwrap();
        // Microseconds: 80 µs, 3 ms twice, 60.4 s.
        for us in [80, 3_000, 3_000, 60_400_000] {
            h.record(us).unwrap();
        }
        let b = Buckets::from_hdr(&h, &SECONDS_BOUNDS, 1e-6);
        assert_eq!(b.count, 4);
        let count_at = |le: f64| b.buckets.iter().find(|(bound, _)| *bound == le).unwrap().1;
        assert_eq!(count_at(0.0001), 1);
        assert_eq!(count_at(0.005), 2);
        assert_eq!(count_at(63.0), 1);
        assert_eq!(count_at(60.0), 0);
        assert_eq!(b.buckets.iter().map(|(_, c)| c).sum::<u64>(), 4);
        assert!((b.sum - 60.40608).abs() < 60.4 * 0.001, "sum {}", b.sum);
    }

    #[test]
    fn values_beyond_the_last_bound_go_to_inf() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        h.record(500).unwrap();
        let b = Buckets::from_hdr(&h, &COUNT_BOUNDS, 1.0);
        assert_eq!(b.buckets.last(), Some(&(f64::INFINITY, 1)));
    }

    #[test]
    fn exposition_is_openmetrics_with_escaped_labels() {
        let shared = SharedSnapshot::default();
        shared.replace(Snapshot {
            families: vec![
                Family {
                    name: "tcptrace_active_closes",
                    help: "Connections this side closed first.",
                    unit: None,
                    kind: MetricType::Counter,
                    series: vec![Series {
                        labels: vec![("comm", "we\"ird\\\n".into()), ("remote", "198.18.0.2:80".into())],
                        value: Value::Counter(7),
                    }],
                },
                Family {
                    name: "tcptrace_state_dwell",
                    help: "Time spent in a state.",
                    unit: Some(Unit::Seconds),
                    kind: MetricType::Histogram,
                    series: vec![Series {
                        labels: vec![("state", "ESTABLISHED".into())],
                        value: Value::Histogram(Buckets {
                            sum: 1.5,
                            count: 2,
                            buckets: vec![(1.0, 1), (f64::INFINITY, 1)],
                        }),
                    }],
                },
            ],
        });
        let text = exposition(&shared.registry());
        assert!(text.contains("# TYPE tcptrace_active_closes counter"), "{text}");
        assert!(
            text.contains(r#"tcptrace_active_closes_total{comm="we\"ird\\\n",remote="198.18.0.2:80"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tcptrace_state_dwell_seconds_bucket{le="1.0",state="ESTABLISHED"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tcptrace_state_dwell_seconds_bucket{le="+Inf",state="ESTABLISHED"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"tcptrace_state_dwell_seconds_count{state="ESTABLISHED"} 2"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
