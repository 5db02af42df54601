//! Routing scenarios shared by the embedded-store tests
//! (`tests/routing.rs`) and the Redis replica tests
//! (`tests/routing_redis.rs`): the routing file they load, where customers
//! and agents are, and each scenario written once against URLs (the
//! gateway's replica, the agents' replicas), so one script holds both
//! stores to the same outcomes. On one server every URL is the same.

use crate::replicas::{agent_client_at, gateway_at};
use crate::*;
use std::path::{Path, PathBuf};
use std::time::Instant;
use switchboard_proto::v1::transfer_conversation_request::Target;
use tonic::Code;

pub const BERLIN: Location = Location {
    latitude: 52.52,
    longitude: 13.40,
};
pub const MUNICH: Location = Location {
    latitude: 48.14,
    longitude: 11.58,
};

/// A routing file: `billing` needs level `level` at first, no billing
/// skill at all after one second; `escalation` needs billing 5, lowered to
/// 3 after two seconds; Berlin as a region; preferred agents get 30 s.
/// Offers of planned conversations keep the built-in 20 s timeout, so a
/// slow test never sees one time out.
pub fn routing_file(level: u32) -> String {
    format!(
        r#"
[routing]
default_queue = "general"
preferred_agent_window_seconds = 30
roster_allowed_regions = "if_listed"

[regions.berlin]
wkt = "POLYGON((13.08 52.34, 13.76 52.34, 13.76 52.68, 13.08 52.68, 13.08 52.34))"

[queues.general]

[queues.billing]
skills = {{ billing = {level} }}

[[queues.billing.relax]]
after_seconds = 1
drop_skill = "billing"

[queues.escalation]
skills = {{ billing = 5 }}

[[queues.escalation.relax]]
after_seconds = 2
lower_skill = "billing"
to_level = 3
"#
    )
}

/// Writes `text` to `dir/name`, returning the path.
pub fn write_routing_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An agent app on the server at `url`: online in English with `skills`,
/// capacity 1, at `location` (or none), stream subscribed.
pub async fn agent_at(
    url: &str,
    id: &str,
    skills: &[(&str, u32)],
    location: Option<Location>,
) -> AgentApp {
    AgentApp::online_at(id, agent_client_at(url, id).await, skills, location).await
}

/// With [`routing_file`]`(4)` in force: a level-2 agent (on `agents`) is
/// offered a billing hand-off (through `gateway`) only once the step
/// dropping the skill is due, a second after the hand-off.
pub async fn a_relaxation_step_fires_while_the_customer_waits(gateway: &str, agents: &str) {
    let mut junior = agent_at(agents, "junior", &[("billing", 2)], None).await;
    let mut gateway = gateway_at(gateway).await;
    let started = Instant::now();
    let ticket = gateway
        .request_agent(handoff("c1", "billing", 1))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(ticket.state(), ConversationState::Queued);
    // Level 4 required at first: the level-2 agent is not offered it.
    assert!(
        junior
            .next_work_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    // After one second the step drops the skill.
    let offer = junior.expect_offer().await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "offered after {:?}, before the step was due",
        started.elapsed()
    );
    junior.accept(&offer).await.unwrap();
}

/// With [`routing_file`]`(1)` in force: a returning customer's previous
/// agent (on `preferred_at`) gets the first offer although another
/// eligible agent (on `other_at`) has been idle longer; once it declines,
/// the other agent gets it.
pub async fn a_returning_customer_gets_the_preferred_agent_first(
    gateway: &str,
    preferred_at: &str,
    other_at: &str,
) {
    // `other` has been idle longest: without a preference it would be first.
    let mut other = agent_at(other_at, "other", &[("billing", 3)], None).await;
    let mut preferred = agent_at(preferred_at, "preferred", &[("billing", 3)], None).await;
    let mut gateway = gateway_at(gateway).await;
    let mut request = handoff("c1", "billing", 1);
    request.preferred_agent_id = "preferred".into();
    gateway.request_agent(request).await.unwrap();
    let offer = preferred.expect_offer().await;
    assert_eq!(offer.conversation.as_ref().unwrap().conversation_id, "c1");
    let unexpected = other.next_work_within(Duration::from_millis(300)).await;
    assert!(unexpected.is_none(), "{unexpected:?}");
    // Declined: the preferred agent is excluded, the window no longer
    // holds it back, and the next agent gets it.
    preferred.decline(&offer).await.unwrap();
    let offer = other.expect_offer().await;
    assert_eq!(offer.conversation.as_ref().unwrap().conversation_id, "c1");
}

