//! A conversation's routing plan: what the engine executes for it when a
//! routing file is in force.
//!
//! # Design
//!
//! The routing policy (`switchboard-routing`) depends on the core, so the
//! core cannot call it. Instead the caller turns the policy into data once
//! per hand-off: the requirement schedule (every relaxation step already
//! applied, so the engine only swaps requirement sets at the given waits),
//! the strategy, aging, timings and what happens at the maximum wait (an
//! overflow carries the target queue's plan, computed up front; overflow
//! cycles are refused at load, so the chain is finite).
//!
//! A hand-off without a plan is routed exactly as before plans existed:
//! its own language, skills and roster region, longest idle, the pool's
//! timings. The engine trusts the schedule to only loosen; the routing
//! crate guarantees it and the property tests check that the engine keeps
//! an agent eligible once it was.

use crate::error::DomainError;
use crate::model::Skill;
use crate::validate::{self, language_covers, language_lookup_keys};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What an agent must have at one point of the schedule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlanRequirements {
    /// Lower-case BCP 47 tag.
    pub language: String,
    /// Once widened, any agent language of the tag's family counts (`de`
    /// widened accepts `de-at` and `de-de`); before, only languages that
    /// cover the tag (`de` covers `de-at`).
    #[serde(default)]
    pub language_widened: bool,
    /// Sorted by name, one entry per skill.
    #[serde(default)]
    pub skills: Vec<Skill>,
    /// Roster attributes the agent must have.
    #[serde(default)]
    pub attributes: BTreeSet<String>,
    /// `None`: no residency rule. `Some(set)`: the agent must be admitted
    /// by one of these regions (located inside, as resolved by the caller,
    /// and permitted by its roster entry).
    #[serde(default)]
    pub regions: Option<BTreeSet<String>>,
}

impl PlanRequirements {
    /// Only a language, exact.
    pub fn language_only(tag: impl Into<String>) -> Self {
        PlanRequirements {
            language: tag.into(),
            language_widened: false,
            skills: Vec::new(),
            attributes: BTreeSet::new(),
            regions: None,
        }
    }

    /// Whether an agent speaking `agent_tag` meets the language rule.
    pub fn accepts_language(&self, agent_tag: &str) -> bool {
        language_covers(agent_tag, &self.language)
            || (self.language_widened && language_covers(&self.language, agent_tag))
    }

    /// Checks the language tag (lower-case BCP 47) and the skills (valid
    /// names, levels 1..=5, sorted, each once), naming the field under
    /// `path`.
    fn check(&self, path: &str) -> Result<(), DomainError> {
        let field = format!("{path}.language");
        if validate::language(&field, &self.language)? != self.language {
            return Err(DomainError::invalid(field, "must be lower case"));
        }
        for (i, skill) in self.skills.iter().enumerate() {
            validate::skill_name(&format!("{path}.skills[{i}].name"), &skill.name)?;
            validate::skill_level(&format!("{path}.skills[{i}].level"), u32::from(skill.level))?;
            if i > 0 && self.skills[i - 1].name >= skill.name {
                return Err(DomainError::invalid(
                    format!("{path}.skills[{i}].name"),
                    "skills must be sorted by name, each named once",
                ));
            }
        }
        Ok(())
    }

    /// The exact index tags to look agents up under, when not widened.
    pub(crate) fn exact_lookup_keys(&self) -> Vec<&str> {
        language_lookup_keys(&self.language)
    }
}

/// From `after_ms` of waiting in the plan's queue on, `requirements` apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub after_ms: i64,
    pub requirements: PlanRequirements,
}

/// How an agent is picked among the eligible ones (mirrors the routing
/// crate's strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlanStrategy {
    /// Earliest idle-since: the index order, no bounded walk.
    #[default]
    LongestIdle,
    /// Lowest active / capacity.
    LeastOccupied,
    /// Highest sum of levels over the required skills.
    BestSkillMatch,
    /// Offered least recently (pool-wide offer counter).
    RoundRobin,
    /// Best CSAT, smoothed towards 4.0 as if from 5 extra ratings.
    QualityWeighted,
}

/// Priority aging: `effective = max(p, min(ceiling, p + rate × wait))`,
/// in integer millionths of a point (the routing crate's formula).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlanAging {
    pub rate_micro_per_second: u64,
    pub ceiling: u8,
}

/// Micro-points per priority point.
pub const MICRO: u64 = 1_000_000;

impl Default for PlanAging {
    fn default() -> Self {
        PlanAging {
            rate_micro_per_second: 0,
            ceiling: 9,
        }
    }
}

impl PlanAging {
    /// The effective priority in micro-points after `waited_ms`.
    pub fn effective(&self, priority: u8, waited_ms: i64) -> u64 {
        let base = u64::from(priority) * MICRO;
        if self.rate_micro_per_second == 0 {
            return base;
        }
        let waited_ms = u128::try_from(waited_ms).unwrap_or(0);
        let boost = u128::from(self.rate_micro_per_second) * waited_ms / 1000;
        let aged = u128::from(base).saturating_add(boost);
        let ceiling = u128::from(self.ceiling) * u128::from(MICRO);
        let capped = aged.min(ceiling).max(u128::from(base));
        u64::try_from(capped).unwrap_or(u64::MAX)
    }
}

