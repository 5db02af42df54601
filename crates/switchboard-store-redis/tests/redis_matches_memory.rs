//! Differential test: random command sequences run against the in-memory
//! store (the engine itself) and the Redis store must give the same results,
//! the same events and the same refusals, step by step.
//!
//! Routing plans: a share of the hand-offs and of the transfers to a queue
//! carry a random plan (steps that loosen over the wait, strategies, aging,
//! regions, attributes, preferred-agent windows, plan timings, maximum-wait
//! actions with nested overflow plans), agents get random resolved regions
//! (`set_agent_regions`), and availability is probed with plans too.
//!
//! Time: both clocks are pinned and move 1 s per step (a manual clock for
//! memory; [`RedisStore::pin_clock`] for Redis, so its scripts do not read
//! the running `TIME`). Deadlines that fall on the same millisecond are then
//! acted on in the same order by both. Every timing setting is still a whole
//! number of steps plus half a step, so nothing is due exactly at a step.
//! Timestamps are compared in whole steps since each store's start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::model::{
    AgentSnapshot, AgentStatus, Conversation, ConversationState, GoOnline, Handoff, Location,
    Presence, QueueStats, RosterEntry, ShiftView, Skill, StatusChoice, TransferTarget,
};
use switchboard_core::plan::{
    PlanAging, PlanMaxWait, PlanMaxWaitAction, PlanRequirements, PlanStep, PlanStrategy,
};
use switchboard_core::{
    AgentId, ConversationId, DispatchSettings, EventKind, OfferId, PoolId, RoutingPlan, Timestamp,
};
use switchboard_store::{Applied, ManualClock, MemoryStore, Store, StoreResult};
use switchboard_store_redis::{RedisOptions, RedisStore};
use switchboard_testkit::RedisServer;

const STEP_MS: i64 = 1_000;
const SEEDS: u64 = 24;
/// Seeds after [`SEEDS`] run a uniform pool (everyone speaks English and
/// has billing, capacity 2 or 3; hand-offs and plans mostly English
/// billing at level 1 or 2), so several agents are often eligible at once
/// and the strategies, aging and windows decide between them.
const UNIFORM_SEEDS: u64 = 10;
const STEPS: usize = 90;

fn settings() -> DispatchSettings {
    DispatchSettings {
        offer_timeout_ms: 2_500,
        offer_delivery_grace_ms: 1_500,
        lease_ms: 6_500,
        heartbeat_interval_ms: 1_000,
        max_wait_ms: 25_500,
        missed_offers_before_away: 2,
        retention_ms: 30_500,
        wrap_up_ms: 3_500,
    }
}

/// xorshift64*: reproducible sequences without a dependency; the flag
/// asks for a uniform pool (see [`UNIFORM_SEEDS`]).
struct Rng(u64, bool);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const AGENTS: [&str; 5] = ["ana", "ben", "cy", "dee", "eli"];
const CONVERSATIONS: [&str; 8] = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
const SKILLS: [&str; 3] = ["billing", "fraud", "tech"];
const LANGUAGES: [&str; 4] = ["en", "de", "de-at", "fr"];

fn agent(id: &str) -> AgentId {
    AgentId::parse("agent_id", id).unwrap()
}

fn cid(id: &str) -> ConversationId {
    ConversationId::parse("conversation_id", id).unwrap()
}

fn skills(rng: &mut Rng, min_level: u8) -> Vec<Skill> {
    let mut out = Vec::new();
    for name in SKILLS {
        if rng.chance(50) {
            out.push(Skill::new(
                name,
                min_level + rng.below(usize::from(6 - min_level)) as u8,
            ));
        }
    }
    out.sort();
    out
}

fn roster_entry(rng: &mut Rng, id: &str) -> RosterEntry {
    let uniform = rng.1;
    let first = if uniform {
        "en"
    } else {
        *rng.pick(&["en", "de"])
    };
    let mut languages: Vec<String> = vec![first.to_owned()];
    if rng.chance(40) {
        let extra = (*rng.pick(&LANGUAGES)).to_owned();
        if !languages.contains(&extra) {
            languages.push(extra);
        }
    }
    let mut allowed_regions = Vec::new();
    if rng.chance(50) {
        allowed_regions.push("eu".to_owned());
    }
    if rng.chance(30) {
        allowed_regions.push("berlin".to_owned());
    }
    let attributes = if rng.chance(40) {
        vec!["kyc_cleared".to_owned()]
    } else {
        vec![]
    };
    let mut entry_skills = skills(rng, 2);
    if entry_skills.is_empty() || (uniform && entry_skills[0].name != "billing") {
        entry_skills.insert(0, Skill::new("billing", 2 + rng.below(4) as u8));
    }
    RosterEntry {
        agent_id: agent(id),
        display_name: id.to_uppercase(),
        skills: entry_skills,
        languages,
        max_capacity: 1 + rng.below(2) as u32 + u32::from(uniform),
        allowed_regions,
        attributes,
        token_epoch: rng.below(3) as u64,
    }
}

