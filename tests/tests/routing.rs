//! End-to-end tests of the routing file over real gRPC with the embedded
//! store: a relaxation step firing while a customer waits, a returning
//! customer's preferred agent getting the first offer, a region refusing an
//! agent located elsewhere, a transfer to a queue routed by that queue's
//! plan (these four are the scenarios of `switchboard_e2e::routing_scenarios`,
//! run on Redis replicas too in `routing_redis.rs`), reloads (good and bad)
//! through AdminService and SIGHUP, regions of connected agents re-resolved
//! at a reload; with the real binary, a bad file refused at startup with
//! exit code 64.

// Test helpers: failures should panic with their message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};
use switchboard_auth::{Keyring, Role};
use switchboard_e2e::routing_scenarios::{
    self, MUNICH, agent_at, routing_file, write_routing_file,
};
use switchboard_e2e::*;
use tonic::Code;

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    write_routing_file(dir, "routing.toml", text)
}

/// An in-process server (embedded store) with [`routing_file`]`(level)`,
/// and the path of its file.
async fn server_with_routing_file(dir: &Path, level: u32) -> (TestServer, std::path::PathBuf) {
    let path = write(dir, &routing_file(level));
    let server = TestServer::start_with_routing(fast_settings(), &path).await;
    (server, path)
}

#[tokio::test]
async fn a_relaxation_step_fires_while_the_customer_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_with_routing_file(dir.path(), 4).await;
    let url = server.url();
    routing_scenarios::a_relaxation_step_fires_while_the_customer_waits(&url, &url).await;
    server.stop().await;
}

#[tokio::test]
async fn a_returning_customer_gets_the_preferred_agent_first() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_with_routing_file(dir.path(), 1).await;
    let url = server.url();
    routing_scenarios::a_returning_customer_gets_the_preferred_agent_first(&url, &url, &url).await;
    server.stop().await;
}

#[tokio::test]
async fn a_region_refuses_agents_located_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_with_routing_file(dir.path(), 1).await;
    let url = server.url();
    routing_scenarios::a_region_refuses_agents_located_elsewhere(&url, &url).await;
    server.stop().await;
}

#[tokio::test]
async fn a_transfer_to_a_queue_follows_the_target_queues_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_with_routing_file(dir.path(), 1).await;
    let url = server.url();
    routing_scenarios::a_transfer_to_a_queue_follows_the_target_queues_plan(&url, &url, &url).await;
    server.stop().await;
}

/// [`routing_file`] with `berlin` drawn around Munich instead.
fn routing_file_berlin_moved_to_munich() -> String {
    routing_file(1).replace(
        "POLYGON((13.08 52.34, 13.76 52.34, 13.76 52.68, 13.08 52.68, 13.08 52.34))",
        "POLYGON((11.3 48.0, 11.8 48.0, 11.8 48.3, 11.3 48.3, 11.3 48.0))",
    )
}

#[tokio::test]
async fn a_reload_re_resolves_the_regions_of_connected_agents_from_their_last_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &routing_file(1));
    let server = TestServer::start_with_routing(fast_settings(), &path).await;
    let mut munich = agent_at(&server.url(), "munich", &[("billing", 3)], Some(MUNICH)).await;
    // Went online in Munich, then again without a location: from then on it
    // has none (`agents_without_location` = exclude), whatever it said before.
    let mut forgetful = agent_at(&server.url(), "forgetful", &[("billing", 3)], Some(MUNICH)).await;
    forgetful
        .client
        .go_online(GoOnlineRequest {
            skills: vec![Skill {
                name: "billing".into(),
                level: 3,
            }],
            languages: vec!["en".into()],
            capacity: 1,
            location: None,
        })
        .await
        .unwrap();
    let mut gateway = server.gateway().await;
    for id in ["c1", "c2"] {
        let mut request = handoff(id, "billing", 1);
        request.region = "berlin".into();
        gateway.request_agent(request).await.unwrap();
    }
    assert!(
        munich
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );

    // `berlin` now covers Munich: the Munich agent is re-resolved into it
    // at the reload, with no heartbeat, and offered a waiting conversation.
    std::fs::write(&path, routing_file_berlin_moved_to_munich()).unwrap();
    let mut admin = server.admin().await;
    let reply = admin
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(reply.applied, "{reply:?}");
    let offer = munich.expect_offer().await;
    munich.accept(&offer).await.unwrap();
    // The agent without a location is not re-resolved from its old one.
    assert!(
        forgetful
            .next_within(Duration::from_millis(500))
            .await
            .is_none(),
        "an agent that went online without a location must stay excluded"
    );
    server.stop().await;
}

