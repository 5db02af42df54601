//! The routing config in force for every replica on one Redis, and the
//! routing version each live replica reports running.
//!
//! This module keeps text, not meaning: the routing file is parsed and
//! validated by the server (`switchboard-routing`), never here, so this
//! crate does not depend on the routing crate.
//!
//! # Layout
//!
//! | key | type | what |
//! |---|---|---|
//! | [`ROUTING`] `sb:routing` | hash | the routing config in force: `version` (16 hex digits, `RoutingConfig::version()` of `text`), `text` (the whole routing file), `source` (the file it was read from, on the replica that stored it), `activated_by` (that replica's id), `activated_at_ms` (Redis `TIME`, Unix ms) |
//! | [`ROUTING_CHANNEL`] `sb:routing:changed` | pub/sub channel | the new version, published in the same script that stores it |
//! | [`REPLICAS`] `sb:replicas` | hash | replica id → `<reported at, Redis ms> <routing version it runs>` (the version is empty for built-in rules) |
//!
//! All three are global, outside every pool's slot (like `sb:pools` and
//! `sb:config_version`), and no dispatch script touches them.
//!
//! # Design
//!
//! - One write path, [`RoutingConfigStore::activate`]: a compare-and-set
//!   script that stores all fields at once only when the version in force
//!   is still the one the caller read before validating its file, and
//!   publishes the new version in the same step. Two concurrent reloads
//!   cannot interleave: the second finds another version and is told so
//!   ([`Activation::Conflict`]) instead of silently replacing a config its
//!   operator never saw.
//! - Pub/sub is fire-and-forget (a message sent while a subscriber is
//!   reconnecting is lost), so subscribers also poll [`version`]
//!   (one `HGET`) and treat the channel only as a way to be fast.
//!
//! [`version`]: RoutingConfigStore::version
//! - Replica reports carry Redis's own time, so their age is measured on
//!   one clock. Readers ignore reports older than their liveness bound;
//!   every report also deletes reports older than [`FORGET_AFTER`], so the
//!   hash holds only replicas seen recently.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::time::Duration;
use tokio_stream::StreamExt;

use crate::{RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY, RECONNECT_RETRIES};

/// The hash holding the routing config in force.
pub const ROUTING: &str = "sb:routing";
/// The channel on which a newly stored version is published.
pub const ROUTING_CHANNEL: &str = "sb:routing:changed";
/// The hash of replica id → the routing version it runs, with when it said.
pub const REPLICAS: &str = "sb:replicas";
/// Reports older than this are deleted by the next report of any replica.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// How long one call may wait for Redis.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A failure to use the routing keys.
#[derive(Debug, thiserror::Error)]
pub enum RoutingStoreError {
    /// Redis cannot be reached or did not answer in time.
    #[error("redis at `{address}` is unreachable: {cause}")]
    Unavailable { address: String, cause: String },
    /// A key holds something this build does not understand.
    #[error("`{key}` in redis at `{address}` is malformed: {what}")]
    Malformed {
        address: String,
        key: &'static str,
        what: String,
    },
}

type Result<T> = std::result::Result<T, RoutingStoreError>;

/// The routing config in force, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRouting {
    pub version: String,
    pub text: String,
    pub source: String,
    pub activated_by: String,
    pub activated_at_ms: u64,
}

/// A config to put in force.
#[derive(Clone, Copy, Debug)]
pub struct NewRouting<'a> {
    pub version: &'a str,
    pub text: &'a str,
    pub source: &'a str,
    pub activated_by: &'a str,
}

/// What [`RoutingConfigStore::activate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Stored and published; `previous` is the version it replaced.
    Stored { previous: Option<String> },
    /// That version was already in force: nothing written.
    Unchanged,
    /// Another version is in force than the caller expected (a concurrent
    /// activation): nothing written.
    Conflict { in_force: Option<String> },
}

/// One replica's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    pub replica_id: String,
    /// The routing version it runs; empty for the built-in rules.
    pub routing_version: String,
    /// When it reported (Redis time, Unix ms).
    pub reported_at_ms: u64,
}

