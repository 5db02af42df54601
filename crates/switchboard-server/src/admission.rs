//! Load shedding for new hand-offs.
//!
//! # Design
//!
//! A hand-off (RequestAgent) is admitted only while fewer than
//! `server.max_pending_handoffs` are in progress on this replica; beyond
//! that it is refused at once with RESOURCE_EXHAUSTED, before any store
//! work. By Little's law the number in progress is the arrival rate times
//! the time each takes, so it stays small while the replica keeps up (a
//! few at 2,000/s and 1 ms each) and grows only when the replica (its CPU,
//! or Redis) falls behind: then new work is turned away while the work
//! already admitted (offers, accepts, completions) carries on, instead of
//! every caller waiting longer and longer until everything times out.
//! The gateway keeps the customer with the assistant and retries with
//! backoff; nothing was created, so a retry is a fresh request.
//!
//! Only new hand-offs are shed: refusing accepts or completions would
//! waste work already done and keep agents busy longer.
//!
//! The count alone cannot see a replica whose own CPU is the bottleneck:
//! with the embedded store a hand-off never waits inside its handler, so
//! the backlog builds up before the handlers run (in the runtime's task
//! queue and the sockets), and at about a second behind, offers start
//! being withdrawn as undelivered, agents resubscribe, and the extra work
//! tips the replica over (seen at 2,000/s on one core:
//! docs/performance.md). So a second signal: a monitor task sleeps
//! [`LAG_PROBE`] in a loop and records how late it wakes up; while that
//! lag exceeds `server.max_runtime_lag_ms`, new hand-offs are refused too.
//! The refusal itself is cheap (no decoding of the hand-off, no store
//! call), so shedding frees the CPU the admitted work needs.
//!
//! The same lag also pauses the store's undelivered-offer checks
//! ([`DeliveryPause`]): an offer counts as delivered once this replica's
//! stream task has handed it to the agent's stream, so a replica that runs
//! behind marks offers late although the streams are fine. Withdrawing
//! them then would send agents to resubscribe, more work for a replica
//! already behind (the spiral above).
//!
//! A third signal, for a shared store: how far behind the store's event
//! feed runs ([`Store::feed_lag`]). With Redis an offer reaches the agent's
//! stream only through the feed, which reads every pool's event stream; it
//! can fall a second or more behind while neither this runtime nor Redis is
//! saturated (seen on 23 Nov 2026: two replicas on one Redis at 2 × 750
//! hand-offs/s, feeds 1-2.4 s behind, runtime lag under 250 ms, Redis at
//! 55% of a core; thousands of offers withdrawn as undelivered, agents sent
//! to resubscribe, hundreds of conversations left waiting). The feed's lag
//! counts as this replica's lag: beyond `server.max_runtime_lag_ms` new
//! hand-offs are refused, and from a quarter of the delivery grace the
//! delivery checks pause, for every replica sweeping the pool (the store
//! carries the pause to them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use switchboard_store::Store;
use tonic::Status;

/// How often, at most, a replica logs that it is shedding.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the lag monitor sleeps between two probes.
pub const LAG_PROBE: Duration = Duration::from_millis(25);

/// How many delivery graces the runtime must stay calm before undelivered
/// offers are withdrawn again (see [`DeliveryPause`]).
pub const CALM_GRACES: u32 = 5;

/// When the store's undelivered-offer checks should be paused: from the
/// moment the runtime lags by a quarter of the delivery grace (at least
/// 50 ms; so the
/// stream tasks may be a grace late) until the lag has stayed below that
/// for [`CALM_GRACES`] whole graces. The probe sees only its own wake-up:
/// the stream tasks' backlog drains later, and an overloaded runtime
/// alternates short calm spells with long stalls (seen: calm for 0.4–5 s
/// between stalls of 0.3–3 s), so one calm grace is not enough.
#[derive(Debug)]
pub struct DeliveryPause {
    threshold: Duration,
    hold: Duration,
    /// Paused, until this long after the lag last exceeded the threshold.
    paused_since_calm: Option<Duration>,
}

