//! The run report: JSON with the fields API.md names, the serialized HDR
//! histograms (so several generators' reports merge exactly — percentiles are
//! never averaged), per-second series, and the generator's verdict on itself.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Histograms hold microseconds from 1 µs to 1 hour at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Milliseconds from a microsecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of the run (by intended send time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the Unix epoch.
    pub unix_second: u64,
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub dropped: u64,
    /// Largest latency from intended send time among this second's requests.
    pub max_latency_ms: f64,
}

impl Second {
    pub fn absorb(&mut self, other: &Second) {
        self.sent += other.sent;
        self.completed += other.completed;
        self.errors += other.errors;
        self.dropped += other.dropped;
        self.max_latency_ms = self.max_latency_ms.max(other.max_latency_ms);
    }
}

/// Serialized histograms (HdrHistogram V2, deflated, base64).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EncodedHistograms {
    pub latency_us: String,
    pub service_us: String,
    pub lag_us: String,
}

pub fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    // Serializing into memory cannot fail for a valid histogram.
    let _ = V2DeflateSerializer::new().serialize(h, &mut buf);
    STANDARD.encode(buf)
}

pub fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = STANDARD.decode(text)?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// CPU time the generator process used (user + system), seconds.
    pub cpu_seconds: f64,
    /// Generator threads.
    pub threads: usize,
    /// cpu_seconds / (elapsed × threads).
    pub utilisation: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub scenario: String,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub duration_s: f64,
    pub start_unix_ms: u64,
    /// Requests handed to the network.
    pub sent: u64,
    /// Requests that got an HTTP response (any status).
    pub completed: u64,
    /// Non-2xx responses and transport failures.
    pub errors: u64,
    /// Sends not made because the in-flight cap was reached.
    pub dropped: u64,
    pub error_rate: f64,
    /// `connect`, `timeout`, `io`, `status_503`, …
    pub errors_by_class: BTreeMap<String, u64>,
    pub status_counts: BTreeMap<String, u64>,
    /// From the intended send time (no coordinated omission).
    pub latency_ms: Percentiles,
    /// From the actual send.
    pub service_time_ms: Percentiles,
    /// Actual minus intended send time: the generator's own health.
    pub schedule_lag_ms: Percentiles,
    pub generator_saturated: bool,
    pub saturation_reasons: Vec<String>,
    pub generator_cpu: Vec<Cpu>,
    pub timeseries: Vec<Second>,
    pub histograms: EncodedHistograms,
}

/// Limits beyond which the generator does not trust its own run.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    pub max_lag_p99_ms: f64,
    pub min_rate_fraction: f64,
    pub max_cpu_utilisation: f64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            max_lag_p99_ms: 5.0,
            min_rate_fraction: 0.95,
            max_cpu_utilisation: 0.9,
        }
    }
}

impl Report {
    /// Sets the error rate (from the counts), the percentiles and the
    /// serialized histograms from the three merged histograms.
    pub fn set_distributions(
        &mut self,
        latency: &Histogram<u64>,
        service: &Histogram<u64>,
        lag: &Histogram<u64>,
    ) {
        self.error_rate = if self.sent > 0 {
            self.errors as f64 / self.sent as f64
        } else {
            0.0
        };
        self.latency_ms = Percentiles::of(latency);
        self.service_time_ms = Percentiles::of(service);
        self.schedule_lag_ms = Percentiles::of(lag);
        self.histograms = EncodedHistograms {
            latency_us: encode(latency),
            service_us: encode(service),
            lag_us: encode(lag),
        };
    }

    /// Recomputes the verdict from the figures.
    pub fn judge(&mut self, health: Health) {
        let mut reasons = Vec::new();
        if self.schedule_lag_ms.p99 > health.max_lag_p99_ms {
            reasons.push(format!(
                "schedule lag p99 {:.2} ms > {:.2} ms: sends left later than intended",
                self.schedule_lag_ms.p99, health.max_lag_p99_ms
            ));
        }
        if self.dropped > 0 {
            reasons.push(format!(
                "{} sends dropped at the in-flight cap",
                self.dropped
            ));
        }
        if self.achieved_rate < self.target_rate * health.min_rate_fraction {
            reasons.push(format!(
                "achieved {:.0}/s < {:.0}% of the target {:.0}/s",
                self.achieved_rate,
                health.min_rate_fraction * 100.0,
                self.target_rate
            ));
        }
        for cpu in &self.generator_cpu {
            if cpu.utilisation > health.max_cpu_utilisation {
                reasons.push(format!(
                    "generator CPU at {:.0}% of its {} thread(s)",
                    cpu.utilisation * 100.0,
                    cpu.threads
                ));
            }
        }
        self.generator_saturated = !reasons.is_empty();
        self.saturation_reasons = reasons;
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "target {} ({}): {:.0}/s intended, {:.0}/s achieved over {:.1} s\n\
             sent {}  completed {}  errors {} ({:.3}%)  dropped {}\n\
             latency from intended send (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             service time (ms):               p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             schedule lag (ms):               p50 {:.2}  p99 {:.2}  max {:.2}\n",
            self.target,
            self.scenario,
            self.target_rate,
            self.achieved_rate,
            self.duration_s,
            self.sent,
            self.completed,
            self.errors,
            self.error_rate * 100.0,
            self.dropped,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max,
            self.service_time_ms.p50,
            self.service_time_ms.p90,
            self.service_time_ms.p99,
            self.service_time_ms.p999,
            self.service_time_ms.max,
            self.schedule_lag_ms.p50,
            self.schedule_lag_ms.p99,
            self.schedule_lag_ms.max,
        );
        if !self.errors_by_class.is_empty() {
            s.push_str(&format!("errors by class: {:?}\n", self.errors_by_class));
        }
        if self.generator_saturated {
            s.push_str("GENERATOR SATURATED: these figures describe the generator as much as the target:\n");
            for r in &self.saturation_reasons {
                s.push_str(&format!("  - {r}\n"));
            }
        } else {
            s.push_str("generator healthy: it kept its schedule.\n");
        }
        s
    }
}

