//! The event feed reads only the pools this process follows
//! (`Store::follow`), stops reading a pool a linger after its last
//! follower left, and, followed again, starts from the follow: never from
//! where it stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;
use switchboard_core::{DispatchSettings, Event};
use switchboard_store::Store;
use switchboard_store::conformance::{cid, handoff, pool};
use switchboard_store_redis::{RedisOptions, RedisStore};
use switchboard_testkit::RedisServer;
use tokio::sync::broadcast;

/// Every event the feed hands on within `window`.
async fn drain(feed: &mut broadcast::Receiver<Arc<Event>>, window: Duration) -> Vec<Arc<Event>> {
    let mut events = Vec::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(Ok(event)) = tokio::time::timeout_at(end, feed.recv()).await {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn a_replica_reads_only_the_pools_it_follows() {
    let server = RedisServer::start().await;
    let options = RedisOptions {
        outage_threshold: Duration::from_secs(60),
        feed_block: Duration::from_millis(100),
        feed_linger: Duration::from_millis(300),
        ..RedisOptions::default()
    };
    let settings = DispatchSettings::default();
    let writer = RedisStore::connect_with(&server.url(), settings.clone(), options.clone())
        .await
        .expect("the writer connects");
    let reader = RedisStore::connect_with(&server.url(), settings, options)
        .await
        .expect("the reader connects");
    let (p1, p2) = (pool("p1"), pool("p2"));
    let mut feed = reader.subscribe();
    assert!(
        reader.followed_pools().is_empty(),
        "nothing read before a follow"
    );

    let following = reader.follow(&p1).await.unwrap();
    assert_eq!(reader.followed_pools(), ["p1"]);
    writer.request(&p1, handoff("a1")).await.unwrap();
    writer.request(&p2, handoff("b1")).await.unwrap();
    let events = drain(&mut feed, Duration::from_millis(800)).await;
    assert!(
        events
            .iter()
            .any(|e| e.conversation_id() == Some(&cid("a1"))),
        "the followed pool's event arrives: {events:?}"
    );
    assert!(
        events.iter().all(|e| e.pool == p1),
        "no event of a pool nobody here follows: {events:?}"
    );

    // The last follower leaves: the pool is read for the linger, then not.
    drop(following);
    assert_eq!(reader.followed_pools(), ["p1"], "lingering");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !reader.followed_pools().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "p1 still read 5 s after its last follower left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Committed while nobody followed: not replayed by a later follow,
    // which starts at its own moment.
    writer.request(&p1, handoff("a2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _again = reader.follow(&p1).await.unwrap();
    writer.request(&p1, handoff("a3")).await.unwrap();
    let events = drain(&mut feed, Duration::from_millis(800)).await;
    let conversations: Vec<_> = events.iter().filter_map(|e| e.conversation_id()).collect();
    assert_eq!(conversations, [&cid("a3")], "{events:?}");
}

/// `events_in_replies: false` (what the server uses): a command's reply is
/// its value alone, and the feed still carries every event it committed,
/// the same events a store with the default returns in its reply.
#[tokio::test]
async fn without_events_in_replies_the_feed_still_carries_every_event() {
    let server = RedisServer::start().await;
    let options = RedisOptions {
        outage_threshold: Duration::from_secs(60),
        feed_block: Duration::from_millis(100),
        ..RedisOptions::default()
    };
    let settings = DispatchSettings::default();
    let quiet = RedisStore::connect_with(
        &server.url(),
        settings.clone(),
        RedisOptions {
            events_in_replies: false,
            ..options.clone()
        },
    )
    .await
    .expect("the store without events in replies connects");
    let full = RedisStore::connect_with(&server.url(), settings, options)
        .await
        .expect("the store with events in replies connects");
    let p = pool("p1");
    let mut feed = quiet.subscribe();
    let _following = quiet.follow(&p).await.unwrap();

    let from_quiet = quiet.request(&p, handoff("a1")).await.unwrap();
    let from_full = full.request(&p, handoff("b1")).await.unwrap();
    assert!(
        from_quiet.events.is_empty(),
        "no events in the reply: {:?}",
        from_quiet.events
    );
    assert_eq!(from_quiet.value.0.id(), &cid("a1"), "the value is whole");
    assert!(from_quiet.value.1, "created");
    assert!(!from_full.events.is_empty(), "the default reply has events");

    let events = drain(&mut feed, Duration::from_millis(800)).await;
    let of = |id: &str| -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.conversation_id() == Some(&cid(id)))
            .map(|e| Event::clone(e))
            .collect()
    };
    assert_eq!(
        of("b1"),
        from_full.events,
        "the feed carries what a reply carries"
    );
    let queued = of("a1");
    assert_eq!(queued.len(), 1, "a1's event reaches the feed: {events:?}");
    assert!(
        matches!(&queued[0].kind, switchboard_core::event::EventKind::Queued { conversation } if conversation.id() == &cid("a1")),
        "{queued:?}"
    );
}
