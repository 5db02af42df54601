//! Where dispatch state lives. One trait, [`Store`], of atomic domain
//! commands; an in-memory implementation ([`MemoryStore`]) that is the
//! default; a Redis one (`switchboard-store-redis`). Both must pass
//! [`conformance`].
//!
//! # Design
//!
//! Every command decides inside the store and returns the events it caused
//! ([`Applied`]); nothing hands agents or conversations to the caller to
//! filter, so a Redis implementation can run each command as one script.
//! Events also go to the store's feed ([`Store::subscribe`]), which is how a
//! replica's streams learn of changes made anywhere.

pub mod clock;
pub mod conformance;
pub mod memory;

pub use clock::{Clock, ManualClock, SystemClock};
pub use memory::MemoryStore;

use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::Arc;
use switchboard_core::RoutingPlan;
use switchboard_core::model::{
    AgentSnapshot, AgentStatus, Conversation, GoOnline, Handoff, Location, Presence, QueueStats,
    RosterEntry, ShiftView, StatusChoice, TransferTarget,
};
use switchboard_core::{AgentId, ConversationId, DomainError, Event, OfferId, PoolId, Timestamp};
use thiserror::Error;
use tokio::sync::broadcast;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum StoreError {
    /// The command was refused by the domain rules.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The backing service cannot be reached now; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// This store does not implement the command yet.
    #[error("`{0}` is not supported by this store")]
    Unsupported(&'static str),
    /// A bug or corrupted state: logged in full, reported vaguely.
    #[error("store internal error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A command's result and the events it caused, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied<T> {
    pub value: T,
    pub events: Vec<Event>,
}

/// A subscription to the events of the pools the feed carries (see
/// [`Store::follow`]), in commit order within each pool. Shared (`Arc`):
/// every subscriber gets the same event, not a copy of it.
pub type EventFeed = broadcast::Receiver<Arc<Event>>;

/// While held, the store's feed carries one pool's events (see
/// [`Store::follow`]); dropping it lets the feed stop reading that pool.
#[must_use = "the pool is followed only while this is held"]
pub struct Following(Option<Box<dyn std::any::Any + Send + Sync>>);

impl Following {
    /// For a feed that carries every pool anyway.
    pub fn always() -> Following {
        Following(None)
    }

    /// Holds `guard` (whose drop leaves the pool).
    pub fn guard(guard: impl Send + Sync + 'static) -> Following {
        Following(Some(Box::new(guard)))
    }
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Following(guard)"
        } else {
            "Following(always)"
        })
    }
}