/// Compare-and-set of the config in force. KEYS[1] = `sb:routing`;
/// ARGV = expected version ('' = none), version, text, source, replica,
/// channel. Returns `{code, version in force before}`: 1 stored, 2 already
/// in force, 0 conflict.
const ACTIVATE: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if not current then current = '' end
if current == ARGV[2] then return {2, current} end
if current ~= ARGV[1] then return {0, current} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'text', ARGV[3], 'source', ARGV[4],
  'activated_by', ARGV[5], 'activated_at_ms', string.format('%d', now))
redis.call('PUBLISH', ARGV[6], ARGV[2])
return {1, current}
";

/// A replica's report, stamped with Redis's time, and the removal of
/// reports older than ARGV[3] ms. KEYS[1] = `sb:replicas`; ARGV = replica
/// id, routing version, forget-after ms. Returns the time written.
const REPORT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now) .. ' ' .. ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local forget = tonumber(ARGV[3])
for i = 1, #all, 2 do
  local at = tonumber(string.match(all[i + 1], '^(%d+)'))
  if at == nil or now - at > forget then redis.call('HDEL', KEYS[1], all[i]) end
end
return now
";

/// Every report with Redis's time now. KEYS[1] = `sb:replicas`.
const REPLICAS_NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('HGETALL', KEYS[1])}
";

/// The routing keys of one Redis. Cheap to clone (one shared multiplexed
/// connection, reconnected in the background).
#[derive(Clone)]
pub struct RoutingConfigStore {
    client: redis::Client,
    connection: ConnectionManager,
    /// The Redis address without credentials, for messages.
    address: String,
}

