//! The conformance suite against the Redis store, each test on its own
//! `redis-server`. Time moves through the store's test-only clock offset
//! (added to Redis's TIME inside the scripts), so nothing sleeps.
//!
//! The suite runs twice: with the store writing MessagePack rows and its
//! second replica JSON ones, and the other way round (`json_rows`), so both
//! formats run every check and each replica reads the other's rows, as
//! during a rolling upgrade with `store.redis_row_format = "json"`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::DispatchSettings;
use switchboard_core::Timestamp;
use switchboard_core::model::{ConversationState, GoOnline};
use switchboard_store::conformance::Harness;
use switchboard_store::conformance::{agent, cid, entry, handoff, offer, online_with_stream, pool};
use switchboard_store::{ManualClock, MemoryStore, Store};
use switchboard_store_redis::{RedisOptions, RedisStore, RowFormat};
use switchboard_testkit::RedisServer;

struct RedisHarness {
    // Dropped first: the store's feed task stops before the server dies.
    store: Arc<RedisStore>,
    /// A second replica on the same Redis.
    replica: Arc<RedisStore>,
    _server: RedisServer,
}

#[async_trait]
impl Harness for RedisHarness {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn replica(&self) -> Arc<dyn Store> {
        self.replica.clone()
    }

    async fn advance(&self, ms: i64) {
        self.store.advance_clock(ms);
        self.replica.advance_clock(ms);
    }
}

fn options(row_format: RowFormat) -> RedisOptions {
    // No sweeper runs between the calls of a check, so a loaded machine
    // pausing the test for a second must not read as a Redis outage (which
    // extends leases; tests/redis_outage.rs covers that).
    RedisOptions {
        outage_threshold: Duration::from_secs(60),
        row_format,
        ..RedisOptions::default()
    }
}

async fn harness_with(
    settings: DispatchSettings,
    store_rows: RowFormat,
    replica_rows: RowFormat,
) -> RedisHarness {
    let server = RedisServer::start().await;
    let store = RedisStore::connect_with(&server.url(), settings.clone(), options(store_rows))
        .await
        .expect("the store connects to its redis-server");
    let replica = RedisStore::connect_with(&server.url(), settings, options(replica_rows))
        .await
        .expect("the replica connects to its redis-server");
    RedisHarness {
        store: Arc::new(store),
        replica: Arc::new(replica),
        _server: server,
    }
}

async fn redis_harness(settings: DispatchSettings) -> RedisHarness {
    harness_with(settings, RowFormat::Msgpack, RowFormat::Json).await
}

switchboard_store::conformance_suite!(redis_harness);

mod json_rows {
    use super::*;

    async fn json_harness(settings: DispatchSettings) -> RedisHarness {
        harness_with(settings, RowFormat::Json, RowFormat::Msgpack).await
    }

    switchboard_store::conformance_suite!(json_harness);
}

/// Whether the row as stored is JSON (`{` first) or MessagePack (a
/// map: 0x80..=0x8f, 0xde or 0xdf first).
async fn stored_row(server: &RedisServer, key: &str) -> RowFormat {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    match raw.first() {
        Some(b'{') => RowFormat::Json,
        Some(0x80..=0x8f | 0xde | 0xdf) => RowFormat::Msgpack,
        other => panic!("{key}: neither JSON nor a MessagePack map: starts with {other:?}"),
    }
}

