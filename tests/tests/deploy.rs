//! The deploy files are used as shipped: the Redis config starts a real
//! `redis-server` with the settings docs/redis.md relies on, and the example
//! server config names that Redis durability contract.

// Test support: failures panic with their message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use switchboard_e2e::free_port;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(path)
}

#[tokio::test]
async fn the_shipped_redis_config_runs_with_aof_and_no_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Command-line options override the file: a free loopback port and a
    // temporary directory instead of 0.0.0.0:6379 and /var/lib/redis.
    let mut child = tokio::process::Command::new("redis-server")
        .arg(deploy("redis/redis.conf"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("`redis-server` must be installed (scripts/test installs it)");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut connection = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let output = child.wait_with_output().await.unwrap();
            panic!(
                "redis-server refused deploy/redis/redis.conf ({status}): {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        if let Ok(c) = client.get_multiplexed_async_connection().await {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server with the deploy config did not answer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (key, expected) in [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("maxmemory-policy", "noeviction"),
    ] {
        let (_, value): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(value, expected, "{key} in deploy/redis/redis.conf");
    }
    child.kill().await.unwrap();
}

#[test]
fn the_deploy_files_point_at_each_other() {
    let compose = std::fs::read_to_string(deploy("compose/compose.yaml")).unwrap();
    assert!(compose.contains("../redis/redis.conf"));
    assert!(compose.contains("SWITCHBOARD_STORE__REDIS_URL"));
    assert!(deploy("compose/Dockerfile").exists());
    let k8s = std::fs::read_to_string(deploy("k8s/switchboard.yaml")).unwrap();
    for kind in [
        "kind: Deployment",
        "kind: Service",
        "kind: PodDisruptionBudget",
    ] {
        assert!(k8s.contains(kind), "{kind} missing from the manifests");
    }
    assert!(k8s.contains("grpc: {port: 50051}"), "gRPC readiness probe");
    let unit = std::fs::read_to_string(deploy("systemd/switchboard.service")).unwrap();
    assert!(unit.contains("RestartPreventExitStatus=64"));
}
