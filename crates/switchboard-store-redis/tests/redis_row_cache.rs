//! The dispatch library keeps decoded rows between calls, keyed by the
//! exact text they were decoded from or written as (`dispatch.lua`, "Decoded
//! rows kept between calls"). A row whose text changed behind its back (a
//! replica of another build writing it during a rolling upgrade, a restore,
//! a hand edit) must be read as Redis holds it, never as kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchboard_core::model::{ConversationState, GoOnline};
use switchboard_core::{DispatchSettings, PoolId, Timestamp};
use switchboard_store::Store;
use switchboard_store::conformance::{agent, cid, entry, handoff, offer};
use switchboard_store_redis::{RedisStore, keys};
use switchboard_testkit::RedisServer;

#[tokio::test]
async fn a_row_written_behind_the_library_is_read_as_redis_holds_it() {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url(), DispatchSettings::default())
        .await
        .expect("the store connects");
    store.pin_clock(Timestamp::from_millis(1_800_000_000_000));
    let p = PoolId::parse("pool", "p1").unwrap();
    store.upsert_roster(&p, entry("alice")).await.unwrap();
    store
        .go_online(&p, &agent("alice"), GoOnline::default(), false)
        .await
        .unwrap();
    store.attach_stream(&p, &agent("alice")).await.unwrap();
    let (offered, _) = store.request(&p, handoff("c1")).await.unwrap().value;
    assert_eq!(offered.state, ConversationState::Offered);
    // Read once more, so the row is kept decoded.
    store.conversation(&p, &cid("c1")).await.unwrap();

    // Another writer changes the row: same document, another reason.
    let mut connection = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}conv:c1", keys::prefix(&p));
    let raw: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut row: serde_json::Value = serde_json::from_str(&raw).unwrap();
    row["reason"] = "written by another build".into();
    row["seq"] = 40.into();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(row.to_string())
        .query_async(&mut connection)
        .await
        .unwrap();

    let read = store.conversation(&p, &cid("c1")).await.unwrap();
    assert_eq!(read.reason, "written by another build");
    assert_eq!(read.seq, 40);
    // A command works from Redis's row too: the accept's event follows the
    // edited sequence number.
    let accepted = store
        .accept(&p, &agent("alice"), &offer("c1", 1))
        .await
        .unwrap()
        .value;
    assert_eq!(accepted.state, ConversationState::Assigned);
    assert_eq!(accepted.seq, 41);
}
