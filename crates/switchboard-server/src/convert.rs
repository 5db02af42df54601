//! Explicit conversions between protobuf messages and domain types. Input
//! is validated here, once, with errors naming the proto field.

use crate::error::{domain_status, missing};
use switchboard_core::model::{
    AgentSnapshot, AgentStatus, Conversation, ConversationState, GoOnline, Handoff, Location,
    OfferRecord, Presence, QueueStats, RosterEntry, ShiftView, Skill, StatusChoice, TransferTarget,
};
use switchboard_core::validate;
use switchboard_core::{AgentId, ConversationId, DomainError, OfferId};
use switchboard_proto::v1 as pb;
use tonic::Status;

type Result<T> = std::result::Result<T, Status>;

fn check<T>(result: std::result::Result<T, DomainError>) -> Result<T> {
    result.map_err(domain_status)
}

fn skills(field: &str, raw: &[pb::Skill]) -> Result<Vec<Skill>> {
    let pairs: Vec<(String, u32)> = raw.iter().map(|s| (s.name.clone(), s.level)).collect();
    check(validate::skills(field, &pairs))
}

fn location(field: &str, raw: Option<&pb::Location>) -> Result<Option<Location>> {
    raw.map(|l| check(validate::location(field, l.latitude, l.longitude)))
        .transpose()
}

/// Free text of at most [`validate::MAX_TEXT_BYTES`] (reasons, dispositions).
pub fn short_text(field: &str, raw: &str) -> Result<String> {
    check(validate::text(field, raw, validate::MAX_TEXT_BYTES))
}

pub fn conversation_id(field: &str, raw: &str) -> Result<ConversationId> {
    check(ConversationId::parse(field, raw))
}

pub fn agent_id(field: &str, raw: &str) -> Result<AgentId> {
    check(AgentId::parse(field, raw))
}

pub fn offer_id(raw: Option<&pb::OfferId>) -> Result<OfferId> {
    let raw = raw.ok_or_else(|| missing("offer_id"))?;
    if raw.attempt == 0 {
        return Err(Status::invalid_argument(
            "invalid `offer_id.attempt`: must be 1 or more",
        ));
    }
    Ok(OfferId {
        conversation_id: conversation_id("offer_id.conversation_id", &raw.conversation_id)?,
        attempt: raw.attempt,
    })
}

pub fn go_online(raw: &pb::GoOnlineRequest) -> Result<GoOnline> {
    let capacity = match raw.capacity {
        0 => None,
        c => Some(check(validate::capacity("capacity", c))?),
    };
    Ok(GoOnline {
        skills: skills("skills", &raw.skills)?,
        languages: check(validate::languages("languages", &raw.languages))?,
        capacity,
        location: location("location", raw.location.as_ref())?,
    })
}

pub fn heartbeat_location(raw: &pb::HeartbeatRequest) -> Result<Option<Location>> {
    location("location", raw.location.as_ref())
}

pub fn status_choice(raw: &pb::SetStatusRequest) -> Result<StatusChoice> {
    match pb::AgentStatus::try_from(raw.status) {
        Ok(pb::AgentStatus::Available) => Ok(StatusChoice::Available),
        Ok(pb::AgentStatus::Away) => {
            let reason = check(validate::required_text(
                "away_reason",
                &raw.away_reason,
                validate::MAX_TEXT_BYTES,
            ))?;
            Ok(StatusChoice::Away { reason })
        }
        _ => Err(Status::invalid_argument(format!(
            "invalid `status`: {} is not settable; use AGENT_STATUS_AVAILABLE or AGENT_STATUS_AWAY",
            raw.status
        ))),
    }
}

