//! Domain types: roster entries, presence, conversations, offers.

use crate::ids::{AgentId, ConversationId, OfferId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A skill with a proficiency level 1..=5.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Skill {
    pub name: String,
    pub level: u8,
}

/// The best-skill-match score of an agent for some required skills: the
/// sum of the agent's levels in them (a skill it lacks counts 0).
pub fn skill_match_score(required: &[Skill], skills: &[Skill]) -> u32 {
    required
        .iter()
        .map(|r| {
            skills
                .iter()
                .find(|s| s.name == r.name)
                .map_or(0, |s| u32::from(s.level))
        })
        .sum()
}

impl Skill {
    pub fn new(name: impl Into<String>, level: u8) -> Self {
        Skill {
            name: name.into(),
            level,
        }
    }
}

/// A point on Earth, degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

/// An agent as operations manage it: what the agent is verified to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub agent_id: AgentId,
    pub display_name: String,
    pub skills: Vec<Skill>,
    pub languages: Vec<String>,
    pub max_capacity: u32,
    /// Regions the agent may serve; a conversation naming a region goes only
    /// to agents that list it (data residency is opt-in per agent).
    pub allowed_regions: Vec<String>,
    /// Hard constraints such as `kyc_cleared`.
    pub attributes: Vec<String>,
    /// Bumped when operations force the agent offline: older tokens die.
    pub token_epoch: u64,
}

impl RosterEntry {
    /// The roster level of `skill`, if the agent is verified for it.
    pub fn skill_level(&self, skill: &str) -> Option<u8> {
        self.skills
            .iter()
            .find(|s| s.name == skill)
            .map(|s| s.level)
    }
}

/// What the agent's app asks for when going online: a narrowing of the
/// roster entry (empty lists and `None` mean "as in the roster").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GoOnline {
    pub skills: Vec<Skill>,
    pub languages: Vec<String>,
    pub capacity: Option<u32>,
    pub location: Option<Location>,
}

/// An agent's live status, derived from its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentStatus {
    Offline,
    Available,
    Away,
    Busy,
    WrapUp,
    Draining,
}

/// What the agent asked to be (the app's choice, not the derived status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusChoice {
    Available,
    Away { reason: String },
}

/// An agent's presence as operations and the app see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub agent_id: AgentId,
    pub status: AgentStatus,
    pub away_reason: String,
    pub skills: Vec<Skill>,
    pub languages: Vec<String>,
    pub capacity: u32,
    pub active_conversations: u32,
    pub stream_attached: bool,
    pub online_since: Timestamp,
    pub last_heartbeat: Timestamp,
    pub lease_expires: Timestamp,
    pub idle_since: Timestamp,
    pub pending_offer: Option<OfferId>,
}

/// Conversation lifecycle. Requeued is not a state of its own: a requeued
/// conversation is `Queued` again with a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConversationState {
    Queued,
    Offered,
    Assigned,
    Completed,
    Abandoned,
    Expired,
}

impl ConversationState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ConversationState::Completed
                | ConversationState::Abandoned
                | ConversationState::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConversationState::Queued => "queued",
            ConversationState::Offered => "offered",
            ConversationState::Assigned => "assigned",
            ConversationState::Completed => "completed",
            ConversationState::Abandoned => "abandoned",
            ConversationState::Expired => "expired",
        }
    }
}

/// The gateway's hand-off request: the conversation's immutable payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub conversation_id: ConversationId,
    pub customer_id: String,
    /// Lower-cased BCP 47 tag.
    pub language: String,
    pub category: String,
    /// Sorted by name, one entry per skill.
    pub required_skills: Vec<Skill>,
    /// 0 (lowest) ..= 9.
    pub priority: u8,
    pub summary: String,
    pub attributes: BTreeMap<String, String>,
    pub customer_asked_for_human: bool,
    pub chat_reference: String,
    pub preferred_agent: Option<AgentId>,
    pub region: Option<String>,
    pub customer_location: Option<Location>,
}

