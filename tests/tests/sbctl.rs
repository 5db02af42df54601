//! `sbctl`, the real binary, against the real `switchboard` binary in
//! development mode: the demo hands conversations over end to end, the
//! admin commands report what happened, and bad input ends as one clear
//! line with a non-zero exit.

// Test support: failures panic with their message.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use switchboard_auth::{Keyring, Role};
use switchboard_e2e::*;

async fn sbctl(server: &ServerProcess, args: &[&str]) -> Output {
    tokio::process::Command::new(binary("sbctl"))
        .args(args)
        .env("SBCTL_SERVER", &server.url)
        .env_remove("SBCTL_TOKEN")
        .env_remove("SBCTL_POOL")
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The sum of every `"key": N` in `sbctl --json` output.
fn sum_of(text: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    text.match_indices(&needle)
        .map(|(at, _)| {
            let rest = text[at + needle.len()..].trim_start();
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("`{key}` is not a number in {text}"))
        })
        .sum()
}

#[tokio::test]
async fn demo_hands_over_every_conversation_and_shifts_show_it() {
    let server = ServerProcess::start(&[], &[]).await;

    let demo = sbctl(
        &server,
        &[
            "demo",
            "--agents",
            "2",
            "--conversations",
            "4",
            "--timeout",
            "30",
        ],
    )
    .await;
    assert!(
        demo.status.success(),
        "demo failed: {}{}",
        stdout(&demo),
        stderr(&demo)
    );
    assert!(
        stdout(&demo).contains("all 4 conversations completed"),
        "{}",
        stdout(&demo)
    );

    let shifts = sbctl(&server, &["shifts", "--json"]).await;
    assert!(shifts.status.success(), "{}", stderr(&shifts));
    let report = stdout(&shifts);
    let (agents, total) = report
        .split_once("\"total\"")
        .unwrap_or_else(|| panic!("no total in {report}"));
    assert_eq!(agents.matches("\"agent_id\"").count(), 2, "{report}");
    assert_eq!(sum_of(agents, "completed"), 4, "{report}");
    assert_eq!(sum_of(agents, "accepted"), 4, "{report}");
    assert_eq!(sum_of(total, "completed"), 4, "{report}");

    // The demo's agents went offline and nothing is left waiting.
    let queue = sbctl(&server, &["queue"]).await;
    assert!(queue.status.success(), "{}", stderr(&queue));
    assert!(stdout(&queue).contains("0 queued"), "{}", stdout(&queue));
}

#[tokio::test]
async fn roster_upsert_list_and_force_offline() {
    let server = ServerProcess::start(&[], &[]).await;

    let upsert = sbctl(
        &server,
        &[
            "roster",
            "upsert",
            "--agent",
            "ana",
            "--name",
            "Ana",
            "--skill",
            "billing:3",
            "--skill",
            "refunds:5",
            "--language",
            "de-AT",
            "--capacity",
            "2",
        ],
    )
    .await;
    assert!(upsert.status.success(), "{}", stderr(&upsert));

    let list = sbctl(&server, &["roster", "list", "--json"]).await;
    assert!(list.status.success(), "{}", stderr(&list));
    let text = stdout(&list);
    // Language tags compare case-insensitively (BCP 47).
    for expected in ["\"ana\"", "billing", "refunds", "de-at"] {
        assert!(
            text.to_lowercase().contains(expected),
            "`{expected}` missing from {text}"
        );
    }

    // Ana's app comes online with a token of the current epoch.
    let token = mint(
        &Keyring::development(),
        Role::Agent,
        "default",
        Some("ana"),
        0,
    );
    let channel = connect(&server.url).await;
    let mut app = AgentServiceClient::with_interceptor(channel, bearer(&token));
    let online = GoOnlineRequest {
        skills: vec![],
        languages: vec![],
        capacity: 0,
        location: None,
    };
    app.go_online(online.clone()).await.unwrap();

    let forced = sbctl(
        &server,
        &[
            "force-offline",
            "--agent",
            "ana",
            "--reason",
            "policy review",
        ],
    )
    .await;
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(stdout(&forced).contains("ana"), "{}", stdout(&forced));

    // Forcing offline voided that token: the app cannot simply come back.
    let err = app.go_online(online).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
}

