//! Leases and clocks in Redis mode: after an outage no lease expires until a
//! full lease after it; a normal lapse still requeues; and a replica whose
//! own clock is 10 s fast expires nothing early (deadlines are Redis's).
//!
//! The outage is simulated ([`RedisStore::simulate_outage`]): time passes
//! during which no script reaches the pool, as when Redis is down or every
//! replica is. [`RedisStore::advance_clock`] is time passing with the
//! sweepers running, never an outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use switchboard_core::model::{ConversationState, GoOnline, RosterEntry, Skill};
use switchboard_core::{AgentId, DispatchSettings, OfferId, PoolId};
use switchboard_store::Store;
use switchboard_store::conformance::{agent, cid, handoff};
use switchboard_store_redis::{RedisOptions, RedisStore};
use switchboard_testkit::RedisServer;

const LEASE_MS: i64 = 10_000;

fn settings() -> DispatchSettings {
    DispatchSettings {
        offer_timeout_ms: 5_000,
        offer_delivery_grace_ms: 1_000,
        lease_ms: LEASE_MS,
        heartbeat_interval_ms: 3_000,
        max_wait_ms: 600_000,
        missed_offers_before_away: 3,
        retention_ms: 600_000,
        wrap_up_ms: 0,
    }
}

fn pool() -> PoolId {
    PoolId::parse("pool", "p1").unwrap()
}

async fn connect(server: &RedisServer, options: RedisOptions) -> RedisStore {
    RedisStore::connect_with(&server.url(), settings(), options)
        .await
        .expect("the store connects to its redis-server")
}

/// Options with an outage threshold well above any pause a loaded test
/// machine makes between two calls, and well below the simulated outages.
fn options() -> RedisOptions {
    RedisOptions {
        outage_threshold: Duration::from_secs(5),
        ..RedisOptions::default()
    }
}

/// Alice online with her stream, holding `c1`.
async fn alice_holds_c1(store: &RedisStore) {
    let p = pool();
    store
        .upsert_roster(
            &p,
            RosterEntry {
                agent_id: agent("alice"),
                display_name: "Alice".into(),
                skills: vec![Skill::new("billing", 4)],
                languages: vec!["en".into()],
                max_capacity: 2,
                allowed_regions: vec![],
                attributes: vec![],
                token_epoch: 0,
            },
        )
        .await
        .unwrap();
    store
        .go_online(&p, &agent("alice"), GoOnline::default(), false)
        .await
        .unwrap();
    store.attach_stream(&p, &agent("alice")).await.unwrap();
    store.request(&p, handoff("c1")).await.unwrap();
    let offer = OfferId {
        conversation_id: cid("c1"),
        attempt: 1,
    };
    store.accept(&p, &agent("alice"), &offer).await.unwrap();
}

async fn alice_online(store: &RedisStore) -> bool {
    store
        .agents(&pool())
        .await
        .unwrap()
        .iter()
        .any(|presence| presence.agent_id == agent("alice"))
}

async fn c1(store: &RedisStore) -> (ConversationState, Option<AgentId>, String) {
    let c = store.conversation(&pool(), &cid("c1")).await.unwrap();
    (c.state, c.agent_id, c.reason)
}

#[tokio::test]
async fn no_lease_expires_until_a_full_lease_after_an_outage() {
    let server = RedisServer::start().await;
    let store = connect(&server, options()).await;
    alice_holds_c1(&store).await;
    store.advance_clock(2_000);
    store.sweep().await.unwrap();

    // Nobody reached Redis for three leases: alice could not heartbeat.
    store.simulate_outage(3 * LEASE_MS);
    let back = store.now().await.unwrap();
    let swept = store.sweep().await.unwrap();
    assert!(swept.events.is_empty(), "{:?}", swept.events);
    assert!(
        alice_online(&store).await,
        "the outage is not alice's fault"
    );
    let presence = &store.agents(&pool()).await.unwrap()[0];
    assert!(
        presence.lease_expires.as_millis() >= back.as_millis() + LEASE_MS,
        "the lease runs a full lease from the end of the outage: {} < {} + {LEASE_MS}",
        presence.lease_expires.as_millis(),
        back.as_millis()
    );
    assert_eq!(c1(&store).await.0, ConversationState::Assigned);

    // Almost a lease later (sweepers running): still hers.
    store.advance_clock(LEASE_MS - 1_000);
    store.sweep().await.unwrap();
    assert!(alice_online(&store).await);
    assert_eq!(c1(&store).await.1, Some(agent("alice")));

    // She never came back: a full lease after the outage, it lapses.
    store.advance_clock(1_500);
    store.sweep().await.unwrap();
    assert!(!alice_online(&store).await);
    assert_eq!(
        c1(&store).await,
        (ConversationState::Queued, None, "agent lost".to_owned())
    );
}

