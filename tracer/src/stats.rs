//! Latency histograms (HdrHistogram, microseconds) and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value recorded exactly: one day in microseconds. Larger values are
/// clamped (a socket that lives longer is reported as "at least a day").
pub const MAX_US: u64 = 86_400_000_000;

/// A histogram of durations in microseconds.
#[derive(Clone, Debug)]
pub struct Histo {
    inner: Histogram<u64>,
}

/// Precision of a histogram: global ones keep 3 significant digits (0.1%),
/// per-row ones (per listener, per destination) 2 digits (1%) to stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fine,
    Coarse,
}

impl Histo {
    pub fn new(precision: Precision) -> Self {
        let sigfig = match precision {
            Precision::Fine => 3,
            Precision::Coarse => 2,
        };
        // Bounds are constants that hdrhistogram accepts; failure is a bug.
        let inner = Histogram::new_with_bounds(1, MAX_US, sigfig).expect("valid histogram bounds");
        Self { inner }
    }

    pub fn record_us(&mut self, us: u64) {
        self.inner.saturating_record(us.clamp(1, MAX_US));
    }

    /// Records a plain value (a count): zero allowed, clamped at the top.
    pub fn record_value(&mut self, value: u64) {
        self.inner.saturating_record(value.min(MAX_US));
    }

    pub fn record_ns(&mut self, ns: u64) {
        // Round to the nearest microsecond; sub-microsecond dwell counts as 1 µs.
        self.record_us((ns + 500) / 1000);
    }

    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    pub fn add(&mut self, other: &Histo) {
        // Same bounds on both sides: cannot fail.
        let _ = self.inner.add(&other.inner);
    }

    pub fn inner(&self) -> &Histogram<u64> {
        &self.inner
    }

    pub fn summary(&self) -> Summary {
        let h = &self.inner;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// Counts per power-of-two bucket `[2^k, 2^(k+1))` µs, from the first to
    /// the last non-empty bucket: `(low_us, high_us, count)`.
    pub fn log2_buckets(&self) -> Vec<(u64, u64, u64)> {
        let mut buckets: Vec<(u64, u64, u64)> = Vec::new();
        for v in self.inner.iter_recorded() {
            let value = v.value_iterated_to();
            let k = 63 - value.max(1).leading_zeros();
            let low = 1u64 << k;
            match buckets.last_mut() {
                Some(last) if last.0 == low => last.2 += v.count_at_value(),
                _ => {
                    // Fill the gap with empty buckets so the shape is visible.
                    if let Some(&(prev_low, ..)) = buckets.last() {
                        let mut l = prev_low << 1;
                        while l < low {
                            buckets.push((l, l << 1, 0));
                            l <<= 1;
                        }
                    }
                    buckets.push((low, low << 1, v.count_at_value()));
                }
            }
        }
        buckets
    }
}

/// Percentiles in microseconds, as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Human duration from microseconds: `850µs`, `12.5ms`, `1.02s`, `61.6s`, `3.0min`.
pub fn human_us(us: u64) -> String {
    let us_f = us as f64;
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        trim(us_f / 1e3, "ms")
    } else if us < 120_000_000 {
        trim(us_f / 1e6, "s")
    } else if us < 7_200_000_000 {
        format!("{:.1}min", us_f / 6e7)
    } else {
        format!("{:.1}h", us_f / 3.6e9)
    }
}

fn trim(value: f64, unit: &str) -> String {
    if value >= 100.0 {
        format!("{value:.0}{unit}")
    } else if value >= 10.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.2}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut h = Histo::new(Precision::Fine);
        for us in 1..=1000 {
            h.record_us(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!((s.min, s.max), (1, 1000));
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert!((s.mean - 500.5).abs() < 0.6, "mean {}", s.mean);
    }

    #[test]
    fn precision_is_within_a_tenth_of_a_percent() {
        let mut h = Histo::new(Precision::Fine);
        h.record_us(150_000);
        h.record_us(400_000);
        h.record_us(60_000_000);
        let s = h.summary();
        assert!(s.min.abs_diff(150_000) <= 150, "{}", s.min);
        assert!(s.p50.abs_diff(400_000) <= 400, "{}", s.p50);
        assert!(s.max.abs_diff(60_000_000) <= 60_000, "{}", s.max);
    }

    #[test]
    fn clamps_instead_of_failing() {
        let mut h = Histo::new(Precision::Coarse);
        h.record_us(0);
        h.record_us(u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.summary().min, 1);
        assert!(h.summary().max >= MAX_US);
    }

    #[test]
    fn nanoseconds_round_to_microseconds() {
        let mut h = Histo::new(Precision::Fine);
        h.record_ns(7_400);
        h.record_ns(7_600);
        let s = h.summary();
        assert_eq!((s.min, s.max), (7, 8));
    }

    #[test]
    fn log2_buckets_cover_the_range_without_holes() {
        let mut h = Histo::new(Precision::Fine);
        h.record_us(3); // [2,4)
        h.record_us(40); // [32,64)
        h.record_us(41);
        let b = h.log2_buckets();
        assert_eq!(b.first(), Some(&(2, 4, 1)));
        assert_eq!(b.last(), Some(&(32, 64, 2)));
        assert_eq!(b.len(), 5, "{b:?}");
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), 3);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(12_500), "12.5ms");
        assert_eq!(human_us(1_020_000), "1.02s");
        assert_eq!(human_us(61_600_000), "61.6s");
        assert_eq!(human_us(180_000_000), "3.0min");
    }
}
