//! End-to-end hand-off tests over real gRPC against a real server on a
//! free port: the happy path, decline, timeout, lease lapse, cancel,
//! idempotency, resubscription, identity and roles, maximum wait.

use std::time::Duration;
use switchboard_auth::Role;
use switchboard_e2e::*;
use switchboard_proto::v1::agent_event::Kind;
use tonic::Code;

#[tokio::test]
async fn happy_path_chat_reference_reaches_only_the_assigned_agent() {
    let server = TestServer::start(fast_settings()).await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut bob = server.agent("bob", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;

    let ticket = gateway
        .request_agent(handoff("conv-1", "billing", 3))
        .await
        .unwrap()
        .into_inner();
    assert!(ticket.created);
    let mut watch = gateway
        .watch_conversation(WatchConversationRequest {
            conversation_id: "conv-1".into(),
        })
        .await
        .unwrap()
        .into_inner();

    // Longest idle first: alice went online first.
    let offer = alice.expect_offer().await;
    let offered = offer.conversation.clone().unwrap();
    assert_eq!(
        offered.chat_reference, "",
        "the offer must not carry the chat reference"
    );
    assert_eq!(offered.context.unwrap().summary, "double charge on invoice");
    assert!(offer.deadline_ms > 0);

    let assigned = alice.accept(&offer).await.unwrap();
    assert_eq!(assigned.chat_reference, "chat://secret/conv-1");
    let Kind::Assignment(assignment) = alice.next().await else {
        panic!("expected the assignment")
    };
    assert_eq!(
        assignment.conversation.unwrap().chat_reference,
        "chat://secret/conv-1"
    );
    assert_eq!(
        bob.next_within(Duration::from_millis(300)).await,
        None,
        "bob hears nothing of conv-1"
    );

    let event = watch_until(&mut watch, "assigned").await;
    assert_eq!(event.conversation.unwrap().agent_id, "alice");
    alice.complete("conv-1").await.unwrap();
    let event = watch_until(&mut watch, "completed").await;
    assert_eq!(
        event.conversation.unwrap().state,
        ConversationState::Completed as i32
    );
    assert!(
        watch.message().await.unwrap().is_none(),
        "the watch ends at a terminal state"
    );

    let mut admin = server.admin().await;
    let shifts = admin
        .shift_stats(ShiftStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let alice_shift = shifts
        .agents
        .iter()
        .find(|s| s.agent_id == "alice")
        .unwrap();
    assert_eq!(
        (
            alice_shift.offers,
            alice_shift.accepted,
            alice_shift.completed
        ),
        (1, 1, 1)
    );
    assert_eq!(shifts.total.unwrap().completed, 1);
    server.stop().await;
}

#[tokio::test]
async fn decline_goes_to_the_next_agent() {
    let server = TestServer::start(fast_settings()).await;
    let mut first = server.agent("first", &[("billing", 4)]).await;
    let mut second = server.agent("second", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("conv-d", "billing", 2))
        .await
        .unwrap();
    let offer = first.expect_offer().await;
    first.decline(&offer).await.unwrap();
    first
        .decline(&offer)
        .await
        .expect("a repeated decline returns the first result");
    let Kind::OfferRevoked(revoked) = first.next().await else {
        panic!("expected revocation")
    };
    assert!(revoked.reason.starts_with("declined"), "{}", revoked.reason);
    let offer = second.expect_offer().await;
    assert_eq!(offer.offer_id.as_ref().unwrap().attempt, 2);
    second.accept(&offer).await.unwrap();
}

#[tokio::test]
async fn timeout_goes_to_the_next_agent() {
    let server = TestServer::start(fast_settings()).await;
    let mut sleepy = server.agent("sleepy", &[("billing", 4)]).await;
    let mut awake = server.agent("awake", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("conv-t", "billing", 2))
        .await
        .unwrap();
    let first = sleepy.expect_offer().await;
    // Offer timeout is 600 ms: do nothing and the next agent gets it.
    let Kind::OfferRevoked(revoked) = sleepy.next().await else {
        panic!("expected revocation")
    };
    assert_eq!(revoked.reason, "offer timed out");
    let offer = awake.expect_offer().await;
    assert_eq!(offer.offer_id.as_ref().unwrap().attempt, 2);
    let err = sleepy.accept(&first).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
}

#[tokio::test]
async fn lease_lapse_requeues_assigned_work_with_a_reason_the_gateway_sees() {
    let server = TestServer::start(switchboard_core::DispatchSettings {
        lease_ms: 800,
        ..fast_settings()
    })
    .await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("conv-l", "billing", 2))
        .await
        .unwrap();
    let mut watch = gateway
        .watch_conversation(WatchConversationRequest {
            conversation_id: "conv-l".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let offer = alice.expect_offer().await;
    alice.accept(&offer).await.unwrap();
    watch_until(&mut watch, "assigned").await;
    // No heartbeats: the 800 ms lease lapses.
    let event = watch_until(&mut watch, "requeued").await;
    let conversation = event.conversation.unwrap();
    assert_eq!(conversation.reason, "agent lost");
    assert_eq!(conversation.state, ConversationState::Queued as i32);
    let mut admin = server.admin().await;
    assert!(
        admin
            .list_agents(ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents
            .is_empty()
    );
}

#[tokio::test]
async fn heartbeats_keep_an_agent_online() {
    let server = TestServer::start(switchboard_core::DispatchSettings {
        lease_ms: 600,
        ..fast_settings()
    })
    .await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        alice
            .client
            .heartbeat(HeartbeatRequest { location: None })
            .await
            .unwrap();
    }
    let mut admin = server.admin().await;
    let agents = admin
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(
        agents.len(),
        1,
        "1.2 s of heartbeats every 200 ms keep a 600 ms lease"
    );
    assert!(agents[0].stream_attached);
}

#[tokio::test]
async fn cancel_while_queued_and_while_offered() {
    let server = TestServer::start(fast_settings()).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("queued", "billing", 2))
        .await
        .unwrap();
    let cancelled = gateway
        .cancel_conversation(CancelConversationRequest {
            conversation_id: "queued".into(),
            reason: "customer left".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(cancelled.state, ConversationState::Abandoned as i32);

    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    gateway
        .request_agent(handoff("offered", "billing", 2))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    gateway
        .cancel_conversation(CancelConversationRequest {
            conversation_id: "offered".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let Kind::OfferRevoked(revoked) = alice.next().await else {
        panic!("expected revocation")
    };
    assert_eq!(revoked.offer_id, offer.offer_id);
    let err = alice.accept(&offer).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let again = gateway
        .cancel_conversation(CancelConversationRequest {
            conversation_id: "offered".into(),
            reason: "again".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(
        again.reason, "cancelled by gateway",
        "a repeated cancel returns the first result"
    );
}

#[tokio::test]
async fn duplicate_requests_are_one_conversation_and_conflicts_name_the_field() {
    let server = TestServer::start(fast_settings()).await;
    let mut gateway = server.gateway().await;
    let first = gateway
        .request_agent(handoff("dup", "billing", 2))
        .await
        .unwrap()
        .into_inner();
    let again = gateway
        .request_agent(handoff("dup", "billing", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created && !again.created);
    assert_eq!(
        first.conversation.unwrap().created_at_ms,
        again.conversation.unwrap().created_at_ms
    );
    let mut different = handoff("dup", "billing", 2);
    different.priority = 7;
    let err = gateway.request_agent(different).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("`priority`"), "{}", err.message());
}

#[tokio::test]
async fn resubscribe_receives_the_snapshot_with_the_pending_offer() {
    let server = TestServer::start(switchboard_core::DispatchSettings {
        offer_timeout_ms: 10_000,
        ..fast_settings()
    })
    .await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("conv-r", "billing", 2))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    // The mobile network drops the stream; the app subscribes again.
    drop(alice.events);
    let mut again = AgentApp::subscribe("alice", server.agent_client("alice").await).await;
    assert_eq!(again.snapshot.offers.len(), 1);
    assert_eq!(again.snapshot.offers[0].offer_id, offer.offer_id);
    again.accept(&offer).await.unwrap();
    let Kind::Assignment(_) = again.next().await else {
        panic!("expected the assignment on the new stream")
    };
}

#[tokio::test]
async fn an_agent_cannot_accept_another_agents_offer_or_widen_its_roster_entry() {
    let server = TestServer::start(fast_settings()).await;
    let mut alice = server.agent("alice", &[("billing", 3)]).await;
    let mut mallory = server.agent("mallory", &[("billing", 3)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("conv-p", "billing", 2))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    let err = mallory.accept(&offer).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // alice's roster entry (self-registered in development mode) says
    // billing at level 3: going online at level 5 is widening.
    let err = alice
        .client
        .go_online(GoOnlineRequest {
            skills: vec![Skill {
                name: "billing".into(),
                level: 5,
            }],
            languages: vec![],
            capacity: 0,
            location: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("skills[0].level"),
        "{}",
        err.message()
    );
    let err = alice
        .client
        .go_online(GoOnlineRequest {
            skills: vec![],
            languages: vec![],
            capacity: 4,
            location: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("capacity"), "{}", err.message());
}

#[tokio::test]
async fn tokens_and_roles_are_enforced() {
    let server = TestServer::start(fast_settings()).await;
    let channel = server.channel().await;
    // A gateway token cannot call admin.
    let mut as_gateway = AdminServiceClient::with_interceptor(
        channel.clone(),
        bearer(&server.token(Role::Gateway, None)),
    );
    let err = as_gateway
        .list_agents(ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // No token at all.
    let mut anonymous = GatewayServiceClient::new(channel.clone());
    let err = anonymous
        .get_conversation(GetConversationRequest {
            conversation_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // A token signed with another key.
    let forged = mint(
        &switchboard_auth::Keyring::single("dev", "not-the-dev-secret"),
        Role::Admin,
        "default",
        None,
        0,
    );
    let mut forged_admin = AdminServiceClient::with_interceptor(channel.clone(), bearer(&forged));
    let err = forged_admin
        .queue_stats(QueueStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        response.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn pools_from_tokens_keep_tenants_apart() {
    let server = TestServer::start(fast_settings()).await;
    let _alice = server.agent("alice", &[("billing", 4)]).await;
    let other_pool = mint(&server.keyring, Role::Gateway, "other-tenant", None, 0);
    let mut other_gateway =
        GatewayServiceClient::with_interceptor(server.channel().await, bearer(&other_pool));
    let ticket = other_gateway
        .request_agent(handoff("conv-x", "billing", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ticket.conversation.unwrap().state,
        ConversationState::Queued as i32,
        "no agent in other-tenant"
    );
    let mut gateway = server.gateway().await;
    let err = gateway
        .get_conversation(GetConversationRequest {
            conversation_id: "conv-x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn max_wait_expires_with_a_reason() {
    let server = TestServer::start(switchboard_core::DispatchSettings {
        max_wait_ms: 500,
        ..fast_settings()
    })
    .await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("conv-m", "billing", 2))
        .await
        .unwrap();
    let mut watch = gateway
        .watch_conversation(WatchConversationRequest {
            conversation_id: "conv-m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let event = watch_until(&mut watch, "expired").await;
    assert_eq!(
        event.conversation.unwrap().reason,
        "no agent within the maximum wait"
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = TestServer::start(fast_settings()).await;
    let mut gateway = server.gateway().await;
    let cases: Vec<(RequestAgentRequest, &str)> = vec![
        (
            RequestAgentRequest {
                conversation_id: String::new(),
                ..handoff("x", "billing", 2)
            },
            "conversation_id",
        ),
        (
            RequestAgentRequest {
                language: "english".into(),
                ..handoff("x", "billing", 2)
            },
            "language",
        ),
        (handoff("x", "billing", 6), "required_skills[0].level"),
        (
            RequestAgentRequest {
                priority: 10,
                ..handoff("x", "billing", 2)
            },
            "priority",
        ),
        (
            RequestAgentRequest {
                customer_location: Some(Location {
                    latitude: 91.0,
                    longitude: 0.0,
                }),
                ..handoff("x", "billing", 2)
            },
            "customer_location.latitude",
        ),
    ];
    for (request, field) in cases {
        let err = gateway.request_agent(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err}");
        assert!(
            err.message().contains(&format!("`{field}`")),
            "{field}: {}",
            err.message()
        );
    }
}
