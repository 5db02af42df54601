//! Several real `switchboard` replicas on one Redis (issue 4, "Many
//! replicas"): any replica serves anyone. An offer decided on one replica
//! reaches an agent whose stream is on another; watches work whichever
//! replica took the request; reads are read-your-writes across replicas;
//! the sweepers of every replica race on the same deadlines without acting
//! twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use switchboard_core::DispatchSettings;
use switchboard_e2e::replicas::*;
use switchboard_e2e::*;
use switchboard_proto::v1::agent_event::Kind;
use switchboard_testkit::RedisServer;

/// Generous for a loaded 2-core machine; the happy path takes milliseconds.
const LONG_WAIT: Duration = Duration::from_secs(10);

/// Fast settings where no offer times out or is withdrawn as undelivered
/// merely because the machine is busy.
fn patient_settings() -> DispatchSettings {
    DispatchSettings {
        offer_timeout_ms: 5_000,
        offer_delivery_grace_ms: 2_000,
        ..fast_settings()
    }
}

async fn two_replicas(redis: &RedisServer) -> (ServerProcess, ServerProcess) {
    two_replicas_with(redis, &patient_settings()).await
}

async fn two_replicas_with(
    redis: &RedisServer,
    settings: &DispatchSettings,
) -> (ServerProcess, ServerProcess) {
    let a = start_replica(&redis.url(), settings, &[]).await;
    let b = start_replica(&redis.url(), settings, &[]).await;
    (a, b)
}

/// Skips notices and news until the assignment of `conversation` arrives.
async fn expect_assignment(agent: &mut AgentApp, conversation: &str) -> Conversation {
    loop {
        match agent.next().await {
            Kind::Assignment(assignment) => {
                let view = assignment.conversation.unwrap();
                if view.conversation_id == conversation {
                    return view;
                }
            }
            Kind::Notice(_) | Kind::ConversationEnded(_) | Kind::Offer(_) => continue,
            other => panic!("agent {} expected an assignment, got {other:?}", agent.id),
        }
    }
}

