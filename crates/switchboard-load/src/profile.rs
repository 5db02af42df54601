//! The simulated population: which skills and languages agents go online
//! with, which categories conversations arrive in, and the time
//! distributions (think, handle, cancel) that make a run realistic.
//!
//! Everything is drawn from a seeded generator, so two runs with the same
//! `--seed` hand over the same conversations to the same agent profiles.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp};

/// The skills conversations need, with how often each category arrives
/// (relative weights) and the minimum level it needs.
pub const CATEGORIES: [(&str, u32, u32); 8] = [
    ("billing", 30, 2),
    ("tech_support", 20, 3),
    ("returns", 15, 2),
    ("shipping", 10, 2),
    ("accounts", 10, 3),
    ("complaints", 8, 3),
    ("fraud", 4, 4),
    ("sales", 3, 2),
];

/// Languages in the arrival mix (relative weights). Every agent speaks the
/// first; each speaks each of the others with probability
/// `Profile::second_language_probability`.
pub const LANGUAGES: [(&str, u32); 3] = [("en", 80), ("de", 12), ("es", 8)];

/// What one conversation requires: indexes into [`CATEGORIES`] and
/// [`LANGUAGES`], and the minimum skill level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub category: usize,
    pub language: usize,
    pub min_level: u32,
}

/// One simulated agent's online profile: skill index → level, languages.
#[derive(Clone, Debug)]
pub struct AgentProfile {
    pub skills: Vec<(usize, u32)>,
    pub languages: Vec<usize>,
}

impl AgentProfile {
    /// Whether the server may offer this agent a conversation with
    /// `requirement`: the skill at the level and the language.
    pub fn can_serve(&self, requirement: &Requirement) -> bool {
        self.languages.contains(&requirement.language)
            && self.skills.iter().any(|&(skill, level)| {
                skill == requirement.category && level >= requirement.min_level
            })
    }
}

/// The knobs of the simulated population.
#[derive(Clone, Debug)]
pub struct Profile {
    pub skills_per_agent: usize,
    pub second_language_probability: f64,
    /// Only English conversations when true (small smoke runs, where a rare
    /// language might have no speaker online).
    pub english_only: bool,
    pub think_time_mean: Duration,
    pub think_time_jitter: Duration,
    pub handle_time_mean: Duration,
    pub decline_fraction: f64,
    pub miss_fraction: f64,
    pub cancel_fraction: f64,
    pub cancel_within: Duration,
}

impl Profile {
    pub fn agent(&self, rng: &mut impl Rng) -> AgentProfile {
        let count = self.skills_per_agent.clamp(1, CATEGORIES.len());
        let mut all: Vec<usize> = (0..CATEGORIES.len()).collect();
        // A partial Fisher-Yates shuffle: the first `count` are the pick.
        for index in 0..count {
            let other = rng.random_range(index..all.len());
            all.swap(index, other);
        }
        let skills = all[..count]
            .iter()
            .map(|&skill| (skill, rng.random_range(2..=5)))
            .collect();
        let mut languages = vec![0];
        for language in 1..LANGUAGES.len() {
            if rng.random_bool(self.second_language_probability.clamp(0.0, 1.0)) {
                languages.push(language);
            }
        }
        AgentProfile { skills, languages }
    }

    pub fn requirement(&self, rng: &mut impl Rng) -> Requirement {
        let category = weighted(rng, CATEGORIES.iter().map(|c| c.1));
        let language = if self.english_only {
            0
        } else {
            weighted(rng, LANGUAGES.iter().map(|l| l.1))
        };
        Requirement {
            category,
            language,
            min_level: CATEGORIES[category].2,
        }
    }

    /// Think time before answering an offer: the mean plus or minus a
    /// uniform jitter, so answers do not arrive in lockstep.
    pub fn think_time(&self, rng: &mut impl Rng) -> Duration {
        let jitter = self.think_time_jitter.as_secs_f64();
        let offset = if jitter > 0.0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((self.think_time_mean.as_secs_f64() + offset).max(0.0))
    }

    /// Handle time: exponential with the configured mean.
    pub fn handle_time(&self, rng: &mut impl Rng) -> Duration {
        exponential(rng, self.handle_time_mean)
    }
}

/// What an agent does with an offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferChoice {
    Accept,
    Decline,
    Miss,
}

impl Profile {
    pub fn offer_choice(&self, rng: &mut impl Rng) -> OfferChoice {
        let draw: f64 = rng.random();
        if draw < self.miss_fraction {
            OfferChoice::Miss
        } else if draw < self.miss_fraction + self.decline_fraction {
            OfferChoice::Decline
        } else {
            OfferChoice::Accept
        }
    }
}

/// A draw from an exponential distribution with `mean` (zero mean: zero).
pub fn exponential(rng: &mut impl Rng, mean: Duration) -> Duration {
    let mean_secs = mean.as_secs_f64();
    if mean_secs <= 0.0 {
        return Duration::ZERO;
    }
    match Exp::new(1.0 / mean_secs) {
        Ok(distribution) => Duration::from_secs_f64(distribution.sample(rng)),
        Err(_) => mean,
    }
}

fn weighted(rng: &mut impl Rng, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u32 = weights.clone().sum();
    let mut draw = rng.random_range(0..total.max(1));
    for (index, weight) in weights.enumerate() {
        if draw < weight {
            return index;
        }
        draw -= weight;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn profile() -> Profile {
        Profile {
            skills_per_agent: 4,
            second_language_probability: 0.5,
            english_only: false,
            think_time_mean: Duration::from_millis(200),
            think_time_jitter: Duration::from_millis(50),
            handle_time_mean: Duration::from_secs(2),
            decline_fraction: 0.1,
            miss_fraction: 0.0,
            cancel_fraction: 0.0,
            cancel_within: Duration::ZERO,
        }
    }

    #[test]
    fn agents_get_distinct_skills_and_always_english() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let agent = profile().agent(&mut rng);
            let mut skills: Vec<usize> = agent.skills.iter().map(|s| s.0).collect();
            skills.sort_unstable();
            skills.dedup();
            assert_eq!(skills.len(), 4);
            assert_eq!(agent.languages[0], 0);
        }
    }

    #[test]
    fn exponential_mean_is_close() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| exponential(&mut rng, Duration::from_secs(2)).as_secs_f64())
            .sum();
        let mean = total / f64::from(n);
        assert!((mean - 2.0).abs() < 0.1, "mean {mean}");
    }

    #[test]
    fn eligibility_needs_skill_level_and_language() {
        let agent = AgentProfile {
            skills: vec![(0, 3)],
            languages: vec![0],
        };
        let need = |category, language, min_level| Requirement {
            category,
            language,
            min_level,
        };
        assert!(agent.can_serve(&need(0, 0, 3)));
        assert!(!agent.can_serve(&need(0, 0, 4)));
        assert!(!agent.can_serve(&need(0, 1, 2)));
        assert!(!agent.can_serve(&need(1, 0, 2)));
    }
}
