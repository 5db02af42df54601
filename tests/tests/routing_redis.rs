//! Routing on Redis across replicas: two real `switchboard serve --redis`
//! replicas (A and B) on a `redis-server` the harness starts, sharing one
//! routing file. Customers are handed off through A while the agents'
//! streams are on B (some agents on A too), so the plan A computes is
//! executed by the Redis script and its offers reach B's streams: a
//! relaxation step, a preferred agent, a region, a transfer to a queue
//! routed by that queue's plan (the scenarios of
//! `switchboard_e2e::routing_scenarios`, also run on the embedded store in
//! `routing.rs`), and a reload on A changing who is offered a new hand-off
//! through either replica.

// Test helpers: failures should panic with their message.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchboard_e2e::replicas::*;
use switchboard_e2e::routing_scenarios::{self, agent_at, routing_file, write_routing_file};
use switchboard_e2e::*;
use switchboard_testkit::RedisServer;

/// Replicas A and B, both started with [`routing_file`]`(level)`; A's file
/// is the config in force (A started first). The replicas are declared
/// first so they stop before Redis.
struct Replicas {
    a: ServerProcess,
    b: ServerProcess,
    file_a: PathBuf,
    _dir: tempfile::TempDir,
    _redis: RedisServer,
}

async fn two_replicas(level: u32) -> Replicas {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = routing_file(level);
    let file_a = write_routing_file(dir.path(), "a.toml", &text);
    let file_b = write_routing_file(dir.path(), "b.toml", &text);
    let a = routing_replica(&redis, "replica-a", &file_a).await;
    let b = routing_replica(&redis, "replica-b", &file_b).await;
    let version = |url: String| async move {
        admin_at(&url)
            .await
            .get_routing(GetRoutingRequest {})
            .await
            .unwrap()
            .into_inner()
            .version
    };
    let (version_a, version_b) = (version(a.url.clone()).await, version(b.url.clone()).await);
    assert_eq!(version_a.len(), 16);
    assert_eq!(version_a, version_b, "both replicas run one config");
    Replicas {
        a,
        b,
        file_a,
        _dir: dir,
        _redis: redis,
    }
}

#[tokio::test]
async fn a_relaxation_step_fires_while_the_customer_waits_on_another_replica() {
    let r = two_replicas(4).await;
    routing_scenarios::a_relaxation_step_fires_while_the_customer_waits(&r.a.url, &r.b.url).await;
}

#[tokio::test]
async fn the_preferred_agent_on_the_other_replica_gets_the_first_offer() {
    let r = two_replicas(1).await;
    // The agent idle longer is on the gateway's replica, the preferred one
    // on the other.
    routing_scenarios::a_returning_customer_gets_the_preferred_agent_first(
        &r.a.url, &r.b.url, &r.a.url,
    )
    .await;
}

#[tokio::test]
async fn a_region_refuses_agents_located_elsewhere_on_another_replica() {
    let r = two_replicas(1).await;
    routing_scenarios::a_region_refuses_agents_located_elsewhere(&r.a.url, &r.b.url).await;
}

#[tokio::test]
async fn a_transfer_to_a_queue_follows_the_target_queues_plan_across_replicas() {
    let r = two_replicas(1).await;
    // Handed off and transferred through A (A computes the target plan),
    // re-offered to agents on B.
    routing_scenarios::a_transfer_to_a_queue_follows_the_target_queues_plan(
        &r.a.url, &r.a.url, &r.b.url,
    )
    .await;
}

/// Waits until the replica at `url` runs `version`.
async fn wait_version(url: &str, version: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let running = admin_at(url)
            .await
            .get_routing(GetRoutingRequest {})
            .await
            .unwrap()
            .into_inner()
            .version;
        if running == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica at {url} still runs {running} after {WAIT:?}, not {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reload_on_one_replica_changes_routing_for_new_handoffs_to_agents_on_the_other() {
    let r = two_replicas(4).await;
    // Online in this order, so idle longest first; names sort the same way
    // should two agents ever share a millisecond.
    let mut senior_1 = agent_at(&r.b.url, "senior-1", &[("billing", 3)], None).await;
    let mut senior_2 = agent_at(&r.b.url, "senior-2", &[("billing", 3)], None).await;
    let mut top_expert = agent_at(&r.b.url, "top-expert", &[("billing", 4)], None).await;
    let (mut gateway_a, mut gateway_b) = (gateway_at(&r.a.url).await, gateway_at(&r.b.url).await);

    // Billing 4 required: only the expert qualifies at first.
    gateway_a
        .request_agent(handoff("c1", "billing", 1))
        .await
        .unwrap();
    let offer = top_expert.expect_offer().await;
    assert_eq!(offer.conversation.as_ref().unwrap().conversation_id, "c1");
    top_expert.accept(&offer).await.unwrap();
    top_expert.complete("c1").await.unwrap();

    // Reloaded on A with billing 3: applied on A before the reply, and on
    // B (through Redis) by the time every live replica reports it.
    std::fs::write(&r.file_a, routing_file(3)).unwrap();
    let reply = admin_at(&r.a.url)
        .await
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(reply.applied, "{reply:?}");
    wait_version(&r.b.url, &reply.version).await;

    // A new hand-off through A: the seniors now qualify and the one idle
    // longest is offered it (under billing 4 the free expert would be).
    gateway_a
        .request_agent(handoff("c2", "billing", 1))
        .await
        .unwrap();
    let offer = senior_1.expect_offer().await;
    assert_eq!(offer.conversation.as_ref().unwrap().conversation_id, "c2");
    senior_1.accept(&offer).await.unwrap();
    // And through B, whose plan comes from the config B took from Redis.
    gateway_b
        .request_agent(handoff("c3", "billing", 1))
        .await
        .unwrap();
    let offer = senior_2.expect_offer().await;
    assert_eq!(offer.conversation.as_ref().unwrap().conversation_id, "c3");
    senior_2.accept(&offer).await.unwrap();
    assert!(
        top_expert
            .offer_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the expert, idle the shortest, is offered neither"
    );
}
