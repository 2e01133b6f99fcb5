//! Bounded label cardinality. A family keyed by something unbounded
//! (destinations, listeners, processes) gives its own series to the first N
//! label sets it sees, for the life of the process, and sums every later one
//! into an `other` series. Admission is sticky so that a counter never moves
//! from one series to another: every series stays monotonic, and the family's
//! sum stays the true total.

use std::collections::{BTreeMap, HashSet};

use super::{Buckets, Labels};

/// The label value of the series that sums rows beyond the budget.
pub const OTHER: &str = "other";

/// A value that rows can be summed into.
pub trait Measure: Clone {
    fn merge(&mut self, other: &Self);
    /// Order of admission among label sets first seen together: largest first.
    fn weight(&self) -> f64;
}

impl Measure for u64 {
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
    fn weight(&self) -> f64 {
        *self as f64
    }
}

impl Measure for f64 {
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
    fn weight(&self) -> f64 {
        *self
    }
}

impl Measure for Buckets {
    fn merge(&mut self, other: &Self) {
        self.add(other);
    }
    fn weight(&self) -> f64 {
        self.count as f64
    }
}

#[derive(Debug)]
pub struct Budget {
    cap: usize,
    admitted: HashSet<Vec<String>>,
}

impl Budget {
    pub fn new(cap: usize) -> Self {
        Self { cap, admitted: HashSet::new() }
    }

    /// Series for `rows` (label values in the order of `names`; rows with the
    /// same values are summed): admitted label sets in label order, then
    /// `other` if any row was left out.
    pub fn apply<V: Measure>(
        &mut self,
        names: &[&'static str],
        rows: impl IntoIterator<Item = (Vec<String>, V)>,
    ) -> Vec<(Labels, V)> {
        let mut merged: BTreeMap<Vec<String>, V> = BTreeMap::new();
        for (values, v) in rows {
            // An empty overflow row: no `other` series until something overflows.
            if v.weight() == 0.0 && values.iter().all(|x| x == OTHER) {
                continue;
            }
            match merged.get_mut(&values) {
                Some(existing) => existing.merge(&v),
                None => {
                    merged.insert(values, v);
                }
            }
        }
        // Rows already summed upstream (a table's overflow row) come labelled
        // `other`: they join the other series, never get their own.
        let is_other = |k: &Vec<String>| k.iter().all(|v| v == OTHER);
        let mut newcomers: Vec<(&Vec<String>, f64)> = merged
            .iter()
            .filter(|(k, _)| !self.admitted.contains(*k) && !is_other(k))
            .map(|(k, v)| (k, v.weight()))
            .collect();
        newcomers.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let room = self.cap.saturating_sub(self.admitted.len());
        let admit: Vec<Vec<String>> = newcomers.into_iter().take(room).map(|(k, _)| k.clone()).collect();
        self.admitted.extend(admit);

        let label = |values: Vec<String>| -> Labels { names.iter().copied().zip(values).collect() };
        let mut series = Vec::new();
        let mut other: Option<V> = None;
        for (values, v) in merged {
            if self.admitted.contains(&values) {
                series.push((label(values), v));
            } else {
                match other.as_mut() {
                    Some(o) => o.merge(&v),
                    None => other = Some(v),
                }
            }
        }
        if let Some(v) = other {
            series.push((label(vec![OTHER.to_string(); names.len()]), v));
        }
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(a: &str, n: u64) -> (Vec<String>, u64) {
        (vec![a.to_string()], n)
    }

    fn values(series: &[(Labels, u64)]) -> Vec<(String, u64)> {
        series.iter().map(|(l, v)| (l[0].1.clone(), *v)).collect()
    }

    #[test]
    fn first_seen_are_admitted_largest_first_and_the_rest_is_other() {
        let mut budget = Budget::new(2);
        let s = budget.apply(&["remote"], [row("a", 1), row("b", 5), row("c", 3), row("b", 1)]);
        assert_eq!(values(&s), [("b".into(), 6), ("c".into(), 3), ("other".into(), 1)]);
    }

    #[test]
    fn admission_is_sticky_so_counters_stay_monotonic() {
        let mut budget = Budget::new(2);
        budget.apply(&["remote"], [row("a", 1), row("b", 1)]);
        // "c" overtakes both: it still goes to other, and a and b keep their series.
        let s = budget.apply(&["remote"], [row("a", 2), row("b", 2), row("c", 100)]);
        assert_eq!(values(&s), [("a".into(), 2), ("b".into(), 2), ("other".into(), 100)]);
        let total: u64 = s.iter().map(|(_, v)| v).sum();
        assert_eq!(total, 104);
    }

    #[test]
    fn rows_already_labelled_other_join_the_other_series() {
        let mut budget = Budget::new(5);
        let s = budget.apply(&["remote"], [row("other", 4), row("a", 1)]);
        assert_eq!(values(&s), [("a".into(), 1), ("other".into(), 4)]);
    }

    #[test]
    fn no_other_series_while_everything_fits() {
        let mut budget = Budget::new(5);
        let s = budget.apply(&["remote", "comm"], [(vec!["x".into(), "curl".into()], 1u64)]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, vec![("remote", "x".to_string()), ("comm", "curl".to_string())]);
    }
}
