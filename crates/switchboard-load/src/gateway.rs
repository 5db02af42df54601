//! The simulated chat gateway: one RequestAgent per scheduled arrival,
//! a watch on a sample of conversations, and a cancel on a fraction.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchboard_proto::v1::gateway_service_client::GatewayServiceClient;
use switchboard_proto::v1::{
    CancelConversationRequest, ConversationState, HandoffContext, RequestAgentRequest, Skill,
    WatchConversationRequest,
};

use crate::client::{Authorized, timed};
use crate::ledger::Answer;
use crate::metrics::{Counters, Series};
use crate::profile::{CATEGORIES, LANGUAGES};
use crate::run::RunContext;
use crate::schedule::Arrival;

/// A summary about the size of a real AI hand-off note.
const SUMMARY: &str = "Customer reports a double charge on the last invoice and asks for a refund; \
identity verified by the assistant; the customer is polite but wants a human.";

/// Hands one conversation over; runs as its own task.
pub async fn hand_over(
    context: Arc<RunContext>,
    mut client: GatewayServiceClient<Authorized>,
    arrival: Arrival,
) {
    let started = Instant::now();
    let metrics = &context.metrics;
    let measured = context.is_measured(arrival.intended);
    if measured {
        metrics.record(
            Series::ScheduleLag,
            started.saturating_duration_since(arrival.intended),
        );
    }
    let mut rng = StdRng::seed_from_u64(context.seed ^ arrival.sequence.wrapping_mul(0x9e37_79b9));
    let requirement = context.profile.requirement(&mut rng);
    let servable = context.servable(&requirement);
    let ledger = &context.ledger;
    let conversation_id = ledger.conversation_id(arrival.sequence);
    ledger.requested(
        arrival.sequence,
        arrival.intended,
        requirement,
        measured,
        servable,
    );
    Counters::add(&metrics.counters.requested);
    let request = RequestAgentRequest {
        conversation_id: conversation_id.clone(),
        customer_id: format!("customer-{}", arrival.sequence),
        language: LANGUAGES[requirement.language].0.to_owned(),
        category: CATEGORIES[requirement.category].0.to_owned(),
        required_skills: vec![Skill {
            name: CATEGORIES[requirement.category].0.to_owned(),
            level: requirement.min_level,
        }],
        priority: rng.random_range(0..=3),
        context: Some(HandoffContext {
            summary: SUMMARY.to_owned(),
            attributes: Default::default(),
        }),
        customer_asked_for_human: rng.random_bool(0.3),
        chat_reference: format!("chat://load/{conversation_id}"),
        preferred_agent_id: String::new(),
        customer_location: None,
        region: String::new(),
    };
    let answer = timed(metrics, "RequestAgent", client.request_agent(request)).await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(status) => {
            metrics.record_error("RequestAgent", &status);
            ledger.answered(arrival.sequence, Answer::Failed, metrics);
            return;
        }
    };
    let state = answer
        .conversation
        .map(|conversation| conversation.state)
        .unwrap_or_default();
    let kind = if state == ConversationState::Queued as i32 {
        Answer::Queued
    } else {
        Answer::OfferedAtOnce
    };
    ledger.answered(arrival.sequence, kind, metrics);

    if rng.random_bool(context.watch_fraction) {
        let mut watch_client = client.clone();
        let context = Arc::clone(&context);
        let conversation_id = conversation_id.clone();
        context.tracker.clone().spawn(async move {
            watch(&context, &mut watch_client, arrival, conversation_id).await;
        });
    }
    if rng.random_bool(context.profile.cancel_fraction) {
        let delay = context.profile.cancel_within.mul_f64(rng.random::<f64>());
        tokio::time::sleep(delay).await;
        ledger.cancel_sent(arrival.sequence);
        Counters::add(&metrics.counters.cancelled);
        let request = CancelConversationRequest {
            conversation_id,
            reason: "customer left".to_owned(),
        };
        if let Err(status) = timed(
            metrics,
            "CancelConversation",
            client.cancel_conversation(request),
        )
        .await
        {
            metrics.record_error("CancelConversation", &status);
        }
    }
}

/// Watches one conversation until it is assigned or ends, recording
/// request → assigned as the gateway sees it.
async fn watch(
    context: &RunContext,
    client: &mut GatewayServiceClient<Authorized>,
    arrival: Arrival,
    conversation_id: String,
) {
    let metrics = &context.metrics;
    let request = WatchConversationRequest { conversation_id };
    let mut stream = match timed(
        metrics,
        "WatchConversation",
        client.watch_conversation(request),
    )
    .await
    {
        Ok(stream) => stream,
        Err(status) => {
            metrics.record_error("WatchConversation", &status);
            return;
        }
    };
    loop {
        let message = tokio::select! {
            () = context.agents_stop.cancelled() => return,
            message = stream.message() => message,
        };
        match message {
            Ok(Some(event)) => {
                let state = event
                    .conversation
                    .map(|conversation| conversation.state)
                    .unwrap_or_default();
                if state == ConversationState::Assigned as i32 {
                    if context.is_measured(arrival.intended) {
                        metrics.record(Series::RequestToAssignedWatch, arrival.intended.elapsed());
                    }
                    return;
                }
                if state >= ConversationState::Completed as i32 {
                    return;
                }
            }
            Ok(None) => return,
            Err(status) => {
                metrics.record_error("WatchConversation (stream)", &status);
                return;
            }
        }
    }
}
