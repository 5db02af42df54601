//! The progress line on stderr while a run goes on (hidden with --json or
//! --quiet, and by indicatif itself when stderr is not a terminal).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics::{Counters, Metrics};

pub struct Progress {
    bar: ProgressBar,
    load_length: std::sync::Mutex<Duration>,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let bar = if enabled {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            load_length: std::sync::Mutex::new(Duration::ZERO),
        }
    }

    pub fn phase(&self, text: &str) {
        self.bar.set_message(text.to_owned());
    }

    pub fn onboarding(&self, online: u64, wanted: u64) {
        self.bar
            .set_message(format!("agents online {online}/{wanted}"));
    }

    pub fn load_started(&self, length: Duration) {
        if let Ok(mut guard) = self.load_length.lock() {
            *guard = length;
        }
    }

    pub fn load(&self, start: Instant, metrics: &Metrics) {
        let counters = &metrics.counters;
        let length = self
            .load_length
            .lock()
            .map(|guard| *guard)
            .unwrap_or_default();
        self.bar.set_message(format!(
            "load {:.0}/{:.0} s: requested {}, offered {}, assigned {}, completed {}, errors {}",
            start.elapsed().as_secs_f64(),
            length.as_secs_f64(),
            Counters::get(&counters.requested),
            Counters::get(&counters.offered),
            Counters::get(&counters.assigned),
            Counters::get(&counters.completed),
            Counters::get(&counters.errors),
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