/// What happens when nobody has taken the conversation after a while.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanMaxWaitAction {
    /// Ends as expired; the gateway sees `reason`.
    Expire { reason: String },
    /// Moves to another queue: `plan` replaces this one, its clock starts
    /// at the move (the conversation keeps its place by waiting time).
    Overflow {
        queue: String,
        plan: Box<RoutingPlan>,
    },
    /// Stays queued at `priority` as a callback promise, no longer
    /// expires; the gateway is told `reason`.
    Callback { priority: u8, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanMaxWait {
    pub after_ms: i64,
    pub action: PlanMaxWaitAction,
}

/// Everything the engine executes for one conversation. See the module
/// docs; `RoutingPlan::default()` with no steps routes like no plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingPlan {
    /// The queue's name (for messages and statistics).
    pub queue: String,
    /// The base priority in the queue (0..=9).
    pub priority: u8,
    /// In time order, the first at 0. Empty: the hand-off's own
    /// requirements with the built-in rules.
    pub steps: Vec<PlanStep>,
    pub strategy: PlanStrategy,
    pub aging: PlanAging,
    /// Replaces the pool's offer timeout for this conversation.
    pub offer_timeout_ms: Option<i64>,
    /// Replaces the pool's wrap-up after this conversation.
    pub wrap_up_ms: Option<i64>,
    /// Replaces the pool's maximum wait (and its plain expiry).
    pub max_wait: Option<PlanMaxWait>,
    /// The hand-off's preferred agent gets the offer to itself this long
    /// (if online and eligible; others wait meanwhile).
    pub preferred_window_ms: i64,
    /// Regions: an empty roster list puts no limit (`if_listed`); else
    /// the roster must list the region (`required`, the built-in rule).
    pub roster_regions_if_listed: bool,
    /// Replaces the pool's missed offers before away when this
    /// conversation's offer is missed.
    pub misses_before_away: Option<u32>,
    /// After declining this conversation an agent is offered nothing for
    /// this long (0 = no delay).
    pub reject_delay_ms: i64,
}

/// The longest duration a plan may name (366 days): beyond any sensible
/// wait, and exact in the Redis store's Lua numbers (doubles).
pub const MAX_PLAN_MS: i64 = 366 * 24 * 3_600_000;

/// The fastest aging a plan may use: 10 points per second (the routing
/// file's limit).
pub const MAX_AGING_RATE_MICRO: u64 = 10 * MICRO;

/// How deep overflow plans may nest (the routing file refuses cycles, so
/// its chains are shorter than its queue count).
pub const MAX_OVERFLOW_DEPTH: usize = 16;

impl RoutingPlan {
    /// Checks that the plan is executable as given, naming the first bad
    /// field (`plan.steps[1].after_ms`, ...): priorities 0..=9, durations
    /// 0..=[`MAX_PLAN_MS`], steps in time order with valid languages and
    /// skills, aging within [`MAX_AGING_RATE_MICRO`] and ceiling 9,
    /// overflow plans at most [`MAX_OVERFLOW_DEPTH`] deep. The routing crate
    /// only builds such plans; this keeps a hand-made or corrupted one from
    /// misbehaving in either store.
    pub fn check(&self) -> Result<(), DomainError> {
        self.check_at("plan", 0)
    }