impl RoutingConfigStore {
    /// Connects (a connection of its own: a reload must not queue behind
    /// dispatch commands). `address` is the URL as messages may show it
    /// (password masked).
    pub async fn connect(url: &str, address: &str) -> Result<RoutingConfigStore> {
        let unavailable = |cause: String| RoutingStoreError::Unavailable {
            address: address.to_owned(),
            cause,
        };
        let client = redis::Client::open(url).map_err(|e| unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let connecting = ConnectionManager::new_with_config(client.clone(), config);
        let connection = tokio::time::timeout(CALL_TIMEOUT * 2, connecting)
            .await
            .map_err(|_| unavailable("no connection".to_owned()))?
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(RoutingConfigStore {
            client,
            connection,
            address: address.to_owned(),
        })
    }

    /// The Redis address (password masked).
    pub fn address(&self) -> &str {
        &self.address
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T> {
        let mut connection = self.connection.clone();
        let call = command.query_async::<T>(&mut connection);
        self.bounded(call).await
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[&str],
    ) -> Result<T> {
        let mut connection = self.connection.clone();
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        let call = invocation.invoke_async::<T>(&mut connection);
        self.bounded(call).await
    }

    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RoutingStoreError::Unavailable {
                address: self.address.clone(),
                cause: e.to_string(),
            }),
            Err(_) => Err(RoutingStoreError::Unavailable {
                address: self.address.clone(),
                cause: format!("no reply within {} ms", CALL_TIMEOUT.as_millis()),
            }),
        }
    }

    /// The version in force, if any (one `HGET`: what the poll reads).
    pub async fn version(&self) -> Result<Option<String>> {
        let mut get = redis::cmd("HGET");
        get.arg(ROUTING).arg("version");
        self.query(&get).await
    }

    /// The config in force, if any.
    pub async fn get(&self) -> Result<Option<StoredRouting>> {
        let mut get = redis::cmd("HGETALL");
        get.arg(ROUTING);
        let mut fields: HashMap<String, String> = self.query(&get).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut take = |field: &str| {
            fields
                .remove(field)
                .ok_or_else(|| RoutingStoreError::Malformed {
                    address: self.address.clone(),
                    key: ROUTING,
                    what: format!("field `{field}` is missing"),
                })
        };
        let version = take("version")?;
        let text = take("text")?;
        let source = take("source")?;
        let activated_by = take("activated_by")?;
        let activated_at = take("activated_at_ms")?;
        let activated_at_ms =
            activated_at
                .parse::<u64>()
                .map_err(|_| RoutingStoreError::Malformed {
                    address: self.address.clone(),
                    key: ROUTING,
                    what: format!("`activated_at_ms` is `{activated_at}`, not a number"),
                })?;
        Ok(Some(StoredRouting {
            version,
            text,
            source,
            activated_by,
            activated_at_ms,
        }))
    }

    /// Puts `new` in force if the version in force is still `expected`
    /// (`None`: no config is in force), and publishes it on
    /// [`ROUTING_CHANNEL`], in one atomic step.
    pub async fn activate(
        &self,
        expected: Option<&str>,
        new: NewRouting<'_>,
    ) -> Result<Activation> {
        let script = redis::Script::new(ACTIVATE);
        let (code, before): (i64, String) = self
            .invoke(
                &script,
                ROUTING,
                &[
                    expected.unwrap_or(""),
                    new.version,
                    new.text,
                    new.source,
                    new.activated_by,
                    ROUTING_CHANNEL,
                ],
            )
            .await?;
        let before = Some(before).filter(|v| !v.is_empty());
        Ok(match code {
            1 => Activation::Stored { previous: before },
            2 => Activation::Unchanged,
            _ => Activation::Conflict { in_force: before },
        })
    }

    /// Records that `replica_id` runs `routing_version` (empty: built-in
    /// rules), stamped with Redis's time, and forgets reports older than
    /// [`FORGET_AFTER`]. Returns the time written (Unix ms).
    pub async fn report(&self, replica_id: &str, routing_version: &str) -> Result<u64> {
        let script = redis::Script::new(REPORT);
        let forget = FORGET_AFTER.as_millis().to_string();
        self.invoke(&script, REPLICAS, &[replica_id, routing_version, &forget])
            .await
    }

    /// Forgets `replica_id`'s report (a replica stopping).
    pub async fn forget(&self, replica_id: &str) -> Result<()> {
        let mut del = redis::cmd("HDEL");
        del.arg(REPLICAS).arg(replica_id);
        self.query::<i64>(&del).await.map(|_| ())
    }

    /// The replicas that reported within `live_within` (by Redis's clock),
    /// sorted by id. Malformed entries are skipped.
    pub async fn replicas(&self, live_within: Duration) -> Result<Vec<ReplicaReport>> {
        let script = redis::Script::new(REPLICAS_NOW);
        let (now, entries): (u64, HashMap<String, String>) =
            self.invoke(&script, REPLICAS, &[]).await?;
        let live_ms = u64::try_from(live_within.as_millis()).unwrap_or(u64::MAX);
        let mut live: Vec<ReplicaReport> = entries
            .into_iter()
            .filter_map(|(replica_id, value)| {
                let (at, version) = value.split_once(' ')?;
                let reported_at_ms = at.parse::<u64>().ok()?;
                (now.saturating_sub(reported_at_ms) <= live_ms).then(|| ReplicaReport {
                    replica_id,
                    routing_version: version.to_owned(),
                    reported_at_ms,
                })
            })
            .collect();
        live.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        Ok(live)
    }

    /// Subscribes to [`ROUTING_CHANNEL`] on a connection of its own.
    pub async fn subscribe(&self) -> Result<RoutingChanges> {
        let unavailable = |cause: String| RoutingStoreError::Unavailable {
            address: self.address.clone(),
            cause,
        };
        let subscribing = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(ROUTING_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(CALL_TIMEOUT, subscribing)
            .await
            .map_err(|_| unavailable("no connection".to_owned()))?
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(RoutingChanges {
            messages: Box::pin(pubsub.into_on_message()),
        })
    }
}

/// Versions published on [`ROUTING_CHANNEL`].
pub struct RoutingChanges {
    messages: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = redis::Msg> + Send>>,
}

impl RoutingChanges {
    /// The next published version; `None` when the connection is lost
    /// (messages published until a new subscription are lost: poll).
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let message = self.messages.next().await?;
            if let Ok(version) = message.get_payload::<String>() {
                return Some(version);
            }
        }
    }
}
