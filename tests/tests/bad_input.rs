//! Bad input over real gRPC: a table with one row per rule, each checked
//! for its status code and for the field named in the message; and a
//! property test that sends generated garbage to every RPC and checks that
//! the server only ever answers with the expected statuses and stays up.

// Test code outside #[test] functions (the shared server) may unwrap too.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use std::sync::OnceLock;
use switchboard_e2e::*;
use switchboard_proto::v1::transfer_conversation_request::Target;
use tonic::Code;

type Row = (&'static str, Result<(), tonic::Status>, Code, &'static str);

fn check(rows: Vec<Row>) {
    for (name, result, code, field) in rows {
        let err = match result {
            Ok(()) => panic!("{name}: expected {code:?}, got OK"),
            Err(err) => err,
        };
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(
            err.message().contains(field),
            "{name}: `{field}` not named in `{}`",
            err.message()
        );
    }
}

fn ok<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<(), tonic::Status> {
    result.map(|_| ())
}

#[tokio::test]
async fn every_validation_rule_has_its_status_and_names_its_field() {
    let server = TestServer::start(fast_settings()).await;
    let mut gateway = server.gateway().await;
    let mut admin = server.admin().await;
    let mut alice = server.agent("alice", &[("billing", 3)]).await;
    let mut bob = server.agent("bob", &[("billing", 3)]).await;
    let base = || handoff("ok-id", "billing", 2);
    let mut attrs = std::collections::HashMap::new();
    for i in 0..33 {
        attrs.insert(format!("k{i}"), "v".to_owned());
    }
    let g = |r: RequestAgentRequest| {
        let mut gateway = gateway.clone();
        async move { ok(gateway.request_agent(r).await) }
    };
    let rows: Vec<Row> = vec![
        (
            "empty id",
            g(RequestAgentRequest {
                conversation_id: String::new(),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`conversation_id`",
        ),
        (
            "oversized id",
            g(RequestAgentRequest {
                conversation_id: "x".repeat(129),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "limit is 128",
        ),
        (
            "id with space",
            g(RequestAgentRequest {
                conversation_id: "a b".into(),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`conversation_id`",
        ),
        (
            "empty customer",
            g(RequestAgentRequest {
                customer_id: String::new(),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`customer_id`",
        ),
        (
            "bad language",
            g(RequestAgentRequest {
                language: "en_US".into(),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`language`",
        ),
        (
            "level 0",
            g(handoff("x", "billing", 0)).await,
            Code::InvalidArgument,
            "`required_skills[0].level`",
        ),
        (
            "level 6",
            g(handoff("x", "billing", 6)).await,
            Code::InvalidArgument,
            "must be 1 to 5",
        ),
        (
            "bad skill name",
            g(handoff("x", "Billing!", 2)).await,
            Code::InvalidArgument,
            "`required_skills[0].name`",
        ),
        (
            "duplicate skill",
            g(RequestAgentRequest {
                required_skills: vec![
                    Skill {
                        name: "a".into(),
                        level: 1,
                    },
                    Skill {
                        name: "a".into(),
                        level: 2,
                    },
                ],
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`required_skills`",
        ),
        (
            "priority 10",
            g(RequestAgentRequest {
                priority: 10,
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`priority`",
        ),
        (
            "summary too long",
            g(RequestAgentRequest {
                context: Some(HandoffContext {
                    summary: "s".repeat(4097),
                    attributes: Default::default(),
                }),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`context.summary`",
        ),
        (
            "too many context entries",
            g(RequestAgentRequest {
                context: Some(HandoffContext {
                    summary: String::new(),
                    attributes: attrs.clone(),
                }),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`context.attributes`",
        ),
        (
            "chat reference too long",
            g(RequestAgentRequest {
                chat_reference: "c".repeat(1025),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`chat_reference`",
        ),
        (
            "longitude out of range",
            g(RequestAgentRequest {
                customer_location: Some(Location {
                    latitude: 0.0,
                    longitude: 181.0,
                }),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`customer_location.longitude`",
        ),
        (
            "bad preferred agent",
            g(RequestAgentRequest {
                preferred_agent_id: "no spaces".into(),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`preferred_agent_id`",
        ),
        (
            "bad region",
            g(RequestAgentRequest {
                region: "EU West".into(),
                ..base()
            })
            .await,
            Code::InvalidArgument,
            "`region`",
        ),
    ];
    check(rows);

    let go = |c: u32, skills: Vec<Skill>, languages: Vec<String>, location: Option<Location>| {
        GoOnlineRequest {
            skills,
            languages,
            capacity: c,
            location,
        }
    };
    let rows: Vec<Row> = vec![
        (
            "capacity above limit",
            ok(alice.client.go_online(go(33, vec![], vec![], None)).await),
            Code::InvalidArgument,
            "`capacity`",
        ),
        (
            "capacity above roster",
            ok(alice.client.go_online(go(2, vec![], vec![], None)).await),
            Code::PermissionDenied,
            "`capacity`",
        ),
        (
            "skill level 9",
            ok(alice
                .client
                .go_online(go(
                    0,
                    vec![Skill {
                        name: "billing".into(),
                        level: 9,
                    }],
                    vec![],
                    None,
                ))
                .await),
            Code::InvalidArgument,
            "`skills[0].level`",
        ),
        (
            "unknown skill",
            ok(alice
                .client
                .go_online(go(
                    0,
                    vec![Skill {
                        name: "fraud".into(),
                        level: 1,
                    }],
                    vec![],
                    None,
                ))
                .await),
            Code::PermissionDenied,
            "`skills[0]`",
        ),
        (
            "malformed language",
            ok(alice
                .client
                .go_online(go(0, vec![], vec!["123".into()], None))
                .await),
            Code::InvalidArgument,
            "`languages[0]`",
        ),
        (
            "latitude",
            ok(alice
                .client
                .go_online(go(
                    0,
                    vec![],
                    vec![],
                    Some(Location {
                        latitude: -91.0,
                        longitude: 0.0,
                    }),
                ))
                .await),
            Code::InvalidArgument,
            "`location.latitude`",
        ),
        (
            "heartbeat location",
            ok(alice
                .client
                .heartbeat(HeartbeatRequest {
                    location: Some(Location {
                        latitude: 0.0,
                        longitude: 999.0,
                    }),
                })
                .await),
            Code::InvalidArgument,
            "`location.longitude`",
        ),
        (
            "status unspecified",
            ok(alice
                .client
                .set_status(SetStatusRequest {
                    status: 0,
                    away_reason: String::new(),
                })
                .await),
            Code::InvalidArgument,
            "`status`",
        ),
        (
            "status busy",
            ok(alice
                .client
                .set_status(SetStatusRequest {
                    status: AgentStatus::Busy as i32,
                    away_reason: String::new(),
                })
                .await),
            Code::InvalidArgument,
            "`status`",
        ),
        (
            "unknown enum value",
            ok(alice
                .client
                .set_status(SetStatusRequest {
                    status: 99,
                    away_reason: String::new(),
                })
                .await),
            Code::InvalidArgument,
            "`status`",
        ),
        (
            "away without reason",
            ok(alice
                .client
                .set_status(SetStatusRequest {
                    status: AgentStatus::Away as i32,
                    away_reason: String::new(),
                })
                .await),
            Code::InvalidArgument,
            "`away_reason`",
        ),
        (
            "missing offer id",
            ok(alice
                .client
                .accept_offer(AcceptOfferRequest { offer_id: None })
                .await),
            Code::InvalidArgument,
            "`offer_id`",
        ),
        (
            "attempt 0",
            ok(alice
                .client
                .accept_offer(AcceptOfferRequest {
                    offer_id: Some(OfferId {
                        conversation_id: "c".into(),
                        attempt: 0,
                    }),
                })
                .await),
            Code::InvalidArgument,
            "`offer_id.attempt`",
        ),
        (
            "unknown conversation",
            ok(alice
                .client
                .accept_offer(AcceptOfferRequest {
                    offer_id: Some(OfferId {
                        conversation_id: "nope".into(),
                        attempt: 1,
                    }),
                })
                .await),
            Code::NotFound,
            "`nope`",
        ),
        (
            "complete unknown",
            ok(alice
                .client
                .complete_conversation(CompleteConversationRequest {
                    conversation_id: "nope".into(),
                    disposition: String::new(),
                })
                .await),
            Code::NotFound,
            "`nope`",
        ),
        (
            "complete empty id",
            ok(alice
                .client
                .complete_conversation(CompleteConversationRequest {
                    conversation_id: String::new(),
                    disposition: String::new(),
                })
                .await),
            Code::InvalidArgument,
            "`conversation_id`",
        ),
        (
            "admin missing entry",
            ok(admin
                .upsert_roster_entry(UpsertRosterEntryRequest { entry: None })
                .await),
            Code::InvalidArgument,
            "`entry`",
        ),
        (
            "admin no languages",
            ok(admin
                .upsert_roster_entry(UpsertRosterEntryRequest {
                    entry: Some(RosterEntry {
                        agent_id: "z".into(),
                        max_capacity: 1,
                        ..Default::default()
                    }),
                })
                .await),
            Code::InvalidArgument,
            "`entry.languages`",
        ),
        (
            "reassign unknown",
            ok(admin
                .reassign(ReassignRequest {
                    conversation_id: "nope".into(),
                    agent_id: String::new(),
                    reason: String::new(),
                })
                .await),
            Code::NotFound,
            "`nope`",
        ),
        (
            "cancel unknown",
            ok(gateway
                .cancel_conversation(CancelConversationRequest {
                    conversation_id: "nope".into(),
                    reason: String::new(),
                })
                .await),
            Code::NotFound,
            "`nope`",
        ),
        (
            "transfer without target",
            ok(alice
                .client
                .transfer_conversation(TransferConversationRequest {
                    conversation_id: "c".into(),
                    note: String::new(),
                    target: None,
                })
                .await),
            Code::InvalidArgument,
            "`target`",
        ),
        (
            "transfer to a bad agent id",
            ok(alice
                .client
                .transfer_conversation(TransferConversationRequest {
                    conversation_id: "c".into(),
                    note: String::new(),
                    target: Some(Target::AgentId("a b".into())),
                })
                .await),
            Code::InvalidArgument,
            "`target.agent_id`",
        ),
        (
            "transfer to a queue with a bad level",
            ok(alice
                .client
                .transfer_conversation(TransferConversationRequest {
                    conversation_id: "c".into(),
                    note: String::new(),
                    target: Some(Target::Queue(TransferToQueue {
                        category: "fraud".into(),
                        required_skills: vec![Skill {
                            name: "fraud".into(),
                            level: 6,
                        }],
                        language: String::new(),
                    })),
                })
                .await),
            Code::InvalidArgument,
            "`target.queue.required_skills",
        ),
        (
            "transfer to a queue without category",
            ok(alice
                .client
                .transfer_conversation(TransferConversationRequest {
                    conversation_id: "c".into(),
                    note: String::new(),
                    target: Some(Target::Queue(TransferToQueue::default())),
                })
                .await),
            Code::InvalidArgument,
            "`target.queue.category`",
        ),
        (
            "transfer to a queue with a malformed language",
            ok(alice
                .client
                .transfer_conversation(TransferConversationRequest {
                    conversation_id: "c".into(),
                    note: String::new(),
                    target: Some(Target::Queue(TransferToQueue {
                        category: "fraud".into(),
                        required_skills: vec![],
                        language: "not a tag".into(),
                    })),
                })
                .await),
            Code::InvalidArgument,
            "`target.queue.language`",
        ),
        (
            "transfer unknown conversation",
            ok(alice
                .client
                .transfer_conversation(TransferConversationRequest {
                    conversation_id: "nope".into(),
                    note: String::new(),
                    target: Some(Target::AgentId("bob".into())),
                })
                .await),
            Code::NotFound,
            "`nope`",
        ),
        (
            "csat out of range",
            ok(gateway
                .report_csat(ReportCsatRequest {
                    conversation_id: "c".into(),
                    score: 6,
                })
                .await),
            Code::InvalidArgument,
            "`score`",
        ),
        (
            "csat unknown conversation",
            ok(gateway
                .report_csat(ReportCsatRequest {
                    conversation_id: "nope".into(),
                    score: 3,
                })
                .await),
            Code::NotFound,
            "`nope`",
        ),
        (
            "watch bad id",
            {
                let r = gateway
                    .watch_conversation(WatchConversationRequest {
                        conversation_id: "a b".into(),
                    })
                    .await;
                r.map(|_| ())
            },
            Code::InvalidArgument,
            "`conversation_id`",
        ),
    ];
    check(rows);

    // Offers: not yours, then held by someone else, then expired.
    gateway
        .request_agent(handoff("real", "billing", 2))
        .await
        .unwrap();
    let offer = alice.expect_offer().await;
    let rows: Vec<Row> = vec![
        (
            "not your offer",
            ok(bob
                .client
                .accept_offer(AcceptOfferRequest {
                    offer_id: offer.offer_id.clone(),
                })
                .await),
            Code::PermissionDenied,
            "another agent",
        ),
        (
            "complete not held",
            ok(bob
                .client
                .complete_conversation(CompleteConversationRequest {
                    conversation_id: "real".into(),
                    disposition: String::new(),
                })
                .await),
            Code::FailedPrecondition,
            "`real`",
        ),
        (
            "transfer not held",
            ok(bob
                .client
                .transfer_conversation(TransferConversationRequest {
                    conversation_id: "real".into(),
                    note: String::new(),
                    target: Some(Target::AgentId("alice".into())),
                })
                .await),
            Code::FailedPrecondition,
            "`real`",
        ),
        (
            "csat before completion",
            ok(gateway
                .report_csat(ReportCsatRequest {
                    conversation_id: "real".into(),
                    score: 3,
                })
                .await),
            Code::FailedPrecondition,
            "`real`",
        ),
        (
            "stale attempt",
            ok(alice
                .client
                .accept_offer(AcceptOfferRequest {
                    offer_id: Some(OfferId {
                        conversation_id: "real".into(),
                        attempt: 5,
                    }),
                })
                .await),
            Code::FailedPrecondition,
            "`real#5`",
        ),
    ];
    check(rows);
    // Let the 600 ms offer expire, then accepting it is refused.
    let _ = alice.next().await;
    let rows: Vec<Row> = vec![(
        "expired offer",
        ok(alice
            .client
            .accept_offer(AcceptOfferRequest {
                offer_id: offer.offer_id.clone(),
            })
            .await),
        Code::FailedPrecondition,
        "`real#1`",
    )];
    check(rows);
}

// ---------------------------------------------------------------- garbage

struct Shared {
    runtime: tokio::runtime::Runtime,
    server: TestServer,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(TestServer::start(fast_settings()));
        Shared { runtime, server }
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_.-]{1,12}",
        ".{0,40}",
        "[ -~]{120,140}",
        Just("\u{0}\u{7f}\u{ffff}".to_owned()),
    ]
}

fn skills() -> impl Strategy<Value = Vec<Skill>> {
    proptest::collection::vec(
        (text(), any::<u32>()).prop_map(|(name, level)| Skill { name, level }),
        0..4,
    )
}

fn location() -> impl Strategy<Value = Option<Location>> {
    proptest::option::of(
        (any::<f64>(), any::<f64>()).prop_map(|(latitude, longitude)| Location {
            latitude,
            longitude,
        }),
    )
}

#[derive(Debug, Clone)]
enum Garbage {
    Request(
        String,
        String,
        String,
        Vec<Skill>,
        u32,
        String,
        Option<Location>,
    ),
    GoOnline(Vec<Skill>, Vec<String>, u32, Option<Location>),
    Status(i32, String),
    Accept(String, u32),
    Decline(String, u32, String),
    Complete(String, String),
    Cancel(String, String),
    Get(String),
    Upsert(String, Vec<Skill>, Vec<String>, u32, Vec<String>),
    Reassign(String, String, String),
    Availability(String, Vec<Skill>, String),
    TransferToAgent(String, String, String),
    TransferToQueue(String, String, Vec<Skill>, String),
    Csat(String, u32),
}

fn garbage() -> impl Strategy<Value = Garbage> {
    prop_oneof![
        (
            text(),
            text(),
            text(),
            skills(),
            any::<u32>(),
            text(),
            location()
        )
            .prop_map(|(a, b, c, d, e, f, g)| Garbage::Request(a, b, c, d, e, f, g)),
        (
            skills(),
            proptest::collection::vec(text(), 0..3),
            any::<u32>(),
            location()
        )
            .prop_map(|(a, b, c, d)| Garbage::GoOnline(a, b, c, d)),
        (any::<i32>(), text()).prop_map(|(a, b)| Garbage::Status(a, b)),
        (text(), any::<u32>()).prop_map(|(a, b)| Garbage::Accept(a, b)),
        (text(), any::<u32>(), text()).prop_map(|(a, b, c)| Garbage::Decline(a, b, c)),
        (text(), text()).prop_map(|(a, b)| Garbage::Complete(a, b)),
        (text(), text()).prop_map(|(a, b)| Garbage::Cancel(a, b)),
        text().prop_map(Garbage::Get),
        (
            text(),
            skills(),
            proptest::collection::vec(text(), 0..3),
            any::<u32>(),
            proptest::collection::vec(text(), 0..3)
        )
            .prop_map(|(a, b, c, d, e)| Garbage::Upsert(a, b, c, d, e)),
        (text(), text(), text()).prop_map(|(a, b, c)| Garbage::Reassign(a, b, c)),
        (text(), skills(), text()).prop_map(|(a, b, c)| Garbage::Availability(a, b, c)),
        (text(), text(), text()).prop_map(|(a, b, c)| Garbage::TransferToAgent(a, b, c)),
        (text(), text(), skills(), text())
            .prop_map(|(a, b, c, d)| Garbage::TransferToQueue(a, b, c, d)),
        (text(), any::<u32>()).prop_map(|(a, b)| Garbage::Csat(a, b)),
    ]
}

async fn send(server: &TestServer, garbage: Garbage) -> Result<(), tonic::Status> {
    let mut gateway = server.gateway().await;
    let mut admin = server.admin().await;
    let mut agent = server.agent_client("garbage-agent").await;
    match garbage {
        Garbage::Request(
            id,
            customer,
            language,
            required_skills,
            priority,
            chat_reference,
            customer_location,
        ) => ok(gateway
            .request_agent(RequestAgentRequest {
                conversation_id: id,
                customer_id: customer,
                language,
                category: String::new(),
                required_skills,
                priority,
                context: None,
                customer_asked_for_human: false,
                chat_reference,
                preferred_agent_id: String::new(),
                customer_location,
                region: String::new(),
            })
            .await),
        Garbage::GoOnline(skills, languages, capacity, location) => ok(agent
            .go_online(GoOnlineRequest {
                skills,
                languages,
                capacity,
                location,
            })
            .await),
        Garbage::Status(status, away_reason) => ok(agent
            .set_status(SetStatusRequest {
                status,
                away_reason,
            })
            .await),
        Garbage::Accept(conversation_id, attempt) => ok(agent
            .accept_offer(AcceptOfferRequest {
                offer_id: Some(OfferId {
                    conversation_id,
                    attempt,
                }),
            })
            .await),
        Garbage::Decline(conversation_id, attempt, reason) => ok(agent
            .decline_offer(DeclineOfferRequest {
                offer_id: Some(OfferId {
                    conversation_id,
                    attempt,
                }),
                reason,
            })
            .await),
        Garbage::Complete(conversation_id, disposition) => ok(agent
            .complete_conversation(CompleteConversationRequest {
                conversation_id,
                disposition,
            })
            .await),
        Garbage::Cancel(conversation_id, reason) => ok(gateway
            .cancel_conversation(CancelConversationRequest {
                conversation_id,
                reason,
            })
            .await),
        Garbage::Get(conversation_id) => ok(gateway
            .get_conversation(GetConversationRequest { conversation_id })
            .await),
        Garbage::Upsert(agent_id, skills, languages, max_capacity, allowed_regions) => ok(admin
            .upsert_roster_entry(UpsertRosterEntryRequest {
                entry: Some(RosterEntry {
                    agent_id,
                    display_name: String::new(),
                    skills,
                    languages,
                    max_capacity,
                    allowed_regions,
                    attributes: vec![],
                }),
            })
            .await),
        Garbage::Reassign(conversation_id, agent_id, reason) => ok(admin
            .reassign(ReassignRequest {
                conversation_id,
                agent_id,
                reason,
            })
            .await),
        Garbage::Availability(language, required_skills, region) => ok(gateway
            .check_availability(CheckAvailabilityRequest {
                language,
                required_skills,
                region,
            })
            .await),
        Garbage::TransferToAgent(conversation_id, note, agent_id) => ok(agent
            .transfer_conversation(TransferConversationRequest {
                conversation_id,
                note,
                target: Some(Target::AgentId(agent_id)),
            })
            .await),
        Garbage::TransferToQueue(conversation_id, category, required_skills, language) => ok(agent
            .transfer_conversation(TransferConversationRequest {
                conversation_id,
                note: String::new(),
                target: Some(Target::Queue(TransferToQueue {
                    category,
                    required_skills,
                    language,
                })),
            })
            .await),
        Garbage::Csat(conversation_id, score) => ok(gateway
            .report_csat(ReportCsatRequest {
                conversation_id,
                score,
            })
            .await),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn garbage_never_crashes_and_gets_only_expected_statuses(input in garbage()) {
        let shared = shared();
        let result = shared.runtime.block_on(send(&shared.server, input));
        if let Err(status) = result {
            let allowed = [
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
                Code::PermissionDenied,
                Code::AlreadyExists,
                Code::Unauthenticated,
            ];
            prop_assert!(allowed.contains(&status.code()), "unexpected {:?}: {}", status.code(), status.message());
        }
        // Still serving.
        let alive = shared.runtime.block_on(async {
            let mut gateway = shared.server.gateway().await;
            gateway.get_conversation(GetConversationRequest { conversation_id: "probe".into() }).await
        });
        prop_assert_eq!(alive.unwrap_err().code(), Code::NotFound);
    }
}
