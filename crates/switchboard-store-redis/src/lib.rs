//! The Redis store: the [`Store`] trait on Redis, so any number of stateless
//! replicas share one pool of agents and one queue.
//!
//! # Design
//!
//! - Redis is the only source of truth. Every command that changes state is
//!   one call of one Lua function (`dispatch.lua`, the engine's state
//!   machine translated, a Redis 7 function library loaded at connect and
//!   again if Redis lost it: see `script.rs`), atomic, via FCALL. Nothing is decided in this process, so two
//!   replicas racing for one agent or one conversation cannot both win.
//! - Time is Redis's own `TIME`, read inside the script, and [`Store::now`]
//!   reports the same clock. No replica's clock enters a decision:
//!   [`RedisOptions::clock_offset_ms`] (a test-only skew of the replica's
//!   local clock) is never passed to a script, because a replica whose skew
//!   moved the shared deadlines would expire every agent's lease early.
//!   Tests move the store's time with [`RedisStore::advance_clock`],
//!   [`RedisStore::pin_clock`] and [`RedisStore::simulate_outage`], which
//!   production never calls.
//! - After an outage (no script reached the pool for longer than
//!   [`RedisOptions::outage_threshold`]), no lease expires until a full
//!   lease interval after Redis is back: the first script pushes every lease
//!   of the pool to at least now + lease before acting on any deadline (see
//!   [`keys`], "Leases after an outage").
//! - Drain, wrap-up, supervisor reassignment, agent transfers, CSAT reports
//!   and the availability check run in the same script with the engine's
//!   semantics (a transfer and a reassignment share one `move_conversation`,
//!   as in the engine); the shared conformance suite and a differential
//!   test against the in-memory store (random command sequences, results
//!   and events compared step by step) hold the two to the same behaviour.
//! - Routing plans run in the same script with the engine's semantics
//!   (relaxation steps as deadlines, per-plan groups, strategies, aging,
//!   preferred-agent windows, plan timings and penalties, maximum-wait
//!   actions, agent regions): a plan is checked here
//!   ([`RoutingPlan::check`]), passed as its serde JSON and kept in the
//!   conversation row (see [`keys`] and docs/redis.md).
//! - Rows are MessagePack (or JSON, see [`RowFormat`]; both are read), and
//!   fields added later (a conversation's `transfers` and
//!   `csat`, a shift's `transfers` and CSAT counts, an agent's lifetime
//!   `quality`) are read as absent = zero/empty, so rows written by an older
//!   version need no migration.
//! - Every key of a pool carries the pool as hash tag (see [`keys`]), so each
//!   script touches one slot.
//! - Matching never scans: offerable agents sit in sorted sets per
//!   (language, skill) by idle time, waiting conversations in sorted sets per
//!   group of identical requirements, and a freed agent looks only at the
//!   heads of the groups it can serve.
//! - Deadlines sit in a sorted set per pool. Each command first acts on what
//!   is due (as the in-memory store does) and [`Store::sweep`] runs the
//!   script on every known pool; an entry is removed and acted on in the
//!   same script, so two sweepers never act twice.
//! - Events are appended (XADD, capped) to the pool's stream inside the same
//!   script as the change, returned to the caller, and republished to
//!   [`Store::subscribe`] by a background task per followed pool
//!   ([`Store::follow`]: a pool this process holds a stream or watch in),
//!   on its own connection (see `feed.rs`): a replica reads only the
//!   streams of pools it serves.
//!
//! Round trips: at most one FCALL per command on the common path (request,
//! accept, decline, complete, heartbeat, and a batch of delivered offers
//! of any size: `tests/redis_round_trips.rs`
//! checks it with `INFO commandstats` and `MONITOR`). Fewer under load:
//! the calls made while the previous one is in flight go together when it
//! returns, one FCALL per pool, each answered as if alone (group commit,
//! `batch.rs`, [`RedisOptions::batch_calls`]; `tests/redis_batch.rs`
//! compares every answer with a store that sends each call alone). Extra, once: the
//! FUNCTION LOAD at connect (and after a Redis that lost its functions
//! answers "Function not found"), and one SADD the first time this process
//! writes to a pool. [`Store::sweep`] is one SMEMBERS plus one FCALL per
//! pool.
//!
//! Failures: a connection error is [`StoreError::Unavailable`] naming the
//! Redis address; queries are retried once (they are idempotent), commands
//! are not (a command whose reply was lost may have run; the domain commands
//! are idempotent, so the caller retries them). Every store call is bounded
//! by [`RedisOptions::call_timeout`] in total (waiting for a reconnect, the
//! reply, a query's retry): during an outage a call answers Unavailable
//! within it instead of waiting out the connection manager's reconnect
//! attempts, which go on in the background (see [`RECONNECT_RETRIES`]).

