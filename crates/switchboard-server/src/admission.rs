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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::Status;

/// How often, at most, a replica logs that it is shedding.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The gate in front of new hand-offs.
#[derive(Debug)]
pub struct Admission {
    /// 0: no limit.
    limit: usize,
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
    /// At most `limit` hand-offs in progress at once; 0 admits everything.
    pub fn new(limit: usize) -> Arc<Admission> {
        Arc::new(Admission {
            limit,
            in_progress: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            started: Instant::now(),
            last_logged_ms: AtomicU64::new(u64::MAX),
        })
    }

    /// Admits one hand-off, or refuses it with RESOURCE_EXHAUSTED.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, Status> {
        let now = self.in_progress.fetch_add(1, Ordering::AcqRel) + 1;
        let admitted = Admitted {
            admission: self.clone(),
        };
        if self.limit == 0 || now <= self.limit {
            return Ok(admitted);
        }
        drop(admitted);
        let shed = self.shed.fetch_add(1, Ordering::Relaxed) + 1;
        self.log_shedding(shed);
        Err(Status::resource_exhausted(format!(
            "this replica is overloaded: {} hand-offs already in progress \
             (server.max_pending_handoffs); nothing was created, retry with backoff",
            self.limit
        )))
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

    #[test]
    fn admits_up_to_the_limit_and_frees_slots_on_drop() {
        let admission = Admission::new(2);
        let a = admission.admit().map_err(|s| s.to_string());
        let b = admission.admit().map_err(|s| s.to_string());
        assert!(a.is_ok() && b.is_ok());
        let refused = admission
            .admit()
            .err()
            .map(|s| (s.code(), s.message().to_owned()));
        let (code, message) = refused.unwrap_or((tonic::Code::Ok, String::new()));
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
        let admission = Admission::new(0);
        let held: Vec<_> = (0..10_000).map(|_| admission.admit()).collect();
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(admission.shed_total(), 0);
    }
}