fn handoff(rng: &mut Rng, id: &str) -> Handoff {
    let uniform = rng.1 && rng.chance(85);
    let language = if uniform { "en" } else { *rng.pick(&LANGUAGES) };
    // Mostly requirements some agent meets, so offers happen often.
    let required_skills = if uniform {
        vec![Skill::new("billing", 1 + rng.below(2) as u8)]
    } else {
        skills(rng, 1)
            .into_iter()
            .take(if rng.chance(70) { 1 } else { 2 })
            .map(|s| Skill::new(s.name, s.level.min(3)))
            .collect()
    };
    Handoff {
        conversation_id: cid(id),
        customer_id: format!("customer-{}", rng.below(3)),
        language: language.to_owned(),
        category: "billing".into(),
        required_skills,
        priority: rng.below(3) as u8,
        summary: "wants a human".into(),
        attributes: Default::default(),
        customer_asked_for_human: rng.chance(50),
        chat_reference: format!("chat://{id}"),
        preferred_agent: if rng.chance(if rng.1 { 50 } else { 20 }) {
            Some(agent(AGENTS[rng.below(AGENTS.len())]))
        } else {
            None
        },
        region: rng.chance(30).then(|| "eu".to_owned()),
        customer_location: rng.chance(30).then_some(Location {
            latitude: 48.208_176_1,
            longitude: 16.373_819,
        }),
    }
}

const REGIONS: [&str; 2] = ["berlin", "eu"];

/// A random set of region names (possibly empty).
fn regions(rng: &mut Rng) -> BTreeSet<String> {
    REGIONS
        .iter()
        .filter(|_| rng.chance(50))
        .map(|r| (*r).to_owned())
        .collect()
}

/// A duration of whole steps plus half a step, so nothing a plan schedules
/// is due exactly when a command runs.
fn half_steps(rng: &mut Rng, min: usize, max: usize) -> i64 {
    (min + rng.below(max - min + 1)) as i64 * STEP_MS + STEP_MS / 2
}

/// Requirements a later step loosens: lower levels, fewer skills, the
/// language's family, fewer rules.
fn loosen(rng: &mut Rng, before: &PlanRequirements) -> PlanRequirements {
    let mut next = before.clone();
    let mut kept = Vec::new();
    for skill in next.skills {
        if rng.chance(70) {
            let lower = skill.level > 1 && rng.chance(60);
            kept.push(Skill::new(skill.name, skill.level - u8::from(lower)));
        }
    }
    next.skills = kept;
    if rng.chance(30) {
        next.language = next.language.split('-').next().unwrap_or("en").to_owned();
        next.language_widened = true;
    }
    if rng.chance(40) {
        next.attributes.clear();
    }
    if rng.chance(40) {
        next.regions = None;
    }
    next
}

/// A random routing plan for `handoff`: up to three steps that loosen,
/// any strategy, aging, plan timings, a preferred window, a maximum wait
/// with any action (overflow plans nest up to `depth` 2).
fn random_plan(rng: &mut Rng, handoff: &Handoff, depth: usize) -> RoutingPlan {
    let mut steps = Vec::new();
    if rng.chance(85) {
        let language = if rng.chance(70) {
            handoff.language.clone()
        } else {
            (*rng.pick(&LANGUAGES)).to_owned()
        };
        let mut first = PlanRequirements::language_only(language);
        // Mostly requirements some agent meets, as for hand-offs.
        first.skills = skills(rng, 1);
        if rng.1 && rng.chance(85) {
            first.skills = handoff.required_skills.clone();
        } else if rng.chance(70) {
            first.skills.truncate(1);
            for skill in &mut first.skills {
                skill.level = skill.level.min(3);
            }
        }
        let rules = if rng.1 { 10 } else { 30 };
        if rng.chance(rules) {
            first.attributes.insert("kyc_cleared".to_owned());
        }
        if rng.chance(rules) {
            first.regions = Some(regions(rng));
        }
        steps.push(PlanStep {
            after_ms: 0,
            requirements: first,
        });
        let mut after_ms = 0;
        for _ in 0..rng.below(3) {
            after_ms += half_steps(rng, 1, 6) + STEP_MS / 2;
            let requirements = loosen(rng, &steps[steps.len() - 1].requirements);
            steps.push(PlanStep {
                after_ms,
                requirements,
            });
        }
    }
    let strategies = [
        PlanStrategy::LongestIdle,
        PlanStrategy::LeastOccupied,
        PlanStrategy::BestSkillMatch,
        PlanStrategy::RoundRobin,
        PlanStrategy::QualityWeighted,
    ];
    let action = match rng.below(if depth < 2 { 3 } else { 2 }) {
        0 => PlanMaxWaitAction::Expire {
            reason: "closed for today".into(),
        },
        1 => PlanMaxWaitAction::Callback {
            priority: rng.below(3) as u8,
            reason: "we will call you back".into(),
        },
        _ => PlanMaxWaitAction::Overflow {
            queue: format!("overflow-{depth}"),
            plan: Box::new(random_plan(rng, handoff, depth + 1)),
        },
    };
    RoutingPlan {
        queue: format!("queue-{depth}"),
        priority: rng.below(4) as u8,
        steps,
        strategy: *rng.pick(&strategies),
        aging: PlanAging {
            rate_micro_per_second: *rng.pick(&[0, 0, 150_000, 1_000_000]),
            ceiling: *rng.pick(&[9, 9, 4]),
        },
        offer_timeout_ms: rng.chance(40).then(|| half_steps(rng, 1, 4)),
        wrap_up_ms: rng.chance(40).then(|| {
            if rng.chance(30) {
                0
            } else {
                half_steps(rng, 1, 4)
            }
        }),
        max_wait: rng.chance(70).then(|| PlanMaxWait {
            after_ms: half_steps(rng, 3, 14),
            action,
        }),
        preferred_window_ms: if rng.chance(if rng.1 { 60 } else { 40 }) {
            half_steps(rng, 1, 5)
        } else {
            0
        },
        roster_regions_if_listed: rng.chance(40),
        misses_before_away: rng.chance(40).then(|| 1 + rng.below(3) as u32),
        reject_delay_ms: if rng.chance(40) {
            half_steps(rng, 1, 4)
        } else {
            0
        },
    }
}