pub fn handoff(raw: pb::RequestAgentRequest) -> Result<Handoff> {
    let context = raw.context.unwrap_or_default();
    let region = match raw.region.as_str() {
        "" => None,
        r => Some(check(validate::skill_name("region", r))?),
    };
    let preferred_agent = match raw.preferred_agent_id.as_str() {
        "" => None,
        id => Some(agent_id("preferred_agent_id", id)?),
    };
    Ok(Handoff {
        conversation_id: conversation_id("conversation_id", &raw.conversation_id)?,
        customer_id: check(validate::required_text(
            "customer_id",
            &raw.customer_id,
            validate::MAX_TEXT_BYTES,
        ))?,
        language: check(validate::language("language", &raw.language))?,
        category: check(validate::text(
            "category",
            &raw.category,
            validate::MAX_TEXT_BYTES,
        ))?,
        required_skills: skills("required_skills", &raw.required_skills)?,
        priority: check(validate::priority("priority", raw.priority))?,
        summary: check(validate::text(
            "context.summary",
            &context.summary,
            validate::MAX_SUMMARY_BYTES,
        ))?,
        attributes: check(validate::context_attributes(
            "context.attributes",
            context.attributes,
        ))?,
        customer_asked_for_human: raw.customer_asked_for_human,
        chat_reference: check(validate::text(
            "chat_reference",
            &raw.chat_reference,
            validate::MAX_CHAT_REFERENCE_BYTES,
        ))?,
        preferred_agent,
        region,
        customer_location: location("customer_location", raw.customer_location.as_ref())?,
    })
}

/// The target of an agent's transfer, validated like a hand-off's fields.
pub fn transfer_target(
    raw: Option<pb::transfer_conversation_request::Target>,
) -> Result<TransferTarget> {
    use pb::transfer_conversation_request::Target;
    match raw.ok_or_else(|| missing("target"))? {
        Target::AgentId(id) => Ok(TransferTarget::Agent(agent_id("target.agent_id", &id)?)),
        Target::Queue(queue) => Ok(TransferTarget::Queue {
            category: check(validate::required_text(
                "target.queue.category",
                &queue.category,
                validate::MAX_TEXT_BYTES,
            ))?,
            required_skills: skills("target.queue.required_skills", &queue.required_skills)?,
            language: match queue.language.as_str() {
                "" => None,
                tag => Some(check(validate::language("target.queue.language", tag))?),
            },
        }),
    }
}

/// A CSAT score: 1..=5.
pub fn csat_score(raw: u32) -> Result<u8> {
    match u8::try_from(raw) {
        Ok(score @ 1..=5) => Ok(score),
        _ => Err(Status::invalid_argument(format!(
            "invalid `score`: {raw} is outside 1..=5"
        ))),
    }
}

/// A would-be hand-off for an availability check: only the requirements
/// matter.
pub fn availability_probe(raw: &pb::CheckAvailabilityRequest) -> Result<Handoff> {
    let region = match raw.region.as_str() {
        "" => None,
        r => Some(check(validate::skill_name("region", r))?),
    };
    Ok(Handoff {
        conversation_id: conversation_id("conversation_id", "availability-probe")?,
        customer_id: String::new(),
        language: check(validate::language("language", &raw.language))?,
        category: String::new(),
        required_skills: skills("required_skills", &raw.required_skills)?,
        priority: 0,
        summary: String::new(),
        attributes: Default::default(),
        customer_asked_for_human: false,
        chat_reference: String::new(),
        preferred_agent: None,
        region,
        customer_location: None,
    })
}