#[tokio::test]
async fn bad_input_is_one_clear_line_and_a_failing_exit() {
    let server = ServerProcess::start(&[], &[]).await;

    // Rejected by sbctl itself, naming the value and the range.
    let level = sbctl(
        &server,
        &["roster", "upsert", "--agent", "bo", "--skill", "billing:9"],
    )
    .await;
    assert!(!level.status.success());
    assert!(
        stderr(&level).contains("levels run from 1"),
        "{}",
        stderr(&level)
    );

    // Rejected by the server, relayed with the field it named.
    let capacity = sbctl(
        &server,
        &[
            "roster",
            "upsert",
            "--agent",
            "bo",
            "--skill",
            "billing:2",
            "--language",
            "en",
            "--capacity",
            "0",
        ],
    )
    .await;
    assert!(!capacity.status.success());
    let message = stderr(&capacity);
    assert!(message.starts_with("sbctl: "), "{message}");
    assert!(message.contains("capacity"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");

    // A server that is not there: a clear message, not a hang.
    let nowhere = tokio::process::Command::new(binary("sbctl"))
        .args(["agents"])
        .env("SBCTL_SERVER", format!("http://127.0.0.1:{}", free_port()))
        .output()
        .await
        .unwrap();
    assert!(!nowhere.status.success());
    assert!(
        stderr(&nowhere).starts_with("sbctl: "),
        "{}",
        stderr(&nowhere)
    );
}

/// A valid routing file; `n` changes its version.
fn routing_text(n: u32) -> String {
    format!("[routing]\ndefault_queue = \"general\"\n\n[queues.general]\npriority = {n}\n")
}

fn version_of(text: &str) -> String {
    switchboard_server::routing::parse("routing.toml", text)
        .unwrap()
        .config
        .version()
}

#[tokio::test]
async fn routing_show_and_reload_across_two_replicas() {
    use switchboard_e2e::replicas::start_replica;
    let redis = switchboard_testkit::RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file_a = dir.path().join("a.toml");
    let file_b = dir.path().join("b.toml");
    std::fs::write(&file_a, routing_text(1)).unwrap();
    std::fs::write(&file_b, routing_text(1)).unwrap();
    let (v1, v2) = (version_of(&routing_text(1)), version_of(&routing_text(2)));
    let replica = |id: &'static str, file: String| {
        let url = redis.url();
        async move {
            start_replica(
                &url,
                &fast_settings(),
                &[
                    ("SWITCHBOARD_ROUTING__FILE", &file),
                    ("SWITCHBOARD_SERVER__REPLICA_ID", id),
                ],
            )
            .await
        }
    };
    let a = replica("replica-a", file_a.display().to_string()).await;
    let _b = replica("replica-b", file_b.display().to_string()).await;

    // The table: the version in force, this replica, one row per replica.
    let show = sbctl(&a, &["routing", "show"]).await;
    assert!(show.status.success(), "{}", stderr(&show));
    let text = stdout(&show);
    assert!(text.contains(&format!("in force: {v1}")), "{text}");
    assert!(text.contains("this replica: replica-a"), "{text}");
    assert!(text.contains("replica-b"), "{text}");
    assert!(!text.contains("do not run"), "{text}");

    // JSON for scripts.
    let show = sbctl(&a, &["--json", "routing", "show"]).await;
    assert!(show.status.success(), "{}", stderr(&show));
    let json: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(json["in_force"]["version"], v1.as_str());
    assert_eq!(json["replica_id"], "replica-a");
    let replicas = json["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{json}");
    assert!(
        replicas.iter().all(|r| r["version"] == v1.as_str()),
        "{json}"
    );

    // A good file: old → new, every replica listed at the new version.
    std::fs::write(&file_a, routing_text(2)).unwrap();
    let reload = sbctl(&a, &["routing", "reload"]).await;
    assert!(reload.status.success(), "{}", stderr(&reload));
    let text = stdout(&reload);
    assert!(text.contains(&format!("{v1} → {v2}")), "{text}");
    assert!(!text.contains("not yet running"), "{text}");
    assert_eq!(text.matches(&v2).count(), 3, "{text}");

    // A bad file: every problem, non-zero exit, the version stays.
    std::fs::write(
        &file_a,
        "[defaults]\nstrategy = \"fastest\"\n[queues.general]\npriority = 12\n",
    )
    .unwrap();
    let refused = sbctl(&a, &["routing", "reload"]).await;
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.starts_with("sbctl: routing file refused (2 problem(s))"),
        "{message}"
    );
    assert!(message.contains(&v2), "{message}");
    assert!(message.contains("unknown strategy `fastest`"), "{message}");
    assert!(message.contains("queues.general.priority"), "{message}");
    let refused = sbctl(&a, &["--json", "routing", "reload"]).await;
    assert!(!refused.status.success());
    let json: serde_json::Value = serde_json::from_str(&stdout(&refused)).unwrap();
    assert_eq!(json["applied"], false);
    assert_eq!(json["errors"].as_array().unwrap().len(), 2, "{json}");
}
