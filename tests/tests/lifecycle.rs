//! End-to-end tests of the agent lifecycle and customer-facing estimates:
//! drain, wrap-up, away after missed offers, supervisor reassign,
//! availability and queue position.

use std::time::Duration;
use switchboard_core::DispatchSettings;
use switchboard_e2e::*;
use switchboard_proto::v1::agent_event::Kind;
use tonic::Code;

#[tokio::test]
async fn drain_finishes_current_work_then_goes_offline() {
    let server = TestServer::start(fast_settings()).await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("c1", "billing", 2))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    alice.accept(&offer).await.unwrap();
    let reply = alice
        .client
        .go_offline(GoOfflineRequest { drain: true })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.offline, "still holds c1");
    gateway
        .request_agent(handoff("c2", "billing", 2))
        .await
        .unwrap();
    let mut admin = server.admin().await;
    let agents = admin
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents[0].status, AgentStatus::Draining as i32);
    assert_eq!(
        agents[0].pending_offer_conversation_id, "",
        "no new offers while draining"
    );
    alice.complete("c1").await.unwrap();
    assert!(
        admin
            .list_agents(ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents
            .is_empty(),
        "drained: offline"
    );
    let c2 = gateway
        .get_conversation(GetConversationRequest {
            conversation_id: "c2".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        c2.into_inner().conversation.unwrap().state,
        ConversationState::Queued as i32
    );
}

#[tokio::test]
async fn wrap_up_delays_the_next_offer_and_the_app_can_end_it() {
    let server = TestServer::start(DispatchSettings {
        wrap_up_ms: 400,
        ..fast_settings()
    })
    .await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("c1", "billing", 2))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    alice.accept(&offer).await.unwrap();
    alice.complete("c1").await.unwrap();
    gateway
        .request_agent(handoff("c2", "billing", 2))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let offer = alice.expect_offer().await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "offered only after wrap-up: {:?}",
        started.elapsed()
    );
    alice.accept(&offer).await.unwrap();
    alice.complete("c2").await.unwrap();
    gateway
        .request_agent(handoff("c3", "billing", 2))
        .await
        .unwrap();
    let status = alice
        .client
        .set_status(SetStatusRequest {
            status: AgentStatus::Available as i32,
            away_reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_ne!(status, AgentStatus::WrapUp as i32);
    let offer = alice.expect_offer().await;
    assert_eq!(
        offer.offer_id.unwrap().conversation_id,
        "c3",
        "wrap-up ended early by the app"
    );
}

#[tokio::test]
async fn three_missed_offers_set_the_agent_away_and_tell_it() {
    let server = TestServer::start(DispatchSettings {
        offer_timeout_ms: 300,
        ..fast_settings()
    })
    .await;
    let mut sleepy = server.agent("sleepy", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    for id in ["m1", "m2", "m3"] {
        gateway
            .request_agent(handoff(id, "billing", 2))
            .await
            .unwrap();
    }
    let notice = loop {
        match sleepy.next().await {
            Kind::Notice(notice) if notice.code == "missed_offers" => break notice,
            _ => continue,
        }
    };
    assert_eq!(notice.status, AgentStatus::Away as i32);
    let mut admin = server.admin().await;
    let agents = admin
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(
        (agents[0].status, agents[0].away_reason.as_str()),
        (AgentStatus::Away as i32, "missed_offers")
    );
    let shifts = admin
        .shift_stats(ShiftStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shifts.agents[0].missed, 3);
}

#[tokio::test]
async fn supervisor_reassign_is_seen_by_gateway_and_agents() {
    let server = TestServer::start(fast_settings()).await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut bob = server.agent("bob", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("c1", "billing", 2))
        .await
        .unwrap();
    let mut watch = gateway
        .watch_conversation(WatchConversationRequest {
            conversation_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let offer = alice.expect_offer().await;
    alice.accept(&offer).await.unwrap();
    let mut admin = server.admin().await;
    admin
        .reassign(ReassignRequest {
            conversation_id: "c1".into(),
            agent_id: String::new(),
            reason: "escalation".into(),
        })
        .await
        .unwrap();
    let event = watch_until(&mut watch, "requeued").await;
    assert_eq!(
        event.conversation.unwrap().reason,
        "reassigned by supervisor: escalation"
    );
    loop {
        match alice.next().await {
            Kind::ConversationEnded(ended) => {
                assert_eq!(ended.reason, "reassigned by supervisor: escalation");
                break;
            }
            _ => continue,
        }
    }
    let offer = bob.expect_offer().await;
    assert_eq!(offer.offer_id.unwrap().conversation_id, "c1");
    let err = admin
        .reassign(ReassignRequest {
            conversation_id: "c1".into(),
            agent_id: "nobody".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
}

#[tokio::test]
async fn availability_and_queue_position_move_as_the_queue_drains() {
    let server = TestServer::start(DispatchSettings {
        offer_timeout_ms: 10_000,
        ..fast_settings()
    })
    .await;
    let mut gateway = server.gateway().await;
    let check = CheckAvailabilityRequest {
        language: "en".into(),
        required_skills: vec![Skill {
            name: "billing".into(),
            level: 2,
        }],
        region: String::new(),
    };
    let before = gateway
        .check_availability(check.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.agents_available, 0);
    for id in ["q1", "q2", "q3"] {
        gateway
            .request_agent(handoff(id, "billing", 2))
            .await
            .unwrap();
    }
    let position = |c: GetConversationResponse| c.conversation.unwrap().queue_position;
    let q3 = gateway
        .get_conversation(GetConversationRequest {
            conversation_id: "q3".into(),
        })
        .await
        .unwrap();
    assert_eq!(position(q3.into_inner()), 2);
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    // Subscribing made alice offerable: the offer is in her stream's snapshot.
    let offer = alice
        .snapshot
        .offers
        .first()
        .cloned()
        .expect("the pending offer in the snapshot");
    assert_eq!(
        offer.offer_id.as_ref().unwrap().conversation_id,
        "q1",
        "oldest first"
    );
    let q3 = gateway
        .get_conversation(GetConversationRequest {
            conversation_id: "q3".into(),
        })
        .await
        .unwrap();
    let q3 = q3.into_inner().conversation.unwrap();
    assert_eq!(q3.queue_position, 1, "moved up as the queue drained");
    assert!(
        q3.expected_wait_ms > 0,
        "an estimate from the observed offer rate"
    );
    alice.accept(&offer).await.unwrap();
    alice.complete("q1").await.unwrap();
    let _bob = server.agent("bob", &[("billing", 4)]).await;
    let _carol = server.agent("carol", &[("billing", 4)]).await;
    let _dave = server.agent("dave", &[("billing", 4)]).await;
    let after = gateway
        .check_availability(check)
        .await
        .unwrap()
        .into_inner();
    assert!(after.agents_available >= 1, "{after:?}");
    assert_eq!(after.expected_wait_ms, 0);
    let err = gateway
        .check_availability(CheckAvailabilityRequest {
            language: "xx_YY".into(),
            required_skills: vec![],
            region: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