mod batch;
mod feed;
pub mod keys;
pub mod routing_config;
mod script;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ErrorKind, RedisError, ServerErrorKind};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use switchboard_core::model::{
    AgentSnapshot, AgentStatus, Conversation, GoOnline, Handoff, Location, Presence, QueueStats,
    RosterEntry, ShiftView, StatusChoice, TransferTarget,
};
use switchboard_core::{
    AgentId, ConversationId, DispatchSettings, DomainError, OfferId, PoolId, RoutingPlan, Timestamp,
};
use switchboard_store::{Applied, EventFeed, Following, Store, StoreError, StoreResult};
use tokio::sync::broadcast;

use crate::batch::{Batcher, Caller, Head};
use crate::feed::{Feed, FeedConfig};
use crate::script::{Command, Reply, SweepValue};

/// How many events the feed buffers for a slow subscriber before it lags
/// (as the in-memory store).
const FEED_CAPACITY: usize = 65_536;

/// How many times the connection manager retries a lost connection before
/// it gives up until the next command (the sweeper sends one at least every
/// half second, so reconnecting never stops while the replica runs). Few
/// retries, short pauses: a call made during an outage fails at once with the
/// cause ("connection refused") instead of waiting out a long backoff, and a
/// Redis that is back is found within [`RECONNECT_MAX_DELAY`].
pub const RECONNECT_RETRIES: usize = 2;
/// The first and the longest pause between reconnect attempts.
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// Connection and stream settings of a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// How long a (re)connect may take.
    pub connection_timeout: Duration,
    /// How long a command may wait for its reply before it is Unavailable.
    pub response_timeout: Duration,
    /// How long one store call may take in all (waiting for a reconnect,
    /// the reply, a query's one retry) before it is Unavailable. The
    /// reconnect itself goes on in the background.
    pub call_timeout: Duration,
    /// Test only: how far this replica's own clock is off (a fault test runs
    /// a replica skewed by +10 s). The Redis store reads no local clock:
    /// every deadline, [`Store::now`] and the event feed use Redis's `TIME`,
    /// so this changes nothing but a warning at connect. It is deliberately
    /// NOT added to the scripts' time: a replica whose offset moved the
    /// shared clock would expire every agent's lease early. Tests that need
    /// to move the store's time use [`RedisStore::advance_clock`].
    pub clock_offset_ms: i64,
    /// A pool nobody reached for longer than this (no command, no sweep:
    /// Redis was unreachable, or every replica was down) has been in an
    /// outage: agents could not heartbeat either, so before anything else
    /// the next script pushes every lease of the pool to at least a full
    /// lease from then. Sweepers touch every pool many times a second, so
    /// keep this several sweep intervals long, and below the lease minus
    /// the heartbeat interval.
    pub outage_threshold: Duration,
    /// Approximate cap on each pool's event stream (`XADD MAXLEN ~`).
    pub stream_max_len: u64,
    /// How long each of the event feed's XREADs blocks before it checks
    /// whether its pool is still followed.
    pub feed_block: Duration,
    /// How long the feed keeps reading a pool after the last stream here
    /// in that pool ended (see `Store::follow`): an app that reconnects
    /// within it finds the pool still read.
    pub feed_linger: Duration,
    /// How the dispatch library writes agent and conversation rows. Every
    /// build since MessagePack rows reads both formats.
    pub row_format: RowFormat,
    /// Whether a command's reply carries the events it committed, so that
    /// [`Applied::events`] holds them. Every event also goes to the pool's
    /// stream, which the feed ([`Store::follow`]) reads; a caller that
    /// takes events only from there (the server) sets this to `false`:
    /// each reply is then just its value (at 1,000 hand-offs/s, ~4 KiB of
    /// JSON per hand-off that Redis no longer joins and sends and the
    /// replica no longer parses), and `Applied::events` is empty.
    pub events_in_replies: bool,
    /// Whether calls made while another is in flight go to Redis together
    /// when it returns, one FCALL per pool (group commit, see `batch.rs`),
    /// or each alone as soon as it is made.
    pub batch_calls: bool,
}

