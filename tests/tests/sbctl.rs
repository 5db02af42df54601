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