pub fn roster_entry(raw: Option<pb::RosterEntry>) -> Result<RosterEntry> {
    let raw = raw.ok_or_else(|| missing("entry"))?;
    let languages = check(validate::languages("entry.languages", &raw.languages))?;
    if languages.is_empty() {
        return Err(Status::invalid_argument(
            "invalid `entry.languages`: at least one language is required",
        ));
    }
    let regions = raw
        .allowed_regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            check(validate::skill_name(
                &format!("entry.allowed_regions[{i}]"),
                r,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let attributes = raw
        .attributes
        .iter()
        .enumerate()
        .map(|(i, a)| check(validate::skill_name(&format!("entry.attributes[{i}]"), a)))
        .collect::<Result<Vec<_>>>()?;
    Ok(RosterEntry {
        agent_id: agent_id("entry.agent_id", &raw.agent_id)?,
        display_name: check(validate::text(
            "entry.display_name",
            &raw.display_name,
            validate::MAX_TEXT_BYTES,
        ))?,
        skills: skills("entry.skills", &raw.skills)?,
        languages,
        max_capacity: check(validate::capacity("entry.max_capacity", raw.max_capacity))?,
        allowed_regions: regions,
        attributes,
        token_epoch: 0,
    })
}

// ------------------------------------------------------------ domain → proto

fn pb_skills(skills: &[Skill]) -> Vec<pb::Skill> {
    skills
        .iter()
        .map(|s| pb::Skill {
            name: s.name.clone(),
            level: u32::from(s.level),
        })
        .collect()
}

pub fn pb_status(status: AgentStatus) -> pb::AgentStatus {
    match status {
        AgentStatus::Offline => pb::AgentStatus::Offline,
        AgentStatus::Available => pb::AgentStatus::Available,
        AgentStatus::Away => pb::AgentStatus::Away,
        AgentStatus::Busy => pb::AgentStatus::Busy,
        AgentStatus::WrapUp => pb::AgentStatus::WrapUp,
        AgentStatus::Draining => pb::AgentStatus::Draining,
    }
}

pub fn pb_state(state: ConversationState) -> pb::ConversationState {
    match state {
        ConversationState::Queued => pb::ConversationState::Queued,
        ConversationState::Offered => pb::ConversationState::Offered,
        ConversationState::Assigned => pb::ConversationState::Assigned,
        ConversationState::Completed => pb::ConversationState::Completed,
        ConversationState::Abandoned => pb::ConversationState::Abandoned,
        ConversationState::Expired => pb::ConversationState::Expired,
    }
}

/// Who sees a conversation decides whether the chat reference is included:
/// the gateway (who gave it) and the assigned agent, nobody else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Gateway,
    AssignedAgent,
    Other,
}

pub fn pb_conversation(c: &Conversation, audience: Audience) -> pb::Conversation {
    let h = &c.handoff;
    pb::Conversation {
        conversation_id: h.conversation_id.to_string(),
        customer_id: h.customer_id.clone(),
        language: h.language.clone(),
        category: h.category.clone(),
        required_skills: pb_skills(&h.required_skills),
        priority: u32::from(h.priority),
        customer_asked_for_human: h.customer_asked_for_human,
        state: pb_state(c.state) as i32,
        agent_id: c
            .agent_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        reason: c.reason.clone(),
        created_at_ms: c.created_at.as_wire(),
        updated_at_ms: c.updated_at.as_wire(),
        attempts: c.attempts,
        seq: c.seq,
        queue_position: c.queue_position,
        expected_wait_ms: u64::try_from(c.expected_wait_ms).unwrap_or(0),
        chat_reference: match audience {
            Audience::Gateway | Audience::AssignedAgent => h.chat_reference.clone(),
            Audience::Other => String::new(),
        },
        context: Some(pb::HandoffContext {
            summary: h.summary.clone(),
            attributes: h.attributes.clone().into_iter().collect(),
        }),
        preferred_agent_id: h
            .preferred_agent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        region: h.region.clone().unwrap_or_default(),
        transfers: c
            .transfers
            .iter()
            .map(|t| pb::Transfer {
                from_agent_id: t.from_agent.to_string(),
                to: t.to.clone(),
                note: t.note.clone(),
                at_ms: t.at.as_wire(),
            })
            .collect(),
        csat: c.csat.map(u32::from).unwrap_or(0),
    }
}

pub fn pb_offer(record: &OfferRecord, conversation: &Conversation) -> pb::Offer {
    pb::Offer {
        offer_id: Some(pb::OfferId {
            conversation_id: conversation.id().to_string(),
            attempt: record.attempt,
        }),
        deadline_ms: record.deadline.as_wire(),
        conversation: Some(pb_conversation(conversation, Audience::Other)),
    }
}

pub fn pb_snapshot(snapshot: &AgentSnapshot) -> pb::AgentSnapshot {
    pb::AgentSnapshot {
        status: pb_status(snapshot.status) as i32,
        away_reason: snapshot.away_reason.clone(),
        offers: snapshot
            .offers
            .iter()
            .map(|(record, c)| pb_offer(record, c))
            .collect(),
        assignments: snapshot
            .assignments
            .iter()
            .map(|c| pb_conversation(c, Audience::AssignedAgent))
            .collect(),
    }
}

pub fn pb_presence(p: &Presence) -> pb::AgentPresence {
    pb::AgentPresence {
        agent_id: p.agent_id.to_string(),
        status: pb_status(p.status) as i32,
        away_reason: p.away_reason.clone(),
        skills: pb_skills(&p.skills),
        languages: p.languages.clone(),
        capacity: p.capacity,
        active_conversations: p.active_conversations,
        stream_attached: p.stream_attached,
        online_since_ms: p.online_since.as_wire(),
        last_heartbeat_ms: p.last_heartbeat.as_wire(),
        idle_since_ms: p.idle_since.as_wire(),
        pending_offer_conversation_id: p
            .pending_offer
            .as_ref()
            .map(|o| o.conversation_id.to_string())
            .unwrap_or_default(),
    }
}

pub fn pb_roster_entry(e: &RosterEntry) -> pb::RosterEntry {
    pb::RosterEntry {
        agent_id: e.agent_id.to_string(),
        display_name: e.display_name.clone(),
        skills: pb_skills(&e.skills),
        languages: e.languages.clone(),
        max_capacity: e.max_capacity,
        allowed_regions: e.allowed_regions.clone(),
        attributes: e.attributes.clone(),
    }
}

pub fn pb_queue_stats(s: &QueueStats) -> pb::QueueStatsResponse {
    pb::QueueStatsResponse {
        queues: s
            .queues
            .iter()
            .map(|q| pb::QueueStat {
                skill: q.skill.clone(),
                depth: q.depth,
                longest_wait_ms: u64::try_from(q.longest_wait_ms).unwrap_or(0),
            })
            .collect(),
        total_queued: s.total_queued,
        total_offered: s.total_offered,
        total_assigned: s.total_assigned,
        agents_online: s.agents_online,
        agents_available: s.agents_available,
    }
}

pub fn pb_shift(v: &ShiftView) -> pb::AgentShift {
    pb::AgentShift {
        agent_id: v.agent_id.to_string(),
        online_ms: u64::try_from(v.online_ms).unwrap_or(0),
        offers: v.shift.offers,
        accepted: v.shift.accepted,
        declined: v.shift.declined,
        missed: v.shift.missed,
        completed: v.shift.completed,
        handle_ms_total: u64::try_from(v.shift.handle_ms_total).unwrap_or(0),
        online: v.online,
        transfers: v.shift.transfers,
        csat_count: v.shift.csat_count,
        csat_average: mean(v.shift.csat_total, v.shift.csat_count),
        lifetime_csat_count: v.quality.csat_count,
        lifetime_csat_average: v.quality.average().unwrap_or(0.0),
    }
}

fn mean(total: u32, count: u32) -> f64 {
    if count == 0 {
        0.0
    } else {
        f64::from(total) / f64::from(count)
    }
}

/// The pool-wide total row of the shift table.
pub fn pb_shift_total(rows: &[pb::AgentShift]) -> pb::AgentShift {
    rows.iter().fold(
        pb::AgentShift {
            agent_id: "total".into(),
            ..Default::default()
        },
        |mut t, r| {
            t.online_ms += r.online_ms;
            t.offers += r.offers;
            t.accepted += r.accepted;
            t.declined += r.declined;
            t.missed += r.missed;
            t.completed += r.completed;
            t.handle_ms_total += r.handle_ms_total;
            t.online |= r.online;
            t.transfers += r.transfers;
            // Weighted by the number of reports, so the total's mean is
            // the mean of every report.
            t.csat_average = weighted(t.csat_average, t.csat_count, r.csat_average, r.csat_count);
            t.csat_count += r.csat_count;
            t.lifetime_csat_average = weighted(
                t.lifetime_csat_average,
                t.lifetime_csat_count,
                r.lifetime_csat_average,
                r.lifetime_csat_count,
            );
            t.lifetime_csat_count += r.lifetime_csat_count;
            t
        },
    )
}

/// The mean of two groups of reports, each given by its mean and size.
fn weighted(mean_a: f64, count_a: u32, mean_b: f64, count_b: u32) -> f64 {
    let count = count_a + count_b;
    if count == 0 {
        0.0
    } else {
        (mean_a * f64::from(count_a) + mean_b * f64::from(count_b)) / f64::from(count)
    }
}