/// The dispatch state of all pools. Every method is atomic: it either
/// happens entirely or not at all. Every method takes the pool, and nothing
/// one pool does is visible in another.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's clock (Redis's own in Redis mode).
    async fn now(&self) -> StoreResult<Timestamp>;

    /// Creates or replaces a roster entry; `true` if it was new. The token
    /// epoch never goes down.
    async fn upsert_roster(
        &self,
        pool: &PoolId,
        entry: RosterEntry,
    ) -> StoreResult<Applied<(RosterEntry, bool)>>;

    /// The roster, ordered by agent id.
    async fn roster(&self, pool: &PoolId) -> StoreResult<Vec<RosterEntry>>;

    /// One roster entry; `None` if unknown.
    async fn roster_entry(
        &self,
        pool: &PoolId,
        agent: &AgentId,
    ) -> StoreResult<Option<RosterEntry>>;

    /// Goes online or updates the session. Narrowing only: widening the
    /// roster entry is PermissionDenied naming the field. An agent not in the
    /// roster is NotFound unless `self_register` (development mode).
    async fn go_online(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        request: GoOnline,
        self_register: bool,
    ) -> StoreResult<Applied<Presence>>;

    /// Attaches the agent's event stream (offers go only to agents with one)
    /// and returns its id with the snapshot to send first. The agent must be
    /// online (else FailedPrecondition).
    async fn attach_stream(
        &self,
        pool: &PoolId,
        agent: &AgentId,
    ) -> StoreResult<Applied<(u64, AgentSnapshot)>>;

    /// Stream `stream_id` ended; a newer stream of the agent is unaffected.
    /// Idempotent.
    async fn detach_stream(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        stream_id: u64,
    ) -> StoreResult<Applied<()>>;

    /// Renews the presence lease. FailedPrecondition when offline.
    async fn heartbeat(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        location: Option<Location>,
    ) -> StoreResult<Applied<Presence>>;

    /// Available or away. FailedPrecondition when offline.
    async fn set_status(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        choice: StatusChoice,
    ) -> StoreResult<Applied<AgentStatus>>;

    /// Offline now: pending offer withdrawn, assigned conversations requeued
    /// with `reason`. Idempotent. Returns the requeued ids.
    async fn go_offline(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        reason: &str,
    ) -> StoreResult<Applied<Vec<ConversationId>>>;

    /// Drain: no new offers; offline when the last conversation is done (at
    /// once if none). Returns whether the agent is offline now.
    async fn drain(&self, pool: &PoolId, agent: &AgentId) -> StoreResult<Applied<bool>> {
        let _ = (pool, agent);
        Err(StoreError::Unsupported("drain"))
    }

    /// Supervisor: back to the queue (`target` = `None`, the current agent
    /// excluded) or straight to the named agent as an offer. Finished
    /// conversations and agents who cannot take an offer now are
    /// FailedPrecondition.
    async fn reassign(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        target: Option<&AgentId>,
        reason: &str,
    ) -> StoreResult<Applied<Conversation>> {
        let _ = (pool, conversation, target, reason);
        Err(StoreError::Unsupported("reassign"))
    }

    /// The agent holding a conversation hands it to a named agent (as an
    /// offer) or back to the queue with new requirements; the note and the
    /// context travel with it. Not the holder: FailedPrecondition.
    ///
    /// `plan`: the target queue's routing plan (a transfer to a queue with
    /// a routing file in force). It replaces the conversation's plan, its
    /// clock starting at the transfer (the queue position keeps the
    /// original waiting time); `None` routes it on the transfer's
    /// requirements with the built-in rules. A transfer to a named agent
    /// keeps the conversation's plan and ignores this one. An invalid plan
    /// is InvalidArgument ([`RoutingPlan::check`]).
    async fn transfer(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        conversation: &ConversationId,
        target: TransferTarget,
        note: &str,
        plan: Option<RoutingPlan>,
    ) -> StoreResult<Applied<Conversation>> {
        let _ = (pool, agent, conversation, target, note, plan);
        Err(StoreError::Unsupported("transfer"))
    }

    /// The customer's satisfaction (1..=5) with a completed conversation,
    /// counted for the agent who completed it; once per conversation.
    async fn report_csat(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        score: u8,
    ) -> StoreResult<Applied<Conversation>> {
        let _ = (pool, conversation, score);
        Err(StoreError::Unsupported("report_csat"))
    }

    /// Eligible agents free now for a would-be hand-off (up to `limit`), and
    /// the expected wait in milliseconds (0 when one is free).
    async fn availability(
        &self,
        pool: &PoolId,
        handoff: &Handoff,
        limit: usize,
    ) -> StoreResult<(u32, i64)> {
        let _ = (pool, handoff, limit);
        Err(StoreError::Unsupported("availability"))
    }

    /// [`Store::availability`] for a hand-off that would be routed by
    /// `plan`. Stores that cannot execute plans refuse with Unsupported; an
    /// invalid plan is InvalidArgument ([`RoutingPlan::check`]).
    async fn availability_with_plan(
        &self,
        pool: &PoolId,
        handoff: &Handoff,
        plan: &RoutingPlan,
        limit: usize,
    ) -> StoreResult<(u32, i64)> {
        let _ = (pool, handoff, plan, limit);
        Err(StoreError::Unsupported("routing plans"))
    }

    /// Hands over a conversation and tries to match it at once. Idempotent on
    /// the conversation id (`false` when it existed); a different payload is
    /// Conflict naming the field.
    async fn request(
        &self,
        pool: &PoolId,
        handoff: Handoff,
    ) -> StoreResult<Applied<(Conversation, bool)>>;

    /// [`Store::request`] with a routing plan the engine executes for the
    /// conversation (relaxation steps, strategy, aging, timings, maximum
    /// wait action, preferred agent window). A repeated request keeps the
    /// first plan. An invalid plan is InvalidArgument naming the field
    /// ([`RoutingPlan::check`]), checked before anything else. Stores that
    /// cannot execute plans refuse with Unsupported.
    async fn request_with_plan(
        &self,
        pool: &PoolId,
        handoff: Handoff,
        plan: RoutingPlan,
    ) -> StoreResult<Applied<(Conversation, bool)>> {
        let _ = (pool, handoff, plan);
        Err(StoreError::Unsupported("routing plans"))
    }

    /// Sets the regions whose geofence admits an online agent (resolved by
    /// the caller from the agent's location); planned region rules check
    /// membership. FailedPrecondition when offline.
    async fn set_agent_regions(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        regions: Option<BTreeSet<String>>,
    ) -> StoreResult<Applied<()>> {
        let _ = (pool, agent, regions);
        Err(StoreError::Unsupported("agent regions"))
    }

    /// The offer reached the agent's stream; it will not be withdrawn as
    /// undelivered. Unknown offers are ignored.
    async fn offer_delivered(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        offer: &OfferId,
    ) -> StoreResult<()> {
        self.offers_delivered(pool, &[(agent.clone(), offer.clone())])
            .await
    }

    /// [`Store::offer_delivered`] for several offers of one pool at once,
    /// as (agent, offer) pairs: one round trip for a replica's batch.
    /// Unknown offers, and offers that are not the named agent's, are
    /// ignored; the others are marked as if one by one, in order.
    async fn offers_delivered(
        &self,
        pool: &PoolId,
        delivered: &[(AgentId, OfferId)],
    ) -> StoreResult<()>;

    /// Accepts; repeated accepts return the first result. Another agent's
    /// offer is PermissionDenied; a stale, expired or closed one is
    /// FailedPrecondition.
    async fn accept(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        offer: &OfferId,
    ) -> StoreResult<Applied<Conversation>>;

    /// Declines; the agent is excluded for this conversation. Repeats return
    /// the first result.
    async fn decline(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        offer: &OfferId,
        reason: &str,
    ) -> StoreResult<Applied<()>>;

    /// Completes a conversation the agent holds; repeats return the first
    /// result; not held is FailedPrecondition.
    async fn complete(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        conversation: &ConversationId,
        disposition: &str,
    ) -> StoreResult<Applied<Conversation>>;

    /// Abandons a conversation wherever it is; finished ones are returned as
    /// they ended.
    async fn cancel(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        reason: &str,
    ) -> StoreResult<Applied<Conversation>>;

    /// Acts on every deadline due in every pool (offer timeouts, undelivered
    /// offers, leases, maximum wait, retention). Safe to run from several
    /// places at once: nothing is acted on twice. Returns the next deadline.
    async fn sweep(&self) -> StoreResult<Applied<Option<Timestamp>>>;

    /// A conversation with queue position and expected wait. NotFound if
    /// unknown (or forgotten after retention).
    async fn conversation(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
    ) -> StoreResult<Conversation>;

    /// What an agent stream starts with. FailedPrecondition when offline.
    async fn agent_snapshot(&self, pool: &PoolId, agent: &AgentId) -> StoreResult<AgentSnapshot>;

    /// The online agents, ordered by id.
    async fn agents(&self, pool: &PoolId) -> StoreResult<Vec<Presence>>;

    async fn queue_stats(&self, pool: &PoolId) -> StoreResult<QueueStats>;

    async fn shift_stats(&self, pool: &PoolId) -> StoreResult<Vec<ShiftView>>;

    /// The events committed from now on in the pools the feed carries, in
    /// commit order within each pool. A subscriber that falls behind gets
    /// `Lagged` and must resynchronise from snapshots.
    fn subscribe(&self) -> EventFeed;

    /// Makes the feed ([`Store::subscribe`]) carry `pool`'s events, at
    /// least every event committed after this call returns, until the
    /// returned [`Following`] is dropped. A stream registers with the
    /// feed, calls this, then reads its snapshot: nothing in between is
    /// missed. The in-memory store publishes every pool as it commits, so
    /// it returns at once; the Redis store reads a pool's event stream only
    /// while something in this process follows it, so a replica neither
    /// reads nor makes Redis send the events of pools it holds no stream
    /// in.
    async fn follow(&self, pool: &PoolId) -> StoreResult<Following> {
        let _ = pool;
        Ok(Following::always())
    }

    /// While `paused`, sweeps give an offer found undelivered at its
    /// delivery deadline another grace period instead of withdrawing it. The
    /// server pauses them while it runs behind (its runtime, or its feed:
    /// [`Store::feed_lag`]): it is then the server, not the agent's stream,
    /// that is late to mark offers delivered. Offer timeouts and the grace
    /// of a stream that ended are unaffected.
    ///
    /// The pause holds for the whole pool, whichever replica sweeps: with a
    /// shared store, the calls of a paused replica keep every replica's
    /// sweeps from withdrawing undelivered offers in the pools it calls,
    /// until one delivery grace after its last paused call. (A replica
    /// whose offers are late because it runs behind cannot rely on another
    /// replica to tell its lateness from a dead stream.)
    fn pause_delivery_checks(&self, paused: bool);

    /// How far behind the store's feed ([`Store::subscribe`]) hands events
    /// to this process: the age of the oldest event of the last batch it
    /// read, when it had been handed on. Zero for a feed that publishes in
    /// process as it commits (the in-memory store: its lateness is the
    /// runtime's own). The server treats it like runtime lag: it sheds new
    /// hand-offs and pauses delivery checks while it is large, because an
    /// offer reaches its agent's stream only through the feed.
    fn feed_lag(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
