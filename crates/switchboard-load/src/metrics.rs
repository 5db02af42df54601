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
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use switchboard_proto::code_name;
use tonic::Code;

/// Requests are also counted per window of this length (by intended send
/// time), so a tail can be told apart: spread over the run, or a few
/// episodes in which many requests waited.
pub const OFFER_WINDOW: Duration = Duration::from_millis(100);
/// A request → offer over this counts as slow in its window (issue 6's
/// p99 target for Redis).
pub const SLOW_OFFER: Duration = Duration::from_millis(20);
/// How many of the worst windows the summary lists.
const WORST_WINDOWS: usize = 5;

/// Highest latency a histogram holds: longer ones are clamped, which only
/// matters for a run that is broken anyway.
const HIGHEST_MICROS: u64 = 300_000_000;

/// `ours ÷ theirs` for the reports' comparisons with a ceiling; 0 where
/// the ceiling measured nothing (never infinity or NaN in the JSON).
pub fn ratio(ours: f64, theirs: f64) -> f64 {
    if theirs > 0.0 { ours / theirs } else { 0.0 }
}

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
    /// Request → offer per [`OFFER_WINDOW`], keyed by window number since
    /// the metrics were created.
    offer_windows: BTreeMap<u64, OfferWindow>,
}

#[derive(Clone, Copy, Debug, Default)]
struct OfferWindow {
    requests: u64,
    slow: u64,
    max_micros: u64,
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

pub struct Metrics {
    recorded: Mutex<Recorded>,
    pub counters: Counters,
    /// Where window 0 of the request → offer windows starts.
    origin: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            recorded: Mutex::default(),
            counters: Counters::default(),
            origin: Instant::now(),
        }
    }
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

    /// A measured request's request → offer, in the window of its intended
    /// send time.
    pub fn record_offer_window(&self, intended: Instant, latency: Duration) {
        let since = intended.saturating_duration_since(self.origin);
        let window = u64::try_from(since.as_nanos() / OFFER_WINDOW.as_nanos()).unwrap_or(u64::MAX);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.with(|recorded| {
            let entry = recorded.offer_windows.entry(window).or_default();
            entry.requests += 1;
            if latency > SLOW_OFFER {
                entry.slow += 1;
            }
            entry.max_micros = entry.max_micros.max(micros);
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
            offer_windows: OfferWindows::of(&recorded.offer_windows),
        })
    }
}

/// Request → offer per window of [`OFFER_WINDOW`]: how many windows had a
/// request over [`SLOW_OFFER`], and the worst of them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OfferWindows {
    pub window_ms: u64,
    pub slow_over_ms: u64,
    /// Windows with at least one measured request.
    pub windows: u64,
    /// ... of which with at least one slow request.
    pub with_slow: u64,
    /// Most slow requests first, then the longest; at most five.
    pub worst: Vec<OfferWindowView>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OfferWindowView {
    /// Seconds from the first window with a measured request.
    pub at_secs: f64,
    pub requests: u64,
    pub slow: u64,
    pub max_ms: f64,
}

impl OfferWindows {
    fn of(windows: &BTreeMap<u64, OfferWindow>) -> OfferWindows {
        let first = windows.keys().next().copied().unwrap_or(0);
        let mut slow: Vec<(&u64, &OfferWindow)> =
            windows.iter().filter(|(_, w)| w.slow > 0).collect();
        slow.sort_by(|a, b| {
            b.1.slow
                .cmp(&a.1.slow)
                .then(b.1.max_micros.cmp(&a.1.max_micros))
                .then(a.0.cmp(b.0))
        });
        let window_ms = u64::try_from(OFFER_WINDOW.as_millis()).unwrap_or(u64::MAX);
        OfferWindows {
            window_ms,
            slow_over_ms: u64::try_from(SLOW_OFFER.as_millis()).unwrap_or(u64::MAX),
            windows: windows.len() as u64,
            with_slow: slow.len() as u64,
            worst: slow
                .into_iter()
                .take(WORST_WINDOWS)
                .map(|(index, w)| OfferWindowView {
                    at_secs: (index - first) as f64 * window_ms as f64 / 1000.0,
                    requests: w.requests,
                    slow: w.slow,
                    max_ms: w.max_micros as f64 / 1000.0,
                })
                .collect(),
        }
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
    pub offer_windows: OfferWindows,
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
    fn slow_offers_are_counted_per_window_worst_first() {
        let metrics = Metrics::default();
        let at = |ms: u64| metrics.origin + Duration::from_millis(ms);
        // Window 2 (the first with a request): fast only.
        metrics.record_offer_window(at(250), Duration::from_millis(3));
        // Window 5: two slow, one fast.
        metrics.record_offer_window(at(510), Duration::from_millis(25));
        metrics.record_offer_window(at(520), Duration::from_millis(40));
        metrics.record_offer_window(at(590), Duration::from_millis(2));
        // Window 9: one slow, the longest.
        metrics.record_offer_window(at(900), Duration::from_millis(90));
        // Exactly the threshold is not slow.
        metrics.record_offer_window(at(1_200), SLOW_OFFER);
        let windows = metrics.summary().offer_windows;
        assert_eq!((windows.window_ms, windows.slow_over_ms), (100, 20));
        assert_eq!((windows.windows, windows.with_slow), (4, 2));
        assert_eq!(
            windows.worst,
            vec![
                OfferWindowView {
                    at_secs: 0.3,
                    requests: 3,
                    slow: 2,
                    max_ms: 40.0
                },
                OfferWindowView {
                    at_secs: 0.7,
                    requests: 1,
                    slow: 1,
                    max_ms: 90.0
                },
            ]
        );
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
