//! End-to-end tests of the operations surface: roster, live status, queue
//! and shift statistics, forcing an agent offline.

use switchboard_auth::Role;
use switchboard_e2e::*;
use tonic::Code;

fn entry(id: &str) -> RosterEntry {
    RosterEntry {
        agent_id: id.into(),
        display_name: "Alice A.".into(),
        skills: vec![
            Skill {
                name: "billing".into(),
                level: 4,
            },
            Skill {
                name: "refunds".into(),
                level: 2,
            },
        ],
        languages: vec!["en".into(), "de".into()],
        max_capacity: 2,
        allowed_regions: vec!["eu".into()],
        attributes: vec!["kyc_cleared".into()],
    }
}

#[tokio::test]
async fn roster_agents_and_queue_report_live_state() {
    let server = TestServer::start(fast_settings()).await;
    let mut admin = server.admin().await;
    let created = admin
        .upsert_roster_entry(UpsertRosterEntryRequest {
            entry: Some(entry("alice")),
        })
        .await
        .unwrap();
    assert!(created.into_inner().created);
    let roster = admin
        .list_roster(ListRosterRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(roster, vec![entry("alice")]);
    let err = admin
        .upsert_roster_entry(UpsertRosterEntryRequest {
            entry: Some(RosterEntry {
                max_capacity: 0,
                ..entry("bob")
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("entry.max_capacity"),
        "{}",
        err.message()
    );

    let _alice = server.agent("alice", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("c1", "billing", 2))
        .await
        .unwrap();
    gateway
        .request_agent(handoff("c2", "refunds", 5))
        .await
        .unwrap();
    let agents = admin
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].pending_offer_conversation_id, "c1");
    let queue = admin
        .queue_stats(QueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (queue.total_queued, queue.total_offered, queue.agents_online),
        (1, 1, 1)
    );
    assert_eq!(
        queue
            .queues
            .iter()
            .find(|q| q.skill == "refunds")
            .map(|q| q.depth),
        Some(1)
    );
}

#[tokio::test]
async fn force_offline_requeues_and_voids_older_tokens() {
    let server = TestServer::start(fast_settings()).await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("c1", "billing", 2))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    alice.accept(&offer).await.unwrap();

    let mut admin = server.admin().await;
    let forced = admin
        .force_offline(ForceOfflineRequest {
            agent_id: "alice".into(),
            reason: "suspicious activity".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forced.requeued_conversation_ids, vec!["c1".to_owned()]);
    let c1 = gateway
        .get_conversation(GetConversationRequest {
            conversation_id: "c1".into(),
        })
        .await
        .unwrap();
    assert!(
        c1.into_inner()
            .conversation
            .unwrap()
            .reason
            .starts_with("forced offline by operations")
    );

    // The old token can no longer bring the app back.
    let err = alice
        .client
        .go_online(GoOnlineRequest {
            skills: vec![],
            languages: vec![],
            capacity: 0,
            location: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // A token issued at the new epoch works.
    let fresh = mint(&server.keyring, Role::Agent, "default", Some("alice"), 1);
    let client = AgentServiceClient::with_interceptor(server.channel().await, bearer(&fresh));
    AgentApp::online("alice", client, &[("billing", 4)]).await;
    let err = admin
        .force_offline(ForceOfflineRequest {
            agent_id: "nobody".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