/// With [`routing_file`]`(1)` in force: a region named by the hand-off (or
/// containing the customer's location) refuses an agent located elsewhere
/// or nowhere, admits it once a heartbeat places it inside, and admits an
/// agent that went online inside. Availability follows the same rule.
pub async fn a_region_refuses_agents_located_elsewhere(gateway: &str, agents: &str) {
    let mut munich = agent_at(agents, "munich", &[("billing", 3)], Some(MUNICH)).await;
    let mut nowhere = agent_at(agents, "nowhere", &[("billing", 3)], None).await;
    let mut gateway_client = gateway_at(gateway).await;

    // A region the file lacks is the gateway's mistake.
    let mut request = handoff("c0", "billing", 1);
    request.region = "mars".into();
    let err = gateway_client.request_agent(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("mars"), "{err}");

    // Availability follows the region rule too.
    let probe = |region: &str| CheckAvailabilityRequest {
        language: "en".into(),
        required_skills: vec![],
        region: region.into(),
    };
    let anywhere = gateway_client.check_availability(probe("")).await.unwrap();
    assert_eq!(anywhere.into_inner().agents_available, 2);
    let in_berlin = gateway_client
        .check_availability(probe("berlin"))
        .await
        .unwrap();
    assert_eq!(in_berlin.into_inner().agents_available, 0);

    // A Berlin customer: the Munich agent and the agent with no location
    // (excluded by default) are refused.
    let mut request = handoff("c1", "billing", 1);
    request.region = "berlin".into();
    gateway_client.request_agent(request).await.unwrap();
    let unexpected = munich.next_work_within(Duration::from_millis(400)).await;
    assert!(unexpected.is_none(), "{unexpected:?}");
    assert!(
        nowhere
            .next_work_within(Duration::from_millis(100))
            .await
            .is_none()
    );
    // The Munich agent travels to Berlin: its heartbeat's location admits
    // it and the waiting customer is offered at once.
    munich
        .client
        .heartbeat(HeartbeatRequest {
            location: Some(BERLIN),
        })
        .await
        .unwrap();
    let offer = munich.expect_offer().await;
    assert_eq!(offer.conversation.unwrap().conversation_id, "c1");

    // A customer located in Berlin (no region named) counts the same.
    let mut berliner = agent_at(agents, "berliner", &[("billing", 3)], Some(BERLIN)).await;
    let mut request = handoff("c2", "billing", 1);
    request.customer_location = Some(BERLIN);
    gateway_client.request_agent(request).await.unwrap();
    let offer = berliner.expect_offer().await;
    assert_eq!(offer.conversation.unwrap().conversation_id, "c2");
    assert!(
        nowhere
            .next_work_within(Duration::from_millis(100))
            .await
            .is_none(),
        "the agent with no location is never offered a Berlin customer"
    );
}

/// With [`routing_file`]`(1)` in force: an agent (on `transferring_at`)
/// transfers a billing conversation to the `escalation` queue asking for
/// billing 1 only. The queue's plan decides: billing 5 first, so the
/// expert (on `agents`) is offered it although a level-3 agent has been
/// idle longer (on the transfer's own requirements, or on the billing
/// plan, that agent would be first); once the expert declines, the
/// level-3 agent is offered it only when the queue's step lowering the
/// level to 3 is due, two seconds after the transfer.
pub async fn a_transfer_to_a_queue_follows_the_target_queues_plan(
    gateway: &str,
    transferring_at: &str,
    agents: &str,
) {
    // Level 2: eligible for billing, never for escalation.
    let mut first = agent_at(transferring_at, "first", &[("billing", 2)], None).await;
    let mut gateway = gateway_at(gateway).await;
    gateway
        .request_agent(handoff("c1", "billing", 1))
        .await
        .unwrap();
    let offer = first.expect_offer().await;
    first.accept(&offer).await.unwrap();

    // `senior` goes online first: idle longest, it would be picked by
    // longest idle among agents meeting billing 1 (or billing 3).
    let mut senior = agent_at(agents, "senior", &[("billing", 3)], None).await;
    let mut expert = agent_at(agents, "expert", &[("billing", 5)], None).await;

    let transferred = Instant::now();
    first
        .client
        .transfer_conversation(TransferConversationRequest {
            conversation_id: "c1".into(),
            note: "needs an expert".into(),
            target: Some(Target::Queue(TransferToQueue {
                category: "escalation".into(),
                required_skills: vec![Skill {
                    name: "billing".into(),
                    level: 1,
                }],
                language: String::new(),
            })),
        })
        .await
        .unwrap();
    let offer = expert.expect_offer().await;
    let offered = offer.conversation.clone().unwrap();
    assert_eq!(
        (offered.conversation_id.as_str(), offered.category.as_str()),
        ("c1", "escalation")
    );
    assert!(
        senior
            .next_work_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the escalation queue requires billing 5 before its step"
    );

    // Declined: the level-3 agent waits for the queue's step, timed from
    // the transfer.
    expert.decline(&offer).await.unwrap();
    let offer = senior.expect_offer().await;
    let waited = transferred.elapsed();
    assert_eq!(offer.conversation.as_ref().unwrap().conversation_id, "c1");
    assert!(
        waited >= Duration::from_millis(1_900),
        "offered {waited:?} after the transfer, before the escalation step was due"
    );
    let assigned = senior.accept(&offer).await.unwrap();
    assert_eq!(assigned.category, "escalation");
    assert_eq!(assigned.transfers.len(), 1);
    assert_eq!(assigned.transfers[0].from_agent_id, "first");
}