impl Handoff {
    /// The first field in which `other` differs from `self`, for the
    /// idempotency check (same id, different payload).
    pub fn first_difference(&self, other: &Handoff) -> Option<&'static str> {
        let checks: [(&'static str, bool); 12] = [
            ("customer_id", self.customer_id == other.customer_id),
            ("language", self.language == other.language),
            ("category", self.category == other.category),
            (
                "required_skills",
                self.required_skills == other.required_skills,
            ),
            ("priority", self.priority == other.priority),
            ("context.summary", self.summary == other.summary),
            ("context.attributes", self.attributes == other.attributes),
            (
                "customer_asked_for_human",
                self.customer_asked_for_human == other.customer_asked_for_human,
            ),
            (
                "chat_reference",
                self.chat_reference == other.chat_reference,
            ),
            (
                "preferred_agent_id",
                self.preferred_agent == other.preferred_agent,
            ),
            ("region", self.region == other.region),
            (
                "customer_location",
                self.customer_location == other.customer_location,
            ),
        ];
        checks
            .into_iter()
            .find(|(_, same)| !same)
            .map(|(field, _)| field)
    }
}

/// How one offer attempt ended, kept so repeated answers get the first result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferOutcome {
    Pending,
    Accepted,
    Declined,
    TimedOut,
    /// Withdrawn through no fault of the agent (not delivered, cancelled,
    /// agent lost, expired).
    Withdrawn,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferRecord {
    pub attempt: u32,
    pub agent_id: AgentId,
    pub deadline: Timestamp,
    pub delivered: bool,
    pub outcome: OfferOutcome,
}

/// A conversation: the hand-off plus where it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Shared (copy on write): a conversation is copied into every event
    /// and view, its hand-off changes only on a transfer to a queue.
    pub handoff: Arc<Handoff>,
    pub state: ConversationState,
    /// The agent offered or holding it.
    pub agent_id: Option<AgentId>,
    pub reason: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Time the conversation counts as waiting since (for ordering).
    pub queued_since: Timestamp,
    pub assigned_at: Option<Timestamp>,
    pub attempts: u32,
    /// Highest event sequence number.
    pub seq: u64,
    /// Agents that declined or missed it: never offered it again.
    pub excluded: BTreeSet<AgentId>,
    /// Every offer attempt, oldest first (the last may be pending).
    pub offers: Vec<OfferRecord>,
    pub disposition: String,
    /// Filled in views while queued: conversations ahead in its queue.
    pub queue_position: u32,
    /// Filled in views while queued: expected wait until an offer.
    pub expected_wait_ms: i64,
    /// Every transfer so far, oldest first: the context that travels with
    /// the conversation to the next agent.
    #[serde(default)]
    pub transfers: Vec<TransferRecord>,
    /// The customer's satisfaction score (1..=5), once the gateway reported it.
    #[serde(default)]
    pub csat: Option<u8>,
}

/// Where an agent transfers a conversation it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferTarget {
    /// Straight to a named agent, as an offer.
    Agent(AgentId),
    /// Back to the queue with new requirements (another category, other
    /// skills, optionally another language).
    Queue {
        category: String,
        /// Sorted by name, one entry per skill (as in a hand-off).
        required_skills: Vec<Skill>,
        /// Lower-cased BCP 47 tag; `None` keeps the conversation's language.
        language: Option<String>,
    },
}

impl TransferTarget {
    /// `agent:<id>` or `queue:<category>`, as the gateway and the next agent
    /// see it.
    pub fn describe(&self) -> String {
        match self {
            TransferTarget::Agent(agent) => format!("agent:{agent}"),
            TransferTarget::Queue { category, .. } => format!("queue:{category}"),
        }
    }
}