/// Timestamps become whole steps since the store's start; durations whole
/// steps; the wait estimate (a ratio of drifting times) is dropped.
fn normalize(value: &mut Value, start_ms: i64) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let is_time = key.ends_with("_at")
                    || key.ends_with("_since")
                    || matches!(
                        key.as_str(),
                        "at" | "deadline" | "lease_expires" | "last_heartbeat" | "next_deadline"
                    );
                let is_duration = matches!(
                    key.as_str(),
                    "longest_wait_ms" | "online_ms" | "handle_ms_total"
                );
                match field {
                    Value::Number(n) if is_time => {
                        let ms = n.as_i64().unwrap();
                        *field = Value::from((ms - start_ms).div_euclid(STEP_MS));
                    }
                    Value::Number(n) if is_duration => {
                        // A difference of two drifting times: drift may
                        // go either way, so round to the nearest step.
                        let ms = n.as_i64().unwrap() + STEP_MS / 2;
                        *field = Value::from(ms.div_euclid(STEP_MS));
                    }
                    _ if key == "expected_wait_ms" => *field = Value::Null,
                    _ => normalize(field, start_ms),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| normalize(item, start_ms)),
        _ => {}
    }
}

/// What is compared of a result: the value, and the events for commands.
trait Observed {
    fn observed(&self) -> Value;
}

impl<T: Serialize> Observed for Applied<T> {
    fn observed(&self) -> Value {
        serde_json::json!({ "value": self.value, "events": self.events })
    }
}

macro_rules! observed_as_is {
    ($($t:ty),*) => {$(
        impl Observed for $t {
            fn observed(&self) -> Value {
                serde_json::to_value(self).unwrap()
            }
        }
    )*};
}

observed_as_is!(
    (),
    (u32, i64),
    Conversation,
    AgentSnapshot,
    Vec<Presence>,
    QueueStats,
    Vec<ShiftView>,
    Vec<RosterEntry>
);

fn outcome<T: Observed>(result: &StoreResult<T>, start_ms: i64) -> Value {
    match result {
        Ok(value) => {
            let mut json = value.observed();
            normalize(&mut json, start_ms);
            json
        }
        Err(e) => Value::String(format!("error: {e}")),
    }
}

struct Pair {
    memory: Arc<MemoryStore>,
    clock: ManualClock,
    memory_start: i64,
    redis: Arc<RedisStore>,
    redis_start: i64,
}

impl Pair {
    /// Moves both clocks by `ms`.
    fn advance(&self, ms: i64) {
        self.clock.advance(ms);
        self.redis.advance_clock(ms);
    }
}

/// The sweep's value under a name [`normalize`] knows is a time: the next
/// deadline, absolute in each store's own clock.
#[derive(Serialize)]
struct Swept {
    next_deadline: Option<Timestamp>,
}

/// A sweep of every pool. The stores visit pools in different orders (a
/// hash map, a Redis set), and nothing orders events across pools, so the
/// events are compared grouped by pool, in commit order within each.
async fn sweep<S: Store + ?Sized>(store: &S) -> StoreResult<Applied<Swept>> {
    let mut applied = store.sweep().await?;
    applied.events.sort_by(|a, b| a.pool.cmp(&b.pool));
    Ok(Applied {
        value: Swept {
            next_deadline: applied.value,
        },
        events: applied.events,
    })
}

/// Runs one call against both stores and compares the normalized results.
macro_rules! both {
    ($pair:expr, $context:expr, |$store:ident| $call:expr) => {{
        let memory_result = {
            let $store = &*$pair.memory;
            $call.await
        };
        let redis_result = {
            let $store = &*$pair.redis;
            $call.await
        };
        let memory = outcome(&memory_result, $pair.memory_start);
        let redis = outcome(&redis_result, $pair.redis_start);
        assert_eq!(
            serde_json::to_string_pretty(&redis).unwrap(),
            serde_json::to_string_pretty(&memory).unwrap(),
            "redis (left) differs from memory (right) at {}",
            $context
        );
        memory_result
    }};
}