/// One hand-off whose steps alternate between a replica writing JSON rows
/// (as builds before MessagePack rows do) and one writing MessagePack:
/// every step reads the row the other wrote, and writes its own format.
#[tokio::test]
async fn replicas_writing_either_row_format_read_each_others_rows() {
    let server = RedisServer::start().await;
    let url = server.url();
    let connect = |rows| RedisStore::connect_with(&url, DispatchSettings::default(), options(rows));
    let json = connect(RowFormat::Json).await.unwrap();
    let msgpack = connect(RowFormat::Msgpack).await.unwrap();
    let p = pool("p1");
    let alice = agent("alice");
    let agent_key = "sb:{p1}:agent:alice";
    let conv_key = "sb:{p1}:conv:c1";

    json.upsert_roster(&p, entry("alice")).await.unwrap();
    json.go_online(&p, &alice, GoOnline::default(), false)
        .await
        .unwrap();
    assert_eq!(stored_row(&server, agent_key).await, RowFormat::Json);
    msgpack.attach_stream(&p, &alice).await.unwrap();
    assert_eq!(stored_row(&server, agent_key).await, RowFormat::Msgpack);

    let (offered, _) = json.request(&p, handoff("c1")).await.unwrap().value;
    assert_eq!(offered.state, ConversationState::Offered);
    assert_eq!(offered.agent_id.as_ref(), Some(&alice));
    assert_eq!(stored_row(&server, conv_key).await, RowFormat::Json);
    assert_eq!(stored_row(&server, agent_key).await, RowFormat::Json);
    let offer = offer("c1", 1);
    msgpack.offer_delivered(&p, &alice, &offer).await.unwrap();
    assert_eq!(stored_row(&server, conv_key).await, RowFormat::Msgpack);
    let assigned = json.accept(&p, &alice, &offer).await.unwrap().value;
    assert_eq!(assigned.state, ConversationState::Assigned);
    assert_eq!(*assigned.handoff, handoff("c1"));
    assert_eq!(stored_row(&server, conv_key).await, RowFormat::Json);
    msgpack.heartbeat(&p, &alice, None).await.unwrap();
    assert_eq!(stored_row(&server, agent_key).await, RowFormat::Msgpack);
    let done = msgpack
        .complete(&p, &alice, &cid("c1"), "resolved")
        .await
        .unwrap()
        .value;
    assert_eq!(done.state, ConversationState::Completed);
    assert_eq!(
        *done.handoff,
        handoff("c1"),
        "the hand-off survives both formats byte for byte"
    );

    // Both read the same conversation and the same agent.
    let seen_by_json = json.conversation(&p, &cid("c1")).await.unwrap();
    let seen_by_msgpack = msgpack.conversation(&p, &cid("c1")).await.unwrap();
    assert_eq!(seen_by_json, seen_by_msgpack);
    assert_eq!(seen_by_json.state, ConversationState::Completed);
    // The same shift from both (`online_ms` is measured at each call, on
    // Redis's clock, so it is left out).
    let shifts = |views: Vec<switchboard_core::model::ShiftView>| {
        views
            .into_iter()
            .map(|view| (view.agent_id, view.online, view.shift, view.quality))
            .collect::<Vec<_>>()
    };
    let shifts_by_json = shifts(json.shift_stats(&p).await.unwrap());
    assert_eq!(
        shifts_by_json,
        shifts(msgpack.shift_stats(&p).await.unwrap())
    );
    assert_eq!(shifts_by_json[0].2.completed, 1);
}

/// The wait estimate counts the last 64 first offers, as the engine's
/// window does, although Redis keeps up to 128 offer times (trimmed in
/// bulk): 6 offers, 10 s, then 64 offers 5 ms apart give one estimate in
/// both stores, the one the last 64 make (all 70 would make ~150 ms).
#[tokio::test]
async fn the_wait_estimate_counts_the_last_64_first_offers() {
    let long = 600_000;
    let settings = DispatchSettings {
        offer_timeout_ms: long,
        offer_delivery_grace_ms: long,
        lease_ms: long,
        max_wait_ms: long,
        ..DispatchSettings::default()
    };
    let start = 1_700_000_000_000;
    let server = RedisServer::start().await;
    let redis =
        RedisStore::connect_with(&server.url(), settings.clone(), options(RowFormat::Msgpack))
            .await
            .unwrap();
    redis.pin_clock(Timestamp::from_millis(start));
    let clock = ManualClock::new(start);
    let memory = MemoryStore::new(settings, Arc::new(clock.clone()));
    let stores: [&dyn Store; 2] = [&redis, &memory];
    let advance = |ms: i64| {
        redis.advance_clock(ms);
        clock.advance(ms);
    };
    let p = pool("p1");
    for i in 0..70 {
        let id = format!("a{i:02}");
        for store in stores {
            online_with_stream(store, &p, &id).await;
        }
        advance(1);
    }
    for i in 0..70 {
        advance(if i == 6 { 10_000 } else { 5 });
        for store in stores {
            let (c, _) = store
                .request(&p, handoff(&format!("c{i:02}")))
                .await
                .unwrap()
                .value;
            assert_eq!(c.state, ConversationState::Offered, "c{i:02}");
        }
    }
    let mut waits = Vec::new();
    for store in stores {
        let (late, _) = store.request(&p, handoff("late")).await.unwrap().value;
        assert_eq!(late.state, ConversationState::Queued);
        waits.push(late.expected_wait_ms);
    }
    // The last 64 span 63 × 5 ms: 64 offers in 315 ms, one every ~4.9 ms.
    assert_eq!(waits, [5, 5], "redis, memory");
}
