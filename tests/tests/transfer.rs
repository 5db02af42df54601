//! End-to-end tests of agent transfers and CSAT over real gRPC: the
//! context and the note travel with the conversation, the gateway's watch
//! stream shows the transfer, and CSAT lands in the shift statistics.

use switchboard_e2e::*;
use switchboard_proto::v1::agent_event::Kind;
use switchboard_proto::v1::transfer_conversation_request::Target;
use tonic::Code;

#[tokio::test]
async fn transfer_to_a_queue_then_to_a_colleague_carries_the_context() {
    let server = TestServer::start(fast_settings()).await;
    let mut first = server.agent("first", &[("billing", 4)]).await;
    let mut fraud = server.agent("fraud", &[("fraud", 4)]).await;
    let mut other = server.agent("other", &[("billing", 4)]).await;
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
    let offer = first.expect_offer().await;
    first.accept(&offer).await.unwrap();
    watch_until(&mut watch, "assigned").await;

    // Someone who does not hold it cannot transfer it.
    let err = other
        .client
        .transfer_conversation(TransferConversationRequest {
            conversation_id: "c1".into(),
            note: String::new(),
            target: Some(Target::AgentId("fraud".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    let reply = first
        .client
        .transfer_conversation(TransferConversationRequest {
            conversation_id: "c1".into(),
            note: "card used abroad".into(),
            target: Some(Target::Queue(TransferToQueue {
                category: "fraud".into(),
                required_skills: vec![Skill {
                    name: "fraud".into(),
                    level: 3,
                }],
                language: String::new(),
            })),
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(
        reply.chat_reference, "",
        "the transferring agent no longer gets the chat reference"
    );

    // The gateway sees the transfer and its note.
    let event = watch_until(&mut watch, "requeued").await;
    let seen = event.conversation.unwrap();
    assert!(
        seen.reason
            .contains("transferred by agent `first` to queue:fraud"),
        "{}",
        seen.reason
    );
    assert_eq!(seen.transfers.len(), 1);
    assert_eq!(seen.transfers[0].note, "card used abroad");

    // The transferring agent is told its part ended.
    loop {
        match first.next().await {
            Kind::ConversationEnded(ended) => {
                assert_eq!(ended.conversation_id, "c1");
                assert!(
                    ended.reason.contains("card used abroad"),
                    "{}",
                    ended.reason
                );
                break;
            }
            Kind::Notice(_) | Kind::Assignment(_) => continue,
            other => panic!("expected the end of c1 for `first`, got {other:?}"),
        }
    }

    // Only the fraud specialist is eligible; the offer carries the context.
    let offer = fraud.expect_offer().await;
    let offered = offer.conversation.clone().unwrap();
    assert_eq!(offered.category, "fraud");
    assert_eq!(offered.context.unwrap().summary, "double charge on invoice");
    assert_eq!(offered.transfers[0].from_agent_id, "first");
    fraud.accept(&offer).await.unwrap();

    // To a named colleague: an offer to that agent alone.
    fraud
        .client
        .transfer_conversation(TransferConversationRequest {
            conversation_id: "c1".into(),
            note: "billing question after all".into(),
            target: Some(Target::AgentId("other".into())),
        })
        .await
        .unwrap();
    let offer = other.expect_offer().await;
    assert_eq!(offer.conversation.as_ref().unwrap().transfers.len(), 2);
    let assigned = other.accept(&offer).await.unwrap();
    assert_eq!(assigned.chat_reference, "chat://secret/c1");

    // Bad input names the field.
    let err = other
        .client
        .transfer_conversation(TransferConversationRequest {
            conversation_id: "c1".into(),
            note: String::new(),
            target: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("target"), "{err}");
}

#[tokio::test]
async fn csat_is_reported_once_and_counts_in_shift_stats() {
    let server = TestServer::start(fast_settings()).await;
    let mut alice = server.agent("alice", &[("billing", 4)]).await;
    let mut gateway = server.gateway().await;
    gateway
        .request_agent(handoff("c1", "billing", 2))
        .await
        .unwrap();
    let csat = |score: u32| ReportCsatRequest {
        conversation_id: "c1".into(),
        score,
    };

    // Not before the conversation is completed.
    let err = gateway.report_csat(csat(5)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    let offer = alice.expect_offer().await;
    alice.accept(&offer).await.unwrap();
    alice.complete("c1").await.unwrap();

    for score in [0, 6] {
        let err = gateway.report_csat(csat(score)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("score"), "{err}");
    }
    let reported = gateway
        .report_csat(csat(4))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(reported.csat, 4);
    // A retry of the same report is fine; a different score is refused.
    gateway.report_csat(csat(4)).await.unwrap();
    let err = gateway.report_csat(csat(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    let stats = server
        .admin()
        .await
        .shift_stats(ShiftStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let alice_row = &stats.agents[0];
    assert_eq!(alice_row.csat_count, 1);
    assert!((alice_row.csat_average - 4.0).abs() < 1e-9);
    assert_eq!(alice_row.lifetime_csat_count, 1);
    let total = stats.total.unwrap();
    assert_eq!(total.csat_count, 1);
    assert!((total.csat_average - 4.0).abs() < 1e-9);
}
