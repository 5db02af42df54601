//! The state machine of one pool: roster, presence leases, queue, offers,
//! assignments, and the events every change appends.
//!
//! # Design
//!
//! Every public method is one atomic domain command: it checks, decides and
//! changes state, and leaves the events it caused in a buffer that the store
//! drains ([`PoolState::take_events`]). Nothing here returns agents or
//! conversations for a caller to filter: the engine decides.
//!
//! Matching never scans. Offerable agents (online, available, stream
//! attached, spare capacity, no pending offer) sit in ordered sets keyed by
//! `(language, skill)` and by the strategy's score (longest idle first); a
//! conversation walks the smallest set its requirements touch and stops at
//! the first fully eligible agent. Waiting conversations sit in groups of
//! identical requirements, each ordered by priority then waiting time; an
//! agent who becomes free looks only at the heads of the groups of its
//! languages and skills, walking them best head first and stopping at the
//! first that cannot beat what it found (see `Shelf`).
//!
//! Deadlines (offer timeouts, undelivered offers, leases, maximum wait,
//! retention) live in one ordered set; [`PoolState::sweep`] pops those due.
//! Entries may be stale (an offer answered before its deadline): each is
//! checked against the current state when popped.

use crate::error::DomainError;
use crate::event::{Event, EventKind};
use crate::ids::{AgentId, ConversationId, OfferId, PoolId};
use crate::model::{
    AgentSnapshot, AgentStatus, Conversation, ConversationState, GoOnline, Handoff, Location,
    OfferOutcome, OfferRecord, Presence, Quality, QueueStat, QueueStats, RosterEntry, Shift,
    ShiftView, Skill, StatusChoice, TransferRecord, TransferTarget,
};
use crate::plan::{
    MICRO, PlanAging, PlanMaxWaitAction, PlanRequirements, PlanStep, PlanStrategy, RoutingPlan,
};
use crate::settings::DispatchSettings;
use crate::time::Timestamp;
use crate::validate::{language_covers, language_lookup_keys};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

mod hash;
use hash::{Map, Set};

/// Index key for "any skill": every offerable agent is under it.
const ANY_SKILL: &str = "*";
/// How many recent first offers the wait estimate looks at.
const RATE_WINDOW: usize = 64;
/// A group's own rate is used once it has this many recent first offers.
const MIN_GROUP_SAMPLES: usize = 4;
/// At most this many groups keep their own rate window.
const MAX_RATE_GROUPS: usize = 10_000;
/// Strategies other than longest idle compare at most this many eligible
/// agents per language key, walking the index in idle order: a bounded
/// cost per dispatch whatever the pool size.
pub const STRATEGY_CANDIDATES: usize = 64;

fn group_key(handoff: &Handoff) -> GroupKey {
    GroupKey {
        language: handoff.language.clone(),
        skills: handoff.required_skills.clone(),
        region: handoff.region.clone(),
        routed: None,
    }
}

/// Requirements shared by a group of waiting conversations. Conversations
/// without a plan are grouped by their hand-off's language, skills and
/// region (`routed` is `None`); planned ones by the requirements of the
/// step in force, which the rest of the key completes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct GroupKey {
    language: String,
    skills: Vec<Skill>,
    region: Option<String>,
    routed: Option<Box<RoutedKey>>,
}

/// The parts of a planned conversation's requirements beyond language and
/// skills, and its aging (a group ages uniformly, so its order by base
/// priority then wait holds within one priority level).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct RoutedKey {
    language_widened: bool,
    attributes: BTreeSet<String>,
    regions: Option<BTreeSet<String>>,
    roster_regions_if_listed: bool,
    aging: PlanAging,
}

impl GroupKey {
    /// Whether the group's priority ages with the wait (planned, with a
    /// positive aging rate): its order across priority levels then changes
    /// with time.
    fn ages(&self) -> bool {
        self.routed
            .as_ref()
            .is_some_and(|r| r.aging.rate_micro_per_second > 0)
    }

    /// The requirements this key stands for, when planned.
    fn requirements(&self) -> Option<(PlanRequirements, bool)> {
        let routed = self.routed.as_ref()?;
        Some((
            PlanRequirements {
                language: self.language.clone(),
                language_widened: routed.language_widened,
                skills: self.skills.clone(),
                attributes: routed.attributes.clone(),
                regions: routed.regions.clone(),
            },
            routed.roster_regions_if_listed,
        ))
    }
}

/// A planned conversation's routing state, beside the conversation (the
/// conversation itself, and what stores and events carry, is unchanged).
#[derive(Clone, Debug)]
struct Routed {
    plan: RoutingPlan,
    /// When the plan's clock started (the hand-off, or an overflow).
    since: Timestamp,
    /// The schedule step in force.
    step: usize,
    /// Bumped when an overflow replaces the plan: older deadlines are stale.
    generation: u64,
    /// Base priority in the queue (a callback lowers it).
    priority: u8,
    /// When the maximum-wait action is due; `None` once it is a callback.
    max_wait_at: Option<Timestamp>,
}

impl Routed {
    fn requirements(&self) -> &PlanRequirements {
        &self.plan.steps[self.step].requirements
    }

    fn group_key(&self) -> GroupKey {
        let r = self.requirements();
        GroupKey {
            language: r.language.clone(),
            skills: r.skills.clone(),
            region: None,
            routed: Some(Box::new(RoutedKey {
                language_widened: r.language_widened,
                attributes: r.attributes.clone(),
                regions: r.regions.clone(),
                roster_regions_if_listed: self.plan.roster_regions_if_listed,
                aging: self.plan.aging,
            })),
        }
    }

    fn preferred_window_open(&self, now: Timestamp) -> bool {
        now < self.since.plus_millis(self.plan.preferred_window_ms)
    }
}

/// Order inside a group: higher priority first, then longer waiting.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    priority: Reverse<u8>,
    queued_since: Timestamp,
    arrival: u64,
    conversation_id: ConversationId,
}

/// What a free agent needs to know of a waiting conversation beyond its
/// place in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiting {
    /// Some agent declined or missed it (its `excluded` set is not empty).
    /// Set when it is filed: agents are excluded only while a conversation
    /// is offered or assigned, never while it waits (checked by
    /// [`PoolState::check_invariants`]). A free agent looks the
    /// conversation up only when this is set.
    has_exclusions: bool,
}

/// The requirement groups of one primary language subtag, filed by the
/// first skill they require, so a free agent visits only the groups whose
/// first skill it has (a group requires all of its skills), and reaches
/// each group without hashing its key.
#[derive(Debug, Default)]
struct LanguageGroups {
    without_skills: Shelf,
    by_first_skill: Map<String, Shelf>,
}

impl LanguageGroups {
    fn shelf(&self, key: &GroupKey) -> Option<&Shelf> {
        match key.skills.first() {
            None => Some(&self.without_skills),
            Some(first) => self.by_first_skill.get(first.name.as_str()),
        }
    }

    fn get(&self, key: &GroupKey) -> Option<&Group> {
        self.shelf(key)?.get(key)
    }

    /// Files `queue_key` in the group of `key` (created if new). Returns
    /// the group's shared key.
    fn insert(&mut self, key: GroupKey, queue_key: QueueKey, waiting: Waiting) -> Arc<GroupKey> {
        let shelf = match key.skills.first() {
            None => &mut self.without_skills,
            Some(first) => match self.by_first_skill.get_mut(first.name.as_str()) {
                Some(shelf) => shelf,
                None => self.by_first_skill.entry(first.name.clone()).or_default(),
            },
        };
        shelf.insert(key, queue_key, waiting)
    }

    /// Takes `queue_key` out of the group of `key`; an emptied group goes,
    /// and so does an emptied shelf.
    fn remove_entry(&mut self, key: &GroupKey, queue_key: &QueueKey) {
        let shelf = match key.skills.first() {
            None => &mut self.without_skills,
            Some(first) => match self.by_first_skill.get_mut(first.name.as_str()) {
                Some(shelf) => shelf,
                None => return,
            },
        };
        shelf.remove(key, queue_key);
        if shelf.is_empty()
            && let Some(first) = key.skills.first()
        {
            self.by_first_skill.remove(first.name.as_str());
        }
    }

    fn is_empty(&self) -> bool {
        self.without_skills.is_empty() && self.by_first_skill.is_empty()
    }

    fn shelves(&self) -> impl Iterator<Item = &Shelf> {
        std::iter::once(&self.without_skills).chain(self.by_first_skill.values())
    }

    fn iter(&self) -> impl Iterator<Item = (&GroupKey, &Group)> {
        self.shelves().flat_map(Shelf::iter)
    }

    /// The shelves an agent with `skills` may serve, as far as skills go:
    /// groups requiring none, and those whose first skill it has.
    fn shelves_for<'a>(&'a self, skills: &'a [Skill]) -> impl Iterator<Item = &'a Shelf> {
        let with_skills = skills
            .iter()
            .filter_map(|s| self.by_first_skill.get(s.name.as_str()));
        std::iter::once(&self.without_skills).chain(with_skills)
    }
}

/// The groups of one language and first skill.
///
/// # Design
///
/// A free agent wants the best waiting conversation of the groups it
/// serves, and no entry of a group is better than the group's first: so
/// it visits the groups in the order of their first entries (`heads`) and
/// stops at the first group that cannot beat what it has found, instead of
/// visiting every group (about a hundred per agent in a large pool). That
/// holds for groups whose order is fixed; a planned group with aging ranks
/// by an effective priority that grows with the wait, so those (`aging`)
/// are visited one by one as before.
#[derive(Debug, Default)]
struct Shelf {
    /// Groups without aging.
    groups: BTreeMap<Arc<GroupKey>, Group>,
    /// The first entry of each of `groups`, best first, with its group's
    /// key and what the free agent needs to know of it.
    heads: BTreeMap<QueueKey, (Arc<GroupKey>, Waiting)>,
    /// Planned groups with aging.
    aging: BTreeMap<Arc<GroupKey>, Group>,
}

impl Shelf {
    fn get(&self, key: &GroupKey) -> Option<&Group> {
        if key.ages() {
            self.aging.get(key)
        } else {
            self.groups.get(key)
        }
    }