#[tokio::test]
async fn a_lease_lapses_as_usual_without_an_outage() {
    let server = RedisServer::start().await;
    // The production threshold: time moved by `advance_clock` is time the
    // sweepers were running through, not an outage.
    let store = connect(&server, RedisOptions::default()).await;
    alice_holds_c1(&store).await;
    store.advance_clock(LEASE_MS + 100);
    let swept = store.sweep().await.unwrap();
    assert!(!swept.events.is_empty());
    assert!(!alice_online(&store).await, "no heartbeat for a lease");
    assert_eq!(
        c1(&store).await,
        (ConversationState::Queued, None, "agent lost".to_owned())
    );
}

#[tokio::test]
async fn a_gap_shorter_than_the_threshold_is_no_outage() {
    let server = RedisServer::start().await;
    let store = connect(&server, options()).await;
    alice_holds_c1(&store).await;
    store.advance_clock(LEASE_MS - 1_000);
    store.sweep().await.unwrap();
    assert!(alice_online(&store).await);
    // 2 s unreached (threshold 5 s) carries the lease past its end.
    store.simulate_outage(2_000);
    store.sweep().await.unwrap();
    assert!(!alice_online(&store).await, "lapsed as usual");
}

/// While the library sees a pool reached within the threshold it does not
/// rewrite `last_contact` at every call (only once the key is a quarter
/// threshold old): a call within the threshold of the one before is no
/// outage even when the key was last written longer ago than that.
#[tokio::test]
async fn a_pool_reached_within_the_threshold_is_in_no_outage() {
    let server = RedisServer::start().await;
    let store = connect(&server, options()).await;
    alice_holds_c1(&store).await;
    store.advance_clock(LEASE_MS - 6_000);
    store.sweep().await.unwrap();
    // 1 s later (threshold 5 s): seen, and the key is not rewritten.
    store.simulate_outage(1_000);
    store.sweep().await.unwrap();
    // 4.5 s after that call, 5.5 s after the key was written.
    store.simulate_outage(4_500);
    let swept = store.sweep().await.unwrap();
    assert!(swept.events.is_empty(), "{:?}", swept.events);
    assert!(alice_online(&store).await);
    // Had that read as an outage, her lease would now run a full lease
    // from it; it ends as it would have.
    store.advance_clock(1_000);
    store.sweep().await.unwrap();
    assert!(!alice_online(&store).await, "lapsed as usual");
}

#[tokio::test]
async fn a_replica_with_a_clock_10_s_fast_expires_nothing_early() {
    let server = RedisServer::start().await;
    let honest = connect(&server, options()).await;
    let skewed = connect(
        &server,
        RedisOptions {
            clock_offset_ms: 10_000,
            ..options()
        },
    )
    .await;
    let p = pool();
    alice_holds_c1(&honest).await;
    // A second conversation offered to alice (5 s to answer); her app
    // shows it.
    honest.request(&p, handoff("c2")).await.unwrap();
    let c2_offer = OfferId {
        conversation_id: cid("c2"),
        attempt: 1,
    };
    skewed
        .offer_delivered(&p, &agent("alice"), &c2_offer)
        .await
        .unwrap();

    // 10 s is past both the offer's deadline and (almost) the lease, on
    // the skewed replica's own clock. It sweeps and serves calls: nothing
    // may expire, because deadlines are Redis's time, not the replica's.
    let swept = skewed.sweep().await.unwrap();
    assert!(swept.events.is_empty(), "{:?}", swept.events);
    let presence = skewed
        .heartbeat(&p, &agent("alice"), None)
        .await
        .unwrap()
        .value;
    let redis_now = honest.now().await.unwrap().as_millis();
    let skewed_now = skewed.now().await.unwrap().as_millis();
    assert!(
        (skewed_now - redis_now).abs() < 1_000,
        "the skewed replica reports Redis's time: {skewed_now} vs {redis_now}"
    );
    assert!(
        presence.lease_expires.as_millis() <= redis_now + LEASE_MS,
        "the lease is Redis's now + lease, not the replica's"
    );
    let c2 = skewed.conversation(&p, &cid("c2")).await.unwrap();
    assert_eq!(
        c2.state,
        ConversationState::Offered,
        "the offer is still open"
    );
    assert_eq!(c1(&skewed).await.1, Some(agent("alice")));

    // When the deadline really comes (moved on the honest store's test
    // clock), the offer does time out: the check above was not vacuous.
    honest.advance_clock(5_100);
    honest.sweep().await.unwrap();
    let c2 = honest.conversation(&p, &cid("c2")).await.unwrap();
    assert_eq!(
        (c2.state, c2.reason.as_str()),
        (ConversationState::Queued, "offer timed out")
    );
}