/// How rows are written (docs/redis.md, "Rolling upgrades").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowFormat {
    /// MessagePack: less of Redis's time per call than JSON (no numbers
    /// printed and parsed, no hand-off escaped).
    #[default]
    Msgpack,
    /// JSON, which builds before MessagePack rows write and can only read:
    /// for a rolling upgrade from such a build, until none runs any more.
    Json,
}

impl RowFormat {
    /// As the library takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RowFormat::Msgpack => "msgpack",
            RowFormat::Json => "json",
        }
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(2),
            clock_offset_ms: 0,
            outage_threshold: Duration::from_secs(1),
            stream_max_len: 100_000,
            feed_block: Duration::from_millis(500),
            feed_linger: Duration::from_secs(30),
            row_format: RowFormat::default(),
            events_in_replies: true,
            batch_calls: true,
        }
    }
}

/// Loads the dispatch library unless Redis already has this version.
pub(crate) async fn load_library(
    connection: &mut ConnectionManager,
    library: &script::Library,
) -> redis::RedisResult<()> {
    let loaded: redis::RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&library.code)
        .query_async(connection)
        .await;
    match loaded {
        Ok(_) => Ok(()),
        Err(e) if script::is_library_present(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The dispatch state of every pool, in Redis. See the crate docs.
pub struct RedisStore {
    /// The connection, the library and the Redis address (without
    /// credentials): builds and sends the dispatch library's calls.
    caller: Caller,
    /// Where calls queue for the next batch (see `batch.rs`); `None` when
    /// [`RedisOptions::batch_calls`] is off: every call goes alone.
    batcher: Option<Batcher>,
    /// See [`RedisOptions::call_timeout`].
    call_timeout: Duration,
    /// Test only: how the scripts' time departs from Redis's `TIME`.
    test_clock: Mutex<TestClock>,
    /// Pools this process has added to [`keys::POOLS`]. A `std` mutex: held
    /// for a lookup or an insert, never across an `.await`.
    registered: Mutex<HashSet<PoolId>>,
    feed: Feed,
    /// See [`Store::pause_delivery_checks`]: passed with every call.
    delivery_checks_paused: AtomicBool,
}

impl RedisStore {
    /// Connects with default [`RedisOptions`].
    pub async fn connect(url: &str, settings: DispatchSettings) -> StoreResult<Self> {
        Self::connect_with(url, settings, RedisOptions::default()).await
    }

    /// Connects to the Redis at `url` and starts the event feed.
    pub async fn connect_with(
        url: &str,
        settings: DispatchSettings,
        options: RedisOptions,
    ) -> StoreResult<Self> {
        let address = redact(url);
        if options.clock_offset_ms != 0 {
            tracing::warn!(
                offset_ms = options.clock_offset_ms,
                "TEST ONLY: this replica's local clock is skewed; the redis store ignores it (deadlines use redis TIME)"
            );
        }
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Internal(format!("invalid redis url `{address}`: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connection_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let mut manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| unavailable(&address, &e))?;
        let library = script::Library::new();
        load_library(&mut manager, &library)
            .await
            .map_err(|e| unavailable(&address, &e))?;
        let (sender, _) = broadcast::channel(FEED_CAPACITY);
        let feed = Feed::new(FeedConfig {
            client,
            sender,
            block: options.feed_block,
            connection_timeout: options.connection_timeout,
            linger: options.feed_linger,
        });
        let caller = Caller {
            manager,
            library,
            settings_args: script::settings_args(&settings, &options),
            address,
        };
        let batcher = options.batch_calls.then(|| {
            let (batcher, task) = Batcher::start(caller.clone());
            tokio::spawn(task);
            batcher
        });
        Ok(RedisStore {
            caller,
            batcher,
            call_timeout: options.call_timeout,
            test_clock: Mutex::new(TestClock::default()),
            registered: Mutex::new(HashSet::new()),
            feed,
            delivery_checks_paused: AtomicBool::new(false),
        })
    }

    /// The pools whose event streams this process reads now: followed by a
    /// stream here, or lingering after the last one left (see
    /// [`RedisOptions::feed_linger`]).
    pub fn followed_pools(&self) -> Vec<String> {
        self.feed.pools()
    }

    /// Test only: moves this store's clock by `ms` (added to Redis's time in
    /// every script this store runs, and to [`Store::now`]), as if that time
    /// had passed with the sweepers running: never an outage.
    pub fn advance_clock(&self, ms: i64) {
        if let Ok(mut clock) = self.test_clock.lock() {
            clock.offset_ms += ms;
        }
    }

    /// Test only: freezes this store's clock at `at` (Redis's `TIME` is no
    /// longer read for it); [`RedisStore::advance_clock`] then moves it.
    /// A differential test needs this: with a running clock, deadlines that
    /// fall on the same millisecond in memory would be ordered by drift.
    pub fn pin_clock(&self, at: Timestamp) {
        if let Ok(mut clock) = self.test_clock.lock() {
            clock.pinned = true;
            clock.offset_ms = at.as_millis();
        }
    }

    /// Test only: `ms` pass during which nobody reached Redis (Redis down,
    /// or every replica): the clock moves as with
    /// [`RedisStore::advance_clock`], and the next script sees a gap of `ms`
    /// since the pool was last reached (see [`RedisOptions::outage_threshold`]).
    pub fn simulate_outage(&self, ms: i64) {
        if let Ok(mut clock) = self.test_clock.lock() {
            clock.offset_ms += ms;
            clock.contact_offset_ms += ms;
        }
    }

    fn test_clock(&self) -> StoreResult<TestClock> {
        Ok(*self.test_clock.lock().map_err(poisoned)?)
    }

    fn error(&self, e: &RedisError) -> StoreError {
        self.caller.error(e)
    }

    /// `call` (one store call: any number of round trips, reconnect waits
    /// included), or Unavailable once it took [`RedisOptions::call_timeout`].
    /// Dropping the call does not stop a reconnect: the connection manager
    /// runs it as a task of its own.
    async fn bounded<T>(&self, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "redis at `{}` is unreachable: no reply within {} ms (reconnecting)",
                    self.caller.address,
                    self.call_timeout.as_millis()
                )))
            })
    }

    /// Adds `pool` to the set of known pools, once per process. Its own
    /// command because the set is outside the pool's slot.
    async fn register_pool(&self, pool: &PoolId) -> StoreResult<()> {
        if self.registered.lock().map_err(poisoned)?.contains(pool) {
            return Ok(());
        }
        let mut connection = self.caller.manager.clone();
        let _: i64 = connection
            .sadd(keys::POOLS, pool.as_str())
            .await
            .map_err(|e| self.error(&e))?;
        self.registered
            .lock()
            .map_err(poisoned)?
            .insert(pool.clone());
        Ok(())
    }

    /// A hand-off, with the routing plan the script executes for it (if
    /// any). A repeat is compared with the stored hand-off here, by the
    /// engine's rule.
    async fn request_routed(
        &self,
        pool: &PoolId,
        handoff: Handoff,
        plan: Option<&RoutingPlan>,
    ) -> StoreResult<Applied<(Conversation, bool)>> {
        let handoff_json = to_json(&handoff)?;
        let routing = routing(&handoff);
        let plan = plan.map(to_json).transpose()?.unwrap_or_default();
        let applied: Applied<(Conversation, bool)> = self
            .command(
                pool,
                Command::Request,
                &[handoff_json.clone(), routing.to_string(), plan],
            )
            .await?;
        let (existing, created) = &applied.value;
        if !created {
            // Compare with the engine's own rule. The stored hand-off went
            // through JSON; so does the submitted one, so equal payloads
            // compare equal even where float parsing is not exact.
            let submitted: Handoff = from_json(&handoff_json)?;
            if let Some(field) = existing.conflicting_field(&submitted) {
                return Err(StoreError::Domain(DomainError::Conflict {
                    conversation_id: handoff.conversation_id.to_string(),
                    field: field.to_owned(),
                }));
            }
        }
        Ok(applied)
    }

    /// One run of the dispatch script: queued for the next batch, or alone.
    async fn run<T: DeserializeOwned>(
        &self,
        pool: &PoolId,
        command: Command,
        args: &[String],
    ) -> StoreResult<Reply<T>> {
        let clock = self.test_clock()?;
        let head = Head {
            pool: pool.clone(),
            clock: clock.script_arg(),
            contact_offset_ms: clock.contact_offset_ms,
            paused: self.delivery_checks_paused.load(Ordering::Relaxed),
        };
        let raw: String = match &self.batcher {
            Some(batcher) => batcher.call(head, command.name(), args.to_vec()).await?,
            None => self.caller.call_alone(&head, command.name(), args).await?,
        };
        let reply = Reply::parse(&raw)?;
        if let Some(outage) = reply.outage() {
            tracing::warn!(
                pool = %pool,
                gap_ms = outage.gap_ms,
                leases_extended = outage.leases_extended,
                "nobody reached the pool in redis for a while (outage): leases extended by a full lease"
            );
        }
        Ok(reply)
    }

    /// A command: registers the pool, runs once (never retried: see the
    /// crate docs).
    async fn command<T: DeserializeOwned>(
        &self,
        pool: &PoolId,
        command: Command,
        args: &[String],
    ) -> StoreResult<Applied<T>> {
        let reply = self
            .bounded(async {
                self.register_pool(pool).await?;
                self.run(pool, command, args).await
            })
            .await?;
        match reply {
            Reply::Ok { value, events, .. } => Ok(Applied { value, events }),
            Reply::Err { error, .. } => Err(error.into_store_error()),
        }
    }

    /// A read: retried once when the connection dropped under it (the
    /// connection manager reconnects but fails the command in flight).
    async fn query<T: DeserializeOwned>(
        &self,
        pool: &PoolId,
        command: Command,
        args: &[String],
    ) -> StoreResult<T> {
        let reply = self
            .bounded(async {
                match self.run(pool, command, args).await {
                    Err(StoreError::Unavailable(_)) => self.run(pool, command, args).await,
                    other => other,
                }
            })
            .await?;
        match reply {
            Reply::Ok { value, .. } => Ok(value),
            Reply::Err { error, .. } => Err(error.into_store_error()),
        }
    }

    /// A plain read command, retried once like [`RedisStore::query`].
    async fn read<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> StoreResult<T> {
        let mut connection = self.caller.manager.clone();
        self.bounded(async {
            match cmd.query_async(&mut connection).await {
                Ok(value) => Ok(value),
                Err(e) if is_connection_error(&e) => cmd
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| self.error(&e)),
                Err(e) => Err(self.error(&e)),
            }
        })
        .await
    }
}

