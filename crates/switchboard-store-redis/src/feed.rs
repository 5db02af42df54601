//! The event feed: a background task that follows every pool's event stream
//! and republishes the events on a broadcast channel, so a replica's agent
//! and watch streams learn of changes made by any replica.
//!
//! # Design
//!
//! - Its own connection: `XREAD BLOCK` holds a connection until data or the
//!   timeout, which would stall every command behind it on the shared
//!   multiplexed one.
//! - It reads from positions, not from "now": it starts at the Redis time
//!   the store connected (stream ids are Redis milliseconds), keeps the last
//!   id per pool, and after a reconnect continues from there, so an outage
//!   delays events but loses none (unless the stream was trimmed past them).
//!   A pool discovered later starts at the same time, so its first events are
//!   not missed either.
//! - The set of pools is re-read when this process registers a new pool and
//!   every few seconds (pools other replicas created).
//! - It measures how far behind it runs ([`FeedShared::lag_ms`], read by
//!   `Store::feed_lag`): an offer reaches its agent's stream only through
//!   this feed, so a feed a second behind makes every offer late to be
//!   marked delivered, however healthy the streams. Each read is pipelined
//!   after a `TIME`, so the age of the oldest entry read is measured on
//!   Redis's clock (entry ids are Redis milliseconds) plus the local time
//!   the read and hand-on took: no replica clock is compared with Redis's.
//!   Seen on 23 Nov 2026 with two replicas on one Redis: each feed read
//!   both pools' events (~1 KB each), fell 1-2.4 s behind while neither
//!   the runtime nor Redis was saturated, and offers were withdrawn as
//!   undelivered by the thousand.

use crate::keys;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use switchboard_core::Event;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

/// How long to wait before reconnecting, at first and at most.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Pools created elsewhere are noticed within this.
const POOL_REFRESH: Duration = Duration::from_secs(2);
/// Entries fetched per XREAD.
const BATCH: usize = 512;

/// What the store shares with its feed task.
pub struct FeedShared {
    /// Set (and the task woken) when this process registers a new pool.
    pub pools_changed: AtomicBool,
    pub wake: Notify,
    /// How far behind the feed ran at its last read, in ms: the age of the
    /// oldest entry that read returned, when the read had been handed on
    /// (0 after a read that found nothing new).
    pub lag_ms: AtomicU64,
}

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

pub struct FeedConfig {
    pub client: redis::Client,
    pub sender: broadcast::Sender<Arc<Event>>,
    pub shared: Arc<FeedShared>,
    /// The stream id to start every pool at (`<redis ms>-0`).
    pub start_id: String,
    pub block: Duration,
    pub connection_timeout: Duration,
}

/// Aborts the feed task when the store is dropped: the task owns nothing
/// but its connection, so stopping it mid-read loses nothing.
pub struct FeedTask(pub tokio::task::JoinHandle<()>);

impl Drop for FeedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn spawn(config: FeedConfig) -> FeedTask {
    FeedTask(tokio::spawn(run(config)))
}

async fn run(config: FeedConfig) {
    // Stream key → last id seen. Survives reconnects.
    let mut positions: HashMap<String, String> = HashMap::new();
    let mut backoff = BACKOFF_MIN;
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
                follow(&config, &mut connection, &mut positions).await
            }
            Err(e) => e,
        };
        tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "event feed lost redis; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads until the connection fails; returns the error.
async fn follow(
    config: &FeedConfig,
    connection: &mut MultiplexedConnection,
    positions: &mut HashMap<String, String>,
) -> redis::RedisError {
    // Re-read the pools at once after a (re)connect.
    let mut refresh_at = Instant::now();
    // Per stream, the Redis time from which its entries count for the lag:
    // a pool found later (another replica created it) starts at the feed's
    // start like the others, but what it had before this feed knew of it is
    // a backlog nobody here waited for, not lag (it made a replica shed for
    // its first seconds).
    let mut lag_counts_from: HashMap<String, i64> = HashMap::new();
    let mut last_read_at_ms = id_millis(&config.start_id).unwrap_or(0);
    loop {
        if config.shared.pools_changed.swap(false, Ordering::AcqRel) || Instant::now() >= refresh_at
        {
            let pools: Vec<String> = match connection.smembers(keys::POOLS).await {
                Ok(pools) => pools,
                Err(e) => return e,
            };
            for pool in pools {
                let key = keys::events(&pool);
                lag_counts_from
                    .entry(key.clone())
                    .or_insert(last_read_at_ms);
                positions
                    .entry(key)
                    .or_insert_with(|| config.start_id.clone());
            }
            refresh_at = Instant::now() + POOL_REFRESH;
        }
        if positions.is_empty() {
            // Nothing to follow yet: wait for a pool (ours or another's).
            let _ = tokio::time::timeout(config.block, config.shared.wake.notified()).await;
            continue;
        }
        let (stream_keys, ids): (Vec<&String>, Vec<&String>) = positions.iter().unzip();
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
            .arg(&stream_keys)
            .arg(&ids);
        let sent = Instant::now();
        let ((seconds, micros), reply): ((i64, i64), Option<StreamReadReply>) =
            match read.query_async(connection).await {
                Ok(reply) => reply,
                Err(e) => return e,
            };
        let Some(reply) = reply else {
            // Nothing new within the block: not behind.
            config.shared.lag_ms.store(0, Ordering::Relaxed);
            continue;
        };
        let read_at_ms = seconds * 1000 + micros / 1000;
        last_read_at_ms = last_read_at_ms.max(read_at_ms);
        let mut oldest_ms: Option<i64> = None;
        for stream in reply.keys {
            let counts_from = lag_counts_from.get(&stream.key).copied().unwrap_or(0);
            if let Some(first) = stream
                .ids
                .iter()
                .filter_map(|entry| id_millis(&entry.id))
                .find(|ms| *ms >= counts_from)
            {
                oldest_ms = Some(oldest_ms.map_or(first, |o| o.min(first)));
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
                positions.insert(stream.key, last);
            }
        }
        if let Some(oldest_ms) = oldest_ms {
            let lag = read_lag(read_at_ms, oldest_ms, sent.elapsed());
            let lag_ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
            config.shared.lag_ms.store(lag_ms, Ordering::Relaxed);
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
