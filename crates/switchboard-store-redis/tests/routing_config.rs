//! The routing config in force (`sb:routing`) and the replicas' reports
//! (`sb:replicas`) on a real `redis-server` the harness starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use switchboard_store_redis::routing_config::{
    Activation, NewRouting, REPLICAS, ROUTING, RoutingConfigStore, RoutingStoreError,
};
use switchboard_testkit::RedisServer;

async fn store(server: &RedisServer) -> RoutingConfigStore {
    RoutingConfigStore::connect(&server.url(), "test-redis")
        .await
        .unwrap()
}

fn new<'a>(version: &'a str, text: &'a str, by: &'a str) -> NewRouting<'a> {
    NewRouting {
        version,
        text,
        source: "routing.toml",
        activated_by: by,
    }
}

#[tokio::test]
async fn the_first_config_is_stored_whole_and_read_back() {
    let server = RedisServer::start().await;
    let store = store(&server).await;
    assert_eq!(store.get().await.unwrap(), None);
    assert_eq!(store.version().await.unwrap(), None);

    let stored = store
        .activate(None, new("00000000000000aa", "[routing]\n", "replica-a"))
        .await
        .unwrap();
    assert_eq!(stored, Activation::Stored { previous: None });
    let in_force = store.get().await.unwrap().unwrap();
    assert_eq!(in_force.version, "00000000000000aa");
    assert_eq!(in_force.text, "[routing]\n");
    assert_eq!(in_force.source, "routing.toml");
    assert_eq!(in_force.activated_by, "replica-a");
    assert!(in_force.activated_at_ms > 1_600_000_000_000, "{in_force:?}");
    assert_eq!(
        store.version().await.unwrap().as_deref(),
        Some("00000000000000aa")
    );
}

#[tokio::test]
async fn activation_is_a_compare_and_set_on_the_version_in_force() {
    let server = RedisServer::start().await;
    let store = store(&server).await;
    store
        .activate(None, new("00000000000000aa", "a", "r1"))
        .await
        .unwrap();

    // Two reloads both read `aa`, validated their files, and now store:
    // the first wins, the second is told what is in force and writes nothing.
    let first = store
        .activate(Some("00000000000000aa"), new("00000000000000bb", "b", "r1"))
        .await
        .unwrap();
    assert_eq!(
        first,
        Activation::Stored {
            previous: Some("00000000000000aa".into())
        }
    );
    let second = store
        .activate(Some("00000000000000aa"), new("00000000000000cc", "c", "r2"))
        .await
        .unwrap();
    assert_eq!(
        second,
        Activation::Conflict {
            in_force: Some("00000000000000bb".into())
        }
    );
    let in_force = store.get().await.unwrap().unwrap();
    assert_eq!(
        (in_force.version.as_str(), in_force.text.as_str()),
        ("00000000000000bb", "b")
    );
    assert_eq!(in_force.activated_by, "r1");

    // "None in force" is a version like any other for the comparison.
    assert_eq!(
        store
            .activate(None, new("00000000000000dd", "d", "r2"))
            .await
            .unwrap(),
        Activation::Conflict {
            in_force: Some("00000000000000bb".into())
        }
    );
    // Storing what is already in force writes nothing, whatever was read.
    assert_eq!(
        store
            .activate(Some("00000000000000aa"), new("00000000000000bb", "b", "r2"))
            .await
            .unwrap(),
        Activation::Unchanged
    );
    assert_eq!(store.get().await.unwrap().unwrap().activated_by, "r1");
}