#[tokio::test]
async fn an_offer_decided_on_one_replica_reaches_an_agent_on_the_other() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis).await;
    let mut gateway_a = a.gateway().await;

    // Alice's stream is on B; the hand-off arrives through A.
    let mut alice = b.agent("alice", &[("billing", 4)]).await;
    let ticket = gateway_a
        .request_agent(handoff("conv-1", "billing", 3))
        .await
        .unwrap()
        .into_inner();
    assert!(ticket.created);
    let offer = alice.expect_offer().await;
    assert_eq!(
        offer.offer_id.as_ref().unwrap().conversation_id,
        "conv-1",
        "the offer decided on A reached B"
    );

    // She accepts through A (the app reconnected there): B's stream still
    // gets the assignment, with the chat reference.
    let mut alice_on_a = a.agent_client("alice").await;
    let accepted = alice_on_a
        .accept_offer(AcceptOfferRequest {
            offer_id: offer.offer_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(accepted.agent_id, "alice");
    let assigned = expect_assignment(&mut alice, "conv-1").await;
    assert_eq!(assigned.chat_reference, "chat://secret/conv-1");
    alice.complete("conv-1").await.unwrap();

    // The next one, again through A, is accepted through B.
    gateway_a
        .request_agent(handoff("conv-2", "billing", 3))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    assert_eq!(offer.offer_id.as_ref().unwrap().conversation_id, "conv-2");
    let accepted = alice.accept(&offer).await.unwrap();
    assert_eq!(accepted.agent_id, "alice");
    let view = get_conversation(&mut gateway_a, "conv-2").await.unwrap();
    assert!(is_assigned(&view), "A reports B's accept: {view:?}");
    assert_eq!(view.agent_id, "alice");
}

#[tokio::test]
async fn a_watch_on_one_replica_sees_the_assignment_decided_on_the_other() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis).await;
    let mut gateway_a = a.gateway().await;
    let mut gateway_b = b.gateway().await;

    gateway_a
        .request_agent(handoff("conv-w", "billing", 2))
        .await
        .unwrap();
    let mut watch = gateway_b
        .watch_conversation(WatchConversationRequest {
            conversation_id: "conv-w".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = watch_until(&mut watch, "snapshot").await;
    assert_eq!(
        snapshot.conversation.unwrap().state,
        ConversationState::Queued as i32,
        "B's snapshot shows A's request"
    );

    // Everything is decided on A: the agent's stream and accept are there.
    // Bob comes online to a waiting conversation: the offer may be made
    // before his stream attaches, and then arrives in his snapshot.
    let mut bob = a.agent("bob", &[("billing", 2)]).await;
    let offer = match bob.snapshot.offers.first() {
        Some(offer) => offer.clone(),
        None => bob.expect_offer().await,
    };
    bob.accept(&offer).await.unwrap();

    let offered = watch_until(&mut watch, "offered").await;
    assert_eq!(offered.conversation.unwrap().agent_id, "bob");
    let assigned = watch_until(&mut watch, "assigned").await;
    let view = assigned.conversation.unwrap();
    assert_eq!(view.agent_id, "bob");
    assert_eq!(view.state, ConversationState::Assigned as i32);
}

#[tokio::test]
async fn writes_through_one_replica_are_read_through_the_other_at_once() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis).await;
    let (mut admin_a, mut admin_b) = (a.admin().await, b.admin().await);
    let (mut gateway_a, mut gateway_b) = (a.gateway().await, b.gateway().await);

    // No waiting between the write and the read: each read must already
    // see the write acknowledged just before, through the other replica.
    let mut cancelled = 0;
    for i in 0..20 {
        let agent_id = format!("agent-{i}");
        let upserted = admin_a
            .upsert_roster_entry(UpsertRosterEntryRequest {
                entry: Some(RosterEntry {
                    agent_id: agent_id.clone(),
                    display_name: format!("Agent {i}"),
                    skills: vec![Skill {
                        name: "billing".into(),
                        level: 3,
                    }],
                    languages: vec!["en".into()],
                    max_capacity: 2,
                    allowed_regions: vec![],
                    attributes: vec![],
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(upserted.created);
        let roster = admin_b
            .list_roster(ListRosterRequest {})
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert!(
            roster
                .iter()
                .any(|e| e.agent_id == agent_id && e.display_name == format!("Agent {i}")),
            "B does not list {agent_id} upserted through A"
        );

        let conversation_id = format!("conv-{i}");
        gateway_a
            .request_agent(handoff(&conversation_id, "returns", 2))
            .await
            .unwrap();
        let view = get_conversation(&mut gateway_b, &conversation_id)
            .await
            .unwrap_or_else(|status| {
                panic!("B cannot read {conversation_id} requested through A: {status}")
            });
        assert_eq!(view.state, ConversationState::Queued as i32);
        assert_eq!(
            view.queue_position,
            i - cancelled,
            "B sees the whole queue A wrote, in order"
        );

        // And the other way round: a cancel through B is read through A.
        if i % 5 == 4 {
            gateway_b
                .cancel_conversation(CancelConversationRequest {
                    conversation_id: conversation_id.clone(),
                    reason: "customer left".into(),
                })
                .await
                .unwrap();
            let view = get_conversation(&mut gateway_a, &conversation_id)
                .await
                .unwrap();
            assert_eq!(view.state, ConversationState::Abandoned as i32);
            cancelled += 1;
        }
    }
}

/// The sweepers of both replicas watch the same deadlines. Every first
/// offer is left to time out; each must produce exactly one requeue and one
/// next offer, whichever sweeper (or command) got there first.
#[tokio::test]
async fn the_sweepers_of_two_replicas_never_requeue_twice() {
    let redis = RedisServer::start().await;
    // First offers time out (that is the test); delivery is not what is
    // tested, so the grace is long enough for a busy machine.
    let settings = DispatchSettings {
        offer_timeout_ms: 1_000,
        offer_delivery_grace_ms: 900,
        ..fast_settings()
    };
    let (a, b) = two_replicas_with(&redis, &settings).await;
    let mut gateway = a.gateway().await;

    // Agents on both replicas that ignore first offers and accept later ones.
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(a.agent(&format!("a{i}"), &[("billing", 3)]).await);
        agents.push(b.agent(&format!("b{i}"), &[("billing", 3)]).await);
    }
    let conversations: Vec<String> = (0..3).map(|i| format!("conv-{i}")).collect();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for mut agent in agents {
        let accepted = accepted_tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match agent.next_within(LONG_WAIT).await {
                    Some(Kind::Offer(offer)) => {
                        let id = offer.offer_id.clone().unwrap();
                        if id.attempt >= 2 && agent.accept(&offer).await.is_ok() {
                            let _ = accepted.send((id.conversation_id, agent.id.clone()));
                        }
                    }
                    Some(_) => continue,
                    None => return,
                }
            }
        }));
    }
    drop(accepted_tx);
    for id in &conversations {
        gateway
            .request_agent(handoff(id, "billing", 3))
            .await
            .unwrap();
    }
    let mut holders = std::collections::HashMap::new();
    while holders.len() < conversations.len() {
        let (conversation, agent) = tokio::time::timeout(LONG_WAIT, accepted_rx.recv())
            .await
            .expect("every conversation is accepted on its second offer")
            .unwrap();
        assert!(
            holders.insert(conversation.clone(), agent).is_none(),
            "{conversation} accepted twice"
        );
    }
    for task in &tasks {
        task.abort();
    }

    // The log both replicas' feeds read is the whole truth.
    let events = pool_events(&redis).await;
    let mut assigned_to = std::collections::HashSet::new();
    for id in &conversations {
        let view = get_conversation(&mut gateway, id).await.unwrap();
        assert!(is_assigned(&view), "{id}: {view:?}");
        assert_eq!(view.agent_id, holders[id]);
        assert!(
            assigned_to.insert(view.agent_id.clone()),
            "an agent holds two"
        );
        assert_eq!(view.attempts, 2, "{id}: {view:?}");
        assert_eq!(count_events(&events, id, "requeued"), 1, "{id} requeued");
        assert_eq!(count_events(&events, id, "offered"), 2, "{id} offered");
        assert_eq!(count_events(&events, id, "assigned"), 1, "{id} assigned");
        let mut seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.conversation_id().is_some_and(|c| c.as_str() == id))
            .map(|e| e.seq)
            .collect();
        let n = seqs.len();
        seqs.dedup();
        assert_eq!(seqs.len(), n, "{id}: a sequence number used twice");
    }
}