/// Test only: the scripts' time. In production all zero: Redis's `TIME`.
#[derive(Clone, Copy, Debug, Default)]
struct TestClock {
    /// `offset_ms` is the time itself, not an offset from `TIME`.
    pinned: bool,
    offset_ms: i64,
    /// Added to `TIME` when the script measures the gap since the pool was
    /// last reached; only [`RedisStore::simulate_outage`] moves it.
    contact_offset_ms: i64,
}

impl TestClock {
    /// The script's clock argument: `=<ms>` pinned, else the offset.
    fn script_arg(&self) -> String {
        if self.pinned {
            format!("={}", self.offset_ms)
        } else {
            self.offset_ms.to_string()
        }
    }
}

pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            )
        )
}

pub(crate) fn unavailable(address: &str, e: &RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis at `{address}` is unreachable: {e}"))
}

fn poisoned<E>(_: E) -> StoreError {
    StoreError::Internal("pool registry lock poisoned by a panic".to_owned())
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Internal(format!("cannot encode a store argument: {e}")))
}

fn from_json<T: DeserializeOwned>(raw: &str) -> StoreResult<T> {
    serde_json::from_str(raw)
        .map_err(|e| StoreError::Internal(format!("unreadable row in redis: {e}")))
}

/// `redis://user:secret@host:6379/0` → `redis://***@host:6379/0`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// What the script matches on; the hand-off itself stays opaque JSON.
fn routing(handoff: &Handoff) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": handoff.conversation_id,
        "language": handoff.language,
        "required_skills": handoff.required_skills,
        "priority": handoff.priority,
        "region": handoff.region,
        "preferred_agent": handoff.preferred_agent,
    })
}

