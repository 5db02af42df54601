//! The embedded store: every pool's [`PoolState`] in this process.
//!
//! A `std::sync::Mutex` per pool, not a tokio one: no command awaits while
//! holding it, and each command is a few microseconds of pure computation.
//! The map of pools sits behind an `RwLock` that is written only when a pool
//! is first seen.

use crate::{Applied, Clock, EventFeed, Store, StoreError, StoreResult};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use switchboard_core::engine::PoolState;
use switchboard_core::model::{
    AgentSnapshot, AgentStatus, Conversation, GoOnline, Handoff, Location, Presence, QueueStats,
    RosterEntry, ShiftView, StatusChoice, TransferTarget,
};
use switchboard_core::{
    AgentId, ConversationId, DispatchSettings, OfferId, PoolId, RoutingPlan, Timestamp,
};
use tokio::sync::broadcast;

/// How many events the feed buffers for a slow subscriber before it lags.
const FEED_CAPACITY: usize = 65_536;

pub struct MemoryStore {
    pools: RwLock<HashMap<PoolId, Arc<Mutex<PoolState>>>>,
    settings: DispatchSettings,
    clock: Arc<dyn Clock>,
    feed: broadcast::Sender<Arc<switchboard_core::Event>>,
    delivery_checks_paused: AtomicBool,
}

impl MemoryStore {
    pub fn new(settings: DispatchSettings, clock: Arc<dyn Clock>) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        MemoryStore {
            pools: RwLock::new(HashMap::new()),
            settings,
            clock,
            feed,
            delivery_checks_paused: AtomicBool::new(false),
        }
    }

    fn pool(&self, pool: &PoolId) -> StoreResult<Arc<Mutex<PoolState>>> {
        if let Some(state) = self.pools.read().map_err(poisoned)?.get(pool) {
            return Ok(state.clone());
        }
        let mut pools = self.pools.write().map_err(poisoned)?;
        Ok(pools
            .entry(pool.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(PoolState::new(
                    pool.clone(),
                    self.settings.clone(),
                )))
            })
            .clone())
    }

    /// Runs one command on a pool under its lock, then publishes the events
    /// it caused (after the lock is released, in commit order per pool).
    fn command<T>(
        &self,
        pool: &PoolId,
        f: impl FnOnce(&mut PoolState, Timestamp) -> Result<T, switchboard_core::DomainError>,
    ) -> StoreResult<Applied<T>> {
        let state = self.pool(pool)?;
        let (result, events) = {
            let mut state = state.lock().map_err(poisoned)?;
            let now = self.clock.now();
            state.pause_delivery_checks(self.delivery_checks_paused.load(Ordering::Relaxed));
            // Deadlines due are acted on first, so a command never sees an
            // offer or lease that has already run out.
            state.sweep(now);
            let result = f(&mut state, now);
            (result, state.take_events())
        };
        self.publish(&events);
        let value = result?;
        Ok(Applied { value, events })
    }

    fn query<T>(
        &self,
        pool: &PoolId,
        f: impl FnOnce(&PoolState, Timestamp) -> Result<T, switchboard_core::DomainError>,
    ) -> StoreResult<T> {
        let state = self.pool(pool)?;
        let state = state.lock().map_err(poisoned)?;
        Ok(f(&state, self.clock.now())?)
    }

    fn publish(&self, events: &[switchboard_core::Event]) {
        for event in events {
            // No subscriber is not an error: nobody is watching yet.
            let _ = self.feed.send(Arc::new(event.clone()));
        }
    }
}

fn poisoned<E>(_: E) -> StoreError {
    StoreError::Internal("pool lock poisoned by a panic".to_owned())
}

#[async_trait]
impl Store for MemoryStore {
    async fn now(&self) -> StoreResult<Timestamp> {
        Ok(self.clock.now())
    }

    async fn upsert_roster(
        &self,
        pool: &PoolId,
        entry: RosterEntry,
    ) -> StoreResult<Applied<(RosterEntry, bool)>> {
        self.command(pool, |s, _| Ok(s.upsert_roster(entry)))
    }

    async fn roster(&self, pool: &PoolId) -> StoreResult<Vec<RosterEntry>> {
        self.query(pool, |s, _| Ok(s.roster()))
    }

    async fn roster_entry(
        &self,
        pool: &PoolId,
        agent: &AgentId,
    ) -> StoreResult<Option<RosterEntry>> {
        self.query(pool, |s, _| Ok(s.roster_entry(agent).cloned()))
    }

    async fn go_online(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        request: GoOnline,
        self_register: bool,
    ) -> StoreResult<Applied<Presence>> {
        self.command(pool, |s, now| {
            s.go_online(agent, request, self_register, now)
        })
    }

    async fn attach_stream(
        &self,
        pool: &PoolId,
        agent: &AgentId,
    ) -> StoreResult<Applied<(u64, AgentSnapshot)>> {
        self.command(pool, |s, now| s.attach_stream(agent, now))
    }

    async fn detach_stream(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        stream_id: u64,
    ) -> StoreResult<Applied<()>> {
        self.command(pool, |s, now| {
            s.detach_stream(agent, stream_id, now);
            Ok(())
        })
    }

    async fn heartbeat(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        location: Option<Location>,
    ) -> StoreResult<Applied<Presence>> {
        self.command(pool, |s, now| s.heartbeat(agent, location, now))
    }

    async fn set_status(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        choice: StatusChoice,
    ) -> StoreResult<Applied<AgentStatus>> {
        self.command(pool, |s, now| s.set_status(agent, choice, now))
    }