#[tokio::test]
async fn the_binary_refuses_a_bad_redis_url_and_gives_up_on_an_unreachable_one() {
    // A malformed URL is a configuration error (64), password not echoed.
    let output = tokio::process::Command::new(binary("switchboard"))
        .args(["serve", "--redis", "http://user:hunter2@localhost:1"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("store.redis_url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // Nothing listens on this port: retried for the startup timeout, then
    // exit 69 with a message naming the address.
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(
        LONG_WAIT,
        tokio::process::Command::new(binary("switchboard"))
            .args(["serve", "--listen", "127.0.0.1:0", "--redis", &url])
            .env("SWITCHBOARD_STORE__REDIS_STARTUP_TIMEOUT_MS", "600")
            .output(),
    )
    .await
    .expect("gives up within the startup timeout")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the startup timeout bounds the retries: {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("still unreachable") && stderr.contains(&url),
        "{stderr}"
    );
}

/// "The routing config in force is one version for the pool (stored in
/// Redis); a replica running a different version reports NOT_SERVING"
/// (issue 4). Two replicas with the same settings serve; a third with
/// another offer timeout is NOT_SERVING from the start, for the server and
/// every service; `switchboard activate-config` with the third's settings
/// flips all three within a few seconds, without a restart.
#[tokio::test]
async fn only_replicas_running_the_config_version_in_force_are_serving() {
    let redis = RedisServer::start().await;
    let settings = patient_settings();
    let other = DispatchSettings {
        offer_timeout_ms: settings.offer_timeout_ms + 1_000,
        ..settings.clone()
    };
    let ours = switchboard_server::config_version::config_version(&settings, None);
    let theirs = switchboard_server::config_version::config_version(&other, None);
    assert_ne!(ours, theirs);

    let (a, b) = two_replicas_with(&redis, &settings).await;
    let c = launch_replica(&redis.url(), &other, &[]).await;
    // Set before the first call is served: never SERVING, not for a moment.
    assert_eq!(
        health_statuses(&c.url).await,
        Some(vec![false; HEALTH_SERVICES.len()])
    );
    for replica in [&a, &b] {
        wait_health(&replica.url, true, Duration::ZERO).await;
    }
    let log = c.log();
    assert!(
        log.contains(&format!("config version {ours} is in force"))
            && log.contains(&theirs)
            && log.contains("activate-config"),
        "the replica says which version is in force and how to change it: {log}"
    );

    // A dry run changes nothing.
    let dry = activate_config(&redis.url(), &other, &["--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        stdout.contains(&theirs) && stdout.contains(&ours),
        "{stdout}"
    );

    let activated = activate_config(&redis.url(), &other, &[]).await;
    let stdout = String::from_utf8_lossy(&activated.stdout);
    assert!(activated.status.success(), "{activated:?}");
    assert!(stdout.contains(&format!("{ours} → {theirs}")), "{stdout}");
    let mut connection = redis.connection().await;
    let in_force: String = redis::cmd("GET")
        .arg("sb:config_version")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(in_force, theirs);

    // Replicas re-check every 2 s.
    let flip = Duration::from_secs(6);
    wait_health(&c.url, true, flip).await;
    wait_health(&a.url, false, flip).await;
    wait_health(&b.url, false, flip).await;
    assert!(
        a.log()
            .contains(&format!("config version {theirs} is in force"))
    );

    // Activating again says so and changes nothing.
    let again = activate_config(&redis.url(), &other, &[]).await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("already in force"), "{stdout}");
    wait_health(&c.url, true, Duration::ZERO).await;
}

#[tokio::test]
async fn activate_config_needs_a_reachable_redis() {
    let settings = patient_settings();
    let output = tokio::process::Command::new(binary("switchboard"))
        .arg("activate-config")
        .env_remove("SWITCHBOARD_STORE__REDIS_URL")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--redis"), "{stderr}");

    let url = format!("redis://127.0.0.1:{}/", free_port());
    let started = std::time::Instant::now();
    let output = activate_config(&url, &settings, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn a_replica_logs_which_store_it_uses() {
    let redis = RedisServer::start().await;
    let replica = start_replica(&redis.url(), &patient_settings(), &[]).await;
    let log = replica.log();
    assert!(log.contains("\"store\":\"redis\""), "{log}");
    assert!(log.contains(&redis.url()), "{log}");
}

/// Two replicas hammering one pool: conversations handed off through both,
/// agents on both accepting, declining and completing concurrently. A
/// checker replays the pool's event log (one Redis stream, totally ordered)
/// and the final state: no conversation ever held by two agents, no agent
/// over its capacity, every conversation completed (none lost).
#[tokio::test]
async fn two_replicas_hammering_one_pool_double_book_nobody_and_lose_nothing() {
    let redis = RedisServer::start().await;
    let (a, b) = two_replicas(&redis).await;
    let conversations: Vec<String> = (0..40).map(|i| format!("conv-{i}")).collect();

    let mut agents = Vec::new();
    for i in 0..8 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let mut app = replica
            .agent(&format!("agent-{i}"), &[("billing", 3)])
            .await;
        agents.push(tokio::spawn(async move {
            let mut handled = 0u32;
            while let Some(kind) = app.next_within(LONG_WAIT).await {
                let Kind::Offer(offer) = kind else { continue };
                let id = offer.offer_id.clone().unwrap();
                handled += 1;
                // Some first offers are declined, so requeues race too.
                if id.attempt == 1 && (handled + i).is_multiple_of(4) {
                    let _ = app.decline(&offer).await;
                    continue;
                }
                if app.accept(&offer).await.is_ok() {
                    app.complete(&id.conversation_id).await.unwrap();
                }
            }
        }));
    }
    let mut requests = Vec::new();
    for (i, id) in conversations.iter().enumerate() {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let id = id.clone();
        requests.push(tokio::spawn(async move {
            gateway_at(&url)
                .await
                .request_agent(handoff(&id, "billing", 3))
                .await
                .unwrap();
        }));
    }
    for request in requests {
        request.await.unwrap();
    }
    let mut gateway = a.gateway().await;
    for id in &conversations {
        wait_conversation(&mut gateway, id, LONG_WAIT, |v| {
            v.state == ConversationState::Completed as i32
        })
        .await;
    }
    for agent in &agents {
        agent.abort();
    }

    // Replay the log.
    let events = pool_events(&redis).await;
    let mut holder: std::collections::HashMap<String, String> = Default::default();
    let mut load: std::collections::HashMap<String, u32> = Default::default();
    let mut completed = std::collections::HashSet::new();
    for event in &events {
        let Some(conversation) = event.conversation_id().map(|c| c.to_string()) else {
            continue;
        };
        match event.kind.name() {
            "assigned" => {
                let agent = event.agent_id.as_ref().unwrap().to_string();
                if let Some(other) = holder.insert(conversation.clone(), agent.clone()) {
                    panic!("{conversation} assigned to {agent} while {other} held it");
                }
                let n = load.entry(agent.clone()).or_default();
                *n += 1;
                assert!(*n <= 1, "{agent} over capacity 1 with {conversation}");
            }
            "requeued" | "completed" | "abandoned" | "expired" => {
                if let Some(agent) = holder.remove(&conversation) {
                    *load.get_mut(&agent).unwrap() -= 1;
                }
                if event.kind.name() == "completed" {
                    assert!(
                        completed.insert(conversation.clone()),
                        "{conversation} completed twice"
                    );
                }
            }
            _ => {}
        }
    }
    for id in &conversations {
        assert!(completed.contains(id), "{id} never completed in the log");
        assert_eq!(count_events(&events, id, "assigned"), 1, "{id}");
    }
    assert!(holder.is_empty(), "still held after completion: {holder:?}");
    let agents_now = a
        .admin()
        .await
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    for agent in agents_now {
        assert_eq!(agent.active_conversations, 0, "{agent:?}");
    }
    assert!(
        events.iter().any(|e| e.kind.name() == "requeued"),
        "declines made requeues race with offers"
    );
}
