//! The open-loop arrival schedule: Poisson arrivals at a fixed rate, each
//! with the instant it was *meant* to be sent. Latencies are measured from
//! that instant, so a generator that falls behind shows up as latency (and
//! as schedule lag), never as a quietly lower rate (no coordinated
//! omission).
//!
//! # Design
//!
//! The schedule runs on its own OS thread rather than a tokio timer:
//! tokio's timer wheel has millisecond granularity, which alone would put
//! the lag near the 1 ms validity bound. The thread sleeps until the next
//! arrival (the kernel's timer slack is ~50 µs) and hands each arrival to
//! the runtime; the lag is taken when the arrival's task first runs, so it
//! includes any queueing in the tool's own runtime.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio_util::sync::CancellationToken;

use crate::profile::exponential;

/// One scheduled send.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub sequence: u64,
    pub intended: Instant,
}

/// Starts the schedule: `on_arrival` runs on the schedule thread for every
/// arrival from `start` until `start + duration` (or `stop`); it should
/// only hand the work to the runtime. The thread returns how many arrivals
/// it produced. With `realtime` the thread runs at real-time priority (see
/// [`crate::realtime`]), or the schedule does not start.
pub fn poisson(
    rate_per_sec: f64,
    start: Instant,
    duration: Duration,
    seed: u64,
    realtime: bool,
    stop: CancellationToken,
    mut on_arrival: impl FnMut(Arrival) + Send + 'static,
) -> anyhow::Result<JoinHandle<u64>> {
    crate::realtime::spawn("arrival-schedule", realtime, move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let end = start + duration;
        let mean_gap = Duration::from_secs_f64(1.0 / rate_per_sec.max(1e-6));
        let mut intended = start;
        let mut sequence = 0;
        loop {
            intended += exponential(&mut rng, mean_gap);
            if intended >= end || stop.is_cancelled() {
                return sequence;
            }
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            on_arrival(Arrival { sequence, intended });
            sequence += 1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn produces_about_rate_times_duration_arrivals_in_order() {
        let (sender, receiver) = mpsc::channel();
        let start = Instant::now();
        let handle = poisson(
            2000.0,
            start,
            Duration::from_millis(500),
            3,
            false,
            CancellationToken::new(),
            move |arrival| {
                let _ = sender.send(arrival);
            },
        )
        .unwrap_or_else(|error| panic!("cannot start the schedule thread: {error}"));
        let produced = handle.join().unwrap_or_default();
        let arrivals: Vec<Arrival> = receiver.iter().collect();
        assert_eq!(arrivals.len() as u64, produced);
        // 1000 expected; Poisson spread is ~±32 (1 sigma).
        assert!((850..=1150).contains(&produced), "{produced} arrivals");
        assert!(
            arrivals
                .windows(2)
                .all(|pair| pair[0].intended <= pair[1].intended)
        );
    }
}
