//! The routing policy as the engine consumes it: queues, relaxation,
//! strategies, penalties, aging, regions. Built only by the loader
//! ([`RoutingConfig::from_toml`]) so every value here has been validated.

use crate::aging::Aging;
use crate::region::Regions;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use switchboard_core::model::Skill;
use switchboard_core::time::Timestamp;

/// How an agent is picked among the eligible ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The agent idle the longest (earliest `idle_since`).
    #[default]
    LongestIdle,
    /// The lowest share of capacity in use (active / capacity).
    LeastOccupied,
    /// The highest total level over the required skills.
    BestSkillMatch,
    /// The agent offered from this queue least recently.
    RoundRobin,
    /// The best CSAT, smoothed towards a prior for agents with few ratings.
    QualityWeighted,
}

impl Strategy {
    /// Every strategy with its config name.
    pub const ALL: [(Strategy, &'static str); 5] = [
        (Strategy::LongestIdle, "longest_idle"),
        (Strategy::LeastOccupied, "least_occupied"),
        (Strategy::BestSkillMatch, "best_skill_match"),
        (Strategy::RoundRobin, "round_robin"),
        (Strategy::QualityWeighted, "quality_weighted"),
    ];

    /// The strategy named `name` in a config file.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(s, _)| *s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LongestIdle => "longest_idle",
            Strategy::LeastOccupied => "least_occupied",
            Strategy::BestSkillMatch => "best_skill_match",
            Strategy::RoundRobin => "round_robin",
            Strategy::QualityWeighted => "quality_weighted",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a language requirement is widened by a relaxation step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LanguageWidening {
    /// Drop the last subtag: `zh-hant-tw` → `zh-hant`, `de-at` → `de`.
    Parent,
    /// Keep only the primary language subtag: `zh-hant-tw` → `zh`.
    Primary,
}

/// One relaxation action. Each one only ever loosens requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relaxation {
    /// Accept `skill` at `to_level` (a required level above it is lowered;
    /// a lower one, or a skill not required, is left alone).
    LowerSkill { skill: String, to_level: u8 },
    /// Stop requiring `skill`.
    DropSkill { skill: String },
    /// Accept agents of a wider language family.
    WidenLanguage(LanguageWidening),
    /// A conversation whose regions include `from` may also be served by
    /// agents located in `to` (a region covering `from`).
    WidenRegion { from: String, to: String },
}

/// A relaxation step: after `after_ms` of waiting, apply `relaxation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaxStep {
    pub after_ms: i64,
    pub relaxation: Relaxation,
}

/// What happens to a conversation that reaches the queue's maximum wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaxWaitAction {
    /// End it as expired; the gateway sees `reason`.
    Expire { reason: String },
    /// Move it to `queue`; that queue's clock, relaxation and maximum wait
    /// start again from the moment it arrives there.
    Overflow { queue: String },
    /// Keep it queued at `priority` (low urgency) as a callback promise; the
    /// gateway is told with `reason`. It no longer expires.
    Callback { priority: u8, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxWait {
    pub after_ms: i64,
    pub action: MaxWaitAction,
}

/// Everything the engine needs to know about one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePolicy {
    /// The queue's name; also the hand-off category it serves.
    pub name: String,
    /// Further hand-off categories routed to this queue.
    pub categories: Vec<String>,
    /// Skills the queue requires on top of the hand-off's own, sorted by name.
    pub skills: Vec<Skill>,
    /// Roster attributes an agent must have (hard constraints).
    pub attributes: BTreeSet<String>,
    /// Floor for the conversation's priority (0 = the hand-off's own rules).
    pub priority: u8,
    pub strategy: Strategy,
    pub offer_timeout_ms: i64,
    /// Wrap-up after a conversation of this queue ends.
    pub wrap_up_ms: i64,
    pub max_wait: MaxWait,
    /// Steps in time order (validated at load).
    pub relaxation: Vec<RelaxStep>,
}

impl QueuePolicy {
    /// A queue with the built-in defaults and nothing required: what a
    /// hand-off gets when no queue matches and no default queue is set.
    pub fn builtin(name: impl Into<String>) -> QueuePolicy {
        QueuePolicy {
            name: name.into(),
            categories: Vec::new(),
            skills: Vec::new(),
            attributes: BTreeSet::new(),
            priority: 0,
            strategy: Strategy::LongestIdle,
            offer_timeout_ms: 20_000,
            wrap_up_ms: 0,
            max_wait: MaxWait {
                after_ms: 600_000,
                action: MaxWaitAction::Expire {
                    reason: "no agent available".to_owned(),
                },
            },
            relaxation: Vec::new(),
        }
    }

    /// The maximum-wait action due after `waited_ms` in this queue, if any.
    pub fn max_wait_due(&self, waited_ms: i64) -> Option<&MaxWaitAction> {
        (waited_ms >= self.max_wait.after_ms).then_some(&self.max_wait.action)
    }

    /// The conversation's base priority in this queue: the higher of the
    /// hand-off's and the queue's floor.
    pub fn base_priority(&self, handoff_priority: u8) -> u8 {
        handoff_priority.max(self.priority)
    }
}

/// Agent penalties, pool-wide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Penalties {
    /// Consecutive missed offers that put an agent away.
    pub misses_before_away: u32,
    /// After a decline, the agent is offered nothing for this long.
    pub reject_delay_ms: i64,
}

impl Penalties {
    /// Until when an agent who declined at `declined_at` gets no offers;
    /// `None` when there is no reject delay.
    pub fn reject_delay_until(&self, declined_at: Timestamp) -> Option<Timestamp> {
        (self.reject_delay_ms > 0).then(|| declined_at.plus_millis(self.reject_delay_ms))
    }
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties {
            misses_before_away: 3,
            reject_delay_ms: 0,
        }
    }
}

/// A validated routing file.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// The file name it was loaded from (for messages).
    pub file: String,
    /// The queue for hand-offs whose category no queue serves.
    pub default_queue: Option<String>,
    /// A returning customer's previous agent gets the offer exclusively
    /// for this long, if online and eligible.
    pub preferred_agent_window_ms: i64,
    pub penalties: Penalties,
    pub aging: Aging,
    pub regions: Regions,
    /// Queues by name.
    pub queues: BTreeMap<String, QueuePolicy>,
    /// Category → queue name (each queue's own name included).
    pub(crate) categories: BTreeMap<String, String>,
    /// FNV-1a 64 of the source text: the same file gives the same value on
    /// every replica, so replicas can report which policy they run.
    pub fingerprint: u64,
}

impl RoutingConfig {
    /// The queue serving hand-offs of `category`: its own queue, else the
    /// default queue, else `None` (the engine then uses
    /// [`QueuePolicy::builtin`]).
    pub fn queue_for(&self, category: &str) -> Option<&QueuePolicy> {
        let name = self
            .categories
            .get(category)
            .or(self.default_queue.as_ref())?;
        self.queues.get(name)
    }

    pub fn queue(&self, name: &str) -> Option<&QueuePolicy> {
        self.queues.get(name)
    }

    /// [`RoutingConfig::fingerprint`] as 16 hex digits, for logs and admin
    /// replies.
    pub fn version(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }

    /// Whether, after `waited_ms`, the offer is still reserved for the
    /// preferred agent (when that agent is online and eligible).
    pub fn preferred_agent_exclusive(&self, waited_ms: i64) -> bool {
        waited_ms < self.preferred_agent_window_ms
    }
}