fn optional_json<T: serde::Serialize>(value: &Option<T>) -> StoreResult<String> {
    match value {
        Some(v) => to_json(v),
        None => Ok(String::new()),
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn now(&self) -> StoreResult<Timestamp> {
        let clock = self.test_clock()?;
        if clock.pinned {
            return Ok(Timestamp::from_millis(clock.offset_ms));
        }
        let (seconds, micros): (i64, i64) = self.read(&redis::cmd("TIME")).await?;
        Ok(Timestamp::from_millis(
            seconds * 1000 + micros / 1000 + clock.offset_ms,
        ))
    }

    async fn upsert_roster(
        &self,
        pool: &PoolId,
        entry: RosterEntry,
    ) -> StoreResult<Applied<(RosterEntry, bool)>> {
        self.command(pool, Command::UpsertRoster, &[to_json(&entry)?])
            .await
    }

    async fn roster(&self, pool: &PoolId) -> StoreResult<Vec<RosterEntry>> {
        let rows: Vec<String> = self
            .read(redis::cmd("HVALS").arg(keys::roster(pool)))
            .await?;
        let mut entries = rows
            .iter()
            .map(|raw| from_json::<RosterEntry>(raw))
            .collect::<StoreResult<Vec<_>>>()?;
        entries.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(entries)
    }

    async fn roster_entry(
        &self,
        pool: &PoolId,
        agent: &AgentId,
    ) -> StoreResult<Option<RosterEntry>> {
        let row: Option<String> = self
            .read(
                redis::cmd("HGET")
                    .arg(keys::roster(pool))
                    .arg(agent.as_str()),
            )
            .await?;
        row.map(|raw| from_json(&raw)).transpose()
    }

    async fn go_online(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        request: GoOnline,
        self_register: bool,
    ) -> StoreResult<Applied<Presence>> {
        let narrowing =
            serde_json::json!({ "skills": request.skills, "languages": request.languages });
        let args = [
            agent.to_string(),
            narrowing.to_string(),
            if self_register { "1" } else { "0" }.to_owned(),
            // Kept as serde wrote it: the script never re-encodes floats.
            optional_json(&request.location)?,
            request.capacity.map(|c| c.to_string()).unwrap_or_default(),
        ];
        self.command(pool, Command::GoOnline, &args).await
    }

    async fn attach_stream(
        &self,
        pool: &PoolId,
        agent: &AgentId,
    ) -> StoreResult<Applied<(u64, AgentSnapshot)>> {
        self.command(pool, Command::AttachStream, &[agent.to_string()])
            .await
    }

    async fn detach_stream(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        stream_id: u64,
    ) -> StoreResult<Applied<()>> {
        self.command(
            pool,
            Command::DetachStream,
            &[agent.to_string(), stream_id.to_string()],
        )
        .await
    }

    async fn heartbeat(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        location: Option<Location>,
    ) -> StoreResult<Applied<Presence>> {
        self.command(
            pool,
            Command::Heartbeat,
            &[agent.to_string(), optional_json(&location)?],
        )
        .await
    }

    async fn set_status(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        choice: StatusChoice,
    ) -> StoreResult<Applied<AgentStatus>> {
        let (choice, reason) = match choice {
            StatusChoice::Available => ("available", String::new()),
            StatusChoice::Away { reason } => ("away", reason),
        };
        self.command(
            pool,
            Command::SetStatus,
            &[agent.to_string(), choice.to_owned(), reason],
        )
        .await
    }

    async fn go_offline(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        reason: &str,
    ) -> StoreResult<Applied<Vec<ConversationId>>> {
        self.command(
            pool,
            Command::GoOffline,
            &[agent.to_string(), reason.to_owned()],
        )
        .await
    }

    async fn drain(&self, pool: &PoolId, agent: &AgentId) -> StoreResult<Applied<bool>> {
        self.command(pool, Command::Drain, &[agent.to_string()])
            .await
    }

    async fn reassign(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        target: Option<&AgentId>,
        reason: &str,
    ) -> StoreResult<Applied<Conversation>> {
        let args = [
            conversation.to_string(),
            target.map(ToString::to_string).unwrap_or_default(),
            reason.to_owned(),
        ];
        self.command(pool, Command::Reassign, &args).await
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
        // The target queue's plan matters only for a transfer to a queue.
        let plan = match (&target, plan) {
            (TransferTarget::Queue { .. }, Some(plan)) => {
                plan.check()?;
                to_json(&plan)?
            }
            _ => String::new(),
        };
        // The script takes the target apart itself: an agent id, or the new
        // requirements as JSON (it renders them into the stored hand-off).
        let (kind, target) = match target {
            TransferTarget::Agent(to) => ("agent", to.to_string()),
            TransferTarget::Queue {
                category,
                required_skills,
                language,
            } => (
                "queue",
                serde_json::json!({
                    "category": category,
                    "required_skills": required_skills,
                    "language": language,
                })
                .to_string(),
            ),
        };
        let args = [
            agent.to_string(),
            conversation.to_string(),
            kind.to_owned(),
            target,
            note.to_owned(),
            plan,
        ];
        self.command(pool, Command::Transfer, &args).await
    }

    async fn report_csat(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        score: u8,
    ) -> StoreResult<Applied<Conversation>> {
        self.command(
            pool,
            Command::ReportCsat,
            &[conversation.to_string(), score.to_string()],
        )
        .await
    }

    async fn availability(
        &self,
        pool: &PoolId,
        handoff: &Handoff,
        limit: usize,
    ) -> StoreResult<(u32, i64)> {
        self.query(
            pool,
            Command::Availability,
            &[routing(handoff).to_string(), limit.to_string()],
        )
        .await
    }

    async fn availability_with_plan(
        &self,
        pool: &PoolId,
        handoff: &Handoff,
        plan: &RoutingPlan,
        limit: usize,
    ) -> StoreResult<(u32, i64)> {
        plan.check()?;
        self.query(
            pool,
            Command::Availability,
            &[
                routing(handoff).to_string(),
                limit.to_string(),
                to_json(plan)?,
            ],
        )
        .await
    }

    async fn request(
        &self,
        pool: &PoolId,
        handoff: Handoff,
    ) -> StoreResult<Applied<(Conversation, bool)>> {
        self.request_routed(pool, handoff, None).await
    }

    async fn request_with_plan(
        &self,
        pool: &PoolId,
        handoff: Handoff,
        plan: RoutingPlan,
    ) -> StoreResult<Applied<(Conversation, bool)>> {
        // Checked before the script, as the in-memory store checks before
        // its command: a refused plan changes nothing.
        plan.check()?;
        self.request_routed(pool, handoff, Some(&plan)).await
    }

    async fn set_agent_regions(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        regions: Option<BTreeSet<String>>,
    ) -> StoreResult<Applied<()>> {
        self.command(
            pool,
            Command::SetAgentRegions,
            &[agent.to_string(), optional_json(&regions)?],
        )
        .await
    }

    async fn offers_delivered(
        &self,
        pool: &PoolId,
        delivered: &[(AgentId, OfferId)],
    ) -> StoreResult<()> {
        if delivered.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = delivered
            .iter()
            .flat_map(|(agent, offer)| {
                [
                    agent.to_string(),
                    offer.conversation_id.to_string(),
                    offer.attempt.to_string(),
                ]
            })
            .collect();
        self.command::<()>(pool, Command::OfferDelivered, &args)
            .await
            .map(|_| ())
    }

    async fn accept(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        offer: &OfferId,
    ) -> StoreResult<Applied<Conversation>> {
        let args = [
            agent.to_string(),
            offer.conversation_id.to_string(),
            offer.attempt.to_string(),
        ];
        self.command(pool, Command::Accept, &args).await
    }

    async fn decline(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        offer: &OfferId,
        reason: &str,
    ) -> StoreResult<Applied<()>> {
        let args = [
            agent.to_string(),
            offer.conversation_id.to_string(),
            offer.attempt.to_string(),
            reason.to_owned(),
        ];
        self.command(pool, Command::Decline, &args).await
    }

    async fn complete(
        &self,
        pool: &PoolId,
        agent: &AgentId,
        conversation: &ConversationId,
        disposition: &str,
    ) -> StoreResult<Applied<Conversation>> {
        let args = [
            agent.to_string(),
            conversation.to_string(),
            disposition.to_owned(),
        ];
        self.command(pool, Command::Complete, &args).await
    }

    async fn cancel(
        &self,
        pool: &PoolId,
        conversation: &ConversationId,
        reason: &str,
    ) -> StoreResult<Applied<Conversation>> {
        self.command(
            pool,
            Command::Cancel,
            &[conversation.to_string(), reason.to_owned()],
        )
        .await
    }

    async fn sweep(&self) -> StoreResult<Applied<Option<Timestamp>>> {
        let pools: Vec<String> = self.read(redis::cmd("SMEMBERS").arg(keys::POOLS)).await?;
        let mut events = Vec::new();
        let mut next: Option<Timestamp> = None;
        for name in pools {
            let pool = match PoolId::parse("pool", &name) {
                Ok(pool) => pool,
                Err(e) => {
                    tracing::error!(pool = %name, error = %e, "skipping an invalid pool name in the pool set");
                    continue;
                }
            };
            // A pool with a backlog beyond one script's limit is swept again.
            loop {
                let swept = self.bounded(self.run::<SweepValue>(&pool, Command::Sweep, &[]));
                match swept.await? {
                    Reply::Ok {
                        value,
                        events: swept,
                        ..
                    } => {
                        events.extend(swept);
                        if value.more {
                            continue;
                        }
                        if let Some(at) = value.next.map(Timestamp::from_millis) {
                            next = Some(next.map_or(at, |n| n.min(at)));
                        }
                        break;
                    }
                    Reply::Err { error, .. } => return Err(error.into_store_error()),
                }
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
        self.query(pool, Command::Conversation, &[conversation.to_string()])
            .await
    }

    async fn agent_snapshot(&self, pool: &PoolId, agent: &AgentId) -> StoreResult<AgentSnapshot> {
        self.query(pool, Command::AgentSnapshot, &[agent.to_string()])
            .await
    }

    async fn agents(&self, pool: &PoolId) -> StoreResult<Vec<Presence>> {
        let mut agents: Vec<Presence> = self.query(pool, Command::Agents, &[]).await?;
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(agents)
    }

    async fn queue_stats(&self, pool: &PoolId) -> StoreResult<QueueStats> {
        self.query(pool, Command::QueueStats, &[]).await
    }

    async fn shift_stats(&self, pool: &PoolId) -> StoreResult<Vec<ShiftView>> {
        let mut shifts: Vec<ShiftView> = self.query(pool, Command::ShiftStats, &[]).await?;
        shifts.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(shifts)
    }

    fn subscribe(&self) -> EventFeed {
        self.feed.subscribe()
    }

    async fn follow(&self, pool: &PoolId) -> StoreResult<Following> {
        if let Some(following) = self.feed.try_join(pool.as_str()) {
            return Ok(following);
        }
        // Redis's own clock (not the test clock: stream ids are Redis
        // milliseconds), read before the follower's snapshot is.
        let (seconds, micros): (i64, i64) = self.read(&redis::cmd("TIME")).await?;
        Ok(self
            .feed
            .join(pool.as_str(), seconds * 1000 + micros / 1000))
    }

    fn pause_delivery_checks(&self, paused: bool) {
        self.delivery_checks_paused.store(paused, Ordering::Relaxed);
    }

    fn feed_lag(&self) -> Duration {
        self.feed.lag()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(
            redact("redis://user:secret@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
