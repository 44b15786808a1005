//! Latency histograms: HDR histograms of nanoseconds, merged across threads and processes, reported in microseconds.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// A latency histogram (1 ns to 1 hour, 3 significant digits).
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap_or_else(|_| unreachable!()),
        )
    }
}

impl Latency {
    /// Records one latency in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    /// The samples as `[[value_ns, count], ...]`, to cross a process boundary.
    pub fn to_json(&self) -> Value {
        let pairs: Vec<Value> = self
            .0
            .iter_recorded()
            .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
            .collect();
        Value::from(pairs)
    }

    /// Rebuilds a histogram from [`Latency::to_json`].
    pub fn from_json(value: &Value) -> Latency {
        let mut latency = Latency::default();
        for pair in value.as_array().into_iter().flatten() {
            if let (Some(v), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                let _ = latency.0.record_n(v.max(1), n);
            }
        }
        latency
    }

    /// p50, p99, p99.9 and max in microseconds.
    pub fn summary(&self) -> Value {
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        if self.0.is_empty() {
            return json!({"count": 0});
        }
        json!({
            "count": self.0.len(),
            "p50_us": us(self.0.value_at_quantile(0.5)),
            "p99_us": us(self.0.value_at_quantile(0.99)),
            "p999_us": us(self.0.value_at_quantile(0.999)),
            "max_us": us(self.0.max()),
        })
    }
}