    async fn go_offline(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        reason: &str,
    ) -> StoreResult<Applied<Vec<ConversationId>>> {
        self.command(pool, |s, now| Ok(s.go_offline(agent, reason, now)))
    }

    async fn drain(&self, pool: &PoolId, agent: &AgentId) -> StoreResult<Applied<bool>> {
        self.command(pool, |s, now| s.drain(agent, now))
    }

    async fn reassign(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        target: Option<&AgentId>,
        reason: &str,
    ) -> StoreResult<Applied<Conversation>> {
        self.command(pool, |s, now| s.reassign(conversation, target, reason, now))
    }

    async fn transfer(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        conversation: &ConversationId,
        target: TransferTarget,
        note: &str,
        plan: Option<RoutingPlan>,
    ) -> StoreResult<Applied<Conversation>> {
        if let (Some(plan), TransferTarget::Queue { .. }) = (&plan, &target) {
            plan.check()?;
        }
        self.command(pool, |s, now| {
            s.transfer(agent, conversation, target, note, plan, now)
        })
    }

    async fn report_csat(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        score: u8,
    ) -> StoreResult<Applied<Conversation>> {
        self.command(pool, |s, now| s.report_csat(conversation, score, now))
    }

    async fn availability(
        &self,
        pool: &PoolId,
        handoff: &Handoff,
        limit: usize,
    ) -> StoreResult<(u32, i64)> {
        self.query(pool, |s, now| Ok(s.availability(handoff, limit, now)))
    }

    async fn request(
        &self,
        pool: &PoolId,
        handoff: Handoff,
    ) -> StoreResult<Applied<(Conversation, bool)>> {
        self.command(pool, |s, now| s.request(handoff, now))
    }

    async fn availability_with_plan(
        &self,
        pool: &PoolId,
        handoff: &Handoff,
        plan: &RoutingPlan,
        limit: usize,
    ) -> StoreResult<(u32, i64)> {
        plan.check()?;
        self.query(pool, |s, now| {
            Ok(s.availability_with_plan(handoff, plan, limit, now))
        })
    }

    async fn request_with_plan(
        &self,
        pool: &PoolId,
        handoff: Handoff,
        plan: RoutingPlan,
    ) -> StoreResult<Applied<(Conversation, bool)>> {
        // Checked before the command (and its sweep), as the Redis store
        // checks before its script.
        plan.check()?;
        self.command(pool, |s, now| s.request_with_plan(handoff, Some(plan), now))
    }

    async fn set_agent_regions(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        regions: Option<BTreeSet<String>>,
    ) -> StoreResult<Applied<()>> {
        self.command(pool, |s, now| s.set_agent_regions(agent, regions, now))
    }

    async fn offers_delivered(
        &self,
        pool: &PoolId,
        delivered: &[(AgentId, OfferId)],
    ) -> StoreResult<()> {
        self.command(pool, |s, _| {
            for (agent, offer) in delivered {
                s.offer_delivered(agent, offer);
            }
            Ok(())
        })
        .map(|_| ())
    }

    async fn accept(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        offer: &OfferId,
    ) -> StoreResult<Applied<Conversation>> {
        self.command(pool, |s, now| s.accept(agent, offer, now))
    }

    async fn decline(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        offer: &OfferId,
        reason: &str,
    ) -> StoreResult<Applied<()>> {
        self.command(pool, |s, now| s.decline(agent, offer, reason, now))
    }

    async fn complete(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        conversation: &ConversationId,
        disposition: &str,
    ) -> StoreResult<Applied<Conversation>> {
        self.command(pool, |s, now| {
            s.complete(agent, conversation, disposition, now)
        })
    }

    async fn cancel(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        reason: &str,
    ) -> StoreResult<Applied<Conversation>> {
        self.command(pool, |s, now| s.cancel(conversation, reason, now))
    }

    async fn sweep(&self) -> StoreResult<Applied<Option<Timestamp>>> {
        let pools: Vec<PoolId> = self
            .pools
            .read()
            .map_err(poisoned)?
            .keys()
            .cloned()
            .collect();
        let mut events = Vec::new();
        let mut next: Option<Timestamp> = None;
        for pool in pools {
            let applied = self.command(&pool, |s, _| Ok(s.next_deadline()))?;
            events.extend(applied.events);
            if let Some(at) = applied.value {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(Applied {
            value: next,
            events,
        })
    }

    async fn conversation(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
    ) -> StoreResult<Conversation> {
        self.query(pool, |s, now| s.view(conversation, now))
    }

    async fn agent_snapshot(&self, pool: &PoolId, agent: &AgentId) -> StoreResult<AgentSnapshot> {
        self.query(pool, |s, _| s.agent_snapshot(agent))
    }

    async fn agents(&self, pool: &PoolId) -> StoreResult<Vec<Presence>> {
        self.query(pool, |s, _| Ok(s.agents()))
    }

    async fn queue_stats(&self, pool: &PoolId) -> StoreResult<QueueStats> {
        self.query(pool, |s, now| Ok(s.queue_stats(now)))
    }

    async fn shift_stats(&self, pool: &PoolId) -> StoreResult<Vec<ShiftView>> {
        self.query(pool, |s, now| Ok(s.shift_stats(now)))
    }

    fn pause_delivery_checks(&self, paused: bool) {
        self.delivery_checks_paused.store(paused, Ordering::Relaxed);
    }

    fn subscribe(&self) -> EventFeed {
        self.feed.subscribe()
    }
}
