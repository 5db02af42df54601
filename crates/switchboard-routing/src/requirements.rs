//! What an agent must have to take a conversation, and how that loosens
//! while the conversation waits.
//!
//! # Design
//!
//! A conversation's base requirements are the hand-off's own (language,
//! skills, region) merged with its queue's (skills at the higher of the two
//! levels, attributes). [`requirements_at`] applies the queue's relaxation
//! steps whose time has come, in order. Every step only loosens (lowers a
//! level with `min`, removes a skill, widens the language family, adds a
//! region) and the loader rejects steps out of time order, so the
//! requirements at a later time are always the earlier ones with more
//! loosening applied: an agent eligible at `t` stays eligible at `t' > t`.

use crate::config::{LanguageWidening, QueuePolicy, Relaxation, RoutingConfig};
use crate::error::RoutingError;
use crate::region::{CustomerRegion, RegionId};
use std::collections::BTreeSet;
use switchboard_core::model::{Handoff, Skill};
use switchboard_core::validate::{language_covers, language_lookup_keys};

/// The language an agent must speak.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LanguageRequirement {
    /// Lower-case BCP 47 tag.
    pub tag: String,
    /// Once widened, any agent language of the tag's family counts (both
    /// more general tags, `de` for `de-at`, and more specific or sibling
    /// ones, `de-de` once widened to `de`). Before, only tags that cover
    /// the customer's (the core's `language_covers`).
    pub widened: bool,
}

impl LanguageRequirement {
    pub fn exact(tag: impl Into<String>) -> Self {
        LanguageRequirement {
            tag: tag.into(),
            widened: false,
        }
    }

    /// Whether an agent speaking `agent_tag` meets this requirement.
    pub fn accepts(&self, agent_tag: &str) -> bool {
        language_covers(agent_tag, &self.tag)
            || (self.widened && language_covers(&self.tag, agent_tag))
    }

    /// Where an engine that indexes agents by their exact language tag
    /// finds every agent this requirement may accept.
    ///
    /// Not widened: the tag and its prefixes (`de-at` → `de-at`, `de`), the
    /// core's `language_lookup_keys`. Widened: agents of the whole family
    /// (`de-de`, `de-ch-1996`) qualify, which point look-ups by exact tag
    /// cannot find; index agents also under their primary subtag
    /// ([`primary_subtag`]) and look up that family key, then filter with
    /// [`LanguageRequirement::accepts`].
    pub fn lookup(&self) -> LanguageLookup {
        if self.widened {
            LanguageLookup::Family(primary_subtag(&self.tag).to_owned())
        } else {
            LanguageLookup::Tags(
                language_lookup_keys(&self.tag)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            )
        }
    }

    fn widen(&mut self, how: LanguageWidening) {
        let cut = match how {
            LanguageWidening::Parent => self.tag.rfind('-'),
            LanguageWidening::Primary => self.tag.find('-'),
        };
        if let Some(cut) = cut {
            self.tag.truncate(cut);
        }
        self.widened = true;
    }
}

/// See [`LanguageRequirement::lookup`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LanguageLookup {
    /// Agents indexed under any of these exact tags.
    Tags(Vec<String>),
    /// Agents indexed under this primary subtag (family key).
    Family(String),
}

/// The primary language subtag: `zh-hant-tw` → `zh`.
pub fn primary_subtag(tag: &str) -> &str {
    tag.split('-').next().unwrap_or(tag)
}

/// Everything an agent must have to take one conversation at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirements {
    pub language: LanguageRequirement,
    /// Sorted by name, one entry per skill.
    pub skills: Vec<Skill>,
    /// Roster attributes the agent must have.
    pub attributes: BTreeSet<String>,
    /// `None`: no residency rule. `Some(set)`: the agent must be admitted
    /// by one of these regions.
    pub regions: Option<BTreeSet<RegionId>>,
}

impl Requirements {
    /// Requirements with only a language (tests and simple callers).
    pub fn language_only(tag: impl Into<String>) -> Self {
        Requirements {
            language: LanguageRequirement::exact(tag),
            skills: Vec::new(),
            attributes: BTreeSet::new(),
            regions: None,
        }
    }