impl DeliveryPause {
    pub fn new(delivery_grace: Duration) -> DeliveryPause {
        DeliveryPause {
            // Never below two probe periods: a probe's own jitter is not lag.
            threshold: (delivery_grace / 4).max(LAG_PROBE * 2),
            hold: delivery_grace * CALM_GRACES,
            paused_since_calm: None,
        }
    }

    /// Takes one lag measurement, `elapsed` after the previous one; returns
    /// `Some(paused)` when the pause starts or ends.
    pub fn update(&mut self, lag: Duration, elapsed: Duration) -> Option<bool> {
        if lag >= self.threshold {
            let started = self.paused_since_calm.is_none();
            self.paused_since_calm = Some(Duration::ZERO);
            return started.then_some(true);
        }
        let calm = self.paused_since_calm? + elapsed;
        if calm >= self.hold {
            self.paused_since_calm = None;
            return Some(false);
        }
        self.paused_since_calm = Some(calm);
        None
    }
}

/// The gate in front of new hand-offs.
#[derive(Debug)]
pub struct Admission {
    /// 0: no limit.
    limit: usize,
    /// Runtime lag beyond which new hand-offs are refused (ms; 0: never).
    max_lag_ms: u64,
    /// The last lag the monitor measured, in ms.
    lag_ms: AtomicU64,
    /// The store feed's lag at the monitor's last probe, in ms.
    feed_lag_ms: AtomicU64,
    in_progress: AtomicUsize,
    shed: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` of the last log line (u64::MAX: never).
    last_logged_ms: AtomicU64,
}

/// One admitted hand-off; the slot is given back when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// At most `limit` hand-offs in progress at once, and none while the
    /// runtime lags more than `max_lag_ms`; 0 turns either rule off.
    pub fn new(limit: usize, max_lag_ms: u64) -> Arc<Admission> {
        Arc::new(Admission {
            limit,
            max_lag_ms,
            lag_ms: AtomicU64::new(0),
            feed_lag_ms: AtomicU64::new(0),
            in_progress: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            started: Instant::now(),
            last_logged_ms: AtomicU64::new(u64::MAX),
        })
    }

    /// Admits one hand-off, or refuses it with RESOURCE_EXHAUSTED.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, Status> {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        if self.max_lag_ms > 0 && lag > self.max_lag_ms {
            return Err(self.refuse(format!(
                "it runs {lag} ms behind (server.max_runtime_lag_ms {})",
                self.max_lag_ms
            )));
        }
        let feed_lag = self.feed_lag_ms.load(Ordering::Relaxed);
        if self.max_lag_ms > 0 && feed_lag > self.max_lag_ms {
            return Err(self.refuse(format!(
                "its event feed runs {feed_lag} ms behind (server.max_runtime_lag_ms {})",
                self.max_lag_ms
            )));
        }
        let now = self.in_progress.fetch_add(1, Ordering::AcqRel) + 1;
        let admitted = Admitted {
            admission: self.clone(),
        };
        if self.limit == 0 || now <= self.limit {
            return Ok(admitted);
        }
        drop(admitted);
        Err(self.refuse(format!(
            "{} hand-offs already in progress (server.max_pending_handoffs)",
            self.limit
        )))
    }

    /// Counts and logs one refused hand-off; `why` the replica is overloaded.
    fn refuse(&self, why: String) -> Status {
        let shed = self.shed.fetch_add(1, Ordering::Relaxed) + 1;
        self.log_shedding(shed);
        Status::resource_exhausted(format!(
            "this replica is overloaded: {why}; nothing was created, retry with backoff"
        ))
    }

    /// Records the lag the monitor measured.
    pub fn record_lag(&self, lag: Duration) {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        self.lag_ms.store(ms, Ordering::Relaxed);
    }

    /// Records the store feed's lag (see [`Store::feed_lag`]).
    pub fn record_feed_lag(&self, lag: Duration) {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        self.feed_lag_ms.store(ms, Ordering::Relaxed);
    }

    /// The last lag measured, in ms.
    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Relaxed)
    }

    /// One probe: the runtime's lag, the store feed's, and `elapsed` since
    /// the previous probe. Records both for [`Admission::admit`] and, with
    /// `delivery`, feeds the larger to the pause; returns `Some(paused)`
    /// when the pause starts or ends.
    pub fn observe(
        &self,
        runtime_lag: Duration,
        feed_lag: Duration,
        elapsed: Duration,
        delivery: Option<&mut DeliveryPause>,
    ) -> Option<bool> {
        self.record_lag(runtime_lag);
        self.record_feed_lag(feed_lag);
        delivery?.update(runtime_lag.max(feed_lag), elapsed)
    }

    /// Measures the runtime's lag until `cancel`: sleeps [`LAG_PROBE`] and
    /// records how much later than asked it woke up, and with `store` how
    /// far behind its feed runs. With `delivery` too, pauses and resumes the
    /// store's undelivered-offer checks by the larger of the two.
    pub async fn monitor_lag(
        self: Arc<Self>,
        store: Option<Arc<dyn Store>>,
        mut delivery: Option<DeliveryPause>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let asked = tokio::time::Instant::now();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LAG_PROBE) => {}
            }
            let elapsed = asked.elapsed();
            let lag = elapsed.saturating_sub(LAG_PROBE);
            let feed_lag = store.as_ref().map_or(Duration::ZERO, |s| s.feed_lag());
            let changed = self.observe(lag, feed_lag, elapsed, delivery.as_mut());
            if let (Some(paused), Some(store)) = (changed, store.as_ref()) {
                store.pause_delivery_checks(paused);
                if paused {
                    tracing::warn!(
                        lag_ms = lag.as_millis() as u64,
                        feed_lag_ms = feed_lag.as_millis() as u64,
                        "running behind (runtime or event feed): undelivered offers are not withdrawn until it catches up"
                    );
                } else {
                    tracing::info!("caught up: undelivered offers are withdrawn again");
                }
            }
        }
    }

    /// Hand-offs refused since start.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Hand-offs in progress now.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }

    fn log_shedding(&self, shed: u64) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last_logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = self.limit,
                shed_total = shed,
                "overloaded: refusing new hand-offs with RESOURCE_EXHAUSTED"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code and message of the next admission's refusal (Ok and an
    /// empty message when it is admitted).
    fn refusal(admission: &Arc<Admission>) -> (tonic::Code, String) {
        admission
            .admit()
            .err()
            .map(|s| (s.code(), s.message().to_owned()))
            .unwrap_or((tonic::Code::Ok, String::new()))
    }

    #[test]
    fn admits_up_to_the_limit_and_frees_slots_on_drop() {
        let admission = Admission::new(2, 0);
        let a = admission.admit().map_err(|s| s.to_string());
        let b = admission.admit().map_err(|s| s.to_string());
        assert!(a.is_ok() && b.is_ok());
        let (code, message) = refusal(&admission);
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert!(message.contains("server.max_pending_handoffs"), "{message}");
        assert_eq!(admission.in_progress(), 2, "a refusal takes no slot");
        assert_eq!(admission.shed_total(), 1);
        drop(a);
        assert_eq!(admission.in_progress(), 1);
        assert!(admission.admit().is_ok(), "a freed slot admits again");
    }

    #[test]
    fn zero_admits_everything() {
        let admission = Admission::new(0, 0);
        let held: Vec<_> = (0..10_000).map(|_| admission.admit()).collect();
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(admission.shed_total(), 0);
    }

    #[test]
    fn a_lagging_runtime_refuses_new_handoffs_until_it_catches_up() {
        let admission = Admission::new(64, 250);
        admission.record_lag(Duration::from_millis(400));
        let (code, message) = refusal(&admission);
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert!(message.contains("400 ms behind"), "{message}");
        assert!(message.contains("server.max_runtime_lag_ms"), "{message}");
        assert_eq!(admission.in_progress(), 0);
        admission.record_lag(Duration::from_millis(3));
        assert!(admission.admit().is_ok(), "caught up: admitted again");
    }

    /// 23 Nov 2026: two replicas on one Redis, each store feed 1-2.4 s
    /// behind while the runtimes lagged under 250 ms: nothing was shed and
    /// nothing paused, and offers were withdrawn as undelivered by the
    /// thousand. A feed that far behind is this replica's lag.
    #[test]
    fn a_lagging_store_feed_sheds_new_handoffs_and_pauses_delivery_checks() {
        let ms = Duration::from_millis;
        let admission = Admission::new(64, 250);
        let mut pause = DeliveryPause::new(ms(1_000));
        assert_eq!(
            admission.observe(ms(2), ms(40), ms(27), Some(&mut pause)),
            None,
            "a feed 40 ms behind is not overload"
        );
        assert!(admission.admit().is_ok());
        assert_eq!(
            admission.observe(ms(2), ms(1_200), ms(27), Some(&mut pause)),
            Some(true),
            "a feed a grace behind pauses the delivery checks"
        );
        let (code, message) = refusal(&admission);
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert!(
            message.contains("event feed runs 1200 ms behind"),
            "{message}"
        );
        assert!(message.contains("server.max_runtime_lag_ms"), "{message}");
        assert_eq!(admission.in_progress(), 0, "a refusal takes no slot");
        // Caught up: admitted at once; the pause holds for calm graces.
        assert_eq!(
            admission.observe(ms(2), ms(3), ms(27), Some(&mut pause)),
            None
        );
        assert!(admission.admit().is_ok(), "caught up: admitted again");
        assert_eq!(
            admission.observe(ms(2), ms(3), ms(5_000), Some(&mut pause)),
            Some(false)
        );
    }

    #[test]
    fn delivery_checks_pause_while_behind_and_resume_after_calm_graces() {
        let ms = Duration::from_millis;
        let mut pause = DeliveryPause::new(ms(1_000));
        assert_eq!(pause.update(ms(3), ms(28)), None, "calm: nothing to change");
        assert_eq!(pause.update(ms(249), ms(274)), None, "below a quarter");
        assert_eq!(
            pause.update(ms(250), ms(275)),
            Some(true),
            "a quarter behind"
        );
        assert_eq!(pause.update(ms(600), ms(625)), None, "already paused");
        // Calm again: resumes only once CALM_GRACES graces passed calmly.
        assert_eq!(pause.update(ms(5), ms(2_500)), None);
        assert_eq!(
            pause.update(ms(300), ms(325)),
            None,
            "behind: calm restarts"
        );
        assert_eq!(pause.update(ms(5), ms(4_000)), None);
        assert_eq!(pause.update(ms(5), ms(999)), None, "4,999 ms calm");
        assert_eq!(pause.update(ms(5), ms(1)), Some(false), "five graces calm");
        assert_eq!(pause.update(ms(5), ms(30)), None);
        // A tiny grace still needs a real lag, not a probe's jitter.
        let mut tiny = DeliveryPause::new(ms(20));
        assert_eq!(tiny.update(ms(10), ms(35)), None, "jitter");
        assert_eq!(tiny.update(ms(50), ms(75)), Some(true));
    }

    /// The monitor sees a runtime whose one thread is blocked.
    #[tokio::test(flavor = "current_thread")]
    async fn the_monitor_measures_a_blocked_runtime() {
        let admission = Admission::new(0, 100);
        let cancel = tokio_util::sync::CancellationToken::new();
        let monitor = tokio::spawn(admission.clone().monitor_lag(None, None, cancel.clone()));
        tokio::time::sleep(LAG_PROBE * 2).await;
        assert!(admission.admit().is_ok(), "idle: no lag");
        // Block the only thread while the monitor's sleep is due: its
        // probe wakes ~300 ms late. yield_now lets the runtime poll its
        // timers and run the monitor before this task resumes.
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..20 {
            if admission.lag_ms() >= 150 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let lag = admission.lag_ms();
        let refused = admission.admit().err().map(|s| s.code());
        cancel.cancel();
        let _ = monitor.await;
        assert!(lag >= 150, "the monitor saw a lag of only {lag} ms");
        assert_eq!(refused, Some(tonic::Code::ResourceExhausted));
    }
}
