//! What a run measures: HDR histograms of latencies (microseconds, from the
//! intended send time, so a slow server cannot hide behind a slow
//! generator), per-RPC latency, errors by status code, and counters for the
//! progress bar.
//!
//! One `std::sync::Mutex` guards the histograms: recording takes a few
//! hundred nanoseconds and never awaits while holding it, and the tool runs
//! on one core, so there is nothing to gain from sharding.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use switchboard_proto::code_name;
use tonic::Code;

/// Highest latency a histogram holds: longer ones are clamped, which only
/// matters for a run that is broken anyway.
const HIGHEST_MICROS: u64 = 300_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // Three significant figures over 1 µs .. 300 s: a few hundred KiB each.
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, HIGHEST_MICROS));
}

/// The latency series a hand-off run records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// Request → first offer on the agent stream, any request.
    RequestToOffer,
    /// ... for requests the server offered at once (an agent was free).
    RequestToOfferImmediate,
    /// ... for requests the server queued first.
    RequestToOfferQueued,
    /// Request → the agent's accept answered (includes the think time).
    RequestToAssignedAgent,
    /// Request → `assigned` seen on the gateway's watch stream (a sample).
    RequestToAssignedWatch,
    /// The generator's own lag behind its schedule.
    ScheduleLag,
}

impl Series {
    pub const ALL: [Series; 6] = [
        Series::RequestToOffer,
        Series::RequestToOfferImmediate,
        Series::RequestToOfferQueued,
        Series::RequestToAssignedAgent,
        Series::RequestToAssignedWatch,
        Series::ScheduleLag,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Series::RequestToOffer => "request → offer (all)",
            Series::RequestToOfferImmediate => "request → offer (agent free at once)",
            Series::RequestToOfferQueued => "request → offer (queued first)",
            Series::RequestToAssignedAgent => "request → assigned (accept answered)",
            Series::RequestToAssignedWatch => "request → assigned (watch stream)",
            Series::ScheduleLag => "generator schedule lag",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Series::RequestToOffer => "request_to_offer",
            Series::RequestToOfferImmediate => "request_to_offer_immediate",
            Series::RequestToOfferQueued => "request_to_offer_queued",
            Series::RequestToAssignedAgent => "request_to_assigned_agent",
            Series::RequestToAssignedWatch => "request_to_assigned_watch",
            Series::ScheduleLag => "schedule_lag",
        }
    }
}

/// Counters the progress bar reads while the run goes on.
#[derive(Default)]
pub struct Counters {
    pub requested: AtomicU64,
    pub offered: AtomicU64,
    pub assigned: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub declined: AtomicU64,
    pub missed: AtomicU64,
    pub errors: AtomicU64,
    pub agents_online: AtomicU64,
    /// Agents that have had their first snapshot (churn does not lower it).
    pub agents_onboarded: AtomicU64,
    pub churned_offline: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Recorded {
    series: BTreeMap<Series, Histogram<u64>>,
    rpcs: BTreeMap<&'static str, Histogram<u64>>,
    /// (method, code) → count of failures that are errors.
    errors: BTreeMap<(&'static str, &'static str), u64>,
    /// (method, code) → count of refusals the simulation provoked on
    /// purpose (e.g. accepting an offer the gateway just cancelled).
    expected_refusals: BTreeMap<(&'static str, &'static str), u64>,
    /// The first few error messages, to tell errors of one code apart.
    error_examples: Vec<String>,
}

/// A failed call: its code and, when the server sent one, its message.
pub trait Failure {
    fn code(&self) -> Code;
    fn message(&self) -> &str;
}

impl Failure for Code {
    fn code(&self) -> Code {
        *self
    }
    fn message(&self) -> &str {
        "(no status)"
    }
}

impl Failure for tonic::Status {
    fn code(&self) -> Code {
        tonic::Status::code(self)
    }
    fn message(&self) -> &str {
        tonic::Status::message(self)
    }
}

#[derive(Default)]
pub struct Metrics {
    recorded: Mutex<Recorded>,
    pub counters: Counters,
}

impl Metrics {
    fn with<R>(&self, work: impl FnOnce(&mut Recorded) -> R) -> R {
        // A poisoned lock means a panic elsewhere already failed the run;
        // the histograms themselves are still consistent.
        let mut guard = self
            .recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut guard)
    }