/// One transfer, kept with the conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub from_agent: AgentId,
    /// `agent:<id>` or `queue:<category>`.
    pub to: String,
    pub note: String,
    pub at: Timestamp,
}

/// An agent's customer-satisfaction record over all its shifts: what the
/// quality-weighted strategy ranks by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    pub csat_count: u32,
    pub csat_total: u32,
}

impl Quality {
    /// The mean score, `None` before the first report.
    pub fn average(&self) -> Option<f64> {
        (self.csat_count > 0).then(|| f64::from(self.csat_total) / f64::from(self.csat_count))
    }
}

impl Conversation {
    /// A new conversation for `handoff`, queued since `now`, with no
    /// history.
    pub fn queued(handoff: Handoff, now: Timestamp) -> Conversation {
        Conversation {
            handoff: Arc::new(handoff),
            state: ConversationState::Queued,
            agent_id: None,
            reason: String::new(),
            created_at: now,
            updated_at: now,
            queued_since: now,
            assigned_at: None,
            attempts: 0,
            seq: 0,
            excluded: BTreeSet::new(),
            offers: Vec::new(),
            disposition: String::new(),
            queue_position: 0,
            expected_wait_ms: 0,
            transfers: Vec::new(),
            csat: None,
        }
    }

    pub fn id(&self) -> &ConversationId {
        &self.handoff.conversation_id
    }

    /// The field in which a repeated hand-off request differs from this
    /// conversation, for the idempotency check. After a transfer to a queue
    /// the requirements (category, skills, language) are the agent's, not
    /// the gateway's, so a gateway's retry of the original request is not
    /// a conflict in those fields.
    pub fn conflicting_field(&self, submitted: &Handoff) -> Option<&'static str> {
        let field = self.handoff.first_difference(submitted)?;
        let moved_by_transfer = matches!(field, "language" | "category" | "required_skills")
            && !self.transfers.is_empty();
        if !moved_by_transfer {
            return Some(field);
        }
        let mut original = submitted.clone();
        original.language = self.handoff.language.clone();
        original.category = self.handoff.category.clone();
        original.required_skills = self.handoff.required_skills.clone();
        self.handoff.first_difference(&original)
    }

    /// The pending offer, if the conversation is offered.
    pub fn pending_offer(&self) -> Option<&OfferRecord> {
        if self.state != ConversationState::Offered {
            return None;
        }
        self.offers
            .last()
            .filter(|o| o.outcome == OfferOutcome::Pending)
    }

    pub fn offer_record(&self, attempt: u32) -> Option<&OfferRecord> {
        self.offers.iter().find(|o| o.attempt == attempt)
    }
}

/// What a (re)subscribing agent stream gets first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub status: AgentStatus,
    pub away_reason: String,
    /// Pending offers with their conversations (chat reference removed by
    /// the edge) and deadlines.
    pub offers: Vec<(OfferRecord, Conversation)>,
    /// Assigned conversations.
    pub assignments: Vec<Conversation>,
}

/// Queue depth per required skill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStat {
    pub skill: String,
    pub depth: u32,
    pub longest_wait_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub queues: Vec<QueueStat>,
    pub total_queued: u32,
    pub total_offered: u32,
    pub total_assigned: u32,
    pub agents_online: u32,
    pub agents_available: u32,
}

/// One agent's current (or last) shift.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shift {
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub offers: u32,
    pub accepted: u32,
    pub declined: u32,
    pub missed: u32,
    pub completed: u32,
    pub handle_ms_total: i64,
    /// Conversations this agent transferred away.
    #[serde(default)]
    pub transfers: u32,
    /// CSAT reports received during this shift, and their sum.
    #[serde(default)]
    pub csat_count: u32,
    #[serde(default)]
    pub csat_total: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftView {
    pub agent_id: AgentId,
    pub online: bool,
    pub online_ms: i64,
    pub shift: Shift,
    /// Over every shift, not only this one.
    #[serde(default)]
    pub quality: Quality,
}
