//! Tests of the real `switchboard` binary: configuration errors, graceful
//! shutdown on SIGTERM, token minting.

use std::time::Duration;
use switchboard_auth::{Keyring, Role};
use switchboard_e2e::*;
use switchboard_proto::v1::agent_event::Kind;

#[tokio::test]
async fn bad_config_exits_64_naming_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "log_format = \"xml\"\n[dispatch]\noffer_timeout_ms = 1\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(binary("switchboard"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("log_format") && stderr.contains("dispatch.offer_timeout_ms"),
        "{stderr}"
    );

    std::fs::write(&path, "no_such_key = true\n").unwrap();
    let output = tokio::process::Command::new(binary("switchboard"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_key"));

    // Development mode refuses to listen beyond loopback.
    let output = tokio::process::Command::new(binary("switchboard"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

#[tokio::test]
async fn sigterm_tells_connected_agents_to_reconnect_and_exits_cleanly() {
    let mut server = ServerProcess::start(&[], &[]).await;
    let token = mint(
        &Keyring::development(),
        Role::Agent,
        "default",
        Some("alice"),
        0,
    );
    let client = AgentServiceClient::with_interceptor(connect(&server.url).await, bearer(&token));
    let mut alice = AgentApp::online("alice", client, &[("billing", 3)]).await;
    server.terminate();
    loop {
        match alice.next().await {
            Kind::Notice(notice) if notice.code == "reconnect" => break,
            Kind::Notice(_) => continue,
            other => panic!("expected the reconnect notice, got {other:?}"),
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn token_subcommand_mints_tokens_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    std::fs::write(
        &path,
        "[auth]\nmode = \"keys\"\n[[auth.keys]]\nid = \"k1\"\nsecret_env = \"TEST_SB_KEY\"\n",
    )
    .unwrap();
    let secret = "an-example-secret-of-enough-length-0123";
    let output = tokio::process::Command::new(binary("switchboard"))
        .args(["token", "--role", "admin", "--pool", "eu", "--config"])
        .arg(&path)
        .env("TEST_SB_KEY", secret)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = Keyring::single("k1", secret)
        .verify(token.trim(), chrono::Utc::now().timestamp())
        .unwrap();
    assert_eq!((claims.role, claims.pool.as_str()), (Role::Admin, "eu"));

    let config = path.to_str().unwrap().to_owned();
    let server = ServerProcess::start(&["--config", &config], &[("TEST_SB_KEY", secret)]).await;
    let mut admin =
        AdminServiceClient::with_interceptor(connect(&server.url).await, bearer(token.trim()));
    admin
        .list_agents(ListAgentsRequest {})
        .await
        .expect("the minted token is accepted");
    let dev = mint(&Keyring::development(), Role::Admin, "eu", None, 0);
    let mut dev_admin =
        AdminServiceClient::with_interceptor(connect(&server.url).await, bearer(&dev));
    let err = dev_admin
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "the dev secret is refused outside development mode"
    );
}
