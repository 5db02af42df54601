//! The one helper these tests share: owned agents that lend an
//! `AgentProfile` / `Candidate`, and a small config with regions.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use switchboard_core::ids::{AgentId, ConversationId};
use switchboard_core::model::{AgentStatus, Handoff, Location, Skill};
use switchboard_core::time::Timestamp;
use switchboard_routing::{AgentProfile, Candidate, Csat, RoutingConfig};

/// Regions: `eu` (a square with a hole, `ch`), `berlin` inside `germany`,
/// `open` (admits agents without a location), `fiji` (across the
/// antimeridian). Queues exercising every relaxation.
pub const CONFIG: &str = r#"
[routing]
agents_without_location = "exclude"
roster_allowed_regions = "if_listed"
preferred_agent_window_seconds = 20

[aging]
rate_per_second = 0.05

[regions.eu]
wkt = "POLYGON((0 40, 20 40, 20 60, 0 60, 0 40), (6 46, 10 46, 10 48, 6 48, 6 46))"
[regions.germany]
wkt = "POLYGON((5 47, 15 47, 15 55, 5 55, 5 47))"
[regions.berlin]
wkt = "POLYGON((13 52, 14 52, 14 53, 13 53, 13 52))"
[regions.open]
geojson = '{"type":"Polygon","coordinates":[[[100,0],[110,0],[110,10],[100,10],[100,0]]]}'
agents_without_location = "include"
[regions.fiji]
wkt = "POLYGON((177 -19, -178 -19, -178 -15, 177 -15, 177 -19))"

[queues.billing]
skills = { billing = 4, refunds = 2 }
attributes = ["kyc_cleared"]
relax = [
  { after_seconds = 30, lower_skill = "billing", to_level = 3 },
  { after_seconds = 60, widen_language = "parent" },
  { after_seconds = 90, widen_region = "germany", from_region = "berlin" },
  { after_seconds = 120, drop_skill = "refunds" },
  { after_seconds = 150, lower_skill = "billing", to_level = 1 },
  { after_seconds = 180, widen_language = "primary" },
]
"#;

pub fn config() -> RoutingConfig {
    match RoutingConfig::from_toml("test.toml", CONFIG) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// [`config`], parsed once per test binary (property tests call it often).
pub fn shared_config() -> &'static RoutingConfig {
    static CONFIG_ONCE: std::sync::OnceLock<RoutingConfig> = std::sync::OnceLock::new();
    CONFIG_ONCE.get_or_init(config)
}

pub fn id(s: &str) -> AgentId {
    AgentId::parse("agent_id", s).unwrap()
}

pub fn loc(longitude: f64, latitude: f64) -> Location {
    Location {
        latitude,
        longitude,
    }
}

/// An agent owning everything a profile or candidate borrows.
#[derive(Clone, Debug)]
pub struct Agent {
    pub id: AgentId,
    pub status: AgentStatus,
    pub active: u32,
    pub capacity: u32,
    pub skills: Vec<Skill>,
    pub languages: Vec<String>,
    pub attributes: Vec<String>,
    pub allowed_regions: Vec<String>,
    pub location: Option<Location>,
    pub reject_delay_until: Option<Timestamp>,
    pub idle_since: Timestamp,
    pub csat: Option<Csat>,
    pub last_offered_seq: u64,
}

impl Agent {
    /// Available, capacity 2, German, billing 4 and refunds 2, KYC cleared,
    /// in Berlin.
    pub fn new(name: &str) -> Agent {
        Agent {
            id: id(name),
            status: AgentStatus::Available,
            active: 0,
            capacity: 2,
            skills: vec![Skill::new("billing", 4), Skill::new("refunds", 2)],
            languages: vec!["de".to_owned()],
            attributes: vec!["kyc_cleared".to_owned()],
            allowed_regions: Vec::new(),
            location: Some(loc(13.4, 52.5)),
            reject_delay_until: None,
            idle_since: Timestamp::from_millis(0),
            csat: None,
            last_offered_seq: 0,
        }
    }

    pub fn profile(&self) -> AgentProfile<'_> {
        AgentProfile {
            agent_id: &self.id,
            status: self.status,
            active_conversations: self.active,
            capacity: self.capacity,
            skills: &self.skills,
            languages: &self.languages,
            attributes: &self.attributes,
            allowed_regions: &self.allowed_regions,
            location: self.location,
            reject_delay_until: self.reject_delay_until,
        }
    }

    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            agent_id: &self.id,
            idle_since: self.idle_since,
            active_conversations: self.active,
            capacity: self.capacity,
            skills: &self.skills,
            csat: self.csat,
            last_offered_seq: self.last_offered_seq,
        }
    }
}

/// A billing hand-off in `language`, optionally with a region or location.
pub fn handoff(
    language: &str,
    region: Option<&str>,
    customer_location: Option<Location>,
) -> Handoff {
    Handoff {
        conversation_id: ConversationId::parse("conversation_id", "c1").unwrap(),
        customer_id: "cust".to_owned(),
        language: language.to_owned(),
        category: "billing".to_owned(),
        required_skills: vec![],
        priority: 0,
        summary: String::new(),
        attributes: BTreeMap::new(),
        customer_asked_for_human: false,
        chat_reference: String::new(),
        preferred_agent: None,
        region: region.map(str::to_owned),
        customer_location,
    }
}