    /// The level required for `skill`, if required.
    pub fn skill_level(&self, skill: &str) -> Option<u8> {
        self.skills
            .iter()
            .find(|s| s.name == skill)
            .map(|s| s.level)
    }

    /// Requires `skill` at least at `level` (keeping a higher requirement).
    pub fn require_skill(&mut self, skill: &str, level: u8) {
        match self.skills.binary_search_by(|s| s.name.as_str().cmp(skill)) {
            Ok(i) => self.skills[i].level = self.skills[i].level.max(level),
            Err(i) => self.skills.insert(i, Skill::new(skill, level)),
        }
    }

    fn apply(&mut self, relaxation: &Relaxation) {
        match relaxation {
            Relaxation::LowerSkill { skill, to_level } => {
                if let Some(s) = self.skills.iter_mut().find(|s| &s.name == skill) {
                    s.level = s.level.min(*to_level);
                }
            }
            Relaxation::DropSkill { skill } => self.skills.retain(|s| &s.name != skill),
            Relaxation::WidenLanguage(how) => self.language.widen(*how),
            Relaxation::WidenRegion { from, to } => {
                if let Some(regions) = &mut self.regions
                    && regions.contains(from)
                {
                    regions.insert(to.clone());
                }
            }
        }
    }
}

/// A conversation's base requirements in `queue`: the hand-off's language,
/// skills and region, plus the queue's skills (the higher level wins) and
/// attributes. The region comes from `handoff.region`, else from the
/// customer's location; a named region the config lacks is an error.
pub fn base_requirements(
    config: &RoutingConfig,
    queue: &QueuePolicy,
    handoff: &Handoff,
) -> Result<Requirements, RoutingError> {
    let mut requirements = Requirements::language_only(handoff.language.clone());
    for skill in handoff.required_skills.iter().chain(&queue.skills) {
        requirements.require_skill(&skill.name, skill.level);
    }
    requirements.attributes = queue.attributes.clone();
    let customer = match (&handoff.region, handoff.customer_location) {
        (Some(name), _) => CustomerRegion::Named(name),
        (None, Some(location)) => CustomerRegion::Location(location),
        (None, None) => CustomerRegion::Unspecified,
    };
    requirements.regions = config
        .regions
        .customer_region(customer)
        .map_err(|name| RoutingError::UnknownRegion(name.to_owned()))?
        .map(|region| BTreeSet::from([region]));
    Ok(requirements)
}

/// The requirements after waiting `waited_ms` in `queue`: every relaxation
/// step due by then applied to `base`, in order. Never stricter than at any
/// shorter wait (see the module docs).
pub fn requirements_at(queue: &QueuePolicy, base: &Requirements, waited_ms: i64) -> Requirements {
    let mut requirements = base.clone();
    for step in queue
        .relaxation
        .iter()
        .take_while(|step| step.after_ms <= waited_ms)
    {
        requirements.apply(&step.relaxation);
    }
    requirements
}

