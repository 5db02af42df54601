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

use crate::keys;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    loop {
        if config.shared.pools_changed.swap(false, Ordering::AcqRel) || Instant::now() >= refresh_at
        {
            let pools: Vec<String> = match connection.smembers(keys::POOLS).await {
                Ok(pools) => pools,
                Err(e) => return e,
            };
            for pool in pools {
                positions
                    .entry(keys::events(&pool))
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
        let options = StreamReadOptions::default()
            .block(config.block.as_millis() as usize)
            .count(BATCH);
        let reply: Option<StreamReadReply> =
            match connection.xread_options(&stream_keys, &ids, &options).await {
                Ok(reply) => reply,
                Err(e) => return e,
            };
        let Some(reply) = reply else { continue };
        for stream in reply.keys {
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
    }
}