/// The conversations (through the memory store) in `state`.
async fn in_state(pair: &Pair, p: &PoolId, state: ConversationState) -> Vec<Conversation> {
    let mut out = Vec::new();
    for id in CONVERSATIONS {
        if let Ok(c) = pair.memory.conversation(p, &cid(id)).await
            && c.state == state
        {
            out.push(c);
        }
    }
    out
}

/// The offer a random answer should use: mostly a pending one, else the
/// conversation's latest, sometimes a stale or foreign one.
async fn some_offer(pair: &Pair, rng: &mut Rng, p: &PoolId) -> (AgentId, OfferId) {
    let offered = in_state(pair, p, ConversationState::Offered).await;
    if !offered.is_empty() && rng.chance(70) {
        let c = rng.pick(&offered);
        if let Some(pending) = c.pending_offer() {
            return (
                pending.agent_id.clone(),
                OfferId {
                    conversation_id: c.id().clone(),
                    attempt: pending.attempt,
                },
            );
        }
    }
    let id = *rng.pick(&CONVERSATIONS);
    if let Ok(c) = pair.memory.conversation(p, &cid(id)).await
        && let Some(last) = c.offers.last()
        && rng.chance(80)
    {
        return (
            last.agent_id.clone(),
            OfferId {
                conversation_id: cid(id),
                attempt: last.attempt,
            },
        );
    }
    (
        agent(AGENTS[rng.below(AGENTS.len())]),
        OfferId {
            conversation_id: cid(id),
            attempt: 1 + rng.below(3) as u32,
        },
    )
}

/// Every pending offer (through the memory store), with its agent.
async fn pending_offers(pair: &Pair, p: &PoolId) -> Vec<(AgentId, OfferId)> {
    in_state(pair, p, ConversationState::Offered)
        .await
        .iter()
        .filter_map(|c| {
            c.pending_offer().map(|pending| {
                (
                    pending.agent_id.clone(),
                    OfferId {
                        conversation_id: c.id().clone(),
                        attempt: pending.attempt,
                    },
                )
            })
        })
        .collect()
}

/// Agents who could take an offer now (through the memory store).
async fn free_agents(pair: &Pair, p: &PoolId) -> Vec<AgentId> {
    pair.memory
        .agents(p)
        .await
        .unwrap()
        .into_iter()
        .filter(|presence| presence.status == AgentStatus::Available && presence.stream_attached)
        .map(|presence| presence.agent_id)
        .collect()
}

/// Makes an assignment, through commands compared on both stores like any
/// other: the holder of a pending offer accepts it; with none, a supervisor
/// hands a queued conversation to a free agent, who accepts. Random
/// requirements rarely meet random agents, so without this the commands
/// that need a held conversation (transfer, complete, CSAT) would mostly be
/// refused. Returns whether something is assigned now.
async fn stage_assignment(pair: &Pair, p: &PoolId, context: &str) -> bool {
    if !in_state(pair, p, ConversationState::Assigned)
        .await
        .is_empty()
    {
        return true;
    }
    let offer = match pending_offers(pair, p).await.first().cloned() {
        Some(offer) => Some(offer),
        None => {
            let queued = in_state(pair, p, ConversationState::Queued).await;
            match (queued.first(), free_agents(pair, p).await.first()) {
                (Some(c), Some(to)) => {
                    let (id, to) = (c.id().clone(), to.clone());
                    let moved = both!(
                        pair,
                        format!("{context}: staged reassign {id} to {to}"),
                        |s| s.reassign(p, &id, Some(&to), "staged")
                    );
                    moved.ok().and_then(|applied| {
                        let pending = applied.value.pending_offer()?;
                        Some((
                            pending.agent_id.clone(),
                            OfferId {
                                conversation_id: id.clone(),
                                attempt: pending.attempt,
                            },
                        ))
                    })
                }
                _ => None,
            }
        }
    };
    if let Some((who, offer)) = offer {
        let _ = both!(
            pair,
            format!("{context}: staged accept {who} {offer}"),
            |s| s.accept(p, &who, &offer)
        );
    }
    !in_state(pair, p, ConversationState::Assigned)
        .await
        .is_empty()
}

/// How often the newer commands succeeded, so the comparison is known not
/// to be vacuous for them.
#[derive(Debug, Default)]
struct Coverage {
    /// Each starts a wrap-up (wrap_up_ms > 0) unless the agent drains.
    completions: u32,
    drains: u32,
    reassigns: u32,
    agents_found_free: u32,
    transfers_to_agents: u32,
    transfers_to_queues: u32,
    /// Reports that set a score (not the repeats).
    csat_reports: u32,
    /// Planned hand-offs that created a conversation.
    planned_requests: u32,
    /// Transfers to a queue that carried a plan.
    planned_transfers: u32,
    /// Offers made to planned conversations (strategies, windows, steps),
    /// counted from their attempts after every step.
    planned_offers: u32,
    /// Agents' resolved regions set (accepted).
    region_updates: u32,
    /// Maximum-wait actions seen in events: plan expiries, overflows,
    /// callbacks.
    plan_expiries: u32,
    overflows: u32,
    callbacks: u32,
    /// Planned availability probes that found a free agent.
    planned_agents_found_free: u32,
}