    fn check_at(&self, path: &str, depth: usize) -> Result<(), DomainError> {
        let priority =
            |field: String, value: u8| validate::priority(&field, u32::from(value)).map(|_| ());
        let duration = |field: String, value: i64, min: i64| {
            if (min..=MAX_PLAN_MS).contains(&value) {
                Ok(())
            } else {
                Err(DomainError::invalid(
                    field,
                    format!("is {value} ms, must be {min} to {MAX_PLAN_MS}"),
                ))
            }
        };
        priority(format!("{path}.priority"), self.priority)?;
        let mut previous = 0;
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("{path}.steps[{i}]");
            duration(format!("{at}.after_ms"), step.after_ms, 0)?;
            if step.after_ms < previous {
                return Err(DomainError::invalid(
                    format!("{at}.after_ms"),
                    format!(
                        "{} ms comes before the previous step's {previous} ms; steps must be in time order",
                        step.after_ms
                    ),
                ));
            }
            previous = step.after_ms;
            step.requirements.check(&format!("{at}.requirements"))?;
        }
        if self.aging.rate_micro_per_second > MAX_AGING_RATE_MICRO {
            return Err(DomainError::invalid(
                format!("{path}.aging.rate_micro_per_second"),
                format!(
                    "is {}, must be at most {MAX_AGING_RATE_MICRO}",
                    self.aging.rate_micro_per_second
                ),
            ));
        }
        priority(format!("{path}.aging.ceiling"), self.aging.ceiling)?;
        if let Some(ms) = self.offer_timeout_ms {
            duration(format!("{path}.offer_timeout_ms"), ms, 1)?;
        }
        if let Some(ms) = self.wrap_up_ms {
            duration(format!("{path}.wrap_up_ms"), ms, 0)?;
        }
        duration(
            format!("{path}.preferred_window_ms"),
            self.preferred_window_ms,
            0,
        )?;
        duration(format!("{path}.reject_delay_ms"), self.reject_delay_ms, 0)?;
        if let Some(max_wait) = &self.max_wait {
            duration(format!("{path}.max_wait.after_ms"), max_wait.after_ms, 0)?;
            match &max_wait.action {
                PlanMaxWaitAction::Expire { .. } => {}
                PlanMaxWaitAction::Callback { priority: p, .. } => {
                    priority(format!("{path}.max_wait.action.priority"), *p)?;
                }
                PlanMaxWaitAction::Overflow { plan, .. } => {
                    if depth + 1 > MAX_OVERFLOW_DEPTH {
                        return Err(DomainError::invalid(
                            format!("{path}.max_wait.action.plan"),
                            format!("overflow plans nest more than {MAX_OVERFLOW_DEPTH} deep"),
                        ));
                    }
                    plan.check_at(&format!("{path}.max_wait.action.plan"), depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// The index of the step in force after `waited_ms` (0 with no steps).
    pub fn step_at(&self, waited_ms: i64) -> usize {
        self.steps
            .iter()
            .rposition(|s| s.after_ms <= waited_ms)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aging_matches_the_routing_formula() {
        let aging = PlanAging {
            rate_micro_per_second: 50_000,
            ceiling: 9,
        };
        assert_eq!(aging.effective(0, 0), 0);
        assert_eq!(aging.effective(0, 20_000), MICRO);
        assert_eq!(aging.effective(0, 1_000_000), 9 * MICRO);
        assert_eq!(aging.effective(9, 5_000), 9 * MICRO);
        assert_eq!(PlanAging::default().effective(3, 99_999), 3 * MICRO);
    }

    #[test]
    fn widened_language_accepts_the_family() {
        let mut r = PlanRequirements::language_only("de-at");
        assert!(r.accepts_language("de"));
        assert!(!r.accepts_language("de-de"));
        r.language = "de".into();
        r.language_widened = true;
        assert!(r.accepts_language("de-de"));
        assert!(r.accepts_language("de-at"));
        assert!(!r.accepts_language("den"));
    }

    #[test]
    fn check_names_the_first_bad_field() {
        assert_eq!(RoutingPlan::default().check(), Ok(()));
        let step = |after_ms, language: &str| PlanStep {
            after_ms,
            requirements: PlanRequirements::language_only(language),
        };
        let bad = |plan: RoutingPlan| match plan.check() {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let plan = RoutingPlan {
            priority: 12,
            ..RoutingPlan::default()
        };
        assert_eq!(bad(plan), "plan.priority");
        let plan = RoutingPlan {
            steps: vec![step(0, "en"), step(30_000, "en"), step(10_000, "en")],
            ..RoutingPlan::default()
        };
        assert_eq!(bad(plan), "plan.steps[2].after_ms");
        let plan = RoutingPlan {
            steps: vec![step(0, "de|x")],
            ..RoutingPlan::default()
        };
        assert_eq!(bad(plan), "plan.steps[0].requirements.language");
        let plan = RoutingPlan {
            steps: vec![step(0, "DE")],
            ..RoutingPlan::default()
        };
        assert_eq!(bad(plan), "plan.steps[0].requirements.language");
        let mut unsorted = step(0, "en");
        unsorted.requirements.skills = vec![Skill::new("tech", 2), Skill::new("billing", 2)];
        let plan = RoutingPlan {
            steps: vec![unsorted],
            ..RoutingPlan::default()
        };
        assert_eq!(bad(plan), "plan.steps[0].requirements.skills[1].name");
        let plan = RoutingPlan {
            aging: PlanAging {
                rate_micro_per_second: u64::MAX,
                ceiling: 9,
            },
            ..RoutingPlan::default()
        };
        assert_eq!(bad(plan), "plan.aging.rate_micro_per_second");
        let inner = RoutingPlan {
            reject_delay_ms: -1,
            ..RoutingPlan::default()
        };
        let plan = RoutingPlan {
            max_wait: Some(PlanMaxWait {
                after_ms: 1_000,
                action: PlanMaxWaitAction::Overflow {
                    queue: "general".into(),
                    plan: Box::new(inner),
                },
            }),
            ..RoutingPlan::default()
        };
        assert_eq!(bad(plan), "plan.max_wait.action.plan.reject_delay_ms");
    }

    #[test]
    fn step_at_takes_the_last_due_step() {
        let step = |after_ms| PlanStep {
            after_ms,
            requirements: PlanRequirements::language_only("en"),
        };
        let plan = RoutingPlan {
            steps: vec![step(0), step(30_000), step(90_000)],
            ..RoutingPlan::default()
        };
        assert_eq!(plan.step_at(0), 0);
        assert_eq!(plan.step_at(29_999), 0);
        assert_eq!(plan.step_at(30_000), 1);
        assert_eq!(plan.step_at(1_000_000), 2);
        assert_eq!(RoutingPlan::default().step_at(5), 0);
    }
}