    pub fn record(&self, series: Series, latency: Duration) {
        self.with(|recorded| {
            record(
                recorded.series.entry(series).or_insert_with(new_histogram),
                latency,
            );
        });
    }

    pub fn record_rpc(&self, method: &'static str, latency: Duration) {
        self.with(|recorded| {
            record(
                recorded.rpcs.entry(method).or_insert_with(new_histogram),
                latency,
            );
        });
    }

    pub fn record_error(&self, method: &'static str, failure: &impl Failure) {
        Counters::add(&self.counters.errors);
        let code = failure.code();
        self.with(|recorded| {
            *recorded
                .errors
                .entry((method, code_name(code)))
                .or_default() += 1;
            if recorded.error_examples.len() < 10 {
                recorded.error_examples.push(format!(
                    "{method} {}: {}",
                    code_name(code),
                    failure.message()
                ));
            }
        });
    }

    pub fn record_expected_refusal(&self, method: &'static str, code: Code) {
        self.with(|recorded| {
            *recorded
                .expected_refusals
                .entry((method, code_name(code)))
                .or_default() += 1;
        });
    }

    pub fn summary(&self) -> MetricsSummary {
        self.with(|recorded| MetricsSummary {
            latencies: Series::ALL
                .iter()
                .map(|series| {
                    let summary = recorded
                        .series
                        .get(series)
                        .map(LatencySummary::of)
                        .unwrap_or_default();
                    (series.key().to_owned(), summary)
                })
                .collect(),
            rpcs: recorded
                .rpcs
                .iter()
                .map(|(method, histogram)| ((*method).to_owned(), LatencySummary::of(histogram)))
                .collect(),
            errors: flatten(&recorded.errors),
            expected_refusals: flatten(&recorded.expected_refusals),
            error_examples: recorded.error_examples.clone(),
        })
    }
}

fn flatten(counts: &BTreeMap<(&'static str, &'static str), u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .map(|((method, code), count)| (format!("{method} {code}"), *count))
        .collect()
}

/// Percentiles of one histogram, in milliseconds for reading.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let millis = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            p50_ms: millis(histogram.value_at_quantile(0.50)),
            p90_ms: millis(histogram.value_at_quantile(0.90)),
            p99_ms: millis(histogram.value_at_quantile(0.99)),
            p999_ms: millis(histogram.value_at_quantile(0.999)),
            max_ms: millis(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MetricsSummary {
    pub latencies: BTreeMap<String, LatencySummary>,
    pub rpcs: BTreeMap<String, LatencySummary>,
    pub errors: BTreeMap<String, u64>,
    pub expected_refusals: BTreeMap<String, u64>,
    pub error_examples: Vec<String>,
}

impl MetricsSummary {
    pub fn latency(&self, series: Series) -> LatencySummary {
        self.latencies
            .get(series.key())
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_milliseconds() {
        let metrics = Metrics::default();
        for millis in 1..=100 {
            metrics.record(Series::RequestToOffer, Duration::from_millis(millis));
        }
        let summary = metrics.summary().latency(Series::RequestToOffer);
        assert_eq!(summary.count, 100);
        assert!((summary.p50_ms - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99_ms - 99.0).abs() < 0.1, "{summary:?}");
    }

    #[test]
    fn errors_are_keyed_by_method_and_code() {
        let metrics = Metrics::default();
        metrics.record_error("AcceptOffer", &Code::FailedPrecondition);
        metrics.record_error("AcceptOffer", &Code::FailedPrecondition);
        let summary = metrics.summary();
        assert_eq!(summary.errors["AcceptOffer FAILED_PRECONDITION"], 2);
        assert_eq!(summary.errors.values().sum::<u64>(), 2);
    }
}