/// Merges reports of generators that ran together (e.g. one per pod):
/// counts and rates add up, histograms are added exactly and percentiles are
/// recomputed from them, per-second series are added by wall-clock second.
pub fn merge(reports: &[Report], health: Health) -> anyhow::Result<Report> {
    let first = reports
        .first()
        .ok_or_else(|| anyhow::anyhow!("nothing to merge"))?;
    let (mut lat, mut svc, mut lag) = (new_histogram(), new_histogram(), new_histogram());
    let mut out = Report {
        target: first.target.clone(),
        scenario: first.scenario.clone(),
        start_unix_ms: reports
            .iter()
            .map(|r| r.start_unix_ms)
            .min()
            .unwrap_or_default(),
        ..Report::default()
    };
    let mut seconds: BTreeMap<u64, Second> = BTreeMap::new();
    for r in reports {
        out.target_rate += r.target_rate;
        out.achieved_rate += r.achieved_rate;
        out.duration_s = out.duration_s.max(r.duration_s);
        out.sent += r.sent;
        out.completed += r.completed;
        out.errors += r.errors;
        out.dropped += r.dropped;
        add_counts(&mut out.errors_by_class, &r.errors_by_class);
        add_counts(&mut out.status_counts, &r.status_counts);
        lat.add(decode(&r.histograms.latency_us)?)?;
        svc.add(decode(&r.histograms.service_us)?)?;
        lag.add(decode(&r.histograms.lag_us)?)?;
        out.generator_cpu.extend(r.generator_cpu.iter().cloned());
        for s in &r.timeseries {
            seconds
                .entry(s.unix_second)
                .or_insert_with(|| Second {
                    unix_second: s.unix_second,
                    ..Second::default()
                })
                .absorb(s);
        }
    }
    out.set_distributions(&lat, &svc, &lag);
    out.timeseries = seconds.into_values().collect();
    out.judge(health);
    // A merged run is saturated if any of its generators was.
    for (i, r) in reports.iter().enumerate() {
        if r.generator_saturated {
            out.generator_saturated = true;
            for reason in &r.saturation_reasons {
                out.saturation_reasons
                    .push(format!("report {}: {reason}", i + 1));
            }
        }
    }
    Ok(out)
}

/// Adds the counts of `from` into `into`, key by key.
pub(crate) fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(samples: &[u64]) -> Report {
        let mut h = new_histogram();
        for s in samples {
            h.record(*s).expect("in range");
        }
        Report {
            target_rate: 100.0,
            achieved_rate: 100.0,
            sent: samples.len() as u64,
            completed: samples.len() as u64,
            latency_ms: Percentiles::of(&h),
            service_time_ms: Percentiles::of(&h),
            histograms: EncodedHistograms {
                latency_us: encode(&h),
                service_us: encode(&h),
                lag_us: encode(&new_histogram()),
            },
            ..Report::default()
        }
    }

    #[test]
    fn merging_equals_one_combined_histogram() {
        // Two generators with very different latency profiles.
        let a: Vec<u64> = (1..=9_000).map(|i| 100 + i % 500).collect();
        let b: Vec<u64> = (1..=1_000).map(|i| 20_000 + i * 37).collect();
        let all: Vec<u64> = a.iter().chain(&b).copied().collect();
        let merged = merge(&[report_of(&a), report_of(&b)], Health::default()).expect("merge");
        let combined = report_of(&all);
        assert_eq!(merged.latency_ms, combined.latency_ms);
        assert_eq!(merged.sent, 10_000);
        assert_eq!(merged.target_rate, 200.0);
        // Averaging the two p99s would have said something very different.
        let averaged = (report_of(&a).latency_ms.p99 + report_of(&b).latency_ms.p99) / 2.0;
        assert!((averaged - merged.latency_ms.p99).abs() > 5.0);
    }

    #[test]
    fn histograms_survive_json() {
        let r = report_of(&[5, 50, 500, 5_000, 50_000]);
        let back: Report =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        let h = decode(&back.histograms.latency_us).expect("decode");
        assert_eq!(h.len(), 5);
        assert_eq!(Percentiles::of(&h), r.latency_ms);
    }

    #[test]
    fn verdict() {
        let mut r = report_of(&[1000]);
        r.judge(Health::default());
        assert!(!r.generator_saturated, "{:?}", r.saturation_reasons);
        r.dropped = 3;
        r.achieved_rate = 50.0;
        r.schedule_lag_ms.p99 = 12.0;
        r.generator_cpu = vec![Cpu {
            cpu_seconds: 10.0,
            threads: 1,
            utilisation: 0.97,
        }];
        r.judge(Health::default());
        assert!(r.generator_saturated);
        assert_eq!(r.saturation_reasons.len(), 4, "{:?}", r.saturation_reasons);
        assert!(r.summary().contains("GENERATOR SATURATED"));
    }
}