#[tokio::test]
async fn reload_applies_a_good_file_and_keeps_the_running_one_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &routing_file(4));
    let server = TestServer::start_with_routing(fast_settings(), &path).await;
    let mut admin = server.admin().await;
    let before = admin
        .get_routing(GetRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.file, path.display().to_string());
    assert_eq!(before.version.len(), 16);

    // A bad file: refused with every problem (file:line:col, key), and the
    // running config stays.
    std::fs::write(
        &path,
        "[defaults]\nstrategy = \"fastest\"\n[queues.billing]\nskills = { billing = 7 }\n",
    )
    .unwrap();
    let refused = admin
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.applied);
    assert_eq!(refused.version, before.version);
    assert_eq!(refused.errors.len(), 2, "{:?}", refused.errors);
    let file = path.display().to_string();
    assert!(
        refused.errors[0].starts_with(&format!("{file}:2:"))
            && refused.errors[0].contains("unknown strategy `fastest`"),
        "{:?}",
        refused.errors
    );
    assert!(
        refused.errors[1].contains("`queues.billing.skills.billing`"),
        "{:?}",
        refused.errors
    );
    let still = admin
        .get_routing(GetRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.version, before.version);

    // Under the running file a level-3 agent waits a second for billing.
    let mut senior = server.agent("senior", &[("billing", 3)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("c1", "billing", 1))
        .await
        .unwrap();
    assert!(
        senior
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    let offer = senior.expect_offer().await;
    senior.accept(&offer).await.unwrap();
    senior
        .complete(&offer.conversation.unwrap().conversation_id)
        .await
        .unwrap();

    // A good file applies to the next hand-off at once.
    std::fs::write(&path, routing_file(3)).unwrap();
    let applied = admin
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied, "{:?}", applied.errors);
    assert!(applied.errors.is_empty());
    assert_ne!(applied.version, before.version);
    let now = admin
        .get_routing(GetRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.version, applied.version);
    let started = Instant::now();
    gateway
        .request_agent(handoff("c2", "billing", 1))
        .await
        .unwrap();
    senior.expect_offer().await;
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "level 3 now suffices from the start"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_a_routing_file_reload_is_refused_and_no_version_is_reported() {
    let server = TestServer::start(fast_settings()).await;
    let mut admin = server.admin().await;
    let err = admin
        .reload_routing(ReloadRoutingRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let routing = admin
        .get_routing(GetRoutingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((routing.file.as_str(), routing.version.as_str()), ("", ""));
    server.stop().await;
}

#[tokio::test]
async fn the_binary_refuses_a_bad_file_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.toml");
    std::fs::write(
        &path,
        "[routing]\ndefault_queue = \"genral\"\n[queues.general]\n[queues.billing.max_wait]\nafter_seconds = 0\naction = \"expire\"\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(binary("switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SWITCHBOARD_ROUTING__FILE", &path)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2:"))
            && stderr.contains("unknown queue `genral`")
            && stderr.contains("queues.billing.max_wait.after_seconds"),
        "{stderr}"
    );

    // With Redis the file seeds the config in force there: see
    // tests/tests/routing_replicas.rs.
    std::fs::write(&path, routing_file(1)).unwrap();

    // A good file: served; SIGHUP reloads an edited one.
    let path_text = path.display().to_string();
    let server = ServerProcess::start(&[], &[("SWITCHBOARD_ROUTING__FILE", &path_text)]).await;
    let token = mint(&Keyring::development(), Role::Admin, "default", None, 0);
    let mut admin =
        AdminServiceClient::with_interceptor(connect(&server.url).await, bearer(&token));
    let first = admin
        .get_routing(GetRoutingRequest {})
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(server.log().contains(&first), "{}", server.log());
    std::fs::write(&path, routing_file(2)).unwrap();
    let pid = server.child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + WAIT;
    loop {
        let version = admin
            .get_routing(GetRoutingRequest {})
            .await
            .unwrap()
            .into_inner()
            .version;
        if version != first {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.terminate();
}
