//! The routing config shared by replicas on one Redis (issue 5): real
//! `switchboard` binaries on a `redis-server` the harness starts. A reload
//! on one replica is applied by every replica, a bad file changes nothing
//! anywhere, a replica started later runs the version in force rather than
//! its own file, a lost pub/sub message is made up by the poll, and a
//! config this build cannot use is refused (at startup) or takes the
//! replica out of rotation (while running).
//!
//! No hand-off here carries a plan: routing by the shared config across
//! replicas (hand-offs, transfers, a reload) is `routing_redis.rs`.

// Test helpers: failures should panic with their message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchboard_e2e::replicas::*;
use switchboard_e2e::*;
use switchboard_testkit::RedisServer;

/// How long a replica may take to apply a version stored elsewhere: the
/// poll runs every second; pub/sub is normally much faster.
const CONVERGE: Duration = Duration::from_secs(3);

/// A valid routing file; `n` changes its version.
fn routing_text(n: u32) -> String {
    format!(
        "[routing]\ndefault_queue = \"general\"\n\n[queues.general]\npriority = {}\n\n[queues.billing]\nskills = {{ billing = 3 }}\n",
        n % 10
    )
}

/// The version of routing file text, as every replica computes it.
fn version_of(text: &str) -> String {
    switchboard_server::routing::parse("routing.toml", text)
        .unwrap_or_else(|errors| panic!("{errors:?}"))
        .config
        .version()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn get_routing(url: &str) -> GetRoutingResponse {
    admin_at(url)
        .await
        .get_routing(GetRoutingRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// `(replica id, version)` of every live replica `url` lists.
fn listed(routing: &GetRoutingResponse) -> Vec<(String, String)> {
    routing
        .replicas
        .iter()
        .map(|r| (r.replica_id.clone(), r.version.clone()))
        .collect()
}

fn pair(id: &str, version: &str) -> (String, String) {
    (id.to_owned(), version.to_owned())
}

/// Waits until the replica at `url` runs `version`; returns how long that
/// took.
async fn wait_version(url: &str, version: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let routing = get_routing(url).await;
        if routing.version == version {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "replica at {url} still runs {} after {within:?}, not {version}",
            routing.version
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the replica at `url` lists exactly `expected` as live.
async fn wait_listed(url: &str, expected: &[(String, String)], within: Duration) {
    let started = Instant::now();
    loop {
        let routing = get_routing(url).await;
        if listed(&routing) == expected {
            return;
        }
        assert!(
            started.elapsed() < within,
            "replica at {url} lists {:?}, not {expected:?}",
            listed(&routing)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reload_on_one_replica_is_applied_and_reported_by_every_replica() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file_a = write(dir.path(), "a.toml", &routing_text(1));
    let file_b = write(dir.path(), "b.toml", &routing_text(1));
    let v1 = version_of(&routing_text(1));
    let a = routing_replica(&redis, "replica-a", &file_a).await;
    let b = routing_replica(&redis, "replica-b", &file_b).await;

    let both_v1 = [pair("replica-a", &v1), pair("replica-b", &v1)];
    wait_listed(&a.url, &both_v1, WAIT).await;
    let routing = get_routing(&b.url).await;
    assert_eq!(routing.replica_id, "replica-b");
    assert_eq!(routing.version, v1);
    let in_force = routing.in_force.unwrap();
    assert_eq!(in_force.version, v1);
    assert_eq!(
        in_force.activated_by, "replica-a",
        "the first replica seeds it"
    );
    assert_eq!(in_force.source, file_a.display().to_string());
    assert_eq!(listed(&get_routing(&b.url).await), both_v1);

    // A good file reloaded on A: stored, applied on A before the reply, and
    // B reports it within the reload's wait.
    std::fs::write(&file_a, routing_text(2)).unwrap();
    let v2 = version_of(&routing_text(2));
    let started = Instant::now();
    let reply = admin_at(&a.url)
        .await
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert!(reply.applied, "{reply:?}");
    assert_eq!(reply.version, v2);
    assert_eq!(reply.previous_version, v1);
    assert_eq!(reply.replica_id, "replica-a");
    let both_v2 = [pair("replica-a", &v2), pair("replica-b", &v2)];
    let replied: Vec<(String, String)> = reply
        .replicas
        .iter()
        .map(|r| (r.replica_id.clone(), r.version.clone()))
        .collect();
    assert_eq!(
        replied, both_v2,
        "every live replica runs it when the reply comes"
    );
    assert!(took < Duration::from_secs(2), "the reload took {took:?}");
    assert_eq!(get_routing(&b.url).await.version, v2);
    for url in [&a.url, &b.url] {
        let routing = get_routing(url).await;
        assert_eq!(listed(&routing), both_v2);
        let in_force = routing.in_force.unwrap();
        assert_eq!(
            (in_force.version.as_str(), in_force.activated_by.as_str()),
            (v2.as_str(), "replica-a")
        );
    }
    assert!(
        b.log().contains("applied the routing config in force"),
        "{}",
        b.log()
    );

    // A bad file on A: refused naming the problem, nothing changes anywhere.
    std::fs::write(&file_a, "[defaults]\nstrategy = \"fastest\"\n").unwrap();
    let reply = admin_at(&a.url)
        .await
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.applied, "{reply:?}");
    assert_eq!(reply.version, v2);
    assert_eq!(reply.errors.len(), 1, "{reply:?}");
    assert!(reply.errors[0].contains("a.toml:2:"), "{reply:?}");
    assert!(
        reply.errors[0].contains("unknown strategy `fastest`"),
        "{reply:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for url in [&a.url, &b.url] {
        let routing = get_routing(url).await;
        assert_eq!(routing.version, v2);
        assert_eq!(routing.in_force.as_ref().unwrap().version, v2);
        assert_eq!(listed(&routing), both_v2);
    }

    // The same file reloaded on B (its own file, still v1): B's file is put
    // in force for both.
    let reply = admin_at(&b.url)
        .await
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(reply.applied, "{reply:?}");
    assert_eq!(
        (reply.version.as_str(), reply.previous_version.as_str()),
        (v1.as_str(), v2.as_str())
    );
    wait_version(&a.url, &v1, CONVERGE).await;

    // A replica that stops leaves the list at once.
    b.terminate();
    wait_listed(&a.url, &[pair("replica-a", &v1)], WAIT).await;
}

#[tokio::test]
async fn a_replica_started_later_runs_the_version_in_force_not_its_own_file() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = version_of(&routing_text(1));
    let v3 = version_of(&routing_text(3));
    let a = routing_replica(
        &redis,
        "replica-a",
        &write(dir.path(), "a.toml", &routing_text(1)),
    )
    .await;
    let late = routing_replica(
        &redis,
        "replica-late",
        &write(dir.path(), "late.toml", &routing_text(3)),
    )
    .await;

    let routing = get_routing(&late.url).await;
    assert_eq!(
        routing.version, v1,
        "the late replica runs what is in force"
    );
    assert_eq!(routing.in_force.unwrap().version, v1);
    let log = late.log();
    assert!(
        log.contains("ROUTING FILE DIFFERS FROM THE CONFIG IN FORCE"),
        "{log}"
    );
    assert!(log.contains(&v3), "the log names the local version: {log}");
    wait_listed(
        &a.url,
        &[pair("replica-a", &v1), pair("replica-late", &v1)],
        WAIT,
    )
    .await;
    // And its own file goes in force only when reloaded there.
    let reply = admin_at(&late.url)
        .await
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, v3);
    wait_version(&a.url, &v3, CONVERGE).await;
}

#[tokio::test]
async fn a_lost_change_message_is_made_up_by_the_poll() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = routing_replica(
        &redis,
        "replica-a",
        &write(dir.path(), "a.toml", &routing_text(1)),
    )
    .await;
    let b = routing_replica(
        &redis,
        "replica-b",
        &write(dir.path(), "b.toml", &routing_text(1)),
    )
    .await;

    // A new config stored without its message (as when the message went out
    // while the replicas' subscriptions were reconnecting).
    let text = routing_text(4);
    let v4 = version_of(&text);
    let mut connection = redis.connection().await;
    redis::cmd("HSET")
        .arg("sb:routing")
        .arg("version")
        .arg(&v4)
        .arg("text")
        .arg(&text)
        .arg("source")
        .arg("elsewhere.toml")
        .arg("activated_by")
        .arg("replica-x")
        .arg("activated_at_ms")
        .arg("1")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    for url in [&a.url, &b.url] {
        let took = wait_version(url, &v4, CONVERGE).await;
        assert!(took < Duration::from_millis(2_500), "{url} took {took:?}");
    }
    wait_listed(
        &a.url,
        &[pair("replica-a", &v4), pair("replica-b", &v4)],
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn replicas_converge_after_redis_restarts() {
    let mut redis = RedisServer::start_with_aof().await;
    let dir = tempfile::tempdir().unwrap();
    let file_a = write(dir.path(), "a.toml", &routing_text(1));
    let a = routing_replica(&redis, "replica-a", &file_a).await;
    let b = routing_replica(
        &redis,
        "replica-b",
        &write(dir.path(), "b.toml", &routing_text(1)),
    )
    .await;
    let v1 = version_of(&routing_text(1));
    wait_listed(
        &b.url,
        &[pair("replica-a", &v1), pair("replica-b", &v1)],
        WAIT,
    )
    .await;

    // Redis restarts: every subscription breaks. A reload on A right after
    // (retried while A's connection comes back) still reaches B.
    redis.restart().await;
    std::fs::write(&file_a, routing_text(5)).unwrap();
    let v5 = version_of(&routing_text(5));
    let deadline = Instant::now() + WAIT;
    loop {
        match admin_at(&a.url)
            .await
            .reload_routing(ReloadRoutingRequest {})
            .await
        {
            Ok(reply) => {
                assert!(reply.get_ref().applied, "{reply:?}");
                assert_eq!(reply.get_ref().version, v5);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                assert!(Instant::now() < deadline, "reload still failing: {status}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    wait_version(&b.url, &v5, CONVERGE).await;
    wait_listed(
        &b.url,
        &[pair("replica-a", &v5), pair("replica-b", &v5)],
        WAIT,
    )
    .await;

    // Redis restarts empty (its data lost): a replica stores the config it
    // runs again, so a replica started later cannot put another in force.
    let mut connection = redis.connection().await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let routing = get_routing(&a.url).await;
        if routing.in_force.as_ref().is_some_and(|f| f.version == v5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nobody stored the config again: {routing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = routing_replica(
        &redis,
        "replica-late",
        &write(dir.path(), "late.toml", &routing_text(6)),
    )
    .await;
    assert_eq!(get_routing(&late.url).await.version, v5);
}

/// A config a newer build stored that this one cannot parse.
async fn store_unusable(redis: &RedisServer) -> String {
    let text = "[defaults]\nstrategy = \"teleport\"\n";
    let version = "00000000000000ff";
    let mut connection = redis.connection().await;
    redis::cmd("HSET")
        .arg("sb:routing")
        .arg("version")
        .arg(version)
        .arg("text")
        .arg(text)
        .arg("source")
        .arg("newer.toml")
        .arg("activated_by")
        .arg("replica-newer")
        .arg("activated_at_ms")
        .arg("1")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    redis::cmd("PUBLISH")
        .arg("sb:routing:changed")
        .arg(version)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    version.to_owned()
}

#[tokio::test]
async fn a_config_this_build_cannot_use_is_refused_at_startup() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    store_unusable(&redis).await;
    let file = write(dir.path(), "a.toml", &routing_text(1))
        .display()
        .to_string();
    let mut env = settings_env(&fast_settings());
    env.push(("SWITCHBOARD_ROUTING__FILE".into(), file));
    let mut process = ServerProcess::spawn(&["--redis", &redis.url()], env);
    let status = tokio::time::timeout(WAIT, process.child.wait())
        .await
        .expect("the replica exits")
        .unwrap();
    // Give the log reader a moment to drain the pipe.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = process.log();
    assert_eq!(status.code(), Some(64), "{log}");
    assert!(log.contains("cannot be used by this build"), "{log}");
    assert!(log.contains("00000000000000ff"), "{log}");
    assert!(log.contains("replica-newer"), "{log}");
    assert!(log.contains("unknown strategy `teleport`"), "{log}");
}

#[tokio::test]
async fn a_config_this_build_cannot_use_takes_a_running_replica_out_of_rotation() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "a.toml", &routing_text(1));
    let a = routing_replica(&redis, "replica-a", &file).await;
    let v1 = version_of(&routing_text(1));

    let unusable = store_unusable(&redis).await;
    wait_health(&a.url, false, CONVERGE).await;
    let routing = get_routing(&a.url).await;
    assert_eq!(routing.version, v1, "it keeps running what it ran");
    assert_eq!(routing.in_force.as_ref().unwrap().version, unusable);
    assert_eq!(listed(&routing), [pair("replica-a", &v1)]);
    assert!(
        a.log().contains("cannot be used by this build"),
        "{}",
        a.log()
    );

    // A usable file reloaded on it goes in force and it serves again.
    std::fs::write(&file, routing_text(2)).unwrap();
    let reply = admin_at(&a.url)
        .await
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(reply.applied, "{reply:?}");
    assert_eq!(reply.previous_version, unusable);
    wait_health(&a.url, true, CONVERGE).await;
}

#[tokio::test]
async fn concurrent_reloads_on_two_replicas_leave_one_whole_config_in_force() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file_a = write(dir.path(), "a.toml", &routing_text(1));
    let file_b = write(dir.path(), "b.toml", &routing_text(1));
    let a = routing_replica(&redis, "replica-a", &file_a).await;
    let b = routing_replica(&redis, "replica-b", &file_b).await;
    std::fs::write(&file_a, routing_text(7)).unwrap();
    std::fs::write(&file_b, routing_text(8)).unwrap();
    let (va, vb) = (version_of(&routing_text(7)), version_of(&routing_text(8)));
    let (mut admin_a, mut admin_b) = (admin_at(&a.url).await, admin_at(&b.url).await);
    let (ra, rb) = tokio::join!(
        admin_a.reload_routing(ReloadRoutingRequest {}),
        admin_b.reload_routing(ReloadRoutingRequest {}),
    );
    // Each either stored its file or was told another reload got there
    // first (ABORTED); never a mix.
    let mut stored = Vec::new();
    for (result, version) in [(ra, &va), (rb, &vb)] {
        match result {
            Ok(reply) => {
                assert_eq!(&reply.get_ref().version, version);
                stored.push(version.clone());
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Aborted, "{status}");
                assert!(status.message().contains("reload again"), "{status}");
            }
        }
    }
    let in_force = get_routing(&a.url).await.in_force.unwrap().version;
    assert!(
        stored.contains(&in_force),
        "{in_force} in force, stored {stored:?}"
    );
    wait_version(&a.url, &in_force, CONVERGE).await;
    wait_version(&b.url, &in_force, CONVERGE).await;
}

#[tokio::test]
async fn sighup_on_one_replica_reloads_for_every_replica() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file_a = write(dir.path(), "a.toml", &routing_text(1));
    let a = routing_replica(&redis, "replica-a", &file_a).await;
    let b = routing_replica(
        &redis,
        "replica-b",
        &write(dir.path(), "b.toml", &routing_text(1)),
    )
    .await;
    std::fs::write(&file_a, routing_text(9)).unwrap();
    let v9 = version_of(&routing_text(9));
    let pid = a.child.id().unwrap().to_string();
    let hup = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(hup.success());
    wait_version(&b.url, &v9, CONVERGE).await;
    wait_listed(
        &a.url,
        &[pair("replica-a", &v9), pair("replica-b", &v9)],
        WAIT,
    )
    .await;
    assert!(
        a.log().contains("put in force for every replica"),
        "{}",
        a.log()
    );
}