#[tokio::test]
async fn concurrent_activations_from_one_version_store_exactly_one() {
    let server = RedisServer::start().await;
    let store = store(&server).await;
    store
        .activate(None, new("0000000000000000", "base", "r0"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let version = format!("{:016x}", i + 1);
            let text = format!("text {i}");
            let by = format!("r{i}");
            let result = store
                .activate(Some("0000000000000000"), new(&version, &text, &by))
                .await
                .unwrap();
            (version, text, result)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (version, text, result) = task.await.unwrap();
        if matches!(result, Activation::Stored { .. }) {
            winners.push((version, text));
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let in_force = store.get().await.unwrap().unwrap();
    // Never the version of one activation with the text of another.
    assert_eq!((in_force.version, in_force.text), winners[0].clone());
}

#[tokio::test]
async fn an_activation_is_published_to_subscribers() {
    let server = RedisServer::start().await;
    let store = store(&server).await;
    let mut changes = store.subscribe().await.unwrap();
    store
        .activate(None, new("00000000000000aa", "a", "r1"))
        .await
        .unwrap();
    let published = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap();
    assert_eq!(published.as_deref(), Some("00000000000000aa"));
    // A refused activation publishes nothing.
    store
        .activate(None, new("00000000000000bb", "b", "r1"))
        .await
        .unwrap();
    store
        .activate(Some("00000000000000aa"), new("00000000000000cc", "c", "r1"))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap();
    assert_eq!(next.as_deref(), Some("00000000000000cc"));
}

#[tokio::test]
async fn replicas_report_their_version_and_stale_reports_are_not_live() {
    let server = RedisServer::start().await;
    let store = store(&server).await;
    let at = store.report("replica-b", "00000000000000aa").await.unwrap();
    store.report("replica-a", "").await.unwrap();
    let live = store.replicas(Duration::from_secs(5)).await.unwrap();
    let ids: Vec<&str> = live.iter().map(|r| r.replica_id.as_str()).collect();
    assert_eq!(ids, ["replica-a", "replica-b"]);
    assert_eq!(live[0].routing_version, "");
    assert_eq!(live[1].routing_version, "00000000000000aa");
    assert!(live[1].reported_at_ms >= at);

    // A report 30 s old is not live; one older than FORGET_AFTER is deleted
    // by the next report.
    let mut connection = server.connection().await;
    let old = at - 30_000;
    let ancient = at - 120_000;
    redis::cmd("HSET")
        .arg(REPLICAS)
        .arg("replica-old")
        .arg(format!("{old} 00000000000000aa"))
        .arg("replica-gone")
        .arg(format!("{ancient} 00000000000000aa"))
        .arg("replica-garbage")
        .arg("not a report")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let live = store.replicas(Duration::from_secs(5)).await.unwrap();
    assert_eq!(live.len(), 2, "{live:?}");
    let within_a_minute = store.replicas(Duration::from_secs(60)).await.unwrap();
    assert_eq!(within_a_minute.len(), 3, "{within_a_minute:?}");
    store.report("replica-a", "").await.unwrap();
    let remaining: Vec<String> = redis::cmd("HKEYS")
        .arg(REPLICAS)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        !remaining.contains(&"replica-gone".to_owned()),
        "{remaining:?}"
    );
    assert!(
        !remaining.contains(&"replica-garbage".to_owned()),
        "{remaining:?}"
    );
    assert!(
        remaining.contains(&"replica-old".to_owned()),
        "{remaining:?}"
    );

    store.forget("replica-b").await.unwrap();
    let live = store.replicas(Duration::from_secs(5)).await.unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
}

#[tokio::test]
async fn a_malformed_config_names_the_key_and_the_field() {
    let server = RedisServer::start().await;
    let store = store(&server).await;
    let mut connection = server.connection().await;
    redis::cmd("HSET")
        .arg(ROUTING)
        .arg("version")
        .arg("00000000000000aa")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let error = store.get().await.unwrap_err();
    assert!(
        matches!(error, RoutingStoreError::Malformed { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("`sb:routing`"), "{error}");
    assert!(
        error.to_string().contains("field `text` is missing"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_within_the_call_bound() {
    let mut server = RedisServer::start().await;
    let store = store(&server).await;
    server.kill();
    let started = std::time::Instant::now();
    let error = store.version().await.unwrap_err();
    assert!(
        matches!(error, RoutingStoreError::Unavailable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("test-redis"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
