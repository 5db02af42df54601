//! Priority aging: a waiting conversation's effective priority grows with
//! its wait, up to a ceiling, so low priorities are never starved.
//!
//! # Design
//!
//! ```text
//! effective(p, w) = max(p, min(ceiling, p + rate × w))
//! ```
//!
//! with `p` the base priority (0–9), `w` the wait in seconds, `rate` in
//! priority points per second. The engine serves the highest effective
//! priority first and breaks ties by the longest wait.
//!
//! The ceiling is what makes the starvation bound hold: once a conversation
//! has aged to the ceiling it ties with every conversation at the ceiling
//! and wins every tie against those that arrived after it (they waited
//! less). With an uncapped linear boost a conversation that arrived just
//! after a low-priority one would stay ahead of it forever.
//!
//! **Starvation bound.** A conversation of base priority `p` waits at most
//! `W(p) = ceil((ceiling − p) / rate)` seconds before it is ahead of every
//! conversation of base priority ≤ `ceiling` that arrived after it, however
//! many keep arriving. From then on only the finitely many conversations
//! that arrived before it can be served first. With the default ceiling 9
//! (the highest priority) and rate 0.05/s, `W(0)` = 180 s.
//!
//! Arithmetic is in integer micro-points so ordering is exact and
//! deterministic across replicas.

use switchboard_core::validate::MAX_PRIORITY;

/// Micro-points per priority point.
pub const MICRO: u64 = 1_000_000;

/// An effective priority in micro-points; higher is served first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectivePriority(pub u64);

impl EffectivePriority {
    /// In priority points, for display.
    pub fn as_points(self) -> f64 {
        self.0 as f64 / MICRO as f64
    }
}

/// Where a waiting conversation stands in its queue: greater is served
/// first (higher effective priority, then the longer wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub effective_priority: EffectivePriority,
    pub waited_ms: i64,
}

/// The aging policy of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aging {
    /// Growth in micro-points per second of wait (0 = no aging).
    pub rate_micro_per_second: u64,
    /// Aging never lifts a conversation above this priority (0–9).
    pub ceiling: u8,
}

impl Default for Aging {
    fn default() -> Self {
        Aging {
            rate_micro_per_second: 0,
            ceiling: MAX_PRIORITY as u8,
        }
    }
}

impl Aging {
    /// The effective priority of a conversation of base `priority` that has
    /// waited `waited_ms` (negative waits count as 0). Monotone in the wait.
    pub fn effective_priority(&self, priority: u8, waited_ms: i64) -> EffectivePriority {
        let base = u64::from(priority) * MICRO;
        let waited_ms = u128::try_from(waited_ms).unwrap_or(0);
        let boost = u128::from(self.rate_micro_per_second) * waited_ms / 1000;
        let aged = u128::from(base).saturating_add(boost);
        let ceiling = u128::from(self.ceiling) * u128::from(MICRO);
        let capped = aged.min(ceiling).max(u128::from(base));
        EffectivePriority(u64::try_from(capped).unwrap_or(u64::MAX))
    }

    /// The queue position key of a conversation of base `priority` that has
    /// waited `waited_ms`: compare keys, the greatest goes first.
    pub fn queue_key(&self, priority: u8, waited_ms: i64) -> QueueKey {
        QueueKey {
            effective_priority: self.effective_priority(priority, waited_ms),
            waited_ms: waited_ms.max(0),
        }
    }

    /// The starvation bound `W(priority)` in milliseconds: after waiting
    /// this long a conversation is ahead of every conversation of base
    /// priority ≤ the ceiling that arrived after it (ties going to the
    /// longer wait). `None` when no bound holds (no aging and the priority
    /// is below the ceiling).
    pub fn starvation_bound_ms(&self, priority: u8) -> Option<i64> {
        if priority >= self.ceiling {
            return Some(0);
        }
        if self.rate_micro_per_second == 0 {
            return None;
        }
        let needed = u128::from(self.ceiling - priority) * u128::from(MICRO) * 1000;
        let rate = u128::from(self.rate_micro_per_second);
        let ms = needed.div_ceil(rate);
        Some(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

/// [`Aging::effective_priority`] as a free function, the form the engine
/// calls.
pub fn effective_priority(aging: &Aging, priority: u8, waited_ms: i64) -> EffectivePriority {
    aging.effective_priority(priority, waited_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aging(rate_per_second: f64, ceiling: u8) -> Aging {
        Aging {
            rate_micro_per_second: (rate_per_second * MICRO as f64) as u64,
            ceiling,
        }
    }

    #[test]
    fn no_aging_keeps_the_base_priority() {
        let a = Aging::default();
        assert_eq!(
            a.effective_priority(3, 1_000_000),
            EffectivePriority(3 * MICRO)
        );
        assert_eq!(a.starvation_bound_ms(3), None);
        assert_eq!(a.starvation_bound_ms(9), Some(0));
    }

    #[test]
    fn grows_linearly_then_stops_at_the_ceiling() {
        let a = aging(0.05, 9);
        assert_eq!(a.effective_priority(0, 0), EffectivePriority(0));
        assert_eq!(a.effective_priority(0, 20_000), EffectivePriority(MICRO));
        assert_eq!(
            a.effective_priority(0, 180_000),
            EffectivePriority(9 * MICRO)
        );
        assert_eq!(
            a.effective_priority(0, i64::MAX),
            EffectivePriority(9 * MICRO)
        );
        assert_eq!(a.effective_priority(4, -5), EffectivePriority(4 * MICRO));
    }

    #[test]
    fn a_priority_above_the_ceiling_is_not_lowered() {
        let a = aging(1.0, 5);
        assert_eq!(
            a.effective_priority(7, 60_000),
            EffectivePriority(7 * MICRO)
        );
    }

    #[test]
    fn queue_keys_order_by_effective_priority_then_wait() {
        let a = aging(0.05, 9);
        assert!(a.queue_key(5, 0) > a.queue_key(4, 10_000));
        assert!(a.queue_key(4, 20_000) > a.queue_key(5, 0), "aged past");
        assert!(
            a.queue_key(9, 2_000) > a.queue_key(9, 1_000),
            "tie: longer wait"
        );
        assert!(
            a.queue_key(0, 180_000) > a.queue_key(9, 179_999),
            "at the ceiling"
        );
    }

    #[test]
    fn documented_bound_for_the_default_ceiling() {
        let a = aging(0.05, 9);
        assert_eq!(a.starvation_bound_ms(0), Some(180_000));
        assert_eq!(a.starvation_bound_ms(8), Some(20_000));
    }
}