impl Coverage {
    /// Counts what the plans did, from the events of one command.
    fn count_events(&mut self, events: &[switchboard_core::Event]) {
        for event in events {
            match &event.kind {
                EventKind::Requeued { conversation } => {
                    if conversation.reason.starts_with("moved to queue") {
                        self.overflows += 1;
                    } else if conversation.reason == "we will call you back" {
                        self.callbacks += 1;
                    }
                }
                EventKind::Ended { conversation } if conversation.reason == "closed for today" => {
                    self.plan_expiries += 1;
                }
                _ => {}
            }
        }
    }
}

async fn run_sequence(pair: &Pair, seed: u64, coverage: &mut Coverage) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, seed >= SEEDS);
    let p = PoolId::parse("pool", &format!("seed-{seed}")).unwrap();
    let mut streams: std::collections::HashMap<&str, u64> = Default::default();
    // Conversations created with a plan (or given one by a transfer).
    let mut planned: BTreeSet<String> = BTreeSet::new();
    let mut attempts: std::collections::HashMap<String, u32> = Default::default();
    for step in 0..STEPS {
        pair.advance(STEP_MS);
        let a = *rng.pick(&AGENTS);
        let context = |what: &str| format!("seed {seed} step {step}: {what}");
        let mut roll = rng.below(140);
        // A uniform pool keeps its agents working: fewer detaches, breaks,
        // go-offlines and drains, more completions and CSAT reports (the
        // quality-weighted strategy ranks by them).
        if rng.1 && matches!(roll, 32..=34 | 42..=47 | 100..=102) && rng.chance(80) {
            roll = *rng.pick(&[77, 98]);
        }
        match roll {
            0..=9 => {
                let entry = roster_entry(&mut rng, a);
                let _ = both!(pair, context(&format!("upsert_roster {a}")), |s| s
                    .upsert_roster(&p, entry.clone()));
            }
            10..=21 => {
                let request = GoOnline {
                    skills: if rng.chance(30) {
                        skills(&mut rng, 1)
                    } else {
                        vec![]
                    },
                    languages: if rng.chance(20) {
                        vec![(*rng.pick(&LANGUAGES)).to_owned()]
                    } else {
                        vec![]
                    },
                    capacity: rng.chance(50).then(|| 1 + rng.below(2) as u32),
                    location: None,
                };
                let self_register = rng.chance(20);
                let online = both!(
                    pair,
                    context(&format!("go_online {a} {request:?} {self_register}")),
                    |s| s.go_online(&p, &agent(a), request.clone(), self_register)
                );
                // The app attaches its stream right after, mostly.
                if online.is_ok() && rng.chance(70) {
                    let result = both!(pair, context(&format!("attach_stream {a}")), |s| s
                        .attach_stream(&p, &agent(a)));
                    if let Ok(applied) = result {
                        streams.insert(a, applied.value.0);
                    }
                }
            }
            22..=31 => {
                let result = both!(pair, context(&format!("attach_stream {a}")), |s| s
                    .attach_stream(&p, &agent(a)));
                if let Ok(applied) = result {
                    streams.insert(a, applied.value.0);
                }
            }
            32..=34 => {
                let stream = streams.get(a).copied().unwrap_or(1);
                let _ = both!(pair, context(&format!("detach_stream {a} {stream}")), |s| s
                    .detach_stream(&p, &agent(a), stream));
            }
            35..=41 => {
                let _ = both!(pair, context(&format!("heartbeat {a}")), |s| s.heartbeat(
                    &p,
                    &agent(a),
                    None
                ));
            }
            42..=44 => {
                let choice = if rng.chance(60) {
                    StatusChoice::Available
                } else {
                    StatusChoice::Away {
                        reason: "break".into(),
                    }
                };
                let _ = both!(pair, context(&format!("set_status {a} {choice:?}")), |s| s
                    .set_status(&p, &agent(a), choice.clone()));
            }
            45..=47 => {
                let _ = both!(pair, context(&format!("go_offline {a}")), |s| s.go_offline(
                    &p,
                    &agent(a),
                    "agent went offline"
                ));
            }
            48..=59 => {
                let id = *rng.pick(&CONVERSATIONS);
                let h = handoff(&mut rng, id);
                let result = both!(pair, context(&format!("request {h:?}")), |s| s
                    .request(&p, h.clone()));
                if result.is_ok_and(|applied| applied.value.1) {
                    planned.remove(id);
                }
            }
            60..=63 => {
                let (who, offer) = some_offer(pair, &mut rng, &p).await;
                let _ = both!(
                    pair,
                    context(&format!("offer_delivered {who} {offer}")),
                    |s| s.offer_delivered(&p, &who, &offer)
                );
            }
            64..=71 => {
                let (who, offer) = some_offer(pair, &mut rng, &p).await;
                let _ = both!(pair, context(&format!("accept {who} {offer}")), |s| s
                    .accept(&p, &who, &offer));
            }
            72..=76 => {
                let (who, offer) = some_offer(pair, &mut rng, &p).await;
                let reason = if rng.chance(50) { "" } else { "busy" };
                let _ = both!(pair, context(&format!("decline {who} {offer}")), |s| s
                    .decline(&p, &who, &offer, reason));
            }
            77..=82 => {
                let assigned = in_state(pair, &p, ConversationState::Assigned).await;
                let mut id = *rng.pick(&CONVERSATIONS);
                if !assigned.is_empty() && rng.chance(70) {
                    id = rng.pick(&assigned).id().as_str();
                }
                let who = match pair.memory.conversation(&p, &cid(id)).await {
                    Ok(c) if rng.chance(80) => c.agent_id.unwrap_or_else(|| agent(a)),
                    _ => agent(a),
                };
                let result = both!(pair, context(&format!("complete {who} {id}")), |s| s
                    .complete(&p, &who, &cid(id), "resolved"));
                if result.is_ok_and(|applied| !applied.events.is_empty()) {
                    coverage.completions += 1;
                }
            }
            83..=85 => {
                let id = *rng.pick(&CONVERSATIONS);
                let _ = both!(pair, context(&format!("cancel {id}")), |s| s.cancel(
                    &p,
                    &cid(id),
                    "customer left"
                ));
            }
            86..=93 => {
                let steps = 1 + rng.below(4) as i64;
                pair.advance(steps * STEP_MS);
                let swept = both!(
                    pair,
                    context(&format!("sweep after {steps} more steps")),
                    |s| sweep(s)
                );
                if let Ok(applied) = swept {
                    coverage.count_events(&applied.events);
                }
            }
            94..=97 | 112..=119 => {
                // Mostly an assigned conversation by its holder; sometimes
                // anyone, anything (refusals must match too).
                if rng.chance(85) {
                    stage_assignment(pair, &p, &context("transfer")).await;
                }
                let assigned = in_state(pair, &p, ConversationState::Assigned).await;
                let mut id = *rng.pick(&CONVERSATIONS);
                if !assigned.is_empty() && rng.chance(80) {
                    id = rng.pick(&assigned).id().as_str();
                }
                let who = match pair.memory.conversation(&p, &cid(id)).await {
                    Ok(c) if rng.chance(85) => c.agent_id.unwrap_or_else(|| agent(a)),
                    _ => agent(a),
                };
                // A named colleague: mostly one who is free now; with
                // nobody free, an online colleague reopens its app first.
                let colleagues = |free: Vec<AgentId>| -> Vec<AgentId> {
                    free.into_iter().filter(|id| *id != who).collect()
                };
                let mut free = colleagues(free_agents(pair, &p).await);
                if free.is_empty()
                    && rng.chance(60)
                    && let Some(colleague) = pair
                        .memory
                        .agents(&p)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|presence| presence.agent_id)
                        .find(|id| *id != who)
                {
                    let _ = both!(pair, context(&format!("attach_stream {colleague}")), |s| s
                        .attach_stream(&p, &colleague));
                    let _ = both!(pair, context(&format!("set_status {colleague}")), |s| s
                        .set_status(&p, &colleague, StatusChoice::Available));
                    free = colleagues(free_agents(pair, &p).await);
                }
                let mut plan = None;
                let target = if rng.chance(50) {
                    if !free.is_empty() && rng.chance(75) {
                        TransferTarget::Agent(rng.pick(&free).clone())
                    } else {
                        TransferTarget::Agent(agent(a))
                    }
                } else {
                    TransferTarget::Queue {
                        category: (*rng.pick(&["fraud", "billing", "tech support/α"])).to_owned(),
                        required_skills: skills(&mut rng, 1)
                            .into_iter()
                            .take(1)
                            .map(|s| Skill::new(s.name, s.level.min(3)))
                            .collect(),
                        language: rng.chance(30).then(|| (*rng.pick(&LANGUAGES)).to_owned()),
                    }
                };
                let note = if rng.chance(50) {
                    ""
                } else {
                    "needs \"fraud\" desk"
                };
                let to_agent = matches!(target, TransferTarget::Agent(_));
                // Half the transfers carry a plan: the target queue's for a
                // transfer to a queue (ignored for a transfer to an agent).
                let mut attempts_before = 0;
                if rng.chance(50)
                    && let Ok(c) = pair.memory.conversation(&p, &cid(id)).await
                {
                    plan = Some(random_plan(&mut rng, &c.handoff, 0));
                    attempts_before = c.attempts;
                }
                let result = both!(
                    pair,
                    context(&format!(
                        "transfer {id} by {who} to {target:?} with {plan:?}"
                    )),
                    |s| s.transfer(&p, &who, &cid(id), target.clone(), note, plan.clone())
                );
                if let Ok(applied) = &result {
                    coverage.count_events(&applied.events);
                    if to_agent {
                        coverage.transfers_to_agents += 1;
                    } else {
                        coverage.transfers_to_queues += 1;
                        if plan.is_some() {
                            coverage.planned_transfers += 1;
                            planned.insert(id.to_owned());
                            attempts.insert(id.to_owned(), attempts_before);
                        } else {
                            planned.remove(id);
                        }
                    }
                }
            }
            98..=99 => {
                // Completions are scarce too: with none, a holder
                // completes first (the gateway reports after the end).
                let mut completed = in_state(pair, &p, ConversationState::Completed).await;
                if completed.is_empty()
                    && stage_assignment(pair, &p, &context("report_csat")).await
                    && let Some(c) = in_state(pair, &p, ConversationState::Assigned)
                        .await
                        .first()
                    && let Some(holder) = c.agent_id.clone()
                {
                    let id = c.id().clone();
                    let result = both!(pair, context(&format!("complete {holder} {id}")), |s| s
                        .complete(&p, &holder, &id, "resolved"));
                    if result.is_ok_and(|applied| !applied.events.is_empty()) {
                        coverage.completions += 1;
                    }
                    completed = in_state(pair, &p, ConversationState::Completed).await;
                }
                let mut id = *rng.pick(&CONVERSATIONS);
                if !completed.is_empty() && rng.chance(80) {
                    id = rng.pick(&completed).id().as_str();
                }
                let score = 1 + rng.below(5) as u8;
                let before = pair.memory.conversation(&p, &cid(id)).await;
                let result = both!(pair, context(&format!("report_csat {id} {score}")), |s| s
                    .report_csat(&p, &cid(id), score));
                if result.is_ok() && before.is_ok_and(|c| c.csat.is_none()) {
                    coverage.csat_reports += 1;
                }
            }
            100..=102 => {
                let result = both!(pair, context(&format!("drain {a}")), |s| s
                    .drain(&p, &agent(a)));
                coverage.drains += u32::from(result.is_ok());
            }
            103..=107 => {
                let id = *rng.pick(&CONVERSATIONS);
                let target = rng.chance(50).then(|| agent(a));
                let reason = if rng.chance(50) { "" } else { "supervisor" };
                let result = both!(
                    pair,
                    context(&format!("reassign {id} to {target:?}")),
                    |s| s.reassign(&p, &cid(id), target.as_ref(), reason)
                );
                coverage.reassigns += u32::from(result.is_ok());
            }
            108..=110 => {
                let h = handoff(&mut rng, "probe");
                let limit = 1 + rng.below(4);
                let result = both!(
                    pair,
                    context(&format!("availability {h:?} limit {limit}")),
                    |s| s.availability(&p, &h, limit)
                );
                coverage.agents_found_free += u32::from(result.is_ok_and(|(free, _)| free > 0));
            }
            120..=131 => {
                let id = *rng.pick(&CONVERSATIONS);
                let h = handoff(&mut rng, id);
                let plan = random_plan(&mut rng, &h, 0);
                let result = both!(
                    pair,
                    context(&format!("request {h:?} with {plan:?}")),
                    |s| s.request_with_plan(&p, h.clone(), plan.clone())
                );
                if let Ok(applied) = &result {
                    if applied.value.1 {
                        coverage.planned_requests += 1;
                        planned.insert(id.to_owned());
                        attempts.insert(id.to_owned(), 0);
                    }
                    coverage.count_events(&applied.events);
                }
            }
            132..=136 => {
                // Mostly an online agent: the server resolves regions at
                // go-online and on located heartbeats.
                let online = pair.memory.agents(&p).await.unwrap();
                let who = if !online.is_empty() && rng.chance(85) {
                    rng.pick(&online).agent_id.clone()
                } else {
                    agent(a)
                };
                let resolved = rng.chance(85).then(|| regions(&mut rng));
                let result = both!(
                    pair,
                    context(&format!("set_agent_regions {who} {resolved:?}")),
                    |s| s.set_agent_regions(&p, &who, resolved.clone())
                );
                if let Ok(applied) = &result {
                    coverage.region_updates += 1;
                    coverage.count_events(&applied.events);
                }
            }
            137..=139 => {
                let h = handoff(&mut rng, "probe");
                let plan = random_plan(&mut rng, &h, 0);
                let limit = 1 + rng.below(4);
                let result = both!(
                    pair,
                    context(&format!("availability {h:?} with {plan:?} limit {limit}")),
                    |s| s.availability_with_plan(&p, &h, &plan, limit)
                );
                coverage.planned_agents_found_free +=
                    u32::from(result.is_ok_and(|(free, _)| free > 0));
            }
            _ => {
                let id = *rng.pick(&CONVERSATIONS);
                let _ = both!(pair, context(&format!("conversation {id}")), |s| s
                    .conversation(&p, &cid(id)));
                let _ = both!(pair, context(&format!("agent_snapshot {a}")), |s| s
                    .agent_snapshot(&p, &agent(a)));
            }
        }
        // Apps mostly keep their leases alive (5 steps between heartbeats
        // would lapse one).
        for presence in pair.memory.agents(&p).await.unwrap() {
            if rng.chance(75) {
                let who = presence.agent_id;
                let _ = both!(pair, context(&format!("heartbeat {who}")), |s| s
                    .heartbeat(&p, &who, None));
            }
        }
        // Apps mostly show their offers at once (else they are withdrawn as
        // undelivered and the agent's stream is dropped).
        if rng.chance(if rng.1 { 95 } else { 70 }) {
            for c in in_state(pair, &p, ConversationState::Offered).await {
                if let Some(pending) = c.pending_offer() {
                    let offer = OfferId {
                        conversation_id: c.id().clone(),
                        attempt: pending.attempt,
                    };
                    let who = pending.agent_id.clone();
                    let _ = both!(
                        pair,
                        context(&format!("offer_delivered {who} {offer}")),
                        |s| s.offer_delivered(&p, &who, &offer)
                    );
                }
            }
        }
        // A uniform pool's agents mostly take what they are offered and come
        // back from breaks, so several are often free at once.
        if rng.1 {
            for (who, offer) in pending_offers(pair, &p).await {
                if rng.chance(40) {
                    let _ = both!(pair, context(&format!("accept {who} {offer}")), |s| s
                        .accept(&p, &who, &offer));
                }
            }
            for presence in pair.memory.agents(&p).await.unwrap() {
                if !presence.stream_attached && rng.chance(50) {
                    let who = presence.agent_id.clone();
                    let result = both!(pair, context(&format!("attach_stream {who}")), |s| s
                        .attach_stream(&p, &who));
                    if let (Ok(applied), Some(name)) =
                        (result, AGENTS.iter().find(|n| **n == who.as_str()))
                    {
                        streams.insert(name, applied.value.0);
                    }
                }
                if presence.status == AgentStatus::Away && rng.chance(30) {
                    let who = presence.agent_id;
                    let _ = both!(pair, context(&format!("set_status {who} available")), |s| s
                        .set_status(&p, &who, StatusChoice::Available));
                }
            }
        }
        // Offers made to planned conversations, by whatever command.
        for id in &planned {
            if let Ok(c) = pair.memory.conversation(&p, &cid(id)).await {
                let seen = attempts.entry(id.clone()).or_insert(0);
                coverage.planned_offers += c.attempts.saturating_sub(*seen);
                *seen = c.attempts;
            }
        }
        // After every step the whole visible state must agree too.
        let _ = both!(pair, context("agents"), |s| s.agents(&p));
        let _ = both!(pair, context("queue_stats"), |s| s.queue_stats(&p));
        let _ = both!(pair, context("shift_stats"), |s| s.shift_stats(&p));
        let _ = both!(pair, context("roster"), |s| s.roster(&p));
        for id in CONVERSATIONS {
            let _ = both!(pair, context(&format!("conversation {id} after")), |s| s
                .conversation(&p, &cid(id)));
        }
    }
}

