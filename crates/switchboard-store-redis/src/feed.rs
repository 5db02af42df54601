//! The event feed: per pool that something in this process follows (an
//! agent stream, a gateway watch: [`Store::follow`]), a background task
//! reads the pool's event stream and republishes the events on one
//! broadcast channel, so a replica's streams learn of changes made by any
//! replica.
//!
//! # Design
//!
//! - Only followed pools are read. Seen on 23 Nov 2026: with every replica
//!   reading every pool's stream, two replicas serving one pool each both
//!   read (and Redis sent both) both pools' events, ~1 KB each; each
//!   replica's feed cost grew with the whole deployment's throughput, not
//!   with its own, and with each replica held to the same CPU budget two
//!   replicas completed 1.34× what one did instead of 1.58× when each read
//!   only its own pool (docs/performance.md).
//! - One task and one connection per followed pool: `XREAD BLOCK` holds a
//!   connection until data or the timeout, which would stall every command
//!   behind it on the shared multiplexed one; and Redis writes a large
//!   reply at most 64 KiB per event-loop turn per connection, so busy
//!   pools do not queue behind each other on one.
//! - A pool is read from a position, not from "now": [`Feed::join`] starts
//!   it just before a Redis `TIME` taken before the follower reads its
//!   snapshot (stream ids are Redis milliseconds and never go backwards),
//!   so nothing committed after the snapshot is missed. The task keeps its
//!   last id across reconnects, so an outage delays events but loses none
//!   (unless the stream was trimmed past them).
//! - When the last follower of a pool leaves, its task lingers (a stream
//!   that reconnects at once finds it still running, with no replay), then
//!   stops.
//! - Each task measures how far behind it runs; [`Feed::lag`] is the worst
//!   (read by `Store::feed_lag`): an offer reaches its agent's stream only
//!   through this feed, so a feed a second behind makes every offer late
//!   to be marked delivered, however healthy the streams. Each read is
//!   pipelined after a `TIME`, so the age of the oldest entry read is
//!   measured on Redis's clock (entry ids are Redis milliseconds) plus the
//!   local time the read and hand-on took: no replica clock is compared
//!   with Redis's.
//!
//! [`Store::follow`]: switchboard_store::Store::follow

use crate::keys;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::Event;
use switchboard_store::Following;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// How long to wait before reconnecting, at first and at most.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Entries fetched per XREAD.
const BATCH: usize = 512;

/// The milliseconds of a stream entry id (`<ms>-<seq>`).
fn id_millis(id: &str) -> Option<i64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// How far behind a read ran: `read_at_ms` (Redis's clock when the read
/// was served) minus the oldest entry's time, plus the local time from
/// sending the read to having handed its entries on. When the read
/// blocked, the first part is minus the wait for the entry, which the
/// second part contains: what remains is the time since it was committed.
fn read_lag(read_at_ms: i64, oldest_ms: i64, took: Duration) -> Duration {
    let took_ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
    let lag = read_at_ms.saturating_sub(oldest_ms).saturating_add(took_ms);
    Duration::from_millis(u64::try_from(lag).unwrap_or(0))
}

/// The stream id a pool joined at Redis time `redis_ms` is read after:
/// XREAD returns ids greater than it, so every entry of that millisecond
/// (committed before or after the `TIME`) and later is read.
fn start_id(redis_ms: i64) -> String {
    format!("{}-{}", redis_ms.saturating_sub(1), u64::MAX)
}

pub struct FeedConfig {
    pub client: redis::Client,
    pub sender: broadcast::Sender<Arc<Event>>,
    pub block: Duration,
    pub connection_timeout: Duration,
    /// How long a pool's task keeps reading after its last follower left.
    pub linger: Duration,
}

/// The followed pools and their tasks. Dropping it stops every task.
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    config: FeedConfig,
    /// A `std` mutex: held for a lookup or an update, never across an
    /// `.await`.
    pools: Mutex<HashMap<String, PoolFeed>>,
}

