//! Choosing one agent among eligible candidates.
//!
//! # Design
//!
//! [`pick`] is a total order over the candidates, so the same input always
//! gives the same agent on every replica: each strategy compares its own
//! score first, then falls back to longest idle, then to the agent id. It
//! returns an index into the slice it was given, so it cannot pick an agent
//! outside the eligible set.
//!
//! Quality-weighted routing smooths CSAT towards a prior
//! ([`CSAT_PRIOR_MEAN`] over [`CSAT_PRIOR_WEIGHT`] ratings) so that a new
//! agent with a single 5 does not outrank a veteran with 4.9 over hundreds.

use crate::config::Strategy;
use crate::requirements::Requirements;
use std::cmp::Ordering;
use switchboard_core::ids::AgentId;
use switchboard_core::model::{Presence, Skill};
use switchboard_core::time::Timestamp;

/// The mean an agent's CSAT is pulled towards.
pub const CSAT_PRIOR_MEAN: f64 = 4.0;
/// How many ratings the prior counts as.
pub const CSAT_PRIOR_WEIGHT: f64 = 5.0;

/// An agent's CSAT so far: the mean (1–5) of `count` ratings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Csat {
    pub mean: f64,
    pub count: u32,
}

/// One eligible agent as the strategy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub agent_id: &'a AgentId,
    pub idle_since: Timestamp,
    pub active_conversations: u32,
    pub capacity: u32,
    pub skills: &'a [Skill],
    pub csat: Option<Csat>,
    /// Round robin: a counter value stamped on the agent when it was last
    /// offered a conversation from this queue (0 = never). Lowest goes next.
    pub last_offered_seq: u64,
}

impl<'a> Candidate<'a> {
    /// A candidate from an agent's presence; CSAT and the round-robin
    /// counter come from the shift stats and the queue.
    pub fn new(presence: &'a Presence, csat: Option<Csat>, last_offered_seq: u64) -> Candidate<'a> {
        Candidate {
            agent_id: &presence.agent_id,
            idle_since: presence.idle_since,
            active_conversations: presence.active_conversations,
            capacity: presence.capacity,
            skills: &presence.skills,
            csat,
            last_offered_seq,
        }
    }
}

/// The smoothed CSAT the quality-weighted strategy ranks by.
pub fn quality_score(csat: Option<Csat>) -> f64 {
    match csat {
        Some(Csat { mean, count }) if mean.is_finite() && count > 0 => {
            let mean = mean.clamp(1.0, 5.0);
            let count = f64::from(count);
            (mean * count + CSAT_PRIOR_MEAN * CSAT_PRIOR_WEIGHT) / (count + CSAT_PRIOR_WEIGHT)
        }
        _ => CSAT_PRIOR_MEAN,
    }
}

/// The best-skill-match score: the sum of the candidate's levels over the
/// required skills (a skill it lacks counts 0).
pub fn skill_match_score(requirements: &Requirements, skills: &[Skill]) -> u32 {
    switchboard_core::model::skill_match_score(&requirements.skills, skills)
}

/// Occupancy as a fraction `active / capacity`, compared exactly by cross
/// multiplication; no capacity counts as full.
fn occupancy_cmp(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    let left = u64::from(a.active_conversations) * u64::from(b.capacity.max(1));
    let right = u64::from(b.active_conversations) * u64::from(a.capacity.max(1));
    let a_full = a.capacity == 0;
    let b_full = b.capacity == 0;
    a_full.cmp(&b_full).then(left.cmp(&right))
}

/// Orders candidates best first under `strategy`.
pub fn compare(
    strategy: Strategy,
    requirements: &Requirements,
    a: &Candidate<'_>,
    b: &Candidate<'_>,
) -> Ordering {
    let primary = match strategy {
        Strategy::LongestIdle => Ordering::Equal,
        Strategy::LeastOccupied => occupancy_cmp(a, b),
        Strategy::BestSkillMatch => skill_match_score(requirements, b.skills)
            .cmp(&skill_match_score(requirements, a.skills)),
        Strategy::RoundRobin => a.last_offered_seq.cmp(&b.last_offered_seq),
        Strategy::QualityWeighted => quality_score(b.csat).total_cmp(&quality_score(a.csat)),
    };
    primary
        .then(a.idle_since.cmp(&b.idle_since))
        .then_with(|| a.agent_id.cmp(b.agent_id))
}

/// The index of the candidate `strategy` picks, or `None` for no
/// candidates. Deterministic; see the module docs.
pub fn pick(
    strategy: Strategy,
    requirements: &Requirements,
    candidates: &[Candidate<'_>],
) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| compare(strategy, requirements, a, b))
        .map(|(i, _)| i)
}