#[tokio::test]
async fn random_sequences_match_the_in_memory_store() {
    let server = RedisServer::start().await;
    // No sweeper runs between the steps, and old pools are reached only by
    // the sweep steps: on a loaded machine real seconds may pass between
    // two, which the store would rightly take for an outage.
    let options = RedisOptions {
        outage_threshold: Duration::from_secs(3_600),
        ..RedisOptions::default()
    };
    let redis = Arc::new(
        RedisStore::connect_with(&server.url(), settings(), options)
            .await
            .expect("connects"),
    );
    let clock = ManualClock::new(1_700_000_000_000);
    let memory = Arc::new(MemoryStore::new(settings(), Arc::new(clock.clone())));
    let memory_start = memory.now().await.unwrap().as_millis();
    redis.pin_clock(Timestamp::from_millis(memory_start));
    let redis_start = redis.now().await.unwrap().as_millis();
    let pair = Pair {
        memory,
        clock,
        memory_start,
        redis,
        redis_start,
    };
    let mut coverage = Coverage::default();
    for seed in 0..SEEDS + UNIFORM_SEEDS {
        run_sequence(&pair, seed, &mut coverage).await;
    }
    println!("{coverage:?}");
    assert!(
        coverage.completions > 0
            && coverage.drains > 0
            && coverage.reassigns > 0
            && coverage.agents_found_free > 0
            && coverage.transfers_to_agents > 0
            && coverage.transfers_to_queues > 0
            && coverage.csat_reports > 0
            && coverage.planned_requests > 0
            && coverage.planned_transfers > 0
            && coverage.planned_offers > 0
            && coverage.region_updates > 0
            && coverage.plan_expiries > 0
            && coverage.overflows > 0
            && coverage.callbacks > 0
            && coverage.planned_agents_found_free > 0,
        "the random sequences exercised every command: {coverage:?}"
    );
}