struct PoolFeed {
    followers: usize,
    /// When the last follower left (while `followers` is 0).
    idle_since: Option<Instant>,
    /// This pool's lag at its last read, in ms (0 after a read that found
    /// nothing new).
    lag_ms: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

impl PoolFeed {
    fn add_follower(&mut self) {
        self.followers += 1;
        self.idle_since = None;
    }
}

/// One follower of one pool; dropping it leaves.
struct FollowGuard {
    inner: Arc<Inner>,
    pool: String,
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        if let Ok(mut pools) = self.inner.pools.lock()
            && let Some(feed) = pools.get_mut(&self.pool)
        {
            feed.followers = feed.followers.saturating_sub(1);
            if feed.followers == 0 {
                feed.idle_since = Some(Instant::now());
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Ok(pools) = self.inner.pools.lock() {
            for feed in pools.values() {
                feed.task.abort();
            }
        }
    }
}

impl Feed {
    pub fn new(config: FeedConfig) -> Feed {
        Feed {
            inner: Arc::new(Inner {
                config,
                pools: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.config.sender.subscribe()
    }

    /// Joins `pool` if its task runs already (no position needed).
    pub fn try_join(&self, pool: &str) -> Option<Following> {
        let mut pools = self.inner.pools.lock().ok()?;
        pools.get_mut(pool)?.add_follower();
        Some(self.guard(pool))
    }

    /// Joins `pool`, starting its task if none runs, reading from Redis
    /// time `redis_ms` (a `TIME` this process received before the follower
    /// reads its snapshot).
    pub fn join(&self, pool: &str, redis_ms: i64) -> Following {
        if let Ok(mut pools) = self.inner.pools.lock() {
            match pools.get_mut(pool) {
                Some(feed) => feed.add_follower(),
                None => {
                    let lag_ms = Arc::new(AtomicU64::new(0));
                    let task = tokio::spawn(run(
                        self.inner.clone(),
                        pool.to_owned(),
                        start_id(redis_ms),
                        lag_ms.clone(),
                    ));
                    pools.insert(
                        pool.to_owned(),
                        PoolFeed {
                            followers: 1,
                            idle_since: None,
                            lag_ms,
                            task: task.abort_handle(),
                        },
                    );
                }
            }
        }
        self.guard(pool)
    }

    fn guard(&self, pool: &str) -> Following {
        Following::guard(FollowGuard {
            inner: self.inner.clone(),
            pool: pool.to_owned(),
        })
    }

    /// The worst lag of the pools read now.
    pub fn lag(&self) -> Duration {
        let worst = self.inner.pools.lock().map_or(0, |pools| {
            pools
                .values()
                .map(|feed| feed.lag_ms.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0)
        });
        Duration::from_millis(worst)
    }

    /// The pools read now (followed, or lingering), sorted.
    pub fn pools(&self) -> Vec<String> {
        let mut pools: Vec<String> = self
            .inner
            .pools
            .lock()
            .map(|pools| pools.keys().cloned().collect())
            .unwrap_or_default();
        pools.sort();
        pools
    }
}

impl Inner {
    /// True (and the pool forgotten) once nobody followed it for the
    /// linger: checked under the lock, so a follower joining meanwhile
    /// either finds the task running or starts a new one.
    fn done_with(&self, pool: &str) -> bool {
        let Ok(mut pools) = self.pools.lock() else {
            return true;
        };
        let done = pools.get(pool).is_none_or(|feed| {
            feed.followers == 0
                && feed
                    .idle_since
                    .is_some_and(|since| since.elapsed() >= self.config.linger)
        });
        if done {
            pools.remove(pool);
        }
        done
    }
}

/// One pool's task: reads until nobody follows the pool.
async fn run(inner: Arc<Inner>, pool: String, mut position: String, lag_ms: Arc<AtomicU64>) {
    let key = keys::events(&pool);
    let mut backoff = BACKOFF_MIN;
    let config = &inner.config;
    loop {
        let connection = config
            .client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.connection_timeout))
                    // Longer than the block, or every idle read would time out.
                    .set_response_timeout(Some(config.block + config.connection_timeout)),
            )
            .await;
        let error = match connection {
            Ok(mut connection) => {
                backoff = BACKOFF_MIN;
                match follow(&inner, &pool, &key, &mut connection, &mut position, &lag_ms).await {
                    Some(error) => error,
                    None => return,
                }
            }
            Err(e) => e,
        };
        tracing::warn!(pool = %pool, error = %error, retry_in_ms = backoff.as_millis() as u64, "event feed lost redis; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if inner.done_with(&pool) {
            return;
        }
    }
}

/// Reads until the connection fails (its error) or nobody follows the
/// pool any more (`None`).
async fn follow(
    inner: &Inner,
    pool: &str,
    key: &str,
    connection: &mut MultiplexedConnection,
    position: &mut String,
    lag_ms: &AtomicU64,
) -> Option<redis::RedisError> {
    let config = &inner.config;
    loop {
        if inner.done_with(pool) {
            return None;
        }
        // TIME first, in the same pipeline: Redis's clock when the read is
        // served (unless it blocks, see `read_lag`).
        let mut read = redis::pipe();
        read.cmd("TIME")
            .cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(key)
            .arg(position.as_str());
        let sent = Instant::now();
        let ((seconds, micros), reply): ((i64, i64), Option<StreamReadReply>) =
            match read.query_async(connection).await {
                Ok(reply) => reply,
                Err(e) => return Some(e),
            };
        let Some(reply) = reply else {
            // Nothing new within the block: not behind.
            lag_ms.store(0, Ordering::Relaxed);
            continue;
        };
        let read_at_ms = seconds * 1000 + micros / 1000;
        let mut oldest_ms: Option<i64> = None;
        for stream in reply.keys {
            if oldest_ms.is_none() {
                oldest_ms = stream.ids.first().and_then(|entry| id_millis(&entry.id));
            }
            let mut last = None;
            for entry in stream.ids {
                // Nobody subscribed: only move the position.
                if config.sender.receiver_count() > 0 {
                    match entry
                        .get::<String>("event")
                        .map(|raw| serde_json::from_str::<Event>(&raw))
                    {
                        Some(Ok(event)) => {
                            // A send fails only when nobody listens.
                            let _ = config.sender.send(Arc::new(event));
                        }
                        Some(Err(e)) => {
                            tracing::error!(stream = %stream.key, id = %entry.id, error = %e, "unreadable event skipped")
                        }
                        None => {
                            tracing::error!(stream = %stream.key, id = %entry.id, "stream entry without an event skipped")
                        }
                    }
                }
                last = Some(entry.id);
            }
            if let Some(last) = last {
                *position = last;
            }
        }
        if let Some(oldest_ms) = oldest_ms {
            let lag = read_lag(read_at_ms, oldest_ms, sent.elapsed());
            lag_ms.store(
                u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_give_their_milliseconds() {
        assert_eq!(id_millis("1795457543123-5"), Some(1_795_457_543_123));
        assert_eq!(id_millis("1795457543123"), Some(1_795_457_543_123));
        assert_eq!(id_millis("x-1"), None);
    }

    #[test]
    fn a_pool_joined_at_a_millisecond_is_read_from_that_millisecond_on() {
        let start = start_id(1_795_457_543_123);
        assert_eq!(start, format!("1795457543122-{}", u64::MAX));
        // XREAD returns ids greater than the start: the first entry of
        // the joining millisecond is one, the last of the one before not.
        let after = |id: (i64, u64)| {
            let (ms, seq) = start.split_once('-').unwrap_or_default();
            let (ms, seq): (i64, u64) = (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0));
            id > (ms, seq)
        };
        assert!(after((1_795_457_543_123, 0)));
        assert!(!after((1_795_457_543_122, u64::MAX)));
    }

    #[test]
    fn read_lag_is_the_age_of_the_oldest_entry_when_handed_on() {
        let ms = Duration::from_millis;
        // A backlog: the oldest entry was 1,200 ms old when the read was
        // served, and reading and handing on took 300 ms more.
        assert_eq!(read_lag(10_000, 8_800, ms(300)), ms(1_500));
        // A read that blocked 400 ms for an entry committed 400 ms after
        // the TIME, handed on 5 ms after that.
        assert_eq!(read_lag(10_000, 10_400, ms(405)), ms(5));
        // Never negative (clock granularity).
        assert_eq!(read_lag(10_000, 10_400, ms(399)), Duration::ZERO);
    }
}