    fn insert(&mut self, key: GroupKey, queue_key: QueueKey, waiting: Waiting) -> Arc<GroupKey> {
        let ages = key.ages();
        let groups = if ages {
            &mut self.aging
        } else {
            &mut self.groups
        };
        let shared = match groups.get_key_value(&key) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::new(key),
        };
        let group = groups.entry(Arc::clone(&shared)).or_default();
        group
            .by_age
            .insert((queue_key.queued_since, queue_key.arrival));
        if ages {
            group.by_priority.insert(queue_key, waiting);
            return shared;
        }
        let first = group.by_priority.first_key_value().map(|(first, _)| first);
        if first.is_none_or(|first| queue_key < *first) {
            // The new entry goes first in its group.
            if let Some(first) = first {
                self.heads.remove(first);
            }
            self.heads
                .insert(queue_key.clone(), (Arc::clone(&shared), waiting));
        }
        group.by_priority.insert(queue_key, waiting);
        shared
    }

    /// Takes `queue_key` out of the group of `key`; an emptied group goes.
    fn remove(&mut self, key: &GroupKey, queue_key: &QueueKey) {
        let ages = key.ages();
        let groups = if ages {
            &mut self.aging
        } else {
            &mut self.groups
        };
        let Some(group) = groups.get_mut(key) else {
            return;
        };
        group.by_priority.remove(queue_key);
        group
            .by_age
            .remove(&(queue_key.queued_since, queue_key.arrival));
        if !ages && let Some((shared, _)) = self.heads.remove(queue_key) {
            // It was the group's first: the next one is.
            if let Some((first, waiting)) = group.by_priority.first_key_value() {
                self.heads.insert(first.clone(), (shared, *waiting));
            }
        }
        if group.by_priority.is_empty() {
            groups.remove(key);
        }
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.aging.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&GroupKey, &Group)> {
        self.groups
            .iter()
            .chain(&self.aging)
            .map(|(key, group)| (&**key, group))
    }

    /// Whether `heads` holds exactly the first entry of each group without
    /// aging, and each group is filed by whether it ages.
    fn check(&self) -> Result<(), String> {
        if let Some(key) = self.groups.keys().find(|k| k.ages()) {
            return Err(format!("aging group {key:?} filed as fixed"));
        }
        if let Some(key) = self.aging.keys().find(|k| !k.ages()) {
            return Err(format!("fixed group {key:?} filed as aging"));
        }
        let mut expected: Vec<(&QueueKey, &GroupKey, &Waiting)> = self
            .groups
            .iter()
            .filter_map(|(key, group)| {
                let (first, waiting) = group.by_priority.first_key_value()?;
                Some((first, &**key, waiting))
            })
            .collect();
        expected.sort_by(|a, b| a.0.cmp(b.0));
        let heads: Vec<(&QueueKey, &GroupKey, &Waiting)> = self
            .heads
            .iter()
            .map(|(first, (key, waiting))| (first, &**key, waiting))
            .collect();
        if heads != expected || self.groups.values().any(|g| g.by_priority.is_empty()) {
            return Err(format!(
                "group heads {heads:?} are not the groups' first entries {expected:?}"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Group {
    by_priority: BTreeMap<QueueKey, Waiting>,
    by_age: BTreeSet<(Timestamp, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    OfferDelivery(ConversationId, u32),
    OfferTimeout(ConversationId, u32),
    StreamGrace(AgentId, ConversationId, u32),
    Lease(AgentId),
    WrapUpEnd(AgentId),
    MaxWait(ConversationId),
    Retention(ConversationId),
    /// A planned conversation's schedule step (generation, index) is due.
    Relax(ConversationId, u64, u32),
    /// The preferred agent's exclusive window ends (generation).
    PreferredWindowEnd(ConversationId, u64),
    /// An agent's reject delay (after a decline) may have ended.
    RejectDelayEnd(AgentId),
}

#[derive(Debug)]
struct Session {
    skills: Vec<Skill>,
    languages: Vec<String>,
    capacity: u32,
    location: Option<Location>,
    /// The regions whose geofence admits the agent, as the caller resolved
    /// them from its location; `None` until the caller says (planned
    /// region rules then admit nobody: residency fails closed).
    regions: Option<BTreeSet<String>>,
    choice: StatusChoice,
    /// Going offline once the last conversation is done: no new offers.
    draining: bool,
    /// In wrap-up until then: no new offers.
    wrap_up_until: Option<Timestamp>,
    /// Declined a planned conversation with a reject delay: no new offers
    /// until then.
    reject_until: Option<Timestamp>,
    stream: Option<u64>,
    active: BTreeSet<ConversationId>,
    pending_offer: Option<OfferId>,
    online_since: Timestamp,
    last_heartbeat: Timestamp,
    lease_expires: Timestamp,
    idle_since: Timestamp,
    consecutive_misses: u32,
    /// The score the agent is indexed under, if it is offerable.
    indexed_score: Option<i64>,
}

impl Session {
    fn offerable(&self) -> bool {
        self.stream.is_some()
            && !self.draining
            && self.wrap_up_until.is_none()
            && self.reject_until.is_none()
            && self.choice == StatusChoice::Available
            && self.pending_offer.is_none()
            && (self.active.len() as u32) < self.capacity
    }

    fn status(&self) -> AgentStatus {
        if self.draining {
            return AgentStatus::Draining;
        }
        if self.wrap_up_until.is_some() {
            return AgentStatus::WrapUp;
        }
        match &self.choice {
            StatusChoice::Away { .. } => AgentStatus::Away,
            StatusChoice::Available => {
                let load = self.active.len() as u32 + u32::from(self.pending_offer.is_some());
                if load >= self.capacity {
                    AgentStatus::Busy
                } else {
                    AgentStatus::Available
                }
            }
        }
    }

    fn skill_level(&self, name: &str) -> Option<u8> {
        self.skills.iter().find(|s| s.name == name).map(|s| s.level)
    }
}

#[derive(Debug, Default)]
struct AgentRecord {
    session: Option<Session>,
    shift: Shift,
    /// Customer satisfaction over every shift.
    quality: Quality,
    /// The pool's offer counter at this agent's last offer (round robin).
    last_offer_seq: u64,
}

/// Whether an online agent meets planned requirements, capacity and
/// exclusions aside: language (exact or family), skills, roster attributes,
/// and one region both admitting it (resolved location) and permitted by
/// its roster entry.
pub fn plan_eligible(
    requirements: &PlanRequirements,
    roster_regions_if_listed: bool,
    skills: &[Skill],
    languages: &[String],
    agent_regions: Option<&BTreeSet<String>>,
    roster: &RosterEntry,
) -> bool {
    if !languages.iter().any(|l| requirements.accepts_language(l)) {
        return false;
    }
    let skills_ok = requirements.skills.iter().all(|required| {
        skills
            .iter()
            .any(|s| s.name == required.name && s.level >= required.level)
    });
    if !skills_ok {
        return false;
    }
    if !requirements
        .attributes
        .iter()
        .all(|a| roster.attributes.contains(a))
    {
        return false;
    }
    match &requirements.regions {
        None => true,
        Some(wanted) => wanted.iter().any(|region| {
            let permitted = roster.allowed_regions.contains(region)
                || (roster_regions_if_listed && roster.allowed_regions.is_empty());
            permitted && agent_regions.is_some_and(|admitted| admitted.contains(region))
        }),
    }
}

/// Whether an online agent may take a conversation, capacity aside: skills
/// at the required level, language, region, and not excluded.
pub fn eligible(
    agent_id: &AgentId,
    skills: &[Skill],
    languages: &[String],
    roster: &RosterEntry,
    conversation: &Conversation,
) -> bool {
    let handoff = &conversation.handoff;
    if conversation.excluded.contains(agent_id) {
        return false;
    }
    if !languages
        .iter()
        .any(|l| language_covers(l, &handoff.language))
    {
        return false;
    }
    let skills_ok = handoff.required_skills.iter().all(|required| {
        skills
            .iter()
            .any(|s| s.name == required.name && s.level >= required.level)
    });
    if !skills_ok {
        return false;
    }
    match &handoff.region {
        Some(region) => roster.allowed_regions.iter().any(|r| r == region),
        None => true,
    }
}

/// One pool's dispatch state. See the module docs.
#[derive(Debug)]
pub struct PoolState {
    pool: PoolId,
    settings: DispatchSettings,
    roster: Map<AgentId, RosterEntry>,
    agents: Map<AgentId, AgentRecord>,
    /// Boxed: growing the map then moves pointers, not whole conversations
    /// (retention keeps finished ones for an hour, so it gets large).
    conversations: Map<ConversationId, Box<Conversation>>,
    /// Offerable agents by language, then skill ([`ANY_SKILL`]: all of the
    /// language's), longest idle first. Nested so that a look-up by `&str`
    /// allocates nothing.
    available: AgentIndex,
    /// Waiting conversations in groups of identical requirements, by the
    /// primary language subtag (then first skill) of the requirements, so
    /// a free agent finds the groups of its languages and skills without
    /// looking at others.
    groups: Map<String, LanguageGroups>,
    queued: Map<ConversationId, (Arc<GroupKey>, QueueKey)>,
    deadlines: BTreeSet<(Timestamp, Deadline)>,
    recent_first_offers: VecDeque<Timestamp>,
    /// The same per requirement group: the rate at which agents able to
    /// serve exactly these requirements have been taking them.
    group_first_offers: Map<GroupKey, VecDeque<Timestamp>>,
    /// Planned conversations' routing state.
    routing: Map<ConversationId, Routed>,
    /// Indexed language tags by primary subtag, for widened look-ups (a tag
    /// stays once indexed; its sets may be empty).
    families: Map<String, BTreeSet<String>>,
    /// Counts offers, for round robin.
    offer_seq: u64,
    /// Plan generations, so stale schedule deadlines are recognised.
    plan_generations: u64,
    arrivals: u64,
    next_stream_id: u64,
    /// While set, an offer found undelivered at its delivery deadline is
    /// given another grace period instead of being withdrawn (see
    /// [`PoolState::pause_delivery_checks`]).
    delivery_checks_paused: bool,
    events: Vec<Event>,
}

impl PoolState {
    pub fn new(pool: PoolId, settings: DispatchSettings) -> Self {
        PoolState {
            pool,
            settings,
            roster: Map::default(),
            agents: Map::default(),
            conversations: Map::default(),
            available: Map::default(),
            groups: Map::default(),
            queued: Map::default(),
            deadlines: BTreeSet::new(),
            recent_first_offers: VecDeque::with_capacity(RATE_WINDOW),
            group_first_offers: Map::default(),
            routing: Map::default(),
            families: Map::default(),
            offer_seq: 0,
            plan_generations: 0,
            arrivals: 0,
            next_stream_id: 1,
            delivery_checks_paused: false,
            events: Vec::new(),
        }
    }

    /// Pauses (or resumes) withdrawing offers as undelivered. An offer is
    /// "delivered" when the server's stream task has handed it to the
    /// agent's stream, so a server that runs behind (CPU starved,
    /// overloaded) marks offers late although every stream is fine;
    /// withdrawing them then sends agents to resubscribe, which is more
    /// work for a server already behind. While paused, an undelivered offer
    /// at its delivery deadline gets another grace period; its offer
    /// timeout still runs, and a stream that ended is still handled by its
    /// own grace.
    pub fn pause_delivery_checks(&mut self, paused: bool) {
        self.delivery_checks_paused = paused;
    }

    pub fn pool(&self) -> &PoolId {
        &self.pool
    }

    pub fn settings(&self) -> &DispatchSettings {
        &self.settings
    }

    /// The events caused since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The earliest pending deadline, for a sweeper that sleeps until then.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    // ----------------------------------------------------------------- roster

    /// Creates or replaces a roster entry. Returns the entry and whether it
    /// was new. An online agent keeps its session until it goes online again;
    /// narrowing then applies against the new entry.
    pub fn upsert_roster(&mut self, mut entry: RosterEntry) -> (RosterEntry, bool) {
        let created = match self.roster.get(&entry.agent_id) {
            Some(old) => {
                entry.token_epoch = entry.token_epoch.max(old.token_epoch);
                false
            }
            None => true,
        };
        self.roster.insert(entry.agent_id.clone(), entry.clone());
        (entry, created)
    }

    /// The roster, ordered by agent id.
    pub fn roster(&self) -> Vec<RosterEntry> {
        let mut entries: Vec<_> = self.roster.values().cloned().collect();
        entries.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        entries
    }

    pub fn roster_entry(&self, agent_id: &AgentId) -> Option<&RosterEntry> {
        self.roster.get(agent_id)
    }

    // --------------------------------------------------------------- presence

    /// Goes online (or updates the online session), narrowing the roster
    /// entry; never widening it. With `self_register` (development mode) an
    /// agent missing from the roster is added as it describes itself.
    pub fn go_online(
        &mut self,
        agent_id: &AgentId,
        request: GoOnline,
        self_register: bool,
        now: Timestamp,
    ) -> Result<Presence, DomainError> {
        if !self.roster.contains_key(agent_id) {
            if !self_register {
                return Err(DomainError::NotFound {
                    what: "roster entry for agent",
                    id: agent_id.to_string(),
                });
            }
            let languages = if request.languages.is_empty() {
                vec!["en".to_owned()]
            } else {
                request.languages.clone()
            };
            let entry = RosterEntry {
                agent_id: agent_id.clone(),
                display_name: agent_id.to_string(),
                skills: request.skills.clone(),
                languages,
                max_capacity: request.capacity.unwrap_or(1),
                allowed_regions: Vec::new(),
                attributes: Vec::new(),
                token_epoch: 0,
            };
            self.roster.insert(agent_id.clone(), entry);
        }
        let roster = self
            .roster
            .get(agent_id)
            .ok_or_else(|| DomainError::NotFound {
                what: "roster entry for agent",
                id: agent_id.to_string(),
            })?;
        let (skills, languages, capacity) = narrow(roster, &request)?;

        self.unindex(agent_id);
        let lease_ms = self.settings.lease_ms;
        let record = self.agents.entry(agent_id.clone()).or_default();
        match record.session.as_mut() {
            Some(session) => {
                session.skills = skills;
                session.languages = languages;
                session.capacity = capacity;
                if request.location.is_some() {
                    session.location = request.location;
                }
                let old = session.lease_expires;
                session.last_heartbeat = now;
                session.lease_expires = now.plus_millis(lease_ms);
                let new = session.lease_expires;
                self.deadlines
                    .remove(&(old, Deadline::Lease(agent_id.clone())));
                self.deadlines
                    .insert((new, Deadline::Lease(agent_id.clone())));
            }
            None => {
                record.session = Some(Session {
                    skills,
                    languages,
                    capacity,
                    location: request.location,
                    regions: None,
                    choice: StatusChoice::Available,
                    draining: false,
                    wrap_up_until: None,
                    reject_until: None,
                    stream: None,
                    active: BTreeSet::new(),
                    pending_offer: None,
                    online_since: now,
                    last_heartbeat: now,
                    lease_expires: now.plus_millis(lease_ms),
                    idle_since: now,
                    consecutive_misses: 0,
                    indexed_score: None,
                });
                record.shift = Shift {
                    started_at: now,
                    ..Shift::default()
                };
                self.deadlines
                    .insert((now.plus_millis(lease_ms), Deadline::Lease(agent_id.clone())));
                self.notice(
                    agent_id,
                    "online",
                    "agent is online",
                    AgentStatus::Available,
                    now,
                );
            }
        }
        self.dispatch_agent(agent_id, now);
        self.presence(agent_id)
            .ok_or_else(|| DomainError::precondition("agent session vanished"))
    }

    /// Attaches the agent's event stream: from now on it may get offers.
    /// Returns the stream id (for [`PoolState::detach_stream`]) and the
    /// snapshot the stream starts with.
    pub fn attach_stream(
        &mut self,
        agent_id: &AgentId,
        now: Timestamp,
    ) -> Result<(u64, AgentSnapshot), DomainError> {
        let stream_id = self.next_stream_id;
        let session = self.session_mut(agent_id)?;
        session.stream = Some(stream_id);
        self.next_stream_id += 1;
        self.dispatch_agent(agent_id, now);
        let snapshot = self.agent_snapshot(agent_id)?;
        Ok((stream_id, snapshot))
    }

    /// The stream `stream_id` ended. A newer stream of the same agent is left
    /// alone. A pending offer stays for the grace period, so an app that
    /// reconnects at once still sees it; after that it is withdrawn (not a
    /// miss).
    pub fn detach_stream(&mut self, agent_id: &AgentId, stream_id: u64, now: Timestamp) {
        let grace = self.settings.offer_delivery_grace_ms;
        let Some(session) = self
            .agents
            .get_mut(agent_id)
            .and_then(|r| r.session.as_mut())
        else {
            return;
        };
        if session.stream != Some(stream_id) {
            return;
        }
        session.stream = None;
        if let Some(offer) = session.pending_offer.clone() {
            self.deadlines.insert((
                now.plus_millis(grace),
                Deadline::StreamGrace(agent_id.clone(), offer.conversation_id, offer.attempt),
            ));
        }
        self.reindex(agent_id);
    }

    /// Renews the presence lease (and the location, if given).
    pub fn heartbeat(
        &mut self,
        agent_id: &AgentId,
        location: Option<Location>,
        now: Timestamp,
    ) -> Result<Presence, DomainError> {
        let lease_ms = self.settings.lease_ms;
        let session = self.session_mut(agent_id)?;
        let old = session.lease_expires;
        session.last_heartbeat = now;
        session.lease_expires = now.plus_millis(lease_ms);
        if location.is_some() {
            session.location = location;
        }
        let new = session.lease_expires;
        self.deadlines
            .remove(&(old, Deadline::Lease(agent_id.clone())));
        self.deadlines
            .insert((new, Deadline::Lease(agent_id.clone())));
        self.presence(agent_id)
            .ok_or_else(|| DomainError::precondition("agent session vanished"))
    }

    /// Available, or away with a reason code.
    pub fn set_status(
        &mut self,
        agent_id: &AgentId,
        choice: StatusChoice,
        now: Timestamp,
    ) -> Result<AgentStatus, DomainError> {
        let session = self.session_mut(agent_id)?;
        if choice == StatusChoice::Available {
            // Available ends wrap-up early and cancels a drain.
            session.consecutive_misses = 0;
            session.wrap_up_until = None;
            session.draining = false;
        }
        session.choice = choice;
        let status = session.status();
        self.notice(agent_id, "status_changed", "status changed", status, now);
        self.dispatch_agent(agent_id, now);
        Ok(self
            .session(agent_id)
            .map(Session::status)
            .unwrap_or(status))
    }

    /// Goes offline at once: a pending offer is withdrawn and requeued,
    /// assigned conversations are requeued at the front with `reason`.
    /// Going offline twice is not an error. Returns the requeued ids.
    pub fn go_offline(
        &mut self,
        agent_id: &AgentId,
        reason: &str,
        now: Timestamp,
    ) -> Vec<ConversationId> {
        self.unindex(agent_id);
        let Some(record) = self.agents.get_mut(agent_id) else {
            return Vec::new();
        };
        let Some(session) = record.session.take() else {
            return Vec::new();
        };
        record.shift.ended_at = Some(now);
        self.deadlines
            .remove(&(session.lease_expires, Deadline::Lease(agent_id.clone())));
        let mut requeued = Vec::new();
        if let Some(offer) = &session.pending_offer {
            self.close_offer(
                &offer.conversation_id,
                offer.attempt,
                OfferOutcome::Withdrawn,
                reason,
                now,
            );
            self.requeue(&offer.conversation_id, reason, now);
            requeued.push(offer.conversation_id.clone());
        }
        for conversation_id in &session.active {
            self.requeue_for(conversation_id, reason, Some(agent_id), now);
            requeued.push(conversation_id.clone());
        }
        self.notice(agent_id, "offline", reason, AgentStatus::Offline, now);
        for conversation_id in &requeued {
            self.dispatch_conversation(conversation_id, now);
        }
        requeued
    }

    // ------------------------------------------------------------ conversations

    /// Hands a conversation over. The same id with the same payload returns
    /// the conversation as it stands (`created == false`); with another
    /// payload it is refused naming the first differing field.
    pub fn request(
        &mut self,
        handoff: Handoff,
        now: Timestamp,
    ) -> Result<(Conversation, bool), DomainError> {
        self.request_with_plan(handoff, None, now)
    }

    /// [`PoolState::request`] with a routing plan the engine executes for
    /// the conversation (see [`crate::plan`]); `None` routes as before
    /// plans. A repeated request keeps the plan of the first.
    pub fn request_with_plan(
        &mut self,
        handoff: Handoff,
        plan: Option<RoutingPlan>,
        now: Timestamp,
    ) -> Result<(Conversation, bool), DomainError> {
        if let Some(plan) = &plan {
            plan.check()?;
        }
        if let Some(existing) = self.conversations.get(&handoff.conversation_id) {
            if let Some(field) = existing.conflicting_field(&handoff) {
                return Err(DomainError::Conflict {
                    conversation_id: handoff.conversation_id.to_string(),
                    field: field.to_owned(),
                });
            }
            let id = handoff.conversation_id.clone();
            return Ok((self.view(&id, now)?, false));
        }
        let id = handoff.conversation_id.clone();
        let conversation = Conversation::queued(handoff, now);
        let preferred = conversation.handoff.preferred_agent.is_some();
        let plan = plan.map(|plan| with_fallback_step(plan, &conversation.handoff));
        self.conversations
            .insert(id.clone(), Box::new(conversation));
        match plan {
            None => {
                self.deadlines.insert((
                    now.plus_millis(self.settings.max_wait_ms),
                    Deadline::MaxWait(id.clone()),
                ));
            }
            Some(plan) => self.install_plan(&id, plan, preferred, now),
        }
        self.emit(&id, None, now, |c| EventKind::Queued { conversation: c });
        // Only a conversation nobody can take at once gets a place in its
        // queue group, as in dispatch.lua: filing one to take it out again
        // at the offer was a quarter of a request's instructions. Nothing
        // can tell: choosing an agent does not look at the queue, the
        // queued event carries no position, and arrival numbers only order
        // the entries of a group (which now count the same filings as
        // dispatch.lua's).
        match self.agent_for(&id, now) {
            Some(agent) => self.make_offer(&id, &agent, now),
            None => self.enqueue(&id),
        }
        Ok((self.view(&id, now)?, true))
    }

    /// Starts executing `plan` for a conversation (not in a queue group at
    /// the time): its clock starts now, every later step and the end of the
    /// preferred window are scheduled, and the maximum wait.
    fn install_plan(
        &mut self,
        id: &ConversationId,
        plan: RoutingPlan,
        preferred: bool,
        now: Timestamp,
    ) {
        self.plan_generations += 1;
        let generation = self.plan_generations;
        for (i, step) in plan.steps.iter().enumerate().skip(1) {
            if step.after_ms > 0 {
                self.deadlines.insert((
                    now.plus_millis(step.after_ms),
                    Deadline::Relax(id.clone(), generation, i as u32),
                ));
            }
        }
        if preferred && plan.preferred_window_ms > 0 {
            self.deadlines.insert((
                now.plus_millis(plan.preferred_window_ms),
                Deadline::PreferredWindowEnd(id.clone(), generation),
            ));
        }
        let max_wait_ms = plan
            .max_wait
            .as_ref()
            .map_or(self.settings.max_wait_ms, |m| m.after_ms);
        let max_wait_at = now.plus_millis(max_wait_ms);
        self.deadlines
            .insert((max_wait_at, Deadline::MaxWait(id.clone())));
        let routed = Routed {
            step: plan.step_at(0),
            priority: plan.priority,
            plan,
            since: now,
            generation,
            max_wait_at: Some(max_wait_at),
        };
        self.routing.insert(id.clone(), routed);
    }

    /// Sets the regions whose geofence admits the agent (resolved by the
    /// caller from the agent's location with the routing file in force);
    /// `None` forgets them. Planned region rules check membership only.
    pub fn set_agent_regions(
        &mut self,
        agent_id: &AgentId,
        regions: Option<BTreeSet<String>>,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        let session = self.session_mut(agent_id)?;
        if session.regions == regions {
            return Ok(());
        }
        session.regions = regions;
        self.dispatch_agent(agent_id, now);
        Ok(())
    }

    /// The app saw the offer: it will not be withdrawn as undelivered.
    pub fn offer_delivered(&mut self, agent_id: &AgentId, offer: &OfferId) {
        if let Some(conversation) = self.conversations.get_mut(&offer.conversation_id)
            && let Some(record) = conversation
                .offers
                .iter_mut()
                .find(|o| o.attempt == offer.attempt)
            && &record.agent_id == agent_id
        {
            record.delivered = true;
        }
    }

    /// Accepts an offer: the conversation is assigned to the agent. A repeat
    /// returns the first result.
    pub fn accept(
        &mut self,
        agent_id: &AgentId,
        offer: &OfferId,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let record = self.offer_for(agent_id, offer)?;
        match record.outcome {
            OfferOutcome::Accepted => return self.view(&offer.conversation_id, now),
            OfferOutcome::Pending if record.deadline <= now => {
                self.sweep(now);
                return Err(DomainError::precondition(format!(
                    "offer `{offer}` has expired"
                )));
            }
            OfferOutcome::Pending => {}
            other => return Err(closed_offer_error(offer, other)),
        }
        self.close_offer(
            &offer.conversation_id,
            offer.attempt,
            OfferOutcome::Accepted,
            "",
            now,
        );
        let conversation = self.conversation_mut(&offer.conversation_id)?;
        conversation.state = ConversationState::Assigned;
        conversation.agent_id = Some(agent_id.clone());
        conversation.assigned_at = Some(now);
        conversation.reason.clear();
        conversation.updated_at = now;
        let record = self.agents.get_mut(agent_id);
        if let Some(record) = record {
            record.shift.accepted += 1;
            if let Some(session) = record.session.as_mut() {
                session.active.insert(offer.conversation_id.clone());
                session.consecutive_misses = 0;
            }
        }
        self.emit(&offer.conversation_id, Some(agent_id), now, |c| {
            EventKind::Assigned { conversation: c }
        });
        self.dispatch_agent(agent_id, now);
        self.view(&offer.conversation_id, now)
    }

    /// Declines an offer: requeued, and never offered to this agent again.
    /// A repeat returns the first result.
    pub fn decline(
        &mut self,
        agent_id: &AgentId,
        offer: &OfferId,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        let record = self.offer_for(agent_id, offer)?;
        match record.outcome {
            OfferOutcome::Declined => return Ok(()),
            OfferOutcome::Pending => {}
            other => return Err(closed_offer_error(offer, other)),
        }
        let why = if reason.is_empty() {
            "declined".to_owned()
        } else {
            format!("declined: {reason}")
        };
        let reject_delay_ms = self
            .routing
            .get(&offer.conversation_id)
            .map_or(0, |r| r.plan.reject_delay_ms);
        if reject_delay_ms > 0
            && let Some(session) = self
                .agents
                .get_mut(agent_id)
                .and_then(|r| r.session.as_mut())
        {
            // Set before the offer closes, so the agent is not indexed
            // (offered anything) until the delay ends.
            let until = now.plus_millis(reject_delay_ms);
            session.reject_until = Some(session.reject_until.map_or(until, |u| u.max(until)));
            self.deadlines
                .insert((until, Deadline::RejectDelayEnd(agent_id.clone())));
        }
        self.close_offer(
            &offer.conversation_id,
            offer.attempt,
            OfferOutcome::Declined,
            &why,
            now,
        );
        self.conversation_mut(&offer.conversation_id)?
            .excluded
            .insert(agent_id.clone());
        if let Some(record) = self.agents.get_mut(agent_id) {
            record.shift.declined += 1;
        }
        self.requeue(&offer.conversation_id, &why, now);
        self.dispatch_conversation(&offer.conversation_id, now);
        if !self.finish_drain_if_done(agent_id, now) {
            self.dispatch_agent(agent_id, now);
        }
        Ok(())
    }

    /// Completes a conversation the agent holds. A repeat returns the first
    /// result.
    pub fn complete(
        &mut self,
        agent_id: &AgentId,
        conversation_id: &ConversationId,
        disposition: &str,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let conversation = self.conversation_ref(conversation_id)?;
        let holder = conversation.agent_id.as_ref();
        match conversation.state {
            ConversationState::Completed if holder == Some(agent_id) => {
                return self.view(conversation_id, now);
            }
            ConversationState::Assigned if holder == Some(agent_id) => {}
            _ => {
                return Err(DomainError::precondition(format!(
                    "conversation `{conversation_id}` is not assigned to agent `{agent_id}`"
                )));
            }
        }
        let assigned_at = conversation.assigned_at.unwrap_or(now);
        let conversation = self.conversation_mut(conversation_id)?;
        conversation.state = ConversationState::Completed;
        conversation.disposition = disposition.to_owned();
        conversation.reason = "completed by agent".to_owned();
        conversation.updated_at = now;
        let wrap_up_ms = self
            .routing
            .get(conversation_id)
            .and_then(|r| r.plan.wrap_up_ms)
            .unwrap_or(self.settings.wrap_up_ms);
        let mut wrap_up_until = None;
        if let Some(record) = self.agents.get_mut(agent_id) {
            record.shift.completed += 1;
            record.shift.handle_ms_total += now.millis_since(assigned_at);
            if let Some(session) = record.session.as_mut() {
                session.active.remove(conversation_id);
                if session.active.is_empty() {
                    session.idle_since = now;
                }
                if wrap_up_ms > 0 && !session.draining {
                    session.wrap_up_until = Some(now.plus_millis(wrap_up_ms));
                    wrap_up_until = session.wrap_up_until;
                }
            }
        }
        if let Some(until) = wrap_up_until {
            self.deadlines
                .insert((until, Deadline::WrapUpEnd(agent_id.clone())));
        }
        self.finish(conversation_id, now);
        self.emit(conversation_id, Some(agent_id), now, |c| EventKind::Ended {
            conversation: c,
        });
        if self.finish_drain_if_done(agent_id, now) {
            return self.view(conversation_id, now);
        }
        self.dispatch_agent(agent_id, now);
        self.view(conversation_id, now)
    }

    /// The customer left (or the gateway gave up): abandoned, wherever it
    /// was. A conversation already finished is returned as it ended.
    pub fn cancel(
        &mut self,
        conversation_id: &ConversationId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let conversation = self.conversation_ref(conversation_id)?;
        if conversation.state.is_terminal() {
            return self.view(conversation_id, now);
        }
        let why = if reason.is_empty() {
            "cancelled by gateway".to_owned()
        } else {
            format!("cancelled by gateway: {reason}")
        };
        let state = conversation.state;
        let holder = conversation.agent_id.clone();
        if state == ConversationState::Queued {
            self.dequeue(conversation_id);
        }
        self.release_holder(conversation_id, &why, now);
        let conversation = self.conversation_mut(conversation_id)?;
        conversation.state = ConversationState::Abandoned;
        conversation.reason = why;
        conversation.updated_at = now;
        let notify = if state == ConversationState::Assigned {
            holder.clone()
        } else {
            None
        };
        self.finish(conversation_id, now);
        self.emit(conversation_id, notify.as_ref(), now, |c| {
            EventKind::Ended { conversation: c }
        });
        if let Some(agent) = holder {
            self.agent_freed(&agent, now);
        }
        self.view(conversation_id, now)
    }

    /// An agent just lost a conversation or an offer it held: a draining
    /// one with nothing left goes offline, any other is offered the next
    /// conversation it can serve.
    fn agent_freed(&mut self, agent: &AgentId, now: Timestamp) {
        if !self.finish_drain_if_done(agent, now) {
            self.dispatch_agent(agent, now);
        }
    }

    /// Goes offline once the work in hand is done: no new offers from now
    /// on, offline when the last conversation completes (at once if there
    /// is none). Returns whether the agent is already offline.
    pub fn drain(&mut self, agent_id: &AgentId, now: Timestamp) -> Result<bool, DomainError> {
        let session = self.session_mut(agent_id)?;
        session.draining = true;
        self.reindex(agent_id);
        if self.finish_drain_if_done(agent_id, now) {
            return Ok(true);
        }
        let message = "draining: no new offers; offline after the last conversation";
        self.notice(agent_id, "draining", message, AgentStatus::Draining, now);
        Ok(false)
    }

    /// Takes a conversation away from the agent who has it: a pending offer
    /// is withdrawn (the agent is told, with `reason`), an assignment leaves
    /// the agent's hands. The conversation's own state is the caller's to set.
    fn release_holder(&mut self, conversation_id: &ConversationId, reason: &str, now: Timestamp) {
        let Some(conversation) = self.conversations.get(conversation_id) else {
            return;
        };
        match (conversation.state, conversation.agent_id.clone()) {
            (ConversationState::Offered, _) => {
                if let Some(attempt) = conversation.pending_offer().map(|o| o.attempt) {
                    self.close_offer(
                        conversation_id,
                        attempt,
                        OfferOutcome::Withdrawn,
                        reason,
                        now,
                    );
                }
            }
            (ConversationState::Assigned, Some(agent)) => {
                if let Some(session) = self.agents.get_mut(&agent).and_then(|r| r.session.as_mut())
                {
                    session.active.remove(conversation_id);
                    if session.active.is_empty() {
                        session.idle_since = now;
                    }
                }
            }
            _ => {}
        }
    }

    /// A draining agent with nothing left in hand goes offline. Returns
    /// whether it did.
    fn finish_drain_if_done(&mut self, agent_id: &AgentId, now: Timestamp) -> bool {
        let done = self
            .session(agent_id)
            .is_some_and(|s| s.draining && s.active.is_empty() && s.pending_offer.is_none());
        if done {
            self.go_offline(agent_id, "drained", now);
        }
        done
    }

    /// A supervisor moves a conversation: back to the queue (`target` =
    /// `None`; the current agent is excluded so it goes elsewhere), or
    /// straight to a named agent as an offer. The gateway sees the reason.
    pub fn reassign(
        &mut self,
        conversation_id: &ConversationId,
        target: Option<&AgentId>,
        reason: &str,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let conversation = self.conversation_ref(conversation_id)?;
        if conversation.state.is_terminal() {
            return Err(DomainError::precondition(format!(
                "conversation `{conversation_id}` is {} and cannot be reassigned",
                conversation.state.as_str()
            )));
        }
        if let Some(target) = target {
            self.check_target(conversation, target)?;
        }
        let why = if reason.is_empty() {
            "reassigned by supervisor".to_owned()
        } else {
            format!("reassigned by supervisor: {reason}")
        };
        self.move_conversation(conversation_id, target, &why, now)
    }

    /// Checks that `target` can be offered a conversation now (for a
    /// supervisor's reassignment or an agent's transfer).
    fn check_target(
        &self,
        conversation: &Conversation,
        target: &AgentId,
    ) -> Result<(), DomainError> {
        let session = self.session(target).ok_or_else(|| offline_error(target))?;
        let already_holder = conversation.agent_id.as_ref() == Some(target);
        if already_holder || !session.offerable() {
            return Err(DomainError::precondition(format!(
                "agent `{target}` cannot take an offer now (status {:?}, stream attached: {})",
                session.status(),
                session.stream.is_some()
            )));
        }
        Ok(())
    }

    /// Takes a conversation from whoever has it (who is excluded from then
    /// on) and offers it to `target`, or queues it for anyone eligible.
    /// The gateway and the previous holder see `why`.
    fn move_conversation(
        &mut self,
        conversation_id: &ConversationId,
        target: Option<&AgentId>,
        why: &str,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let conversation = self.conversation_ref(conversation_id)?;
        let state = conversation.state;
        let holder = conversation.agent_id.clone();
        self.release_holder(conversation_id, why, now);
        if let Some(previous) = &holder {
            self.conversation_mut(conversation_id)?
                .excluded
                .insert(previous.clone());
        }
        if state == ConversationState::Queued {
            // Already queued: only the reason changes (a new event says so).
            let c = self.conversation_mut(conversation_id)?;
            c.reason = why.to_owned();
            c.updated_at = now;
            self.emit(conversation_id, None, now, |c| EventKind::Requeued {
                conversation: c,
            });
        } else {
            self.requeue_for(conversation_id, why, holder.as_ref(), now);
        }
        match target {
            Some(target) => self.make_offer(conversation_id, target, now),
            None => self.dispatch_conversation(conversation_id, now),
        }
        if let Some(previous) = &holder {
            self.agent_freed(previous, now);
        }
        self.view(conversation_id, now)
    }

    /// The agent holding a conversation hands it on: to a named agent (an
    /// offer that agent may decline, after which it queues as usual) or to
    /// the queue with new requirements. The summary, attributes and every
    /// earlier transfer travel with it; the note is added. The transferring
    /// agent is excluded from it and counts a transfer, not a completion.
    ///
    /// `plan` is the routing plan of the target queue (the caller computes
    /// it from the routing policy for the transferred hand-off): on a
    /// transfer to a queue it replaces the conversation's plan, its clock,
    /// steps and maximum wait starting now (the queue position still counts
    /// the original waiting time); `None` there routes the conversation on
    /// the transfer's requirements with the built-in rules. A transfer to a
    /// named agent keeps the conversation's plan and ignores `plan`.
    pub fn transfer(
        &mut self,
        agent_id: &AgentId,
        conversation_id: &ConversationId,
        target: TransferTarget,
        note: &str,
        plan: Option<RoutingPlan>,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let plan = match &target {
            TransferTarget::Queue { .. } => plan,
            TransferTarget::Agent(_) => None,
        };
        if let Some(plan) = &plan {
            plan.check()?;
        }
        let conversation = self.conversation_ref(conversation_id)?;
        if conversation.state != ConversationState::Assigned
            || conversation.agent_id.as_ref() != Some(agent_id)
        {
            return Err(DomainError::precondition(format!(
                "conversation `{conversation_id}` is not assigned to agent `{agent_id}`"
            )));
        }
        if let TransferTarget::Agent(to) = &target {
            if to == agent_id {
                return Err(DomainError::precondition(format!(
                    "agent `{agent_id}` cannot transfer a conversation to itself"
                )));
            }
            self.check_target(conversation, to)?;
        }
        let to = target.describe();
        let why = if note.is_empty() {
            format!("transferred by agent `{agent_id}` to {to}")
        } else {
            format!("transferred by agent `{agent_id}` to {to}: {note}")
        };
        let conversation = self.conversation_mut(conversation_id)?;
        conversation.transfers.push(TransferRecord {
            from_agent: agent_id.clone(),
            to,
            note: note.to_owned(),
            at: now,
        });
        if let TransferTarget::Queue {
            category,
            required_skills,
            language,
        } = &target
        {
            // Requirements change while nothing holds it in a queue group:
            // it is assigned until `move_conversation` requeues it.
            let handoff = Arc::make_mut(&mut conversation.handoff);
            handoff.category = category.clone();
            handoff.required_skills = required_skills.clone();
            if let Some(language) = language {
                handoff.language = language.clone();
            }
            // The plan was for the old requirements: from here on the
            // conversation is routed by the target queue's plan, if any,
            // else on the transfer's requirements.
            let preferred = handoff.preferred_agent.is_some();
            let plan = plan.map(|plan| with_fallback_step(plan, handoff));
            self.routing.remove(conversation_id);
            if let Some(plan) = plan {
                self.install_plan(conversation_id, plan, preferred, now);
            }
        }
        if let Some(record) = self.agents.get_mut(agent_id) {
            record.shift.transfers += 1;
        }
        let target_agent = match &target {
            TransferTarget::Agent(to) => Some(to),
            TransferTarget::Queue { .. } => None,
        };
        self.move_conversation(conversation_id, target_agent, &why, now)
    }

    /// The gateway reports the customer's satisfaction (1..=5) with a
    /// completed conversation; it counts for the agent who completed it.
    /// Reporting the same score again is a no-op; a different one is refused.
    pub fn report_csat(
        &mut self,
        conversation_id: &ConversationId,
        score: u8,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let conversation = self.conversation_ref(conversation_id)?;
        if conversation.state != ConversationState::Completed {
            return Err(DomainError::precondition(format!(
                "conversation `{conversation_id}` is {}: CSAT is reported for completed conversations",
                conversation.state.as_str()
            )));
        }
        match conversation.csat {
            Some(existing) if existing == score => return self.view(conversation_id, now),
            Some(existing) => {
                return Err(DomainError::precondition(format!(
                    "conversation `{conversation_id}` already has CSAT {existing}"
                )));
            }
            None => {}
        }
        let agent = conversation.agent_id.clone();
        let conversation = self.conversation_mut(conversation_id)?;
        conversation.csat = Some(score);
        if let Some(record) = agent.and_then(|a| self.agents.get_mut(&a)) {
            record.shift.csat_count += 1;
            record.shift.csat_total += u32::from(score);
            record.quality.csat_count += 1;
            record.quality.csat_total += u32::from(score);
        }
        self.view(conversation_id, now)
    }

    /// Availability now for a would-be hand-off: how many eligible agents
    /// could be offered it at once, and the expected wait. Walks at most
    /// `limit` offerable agents of the smallest matching index set.
    pub fn availability(&self, handoff: &Handoff, limit: usize, now: Timestamp) -> (u32, i64) {
        let probe = Conversation::queued(handoff.clone(), now);
        let mut seen = Set::default();
        for language in language_lookup_keys(&handoff.language) {
            let Some(set) = self.smallest_candidate_set(language, &handoff.required_skills) else {
                continue;
            };
            for (_, agent) in set.iter() {
                if seen.len() >= limit {
                    break;
                }
                if self
                    .session(agent)
                    .is_some_and(|s| self.agent_fits(agent, s, &probe))
                {
                    seen.insert(agent.clone());
                }
            }
        }
        let available = seen.len() as u32;
        if available > 0 {
            return (available, 0);
        }
        let waiting = self
            .group(&group_key(handoff))
            .map_or(0, |g| g.by_priority.len() as u32);
        (
            0,
            self.expected_wait_in(Some(&group_key(handoff)), waiting, now),
        )
    }

    /// [`PoolState::availability`] for a hand-off that would be routed by
    /// `plan`: agents meeting the plan's first requirements (regions and
    /// attributes included), and the expected wait in its group.
    pub fn availability_with_plan(
        &self,
        handoff: &Handoff,
        plan: &RoutingPlan,
        limit: usize,
        now: Timestamp,
    ) -> (u32, i64) {
        let plan = with_fallback_step(plan.clone(), handoff);
        let routed = Routed {
            step: plan.step_at(0),
            priority: plan.priority,
            plan,
            since: now,
            generation: 0,
            max_wait_at: None,
        };
        let requirements = routed.requirements();
        let if_listed = routed.plan.roster_regions_if_listed;
        let mut seen = Set::default();
        for language in self.planned_languages(requirements) {
            let Some(set) = self.smallest_candidate_set(language, &requirements.skills) else {
                continue;
            };
            for (_, agent) in set.iter() {
                if seen.len() >= limit {
                    break;
                }
                if self.meets(agent, requirements, if_listed) {
                    seen.insert(agent.clone());
                }
            }
        }
        let available = seen.len() as u32;
        if available > 0 {
            return (available, 0);
        }
        let key = routed.group_key();
        let waiting = self.group(&key).map_or(0, |g| g.by_priority.len() as u32);
        (0, self.expected_wait_in(Some(&key), waiting, now))
    }

    // ------------------------------------------------------------------ sweep

    /// Acts on every deadline due at `now`: offer timeouts (a miss),
    /// undelivered offers (withdrawn, not a miss), lapsed leases (offline,
    /// work requeued), maximum wait (expired), retention (forgotten).
    pub fn sweep(&mut self, now: Timestamp) {
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((_, deadline)) = self.deadlines.pop_first() else {
                break;
            };
            match deadline {
                Deadline::OfferDelivery(id, attempt) => {
                    let undelivered = self
                        .conversations
                        .get(&id)
                        .and_then(|c| c.pending_offer())
                        .is_some_and(|o| o.attempt == attempt && !o.delivered);
                    if undelivered && self.delivery_checks_paused {
                        let again = now.plus_millis(self.settings.offer_delivery_grace_ms);
                        self.deadlines
                            .insert((again, Deadline::OfferDelivery(id, attempt)));
                    } else if undelivered {
                        self.withdraw_undelivered(&id, attempt, now);
                    }
                }
                Deadline::StreamGrace(agent, id, attempt) => {
                    let still_detached = self.session(&agent).is_some_and(|s| s.stream.is_none());
                    let pending = self
                        .conversations
                        .get(&id)
                        .and_then(|c| c.pending_offer())
                        .is_some_and(|o| o.attempt == attempt && o.agent_id == agent);
                    if still_detached && pending {
                        self.withdraw_undelivered(&id, attempt, now);
                    }
                }
                Deadline::OfferTimeout(id, attempt) => {
                    let pending = self
                        .conversations
                        .get(&id)
                        .and_then(|c| c.pending_offer())
                        .cloned();
                    if let Some(offer) = pending.filter(|o| o.attempt == attempt) {
                        self.offer_timed_out(&id, &offer, now);
                    }
                }
                Deadline::Lease(agent) => {
                    let lapsed = self.session(&agent).is_some_and(|s| s.lease_expires <= now);
                    if lapsed {
                        self.go_offline(&agent, "agent lost", now);
                    }
                }
                Deadline::WrapUpEnd(agent) => {
                    let ended = self
                        .agents
                        .get_mut(&agent)
                        .and_then(|r| r.session.as_mut())
                        .filter(|s| s.wrap_up_until.is_some_and(|until| until <= now));
                    if let Some(session) = ended {
                        session.wrap_up_until = None;
                        let status = session.status();
                        self.notice(&agent, "status_changed", "wrap-up ended", status, now);
                        self.dispatch_agent(&agent, now);
                    }
                }
                Deadline::MaxWait(id) => match self.routing.get(&id) {
                    None => self.expire(&id, "no agent within the maximum wait", now),
                    Some(routed) => {
                        if routed.max_wait_at.is_some_and(|at| at <= now) {
                            self.max_wait_reached(&id, now);
                        }
                    }
                },
                Deadline::Retention(id) => {
                    if self
                        .conversations
                        .get(&id)
                        .is_some_and(|c| c.state.is_terminal())
                    {
                        self.conversations.remove(&id);
                        self.routing.remove(&id);
                    }
                }
                Deadline::Relax(id, generation, step) => {
                    let step = step as usize;
                    let Some(routed) = self.routing.get_mut(&id) else {
                        continue;
                    };
                    if routed.generation != generation || step <= routed.step {
                        continue;
                    }
                    routed.step = step.min(routed.plan.steps.len() - 1);
                    if self.queued.contains_key(&id) {
                        self.dequeue(&id);
                        self.enqueue(&id);
                        self.dispatch_conversation(&id, now);
                    }
                }
                Deadline::RejectDelayEnd(agent) => {
                    let ended = self
                        .agents
                        .get_mut(&agent)
                        .and_then(|r| r.session.as_mut())
                        .filter(|s| s.reject_until.is_some_and(|until| until <= now));
                    if let Some(session) = ended {
                        session.reject_until = None;
                        self.dispatch_agent(&agent, now);
                    }
                }
                Deadline::PreferredWindowEnd(id, generation) => {
                    if self
                        .routing
                        .get(&id)
                        .is_some_and(|r| r.generation == generation)
                    {
                        self.dispatch_conversation(&id, now);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- queries

    /// A conversation as it stands, with queue position and expected wait.
    pub fn view(
        &self,
        conversation_id: &ConversationId,
        now: Timestamp,
    ) -> Result<Conversation, DomainError> {
        let mut conversation = self.conversation_ref(conversation_id)?.clone();
        if conversation.state == ConversationState::Queued {
            let position = self.queue_position(conversation_id);
            conversation.queue_position = position;
            let group = self.group_key_of(&conversation);
            conversation.expected_wait_ms = self.expected_wait_in(Some(&group), position, now);
        }
        Ok(conversation)
    }

    /// What a (re)subscribing agent stream starts with.
    pub fn agent_snapshot(&self, agent_id: &AgentId) -> Result<AgentSnapshot, DomainError> {
        let session = self
            .session(agent_id)
            .ok_or_else(|| offline_error(agent_id))?;
        let mut offers = Vec::new();
        if let Some(offer) = &session.pending_offer
            && let Some(conversation) = self.conversations.get(&offer.conversation_id)
            && let Some(record) = conversation.pending_offer()
        {
            offers.push((record.clone(), Conversation::clone(conversation)));
        }
        let assignments = session
            .active
            .iter()
            .filter_map(|id| self.conversations.get(id).map(|c| Conversation::clone(c)))
            .collect();
        let away_reason = match &session.choice {
            StatusChoice::Away { reason } => reason.clone(),
            StatusChoice::Available => String::new(),
        };
        Ok(AgentSnapshot {
            status: session.status(),
            away_reason,
            offers,
            assignments,
        })
    }

    pub fn presence(&self, agent_id: &AgentId) -> Option<Presence> {
        let session = self.session(agent_id)?;
        Some(Presence {
            agent_id: agent_id.clone(),
            status: session.status(),
            away_reason: match &session.choice {
                StatusChoice::Away { reason } => reason.clone(),
                StatusChoice::Available => String::new(),
            },
            skills: session.skills.clone(),
            languages: session.languages.clone(),
            capacity: session.capacity,
            active_conversations: session.active.len() as u32,
            stream_attached: session.stream.is_some(),
            online_since: session.online_since,
            last_heartbeat: session.last_heartbeat,
            lease_expires: session.lease_expires,
            idle_since: session.idle_since,
            pending_offer: session.pending_offer.clone(),
        })
    }

    /// Every online agent, ordered by id.
    pub fn agents(&self) -> Vec<Presence> {
        let mut out: Vec<_> = self
            .agents
            .keys()
            .filter_map(|id| self.presence(id))
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// Depth and longest wait per required skill, from the groups (not from
    /// the conversations one by one), and totals.
    pub fn queue_stats(&self, now: Timestamp) -> QueueStats {
        let mut by_skill: BTreeMap<String, (u32, i64)> = BTreeMap::new();
        for (key, group) in self.groups.values().flat_map(LanguageGroups::iter) {
            let depth = group.by_priority.len() as u32;
            let longest = group
                .by_age
                .first()
                .map(|(t, _)| now.millis_since(*t))
                .unwrap_or(0);
            let names: Vec<&str> = if key.skills.is_empty() {
                vec![ANY_SKILL]
            } else {
                key.skills.iter().map(|s| s.name.as_str()).collect()
            };
            for name in names {
                let entry = by_skill.entry(name.to_owned()).or_default();
                entry.0 += depth;
                entry.1 = entry.1.max(longest);
            }
        }
        let mut stats = QueueStats {
            queues: by_skill
                .into_iter()
                .map(|(skill, (depth, longest_wait_ms))| QueueStat {
                    skill,
                    depth,
                    longest_wait_ms,
                })
                .collect(),
            total_queued: self.queued.len() as u32,
            ..QueueStats::default()
        };
        for record in self.agents.values() {
            if let Some(session) = &record.session {
                stats.agents_online += 1;
                if session.offerable() {
                    stats.agents_available += 1;
                }
                stats.total_assigned += session.active.len() as u32;
                stats.total_offered += u32::from(session.pending_offer.is_some());
            }
        }
        stats
    }

    /// Shift statistics of every agent seen this process, ordered by id.
    pub fn shift_stats(&self, now: Timestamp) -> Vec<ShiftView> {
        let mut out: Vec<ShiftView> = self
            .agents
            .iter()
            .map(|(id, record)| {
                let end = record
                    .shift
                    .ended_at
                    .filter(|_| record.session.is_none())
                    .unwrap_or(now);
                ShiftView {
                    agent_id: id.clone(),
                    online: record.session.is_some(),
                    online_ms: end.millis_since(record.shift.started_at),
                    shift: record.shift.clone(),
                    quality: record.quality,
                }
            })
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// Checks every structural invariant; the property tests call it after
    /// each step. Returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut holders: Map<&ConversationId, &AgentId> = Map::default();
        for (agent_id, record) in &self.agents {
            let Some(session) = &record.session else {
                continue;
            };
            let load = session.active.len() as u32 + u32::from(session.pending_offer.is_some());
            if load > session.capacity {
                return Err(format!(
                    "agent {agent_id} holds {load} > capacity {}",
                    session.capacity
                ));
            }
            for id in &session.active {
                let c = self
                    .conversations
                    .get(id)
                    .ok_or(format!("agent {agent_id} holds unknown {id}"))?;
                if c.state != ConversationState::Assigned || c.agent_id.as_ref() != Some(agent_id) {
                    return Err(format!(
                        "agent {agent_id} holds {id} which is {:?} for {:?}",
                        c.state, c.agent_id
                    ));
                }
                if let Some(other) = holders.insert(id, agent_id) {
                    return Err(format!("conversation {id} held by {other} and {agent_id}"));
                }
            }
            if let Some(offer) = &session.pending_offer {
                let c = self
                    .conversations
                    .get(&offer.conversation_id)
                    .ok_or("offer of unknown conversation")?;
                let pending = c
                    .pending_offer()
                    .ok_or(format!("agent {agent_id} has offer {offer} not pending"))?;
                if pending.attempt != offer.attempt || &pending.agent_id != agent_id {
                    return Err(format!(
                        "agent {agent_id} offer {offer} mismatches conversation"
                    ));
                }
            }
            let indexed = session.indexed_score.is_some();
            if indexed != session.offerable() {
                return Err(format!(
                    "agent {agent_id} indexed={indexed} offerable={}",
                    session.offerable()
                ));
            }
        }
        for (id, c) in &self.conversations {
            let in_queue = self.queued.contains_key(id);
            if in_queue != (c.state == ConversationState::Queued) {
                return Err(format!(
                    "conversation {id} is {:?} but in_queue={in_queue}",
                    c.state
                ));
            }
            if let Some((group_key, queue_key)) = self.queued.get(id) {
                let waiting = self
                    .group(group_key)
                    .and_then(|g| g.by_priority.get(queue_key))
                    .ok_or(format!("{id} is queued but not in its group"))?;
                if waiting.has_exclusions == c.excluded.is_empty() {
                    return Err(format!(
                        "{id} filed with has_exclusions={} but excludes {:?}",
                        waiting.has_exclusions, c.excluded
                    ));
                }
                // A free agent asks whether a waiting conversation is
                // reserved for its preferred agent only in planned groups.
                if group_key.routed.is_some() != self.routing.contains_key(id) {
                    return Err(format!(
                        "{id} is in a group planned={} but has routing state={}",
                        group_key.routed.is_some(),
                        self.routing.contains_key(id)
                    ));
                }
            }
            match c.state {
                ConversationState::Assigned => {
                    let agent = c
                        .agent_id
                        .as_ref()
                        .ok_or(format!("{id} assigned to nobody"))?;
                    if holders.get(id) != Some(&agent) {
                        return Err(format!("{id} assigned to {agent} who does not hold it"));
                    }
                }
                ConversationState::Offered => {
                    let offer = c
                        .pending_offer()
                        .ok_or(format!("{id} offered without pending offer"))?;
                    let session = self
                        .session(&offer.agent_id)
                        .ok_or(format!("{id} offered to offline agent"))?;
                    if session
                        .pending_offer
                        .as_ref()
                        .map(|o| (&o.conversation_id, o.attempt))
                        != Some((id, offer.attempt))
                    {
                        return Err(format!(
                            "{id} offered to {} who does not know",
                            offer.agent_id
                        ));
                    }
                }
                _ => {}
            }
        }
        for (id, routed) in &self.routing {
            let c = self
                .conversations
                .get(id)
                .ok_or(format!("routing state of unknown conversation {id}"))?;
            if routed.step >= routed.plan.steps.len() {
                return Err(format!(
                    "{id} at step {} of {}",
                    routed.step,
                    routed.plan.steps.len()
                ));
            }
            if let Some((key, _)) = self.queued.get(id)
                && **key != routed.group_key()
            {
                return Err(format!("{id} queued in a group of other requirements"));
            }
            if c.state.is_terminal() && self.queued.contains_key(id) {
                return Err(format!("{id} finished but queued"));
            }
        }
        for shelf in self.groups.values().flat_map(LanguageGroups::shelves) {
            shelf.check()?;
        }
        let indexed_agents: Set<&AgentId> = self
            .available
            .values()
            .flat_map(Map::values)
            .flatten()
            .map(|(_, a)| a)
            .collect();
        for agent in indexed_agents {
            if self.session(agent).and_then(|s| s.indexed_score).is_none() {
                return Err(format!("agent {agent} left in the index"));
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------- internals

    fn session(&self, agent_id: &AgentId) -> Option<&Session> {
        self.agents.get(agent_id).and_then(|r| r.session.as_ref())
    }

    fn session_mut(&mut self, agent_id: &AgentId) -> Result<&mut Session, DomainError> {
        self.agents
            .get_mut(agent_id)
            .and_then(|r| r.session.as_mut())
            .ok_or_else(|| offline_error(agent_id))
    }

    fn conversation_ref(&self, id: &ConversationId) -> Result<&Conversation, DomainError> {
        self.conversations
            .get(id)
            .map(|c| &**c)
            .ok_or_else(|| DomainError::NotFound {
                what: "conversation",
                id: id.to_string(),
            })
    }

    fn conversation_mut(&mut self, id: &ConversationId) -> Result<&mut Conversation, DomainError> {
        self.conversations
            .get_mut(id)
            .map(|c| &mut **c)
            .ok_or_else(|| DomainError::NotFound {
                what: "conversation",
                id: id.to_string(),
            })
    }

    /// The offer record `offer` if it exists and is this agent's.
    fn offer_for(&self, agent_id: &AgentId, offer: &OfferId) -> Result<OfferRecord, DomainError> {
        let conversation = self.conversation_ref(&offer.conversation_id)?;
        let record = conversation.offer_record(offer.attempt).ok_or_else(|| {
            DomainError::precondition(format!(
                "offer `{offer}` does not exist (the conversation is at attempt {})",
                conversation.attempts
            ))
        })?;
        if &record.agent_id != agent_id {
            return Err(DomainError::PermissionDenied(format!(
                "offer `{offer}` was made to another agent"
            )));
        }
        Ok(record.clone())
    }

    /// Appends an event for a conversation, bumping its sequence number.
    fn emit(
        &mut self,
        id: &ConversationId,
        agent: Option<&AgentId>,
        now: Timestamp,
        kind: impl FnOnce(Arc<Conversation>) -> EventKind,
    ) {
        let Some(conversation) = self.conversations.get_mut(id) else {
            return;
        };
        conversation.seq += 1;
        let seq = conversation.seq;
        // Shared: the event is published, routed and kept by several
        // readers, none of whom changes it.
        let snapshot = Arc::new(Conversation::clone(conversation));
        self.events.push(Event {
            pool: self.pool.clone(),
            at: now,
            agent_id: agent.cloned(),
            seq,
            kind: kind(snapshot),
        });
    }

    fn notice(
        &mut self,
        agent_id: &AgentId,
        code: &str,
        message: &str,
        status: AgentStatus,
        now: Timestamp,
    ) {
        self.events.push(Event {
            pool: self.pool.clone(),
            at: now,
            agent_id: Some(agent_id.clone()),
            seq: 0,
            kind: EventKind::Notice {
                code: code.to_owned(),
                message: message.to_owned(),
                status,
            },
        });
    }

    /// Ends the pending offer `attempt` with `outcome`: the agent's
    /// reservation is released, and, unless accepted, the agent is told the
    /// offer is revoked. The conversation's state is the caller's to set.
    fn close_offer(
        &mut self,
        id: &ConversationId,
        attempt: u32,
        outcome: OfferOutcome,
        reason: &str,
        now: Timestamp,
    ) {
        let Some(conversation) = self.conversations.get_mut(id) else {
            return;
        };
        let Some(record) = conversation
            .offers
            .iter_mut()
            .find(|o| o.attempt == attempt)
        else {
            return;
        };
        record.outcome = outcome;
        let agent = record.agent_id.clone();
        if let Some(session) = self.agents.get_mut(&agent).and_then(|r| r.session.as_mut())
            && session
                .pending_offer
                .as_ref()
                .is_some_and(|o| &o.conversation_id == id && o.attempt == attempt)
        {
            session.pending_offer = None;
        }
        if outcome != OfferOutcome::Accepted {
            let offer = OfferId {
                conversation_id: id.clone(),
                attempt,
            };
            let reason = reason.to_owned();
            self.emit(id, Some(&agent), now, |c| EventKind::OfferRevoked {
                offer,
                reason,
                conversation: c,
            });
        }
        self.reindex(&agent);
    }

    fn withdraw_undelivered(&mut self, id: &ConversationId, attempt: u32, now: Timestamp) {
        let agent = self
            .conversations
            .get(id)
            .and_then(|c| c.offer_record(attempt))
            .map(|o| o.agent_id.clone());
        self.close_offer(
            id,
            attempt,
            OfferOutcome::Withdrawn,
            "offer not delivered",
            now,
        );
        // The agent's stream is evidently not carrying events: offer it
        // nothing more until it subscribes again.
        if let Some(agent) = &agent {
            if let Some(session) = self.agents.get_mut(agent).and_then(|r| r.session.as_mut()) {
                session.stream = None;
            }
            self.reindex(agent);
        }
        self.requeue(id, "offer not delivered", now);
        self.dispatch_conversation(id, now);
    }

    fn offer_timed_out(&mut self, id: &ConversationId, offer: &OfferRecord, now: Timestamp) {
        let agent = offer.agent_id.clone();
        self.close_offer(
            id,
            offer.attempt,
            OfferOutcome::TimedOut,
            "offer timed out",
            now,
        );
        if let Some(conversation) = self.conversations.get_mut(id) {
            conversation.excluded.insert(agent.clone());
        }
        let threshold = self
            .routing
            .get(id)
            .and_then(|r| r.plan.misses_before_away)
            .unwrap_or(self.settings.missed_offers_before_away);
        let mut now_away = false;
        if let Some(record) = self.agents.get_mut(&agent) {
            record.shift.missed += 1;
            if let Some(session) = record.session.as_mut() {
                session.consecutive_misses += 1;
                if threshold > 0 && session.consecutive_misses >= threshold {
                    session.choice = StatusChoice::Away {
                        reason: "missed_offers".to_owned(),
                    };
                    now_away = true;
                }
            }
        }
        if now_away {
            self.reindex(&agent);
            let message = format!("{threshold} offers in a row were missed: set away");
            self.notice(&agent, "missed_offers", &message, AgentStatus::Away, now);
        }
        self.requeue(id, "offer timed out", now);
        self.dispatch_conversation(id, now);
        if !self.finish_drain_if_done(&agent, now) {
            self.dispatch_agent(&agent, now);
        }
    }

    /// A planned conversation reached its queue's maximum wait.
    fn max_wait_reached(&mut self, id: &ConversationId, now: Timestamp) {
        let Some(state) = self.conversations.get(id).map(|c| c.state) else {
            return;
        };
        if !matches!(
            state,
            ConversationState::Queued | ConversationState::Offered
        ) {
            return;
        }
        let Some(routed) = self.routing.get_mut(id) else {
            return;
        };
        let action = routed.plan.max_wait.as_ref().map(|m| m.action.clone());
        let reason = match action {
            None => {
                self.expire(id, "no agent within the maximum wait", now);
                return;
            }
            Some(PlanMaxWaitAction::Expire { reason }) => {
                self.expire(id, &reason, now);
                return;
            }
            Some(PlanMaxWaitAction::Callback { priority, reason }) => {
                routed.priority = priority;
                routed.max_wait_at = None;
                reason
            }
            Some(PlanMaxWaitAction::Overflow { queue, plan }) => {
                let preferred = self
                    .conversations
                    .get(id)
                    .is_some_and(|c| c.handoff.preferred_agent.is_some());
                let mut plan = *plan;
                if plan.steps.is_empty() {
                    let current = routed.plan.steps[routed.step].clone();
                    plan.steps.push(PlanStep {
                        after_ms: 0,
                        ..current
                    });
                }
                // Installed while possibly queued: the regroup below moves
                // it to the new plan's group.
                self.install_plan(id, plan, preferred, now);
                format!("moved to queue `{queue}` after the maximum wait")
            }
        };
        let queued = self.queued.contains_key(id);
        if queued {
            // Regroup: the priority or the requirements changed.
            self.dequeue(id);
            self.enqueue(id);
        }
        if let Some(conversation) = self.conversations.get_mut(id) {
            conversation.reason = reason;
            conversation.updated_at = now;
        }
        if queued {
            self.emit(id, None, now, |c| EventKind::Requeued { conversation: c });
            self.dispatch_conversation(id, now);
        }
    }

    fn expire(&mut self, id: &ConversationId, reason: &str, now: Timestamp) {
        let Some(conversation) = self.conversations.get(id) else {
            return;
        };
        let pending = conversation
            .pending_offer()
            .map(|o| (o.attempt, o.agent_id.clone()));
        let mut freed = None;
        match conversation.state {
            ConversationState::Queued => self.dequeue(id),
            ConversationState::Offered => {
                if let Some((attempt, agent)) = pending {
                    self.close_offer(
                        id,
                        attempt,
                        OfferOutcome::Withdrawn,
                        "maximum wait exceeded",
                        now,
                    );
                    freed = Some(agent);
                }
            }
            _ => return,
        }
        if let Some(conversation) = self.conversations.get_mut(id) {
            conversation.state = ConversationState::Expired;
            conversation.agent_id = None;
            conversation.reason = reason.to_owned();
            conversation.updated_at = now;
        }
        self.finish(id, now);
        self.emit(id, None, now, |c| EventKind::Ended { conversation: c });
        // The agent it was offered to is free again: the next waiting
        // conversation it can serve (as after a cancel).
        if let Some(agent) = freed {
            self.agent_freed(&agent, now);
        }
    }

    /// Schedules a finished conversation to be forgotten after retention.
    fn finish(&mut self, id: &ConversationId, now: Timestamp) {
        self.deadlines.insert((
            now.plus_millis(self.settings.retention_ms),
            Deadline::Retention(id.clone()),
        ));
    }

    /// Back to the queue with a reason; it keeps its original waiting time,
    /// so it goes ahead of everything that arrived after it.
    fn requeue(&mut self, id: &ConversationId, reason: &str, now: Timestamp) {
        self.requeue_for(id, reason, None, now);
    }

    /// [`Self::requeue`], telling `previous_holder` (an agent who held it
    /// assigned) through its stream.
    fn requeue_for(
        &mut self,
        id: &ConversationId,
        reason: &str,
        previous_holder: Option<&AgentId>,
        now: Timestamp,
    ) {
        let Some(conversation) = self.conversations.get_mut(id) else {
            return;
        };
        if conversation.state.is_terminal() || conversation.state == ConversationState::Queued {
            return;
        }
        conversation.state = ConversationState::Queued;
        conversation.agent_id = None;
        conversation.assigned_at = None;
        conversation.reason = reason.to_owned();
        conversation.updated_at = now;
        self.enqueue(id);
        self.emit(id, previous_holder, now, |c| EventKind::Requeued {
            conversation: c,
        });
    }

    fn enqueue(&mut self, id: &ConversationId) {
        let Some(conversation) = self.conversations.get(id) else {
            return;
        };
        let handoff = &conversation.handoff;
        let (group_key, priority) = match self.routing.get(id) {
            Some(routed) => (routed.group_key(), routed.priority),
            None => (group_key(handoff), handoff.priority),
        };
        self.arrivals += 1;
        let queue_key = QueueKey {
            priority: Reverse(priority),
            queued_since: conversation.queued_since,
            arrival: self.arrivals,
            conversation_id: id.clone(),
        };
        let waiting = Waiting {
            has_exclusions: !conversation.excluded.is_empty(),
        };
        let primary = primary_subtag(&group_key.language);
        let language_groups = match self.groups.get_mut(primary) {
            Some(language_groups) => language_groups,
            None => self.groups.entry(primary.to_owned()).or_default(),
        };
        let group_key = language_groups.insert(group_key, queue_key.clone(), waiting);
        self.queued.insert(id.clone(), (group_key, queue_key));
    }

    fn dequeue(&mut self, id: &ConversationId) {
        let Some((group_key, queue_key)) = self.queued.remove(id) else {
            return;
        };
        let primary = primary_subtag(&group_key.language);
        let Some(language_groups) = self.groups.get_mut(primary) else {
            return;
        };
        language_groups.remove_entry(&group_key, &queue_key);
        if language_groups.is_empty() {
            self.groups.remove(primary);
        }
    }

    fn group(&self, key: &GroupKey) -> Option<&Group> {
        self.groups.get(primary_subtag(&key.language))?.get(key)
    }

    /// The requirement group a conversation belongs to (or would).
    fn group_key_of(&self, conversation: &Conversation) -> GroupKey {
        match self.routing.get(conversation.id()) {
            Some(routed) => routed.group_key(),
            None => group_key(&conversation.handoff),
        }
    }

    fn queue_position(&self, id: &ConversationId) -> u32 {
        let Some((group_key, queue_key)) = self.queued.get(id) else {
            return 0;
        };
        self.group(group_key)
            .map(|g| g.by_priority.range(..queue_key.clone()).count() as u32)
            .unwrap_or(0)
    }

    /// Expected wait with `position` conversations ahead: (position + 1)
    /// divided by the observed rate of first offers, taken from the
    /// requirement group's own recent offers when it has at least
    /// [`MIN_GROUP_SAMPLES`], else from the pool's. -1 with no history.
    fn expected_wait_in(&self, group: Option<&GroupKey>, position: u32, now: Timestamp) -> i64 {
        let window = group
            .and_then(|g| self.group_first_offers.get(g))
            .filter(|w| w.len() >= MIN_GROUP_SAMPLES)
            .unwrap_or(&self.recent_first_offers);
        let Some(oldest) = window.front() else {
            return -1;
        };
        let span = now.millis_since(*oldest).max(1);
        // Offers per millisecond over the window; ahead+1 conversations to go.
        let per_ms = window.len() as f64 / span as f64;
        ((f64::from(position) + 1.0) / per_ms).round() as i64
    }

    /// Puts the agent in the offerable index or takes it out, as its session
    /// now says.
    fn reindex(&mut self, agent_id: &AgentId) {
        let Some(session) = self
            .agents
            .get_mut(agent_id)
            .and_then(|r| r.session.as_mut())
        else {
            return;
        };
        let want = session
            .offerable()
            .then_some(session.idle_since.as_millis());
        if want == session.indexed_score {
            return;
        }
        let old = session.indexed_score.take();
        session.indexed_score = want;
        if let Some(score) = old {
            let entry = (score, agent_id.clone());
            for language in &session.languages {
                index_remove(&mut self.available, language, &session.skills, &entry);
            }
        }
        if let Some(score) = want {
            let entry = (score, agent_id.clone());
            for language in &session.languages {
                index_insert(
                    &mut self.available,
                    &mut self.families,
                    language,
                    &session.skills,
                    &entry,
                );
            }
        }
    }

    fn unindex(&mut self, agent_id: &AgentId) {
        let Some(session) = self
            .agents
            .get_mut(agent_id)
            .and_then(|r| r.session.as_mut())
        else {
            return;
        };
        let Some(score) = session.indexed_score.take() else {
            return;
        };
        let entry = (score, agent_id.clone());
        for language in &session.languages {
            index_remove(&mut self.available, language, &session.skills, &entry);
        }
    }

    /// A queued conversation looks for the best offerable, eligible agent
    /// and is offered to it.
    fn dispatch_conversation(&mut self, id: &ConversationId, now: Timestamp) {
        if let Some(agent) = self.agent_for(id, now) {
            self.make_offer(id, &agent, now);
        }
    }

    /// The agent a queued conversation is to be offered to now, if any.
    /// Only looks: whether the conversation is in its queue group yet does
    /// not matter (a new hand-off is asked before it is filed, see
    /// [`PoolState::request_with_plan`]).
    fn agent_for(&self, id: &ConversationId, now: Timestamp) -> Option<AgentId> {
        let conversation = self.conversations.get(id)?;
        if conversation.state != ConversationState::Queued {
            return None;
        }
        if let Some(routed) = self.routing.get(id) {
            return self.planned_agent_for(conversation, routed, now);
        }
        if let Some(preferred) = &conversation.handoff.preferred_agent
            && let Some(session) = self.session(preferred)
            && session.offerable()
            && self.agent_fits(preferred, session, conversation)
        {
            return Some(preferred.clone());
        }
        let mut best: Option<&(i64, AgentId)> = None;
        for language in language_lookup_keys(&conversation.handoff.language) {
            let candidate_set =
                self.smallest_candidate_set(language, &conversation.handoff.required_skills);
            let Some(set) = candidate_set else { continue };
            let found = set.iter().find(|(_, agent)| {
                self.session(agent)
                    .is_some_and(|s| self.agent_fits(agent, s, conversation))
            });
            if let Some(candidate) = found
                && best.is_none_or(|(b, _)| candidate.0 < *b)
            {
                best = Some(candidate);
            }
        }
        best.map(|(_, agent)| agent.clone())
    }

    /// The agent's session changed: with spare capacity it looks at the
    /// heads of the queue groups it can serve and is offered the best
    /// waiting conversation; if there is none (or it cannot take one), its
    /// place in the offerable index is brought up to date. Looked for
    /// before it is filed: an agent offered something at once is not filed
    /// in every index set of its languages and skills only to be taken out
    /// again at the offer.
    fn dispatch_agent(&mut self, agent_id: &AgentId, now: Timestamp) {
        match self.conversation_for(agent_id, now) {
            // The offer takes it out of the index if it was in.
            Some(id) => self.make_offer(&id, agent_id, now),
            None => self.reindex(agent_id),
        }
    }

    /// The best waiting conversation an offerable agent may be offered now,
    /// if any.
    fn conversation_for(&self, agent_id: &AgentId, now: Timestamp) -> Option<ConversationId> {
        let session = self.session(agent_id)?;
        if !session.offerable() {
            return None;
        }
        let roster = self.roster.get(agent_id)?;
        self.best_waiting_for(agent_id, session, roster, now)
    }

    /// The best waiting conversation an online agent may take, its status
    /// and capacity aside.
    fn best_waiting_for(
        &self,
        agent_id: &AgentId,
        session: &Session,
        roster: &RosterEntry,
        now: Timestamp,
    ) -> Option<ConversationId> {
        // Skip the conversations this agent declined or missed, and those
        // reserved for their preferred agent. Only a conversation someone
        // declined or missed needs looking up, and only a planned one can
        // be reserved: the rest are decided by their queue entry alone.
        let may_take = |key: &QueueKey, waiting: &Waiting, planned: bool| {
            let excluded = waiting.has_exclusions
                && self
                    .conversations
                    .get(&key.conversation_id)
                    .is_none_or(|c| c.excluded.contains(agent_id));
            let reserved =
                planned && self.reserved_for_another(&key.conversation_id, agent_id, now);
            !excluded && !reserved
        };
        let mut best: Option<Rank<'_>> = None;
        for (i, language) in session.languages.iter().enumerate() {
            let primary = primary_subtag(language);
            let seen = session.languages[..i]
                .iter()
                .any(|l| primary_subtag(l) == primary);
            if seen {
                continue;
            }
            let Some(language_groups) = self.groups.get(primary) else {
                continue;
            };
            for shelf in language_groups.shelves_for(&session.skills) {
                // Groups in a fixed order, by their first entries: the
                // group's first the agent may take competes. A group whose
                // first entry cannot beat the best so far ends the walk (no
                // entry of a group is better than its first).
                for (first, (group_key, waiting)) in &shelf.heads {
                    if best.as_ref().is_some_and(|b| fixed_rank(first) >= *b) {
                        break;
                    }
                    if !serves(session, roster, group_key) {
                        continue;
                    }
                    let planned = group_key.routed.is_some();
                    let found = if may_take(first, waiting, planned) {
                        Some(first)
                    } else {
                        shelf.groups.get(&**group_key).and_then(|group| {
                            group
                                .by_priority
                                .iter()
                                .find(|(key, waiting)| may_take(key, waiting, planned))
                                .map(|(key, _)| key)
                        })
                    };
                    if let Some(key) = found {
                        let rank = fixed_rank(key);
                        if best.as_ref().is_none_or(|b| rank < *b) {
                            best = Some(rank);
                        }
                    }
                }
                // Groups with aging: the first the agent may take of every
                // priority level competes (aging keeps the order within a
                // level).
                for (group_key, group) in &shelf.aging {
                    let Some(aging) = group_key.routed.as_ref().map(|r| r.aging) else {
                        continue;
                    };
                    if !serves(session, roster, group_key) {
                        continue;
                    }
                    let mut after: Option<QueueKey> = None;
                    loop {
                        let mut range = match &after {
                            None => group.by_priority.range::<QueueKey, _>(..),
                            Some(cursor) => group
                                .by_priority
                                .range::<QueueKey, _>((Bound::Excluded(cursor), Bound::Unbounded)),
                        };
                        let head = range.find(|(key, waiting)| may_take(key, waiting, true));
                        let Some((head, _)) = head else {
                            break;
                        };
                        let waited = now.millis_since(head.queued_since);
                        let rank = (
                            Reverse(aging.effective(head.priority.0, waited)),
                            head.queued_since,
                            head.arrival,
                            &head.conversation_id,
                        );
                        if best.as_ref().is_none_or(|b| rank < *b) {
                            best = Some(rank);
                        }
                        // Past the rest of this priority level.
                        after = Some(QueueKey {
                            priority: head.priority,
                            queued_since: Timestamp(i64::MAX),
                            arrival: u64::MAX,
                            conversation_id: head.conversation_id.clone(),
                        });
                    }
                }
            }
        }
        best.map(|(_, _, _, id)| id.clone())
    }

    /// Whether a planned conversation is, at `now`, reserved for its
    /// preferred agent (in the window, online and eligible) who is not
    /// `agent_id`.
    fn reserved_for_another(
        &self,
        id: &ConversationId,
        agent_id: &AgentId,
        now: Timestamp,
    ) -> bool {
        let Some(routed) = self.routing.get(id) else {
            return false;
        };
        if routed.plan.preferred_window_ms <= 0 || !routed.preferred_window_open(now) {
            return false;
        }
        let Some(conversation) = self.conversations.get(id) else {
            return false;
        };
        let Some(preferred) = &conversation.handoff.preferred_agent else {
            return false;
        };
        preferred != agent_id && self.planned_fits(preferred, conversation, routed)
    }

    /// Whether `agent_id` (online) may take the planned conversation now,
    /// capacity aside.
    fn planned_fits(
        &self,
        agent_id: &AgentId,
        conversation: &Conversation,
        routed: &Routed,
    ) -> bool {
        !conversation.excluded.contains(agent_id)
            && self.meets(
                agent_id,
                routed.requirements(),
                routed.plan.roster_regions_if_listed,
            )
    }

    /// Whether `agent_id` (online) meets planned requirements.
    fn meets(
        &self,
        agent_id: &AgentId,
        requirements: &PlanRequirements,
        roster_regions_if_listed: bool,
    ) -> bool {
        let (Some(session), Some(roster)) = (self.session(agent_id), self.roster.get(agent_id))
        else {
            return false;
        };
        plan_eligible(
            requirements,
            roster_regions_if_listed,
            &session.skills,
            &session.languages,
            session.regions.as_ref(),
            roster,
        )
    }

    /// The index language keys where agents meeting `requirements` are.
    fn planned_languages<'a>(&'a self, requirements: &'a PlanRequirements) -> Vec<&'a str> {
        if requirements.language_widened {
            self.families
                .get(primary_subtag(&requirements.language))
                .map(|tags| {
                    tags.iter()
                        .map(String::as_str)
                        .filter(|tag| requirements.accepts_language(tag))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            requirements.exact_lookup_keys()
        }
    }

    /// The agent a queued planned conversation is to be offered to now: its
    /// preferred agent first (and only, while the window is open and that
    /// agent is online and eligible), else the best by the plan's strategy.
    fn planned_agent_for(
        &self,
        conversation: &Conversation,
        routed: &Routed,
        now: Timestamp,
    ) -> Option<AgentId> {
        if let Some(preferred) = &conversation.handoff.preferred_agent
            && self.planned_fits(preferred, conversation, routed)
        {
            if self.session(preferred).is_some_and(Session::offerable) {
                return Some(preferred.clone());
            }
            if routed.plan.preferred_window_ms > 0 && routed.preferred_window_open(now) {
                // Reserved: the preferred agent gets it when free, others
                // once the window ends.
                return None;
            }
        }
        let requirements = routed.requirements();
        let languages = self.planned_languages(requirements);
        let strategy = routed.plan.strategy;
        let limit = match strategy {
            PlanStrategy::LongestIdle => 1,
            _ => STRATEGY_CANDIDATES,
        };
        let mut candidates: Vec<&(i64, AgentId)> = Vec::new();
        for language in languages {
            let Some(set) = self.smallest_candidate_set(language, &requirements.skills) else {
                continue;
            };
            let fitting = set
                .iter()
                .filter(|(_, agent)| self.planned_fits(agent, conversation, routed))
                .take(limit);
            for candidate in fitting {
                if !candidates.iter().any(|c| c.1 == candidate.1) {
                    candidates.push(candidate);
                }
            }
        }
        candidates
            .into_iter()
            .min_by(|a, b| self.strategy_cmp(strategy, requirements, a, b))
            .map(|(_, agent)| agent.clone())
    }

    /// Best first under `strategy`; ties by longest idle, then agent id, so
    /// every replica picks the same agent.
    fn strategy_cmp(
        &self,
        strategy: PlanStrategy,
        requirements: &PlanRequirements,
        a: &(i64, AgentId),
        b: &(i64, AgentId),
    ) -> Ordering {
        let (Some(ra), Some(rb)) = (self.agents.get(&a.1), self.agents.get(&b.1)) else {
            return a.cmp(b);
        };
        let primary = match (strategy, &ra.session, &rb.session) {
            (PlanStrategy::LeastOccupied, Some(sa), Some(sb)) => {
                // active / capacity compared exactly by cross multiplication.
                let left = sa.active.len() as u64 * u64::from(sb.capacity.max(1));
                let right = sb.active.len() as u64 * u64::from(sa.capacity.max(1));
                left.cmp(&right)
            }
            (PlanStrategy::BestSkillMatch, Some(sa), Some(sb)) => {
                skill_match(requirements, &sb.skills).cmp(&skill_match(requirements, &sa.skills))
            }
            (PlanStrategy::RoundRobin, _, _) => ra.last_offer_seq.cmp(&rb.last_offer_seq),
            (PlanStrategy::QualityWeighted, _, _) => {
                // (total + 4.0 × 5) / (count + 5), higher first, exactly.
                let (na, da) = smoothed_quality(ra.quality);
                let (nb, db) = smoothed_quality(rb.quality);
                (nb * da).cmp(&(na * db))
            }
            _ => Ordering::Equal,
        };
        primary.then_with(|| a.cmp(b))
    }

    /// The smallest index set of offerable agents speaking `language` that
    /// has one of `skills` (or any skill when none is required); `None` or
    /// an empty set when some required skill has nobody in that language.
    fn smallest_candidate_set(
        &self,
        language: &str,
        skills: &[Skill],
    ) -> Option<&BTreeSet<(i64, AgentId)>> {
        let by_skill = self.available.get(language)?;
        if skills.is_empty() {
            return by_skill.get(ANY_SKILL);
        }
        let mut smallest: Option<&BTreeSet<(i64, AgentId)>> = None;
        for skill in skills {
            let set = by_skill.get(skill.name.as_str())?;
            if smallest.is_none_or(|s| set.len() < s.len()) {
                smallest = Some(set);
            }
        }
        smallest
    }

    fn agent_fits(
        &self,
        agent_id: &AgentId,
        session: &Session,
        conversation: &Conversation,
    ) -> bool {
        self.roster.get(agent_id).is_some_and(|roster| {
            eligible(
                agent_id,
                &session.skills,
                &session.languages,
                roster,
                conversation,
            )
        })
    }

    fn make_offer(&mut self, id: &ConversationId, agent_id: &AgentId, now: Timestamp) {
        self.dequeue(id);
        let routed = self.routing.get(id);
        let offer_timeout = routed
            .and_then(|r| r.plan.offer_timeout_ms)
            .unwrap_or(self.settings.offer_timeout_ms);
        let routed_group = routed.map(Routed::group_key);
        let grace = self.settings.offer_delivery_grace_ms;
        let Some(conversation) = self.conversations.get_mut(id) else {
            return;
        };
        conversation.attempts += 1;
        let attempt = conversation.attempts;
        let deadline = now.plus_millis(offer_timeout);
        conversation.offers.push(OfferRecord {
            attempt,
            agent_id: agent_id.clone(),
            deadline,
            delivered: false,
            outcome: OfferOutcome::Pending,
        });
        conversation.state = ConversationState::Offered;
        conversation.agent_id = Some(agent_id.clone());
        conversation.updated_at = now;
        if attempt == 1 {
            if self.recent_first_offers.len() == RATE_WINDOW {
                self.recent_first_offers.pop_front();
            }
            self.recent_first_offers.push_back(now);
            let group = routed_group.unwrap_or_else(|| group_key(&conversation.handoff));
            // Bound the memory arbitrary requirement mixes could take: start
            // over (the pool-wide rate covers the gap).
            if self.group_first_offers.len() >= MAX_RATE_GROUPS
                && !self.group_first_offers.contains_key(&group)
            {
                self.group_first_offers.clear();
            }
            let window = self.group_first_offers.entry(group).or_default();
            if window.len() == RATE_WINDOW {
                window.pop_front();
            }
            window.push_back(now);
        }
        let offer = OfferId {
            conversation_id: id.clone(),
            attempt,
        };
        self.offer_seq += 1;
        if let Some(record) = self.agents.get_mut(agent_id) {
            record.shift.offers += 1;
            record.last_offer_seq = self.offer_seq;
            if let Some(session) = record.session.as_mut() {
                session.pending_offer = Some(offer.clone());
            }
        }
        self.reindex(agent_id);
        self.deadlines.insert((
            now.plus_millis(grace),
            Deadline::OfferDelivery(id.clone(), attempt),
        ));
        self.deadlines
            .insert((deadline, Deadline::OfferTimeout(id.clone(), attempt)));
        self.emit(id, Some(agent_id), now, |c| EventKind::Offered {
            offer,
            deadline,
            conversation: c,
        });
    }
}

/// `plan` with a first step made of the hand-off's own requirements when
/// it has no steps (language, skills, its named region).
fn with_fallback_step(mut plan: RoutingPlan, handoff: &Handoff) -> RoutingPlan {
    if plan.steps.is_empty() {
        plan.steps.push(PlanStep {
            after_ms: 0,
            requirements: PlanRequirements {
                language: handoff.language.clone(),
                language_widened: false,
                skills: handoff.required_skills.clone(),
                attributes: BTreeSet::new(),
                regions: handoff.region.clone().map(|r| BTreeSet::from([r])),
            },
        });
    }
    plan
}

/// How a free agent ranks a waiting conversation: higher effective
/// priority first, then longer waiting, then arrival.
type Rank<'a> = (Reverse<u64>, Timestamp, u64, &'a ConversationId);

/// The rank of an entry of a group without aging (its effective priority
/// is its priority).
fn fixed_rank(key: &QueueKey) -> Rank<'_> {
    (
        Reverse(u64::from(key.priority.0) * MICRO),
        key.queued_since,
        key.arrival,
        &key.conversation_id,
    )
}

/// Whether an online agent serves a requirement group, capacity and
/// exclusions aside.
fn serves(session: &Session, roster: &RosterEntry, key: &GroupKey) -> bool {
    match key.requirements() {
        None => {
            let serves_language = session
                .languages
                .iter()
                .any(|l| language_covers(l, &key.language));
            let has_skills = key.skills.iter().all(|req| {
                session
                    .skill_level(&req.name)
                    .is_some_and(|level| level >= req.level)
            });
            let region_ok = key
                .region
                .as_ref()
                .is_none_or(|r| roster.allowed_regions.contains(r));
            serves_language && has_skills && region_ok
        }
        Some((requirements, if_listed)) => plan_eligible(
            &requirements,
            if_listed,
            &session.skills,
            &session.languages,
            session.regions.as_ref(),
            roster,
        ),
    }
}

fn primary_subtag(tag: &str) -> &str {
    tag.split('-').next().unwrap_or(tag)
}

/// Offerable agents: language → skill (or [`ANY_SKILL`]) → `(score, agent)`.
type AgentIndex = Map<String, Map<String, BTreeSet<(i64, AgentId)>>>;

/// The index sets an agent with `skills` is in under one language:
/// [`ANY_SKILL`] and each skill.
fn index_skills(skills: &[Skill]) -> impl Iterator<Item = &str> {
    std::iter::once(ANY_SKILL).chain(skills.iter().map(|s| s.name.as_str()))
}

/// Adds `entry` to the sets of `language` for `skills` (see
/// [`index_skills`]), creating a set (and its keys) only if it is new; a
/// new [`ANY_SKILL`] set files the language under its family.
fn index_insert(
    available: &mut AgentIndex,
    families: &mut Map<String, BTreeSet<String>>,
    language: &str,
    skills: &[Skill],
    entry: &(i64, AgentId),
) {
    let by_skill = match available.get_mut(language) {
        Some(by_skill) => by_skill,
        None => available.entry(language.to_owned()).or_default(),
    };
    for skill in index_skills(skills) {
        if let Some(set) = by_skill.get_mut(skill) {
            set.insert(entry.clone());
            continue;
        }
        if skill == ANY_SKILL {
            families
                .entry(primary_subtag(language).to_owned())
                .or_default()
                .insert(language.to_owned());
        }
        by_skill
            .entry(skill.to_owned())
            .or_default()
            .insert(entry.clone());
    }
}

/// Takes `entry` out of the sets of `language` for `skills`. An emptied set
/// stays (as does its language's family entry): an empty set matches nobody,
/// just as a missing one, and keeping it spares re-creating it each time a
/// small pool's only agent for it comes and goes.
fn index_remove(
    available: &mut AgentIndex,
    language: &str,
    skills: &[Skill],
    entry: &(i64, AgentId),
) {
    let Some(by_skill) = available.get_mut(language) else {
        return;
    };
    for skill in index_skills(skills) {
        if let Some(set) = by_skill.get_mut(skill) {
            set.remove(entry);
        }
    }
}

/// The sum of the agent's levels over the required skills.
fn skill_match(requirements: &PlanRequirements, skills: &[Skill]) -> u32 {
    crate::model::skill_match_score(&requirements.skills, skills)
}

/// CSAT smoothed towards 4.0 as if from 5 extra ratings, as a fraction
/// (numerator, denominator): the routing crate's quality score.
fn smoothed_quality(quality: Quality) -> (u64, u64) {
    (
        u64::from(quality.csat_total) + 20,
        u64::from(quality.csat_count) + 5,
    )
}

fn offline_error(agent_id: &AgentId) -> DomainError {
    DomainError::precondition(format!("agent `{agent_id}` is offline: go online first"))
}

fn closed_offer_error(offer: &OfferId, outcome: OfferOutcome) -> DomainError {
    let what = match outcome {
        OfferOutcome::Accepted => "was already accepted",
        OfferOutcome::Declined => "was declined",
        OfferOutcome::TimedOut => "has expired",
        OfferOutcome::Withdrawn => "was withdrawn",
        OfferOutcome::Pending => "is pending",
    };
    DomainError::precondition(format!("offer `{offer}` {what}"))
}

/// The session's skills, languages and capacity: the roster entry narrowed
/// by the request. Widening is refused naming the field.
fn narrow(
    roster: &RosterEntry,
    request: &GoOnline,
) -> Result<(Vec<Skill>, Vec<String>, u32), DomainError> {
    let skills = if request.skills.is_empty() {
        roster.skills.clone()
    } else {
        for (i, skill) in request.skills.iter().enumerate() {
            match roster.skill_level(&skill.name) {
                None => {
                    return Err(DomainError::PermissionDenied(format!(
                        "`skills[{i}]`: skill `{}` is not in the roster entry",
                        skill.name
                    )));
                }
                Some(level) if skill.level > level => {
                    return Err(DomainError::PermissionDenied(format!(
                        "`skills[{i}].level`: {} is above the roster level {level} for `{}`",
                        skill.level, skill.name
                    )));
                }
                Some(_) => {}
            }
        }
        request.skills.clone()
    };
    let languages = if request.languages.is_empty() {
        roster.languages.clone()
    } else {
        for (i, language) in request.languages.iter().enumerate() {
            if !roster.languages.contains(language) {
                return Err(DomainError::PermissionDenied(format!(
                    "`languages[{i}]`: `{language}` is not in the roster entry"
                )));
            }
        }
        request.languages.clone()
    };
    let capacity = match request.capacity {
        None => roster.max_capacity,
        Some(c) if c > roster.max_capacity => {
            return Err(DomainError::PermissionDenied(format!(
                "`capacity`: {c} is above the roster maximum {}",
                roster.max_capacity
            )));
        }
        Some(c) => c,
    };
    Ok((skills, languages, capacity))
}

#[cfg(test)]
mod tests;