/// When the requirements of a conversation in `queue` next change, as a
/// wait in milliseconds after `waited_ms` has passed, so the engine can
/// schedule a re-match instead of polling. `None`: they never change again.
pub fn next_relaxation_ms(queue: &QueuePolicy, waited_ms: i64) -> Option<i64> {
    queue
        .relaxation
        .iter()
        .map(|step| step.after_ms)
        .find(|&after| after > waited_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelaxStep;

    #[test]
    fn language_widening_table() {
        // (customer tag, widening, agent tag, accepted)
        let cases: [(&str, Option<LanguageWidening>, &str, bool); 12] = [
            ("de-at", None, "de-at", true),
            ("de-at", None, "de", true),
            ("de-at", None, "de-de", false),
            ("de-at", None, "fr", false),
            ("de", None, "de-at", false),
            ("de-at", Some(LanguageWidening::Parent), "de-de", true),
            ("de-at", Some(LanguageWidening::Parent), "de", true),
            ("de-at", Some(LanguageWidening::Parent), "fr", false),
            ("de-at", Some(LanguageWidening::Parent), "den", false),
            (
                "zh-hant-tw",
                Some(LanguageWidening::Parent),
                "zh-hans",
                false,
            ),
            (
                "zh-hant-tw",
                Some(LanguageWidening::Primary),
                "zh-hans",
                true,
            ),
            ("de", Some(LanguageWidening::Parent), "de-ch", true),
        ];
        for (customer, widening, agent, accepted) in cases {
            let mut requirement = LanguageRequirement::exact(customer);
            if let Some(how) = widening {
                requirement.widen(how);
            }
            assert_eq!(
                requirement.accepts(agent),
                accepted,
                "{customer} widened {widening:?}, agent {agent}"
            );
        }
    }

    #[test]
    fn index_lookups_find_every_accepted_agent() {
        let exact = LanguageRequirement::exact("de-at");
        assert_eq!(
            exact.lookup(),
            LanguageLookup::Tags(vec!["de-at".into(), "de".into()])
        );
        let mut widened = exact.clone();
        widened.widen(LanguageWidening::Parent);
        assert_eq!(widened.lookup(), LanguageLookup::Family("de".into()));
        // Every agent tag the widened requirement accepts has that family.
        for agent in ["de", "de-at", "de-de", "de-ch-1996"] {
            assert!(widened.accepts(agent));
            assert_eq!(primary_subtag(agent), "de");
        }
        assert_eq!(primary_subtag("zh-hant-tw"), "zh");
    }

    #[test]
    fn steps_apply_in_order_as_time_passes() {
        let mut queue = QueuePolicy::builtin("billing");
        queue.relaxation = vec![
            RelaxStep {
                after_ms: 30_000,
                relaxation: Relaxation::LowerSkill {
                    skill: "billing".into(),
                    to_level: 3,
                },
            },
            RelaxStep {
                after_ms: 90_000,
                relaxation: Relaxation::DropSkill {
                    skill: "billing".into(),
                },
            },
            RelaxStep {
                after_ms: 120_000,
                relaxation: Relaxation::WidenLanguage(LanguageWidening::Primary),
            },
            RelaxStep {
                after_ms: 150_000,
                relaxation: Relaxation::WidenRegion {
                    from: "berlin".into(),
                    to: "germany".into(),
                },
            },
        ];
        let mut base = Requirements::language_only("de-at");
        base.require_skill("billing", 4);
        base.regions = Some(BTreeSet::from(["berlin".to_owned()]));

        let at = |ms| requirements_at(&queue, &base, ms);
        assert_eq!(at(0), base);
        assert_eq!(at(29_999).skill_level("billing"), Some(4));
        assert_eq!(at(30_000).skill_level("billing"), Some(3));
        assert_eq!(at(90_000).skill_level("billing"), None);
        assert_eq!(at(119_999).language, LanguageRequirement::exact("de-at"));
        assert_eq!(at(120_000).language.tag, "de");
        assert!(at(120_000).language.widened);
        assert_eq!(
            at(150_000).regions,
            Some(BTreeSet::from(["berlin".to_owned(), "germany".to_owned()]))
        );
        assert_eq!(next_relaxation_ms(&queue, 0), Some(30_000));
        assert_eq!(next_relaxation_ms(&queue, 30_000), Some(90_000));
        assert_eq!(next_relaxation_ms(&queue, 150_000), None);
    }

    #[test]
    fn lowering_never_raises_and_region_widening_needs_its_source() {
        let mut queue = QueuePolicy::builtin("q");
        queue.relaxation = vec![
            RelaxStep {
                after_ms: 0,
                relaxation: Relaxation::LowerSkill {
                    skill: "x".into(),
                    to_level: 3,
                },
            },
            RelaxStep {
                after_ms: 0,
                relaxation: Relaxation::WidenRegion {
                    from: "paris".into(),
                    to: "france".into(),
                },
            },
        ];
        let mut base = Requirements::language_only("fr");
        base.require_skill("x", 2);
        base.regions = Some(BTreeSet::from(["berlin".to_owned()]));
        let relaxed = requirements_at(&queue, &base, 1);
        assert_eq!(relaxed.skill_level("x"), Some(2));
        assert_eq!(relaxed.regions, base.regions);
    }
}
