//! Whether one agent may take one conversation now, and if not, why.
//!
//! The rules, checked in this order (the first failure is reported):
//! status available, spare capacity, not excluded from this conversation
//! (declined or missed it), not in a reject delay, language, every required
//! skill at its level, every required attribute, region (roster, then
//! geofence).

use crate::region::Regions;
use crate::requirements::Requirements;
use std::collections::BTreeSet;
use std::fmt;
use switchboard_core::ids::AgentId;
use switchboard_core::model::{AgentStatus, Location, Presence, RosterEntry, Skill};
use switchboard_core::time::Timestamp;

/// The agent side of an eligibility check, borrowed from the roster entry
/// (narrowed by the app's go-online request) and the live presence.
#[derive(Clone, Copy, Debug)]
pub struct AgentProfile<'a> {
    pub agent_id: &'a AgentId,
    pub status: AgentStatus,
    pub active_conversations: u32,
    pub capacity: u32,
    /// Skills in force (the roster's, possibly narrowed).
    pub skills: &'a [Skill],
    /// Lower-case BCP 47 tags in force.
    pub languages: &'a [String],
    /// Roster attributes (hard constraints such as `kyc_cleared`).
    pub attributes: &'a [String],
    /// Regions the roster lets the agent serve; how an empty list counts
    /// is the config's `roster_allowed_regions`
    /// ([`RosterRegionPolicy`](crate::region::RosterRegionPolicy)).
    pub allowed_regions: &'a [String],
    pub location: Option<Location>,
    /// The agent declined an offer and gets none before this instant.
    pub reject_delay_until: Option<Timestamp>,
}

impl<'a> AgentProfile<'a> {
    /// The profile of an online agent: skills, languages, capacity and
    /// status in force from its presence (the app's narrowing applied),
    /// attributes and allowed regions from its roster entry. Location and
    /// reject delay are not in either; set them from the session.
    pub fn new(roster: &'a RosterEntry, presence: &'a Presence) -> AgentProfile<'a> {
        AgentProfile {
            agent_id: &presence.agent_id,
            status: presence.status,
            active_conversations: presence.active_conversations,
            capacity: presence.capacity,
            skills: &presence.skills,
            languages: &presence.languages,
            attributes: &roster.attributes,
            allowed_regions: &roster.allowed_regions,
            location: None,
            reject_delay_until: None,
        }
    }
}

/// The conversation side beyond its requirements.
#[derive(Clone, Copy, Debug)]
pub struct OfferContext<'a> {
    pub now: Timestamp,
    /// Agents that declined or missed this conversation.
    pub excluded: &'a BTreeSet<AgentId>,
}

/// Why an agent may not take a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    NotAvailable(AgentStatus),
    AtCapacity {
        active: u32,
        capacity: u32,
    },
    Excluded,
    RejectDelay {
        until: Timestamp,
    },
    Language {
        required: String,
    },
    MissingSkill {
        skill: String,
        required: u8,
    },
    SkillTooLow {
        skill: String,
        has: u8,
        required: u8,
    },
    MissingAttribute(String),
    /// No location, and none of the conversation's regions admits agents
    /// without one.
    NoLocation,
    /// The roster does not list any of the conversation's regions.
    RegionNotInRoster,
    /// The agent's location is in none of the conversation's regions.
    OutsideRegion,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::NotAvailable(status) => write!(f, "agent is {status:?}, not available"),
            Ineligible::AtCapacity { active, capacity } => {
                write!(f, "agent is at capacity ({active} of {capacity})")
            }
            Ineligible::Excluded => f.write_str("agent declined or missed this conversation"),
            Ineligible::RejectDelay { until } => {
                write!(f, "agent is in a reject delay until {}", until.as_millis())
            }
            Ineligible::Language { required } => write!(f, "agent does not speak `{required}`"),
            Ineligible::MissingSkill { skill, required } => {
                write!(f, "agent lacks skill `{skill}` (level {required} required)")
            }
            Ineligible::SkillTooLow {
                skill,
                has,
                required,
            } => write!(f, "agent has `{skill}` at level {has}, {required} required"),
            Ineligible::MissingAttribute(a) => write!(f, "agent lacks attribute `{a}`"),
            Ineligible::NoLocation => {
                f.write_str("agent has no location and the region requires one")
            }
            Ineligible::RegionNotInRoster => {
                f.write_str("agent's roster entry does not allow the conversation's region")
            }
            Ineligible::OutsideRegion => {
                f.write_str("agent is located outside the conversation's regions")
            }
        }
    }
}

/// Whether `agent` may take a conversation with `requirements` now.
pub fn eligible(
    agent: &AgentProfile<'_>,
    requirements: &Requirements,
    context: &OfferContext<'_>,
    regions: &Regions,
) -> Result<(), Ineligible> {
    if agent.status != AgentStatus::Available {
        return Err(Ineligible::NotAvailable(agent.status));
    }
    if agent.active_conversations >= agent.capacity {
        return Err(Ineligible::AtCapacity {
            active: agent.active_conversations,
            capacity: agent.capacity,
        });
    }
    if context.excluded.contains(agent.agent_id) {
        return Err(Ineligible::Excluded);
    }
    if let Some(until) = agent.reject_delay_until
        && context.now < until
    {
        return Err(Ineligible::RejectDelay { until });
    }
    check_requirements(agent, requirements, regions)
}

/// The requirement rules alone (language, skills, attributes, region),
/// without availability: for "could this agent ever take it" questions such
/// as staffing and tests of relaxation.
pub fn check_requirements(
    agent: &AgentProfile<'_>,
    requirements: &Requirements,
    regions: &Regions,
) -> Result<(), Ineligible> {
    if !agent
        .languages
        .iter()
        .any(|l| requirements.language.accepts(l))
    {
        return Err(Ineligible::Language {
            required: requirements.language.tag.clone(),
        });
    }
    for required in &requirements.skills {
        match agent.skills.iter().find(|s| s.name == required.name) {
            None => {
                return Err(Ineligible::MissingSkill {
                    skill: required.name.clone(),
                    required: required.level,
                });
            }
            Some(has) if has.level < required.level => {
                return Err(Ineligible::SkillTooLow {
                    skill: required.name.clone(),
                    has: has.level,
                    required: required.level,
                });
            }
            Some(_) => {}
        }
    }
    if let Some(missing) = requirements
        .attributes
        .iter()
        .find(|a| !agent.attributes.contains(a))
    {
        return Err(Ineligible::MissingAttribute(missing.clone()));
    }
    if let Some(wanted) = &requirements.regions {
        let permitted: Vec<&str> = wanted
            .iter()
            .map(String::as_str)
            .filter(|r| regions.roster_policy.permits(agent.allowed_regions, r))
            .collect();
        if permitted.is_empty() {
            return Err(Ineligible::RegionNotInRoster);
        }
        let admitted = permitted.iter().any(|name| {
            regions
                .get(name)
                .is_some_and(|region| region.admits_agent(agent.location))
        });
        if !admitted {
            return Err(if agent.location.is_none() {
                Ineligible::NoLocation
            } else {
                Ineligible::OutsideRegion
            });
        }
    }
    Ok(())
}
