//! Load shedding (issue 6): a replica that already has
//! `server.max_pending_handoffs` hand-offs in progress refuses the next one
//! at once with RESOURCE_EXHAUSTED, creates nothing, and admits again as
//! soon as the backlog clears. The backlog is made real: Redis is paused
//! for writes (`CLIENT PAUSE ... WRITE`), so the first hand-off waits in
//! the store exactly as it would behind an overloaded Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use switchboard_e2e::replicas::*;
use switchboard_e2e::*;
use switchboard_testkit::RedisServer;
use tokio::time::Instant;
use tonic::Code;

#[tokio::test]
async fn a_replica_behind_refuses_new_handoffs_and_admits_again_when_it_catches_up() {
    let redis = RedisServer::start().await;
    let replica = start_replica(
        &redis.url(),
        &fault_settings(),
        &[("SWITCHBOARD_SERVER__MAX_PENDING_HANDOFFS", "1")],
    )
    .await;
    let mut gateway = replica.gateway().await;
    // Warm: the pool is registered, the dispatch library loaded.
    let warm = gateway
        .request_agent(handoff("warm-1", "billing", 1))
        .await
        .expect("a hand-off is admitted while nothing is in progress");
    assert!(warm.into_inner().created);

    let mut control = redis.connection().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_500)
        .arg("WRITE")
        .query_async(&mut control)
        .await
        .unwrap();
    let paused_at = Instant::now();
    let mut slow_gateway = gateway.clone();
    let slow = tokio::spawn(async move {
        slow_gateway
            .request_agent(handoff("slow-1", "billing", 1))
            .await
    });
    // Let the slow hand-off reach the store and wait there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!slow.is_finished(), "Redis is paused: the hand-off waits");

    let asked = Instant::now();
    let refused = gateway
        .request_agent(handoff("shed-1", "billing", 1))
        .await
        .expect_err("one hand-off is in progress: the next is shed");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("server.max_pending_handoffs"),
        "the refusal names the setting: {}",
        refused.message()
    );
    assert!(
        asked.elapsed() < Duration::from_millis(700),
        "shed at once, not after the backlog: took {:?}",
        asked.elapsed()
    );
    assert!(
        paused_at.elapsed() < Duration::from_millis(1_500),
        "the refusal came while Redis was still paused"
    );

    // The backlog clears: the admitted hand-off completes normally.
    let slow = slow.await.unwrap().expect("the admitted hand-off succeeds");
    assert!(slow.into_inner().created);
    // The shed one created nothing: its retry is a fresh hand-off.
    let retried = gateway
        .request_agent(handoff("shed-1", "billing", 1))
        .await
        .expect("admitted again once nothing is in progress");
    assert!(
        retried.into_inner().created,
        "the shed request had created nothing"
    );
}
