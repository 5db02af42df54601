//! A simulated agent app: goes online with its profile, holds its event
//! stream, heartbeats, answers offers after a think time (accept, decline
//! or let it time out), completes after a handle time, and now and then
//! goes offline and comes back.
//!
//! # Design
//!
//! One task per agent runs a `select!` loop over the event stream, a
//! heartbeat tick, a churn deadline and a channel of results from the
//! agent's own calls. Each call (accept, complete, ...) runs in a small task
//! of its own, so a slow call never delays reading the stream: the offer's
//! arrival time is what request→offer measures. The loop is `biased` with
//! the channel first: "about to complete X" is always applied before an
//! offer that the completion made possible, so the capacity check never
//! sees a stale assignment.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use switchboard_proto::v1::agent_event::Kind;
use switchboard_proto::v1::agent_service_client::AgentServiceClient;
use switchboard_proto::v1::{
    AcceptOfferRequest, AgentEvent, AgentStatus, CompleteConversationRequest, ConversationState,
    DeclineOfferRequest, GoOfflineRequest, GoOnlineRequest, HeartbeatRequest, OfferId,
    SetStatusRequest, Skill, SubscribeRequest,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::client::{Authorized, timed};
use crate::metrics::Counters;
use crate::profile::{AgentProfile, CATEGORIES, LANGUAGES, OfferChoice, exponential};
use crate::run::RunContext;

/// Pause before retrying after a failed GoOnline or a broken stream.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// An agent due to churn while busy tries again this much later.
const CHURN_RETRY: Duration = Duration::from_secs(1);

/// Results of the agent's own calls, fed back into its loop.
enum Outcome {
    Accepted(String),
    AcceptRefused(String),
    /// About to send CompleteConversation: the slot is free from now on.
    Completing(String),
    Answered,
}

pub struct SimulatedAgent {
    pub id: String,
    pub profile: AgentProfile,
    pub client: AgentServiceClient<Authorized>,
    pub seed: u64,
}

struct AgentState {
    active: HashSet<String>,
    pending_offer: Option<String>,
    offers_seen: HashSet<(String, u32)>,
    assignments_seen: HashSet<String>,
    calls_in_flight: usize,
}

impl SimulatedAgent {
    fn go_online_request(&self, capacity: u32) -> GoOnlineRequest {
        GoOnlineRequest {
            skills: self
                .profile
                .skills
                .iter()
                .map(|&(skill, level)| Skill {
                    name: CATEGORIES[skill].0.to_owned(),
                    level,
                })
                .collect(),
            languages: self
                .profile
                .languages
                .iter()
                .map(|&language| LANGUAGES[language].0.to_owned())
                .collect(),
            capacity,
            location: None,
        }
    }

    /// Runs until the context's agent stop token fires, then goes offline.
    pub async fn run(mut self, context: Arc<RunContext>) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (outcomes, mut outcome_receiver) = mpsc::unbounded_channel();
        let mut state = AgentState {
            active: HashSet::new(),
            pending_offer: None,
            offers_seen: HashSet::new(),
            assignments_seen: HashSet::new(),
            calls_in_flight: 0,
        };
        let stop = context.agents_stop.clone();
        let mut onboarded = false;
        'session: while !stop.is_cancelled() {
            let Some((heartbeat_every, mut stream)) = self.open_session(&context, &mut rng).await
            else {
                return;
            };
            let mut online_counted = false;
            let first_heartbeat =
                tokio::time::Instant::now() + heartbeat_every.mul_f64(rand::Rng::random(&mut rng));
            let mut heartbeat = tokio::time::interval_at(first_heartbeat, heartbeat_every);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut churn_at = context
                .churn_mean
                .map(|mean| tokio::time::Instant::now() + exponential(&mut rng, mean));
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break 'session,
                    Some(outcome) = outcome_receiver.recv() => {
                        self.apply(outcome, &mut state, &context, &outcomes, &mut rng);
                    }
                    message = stream.message() => match message {
                        Ok(Some(event)) => {
                            if !online_counted && matches!(event.kind, Some(Kind::Snapshot(_))) {
                                online_counted = true;
                                Counters::add(&context.metrics.counters.agents_online);
                                if !onboarded {
                                    onboarded = true;
                                    Counters::add(&context.metrics.counters.agents_onboarded);
                                }
                            }
                            self.on_event(event, &mut state, &context, &outcomes, &mut rng);
                        }
                        Ok(None) | Err(_) => {
                            if stop.is_cancelled() {
                                break 'session;
                            }
                            let code = match message {
                                Err(status) => status.code(),
                                Ok(_) => tonic::Code::Ok,
                            };
                            context.metrics.record_error("Subscribe (stream ended)", &code);
                            if online_counted {
                                context.metrics.counters.agents_online.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue 'session;
                        }
                    },
                    _ = heartbeat.tick() => self.heartbeat(&context, &outcomes, &mut state),
                    () = sleep_until_or_never(churn_at) => {
                        let idle = state.active.is_empty()
                            && state.pending_offer.is_none()
                            && state.calls_in_flight == 0;
                        if !idle {
                            churn_at = Some(tokio::time::Instant::now() + CHURN_RETRY);
                            continue;
                        }
                        drop(stream);
                        self.go_offline(&context).await;
                        if online_counted {
                            context.metrics.counters.agents_online.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Counters::add(&context.metrics.counters.churned_offline);
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(context.offline_pause) => {}
                        }
                        continue 'session;
                    }
                }
            }
        }
        if context.offline_at_end {
            self.go_offline(&context).await;
        }
    }

    /// GoOnline and Subscribe, retried until they work or the run stops.
    async fn open_session(
        &mut self,
        context: &RunContext,
        rng: &mut StdRng,
    ) -> Option<(Duration, Streaming<AgentEvent>)> {
        let request = self.go_online_request(context.capacity);
        loop {
            if context.agents_stop.is_cancelled() {
                return None;
            }
            let permit = context.onboarding.acquire().await.ok();
            let online = timed(
                &context.metrics,
                "GoOnline",
                self.client.go_online(request.clone()),
            )
            .await;
            let online = match online {
                Ok(online) => online,
                Err(status) => {
                    context.metrics.record_error("GoOnline", &status);
                    drop(permit);
                    tokio::time::sleep(RETRY_PAUSE.mul_f64(1.0 + rand::Rng::random::<f64>(rng)))
                        .await;
                    continue;
                }
            };
            let stream = timed(
                &context.metrics,
                "Subscribe",
                self.client.subscribe(SubscribeRequest {}),
            )
            .await;
            drop(permit);
            match stream {
                Ok(stream) => {
                    let every =
                        context
                            .heartbeat_every
                            .unwrap_or(match online.heartbeat_interval_ms {
                                0 => Duration::from_secs(10),
                                millis => Duration::from_millis(millis),
                            });
                    return Some((every, stream));
                }
                Err(status) => {
                    context.metrics.record_error("Subscribe", &status);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn go_offline(&mut self, context: &RunContext) {
        let result = timed(
            &context.metrics,
            "GoOffline",
            self.client.go_offline(GoOfflineRequest { drain: false }),
        )
        .await;
        if let Err(status) = result {
            context.metrics.record_error("GoOffline", &status);
        }
    }

    fn heartbeat(
        &self,
        context: &Arc<RunContext>,
        outcomes: &mpsc::UnboundedSender<Outcome>,
        state: &mut AgentState,
    ) {
        let mut client = self.client.clone();
        let context_for_call = Arc::clone(context);
        let outcomes = outcomes.clone();
        state.calls_in_flight += 1;
        context.tracker.spawn(async move {
            let metrics = &context_for_call.metrics;
            match timed(
                metrics,
                "Heartbeat",
                client.heartbeat(HeartbeatRequest { location: None }),
            )
            .await
            {
                Ok(answer) if answer.status == AgentStatus::Away as i32 => {
                    // Put away after missed offers: come back, as an app
                    // whose user noticed would.
                    set_available(&mut client, &context_for_call).await;
                }
                Ok(_) => {}
                Err(status) => metrics.record_error("Heartbeat", &status),
            }
            let _ = outcomes.send(Outcome::Answered);
        });
    }

    fn on_event(
        &mut self,
        event: AgentEvent,
        state: &mut AgentState,
        context: &Arc<RunContext>,
        outcomes: &mpsc::UnboundedSender<Outcome>,
        rng: &mut StdRng,
    ) {
        let now = Instant::now();
        match event.kind {
            Some(Kind::Snapshot(snapshot)) => {
                // The snapshot is the server's word on what this agent
                // holds: anything requeued while the stream was away is
                // no longer ours (its event went to the old stream).
                let held: HashSet<&str> = snapshot
                    .assignments
                    .iter()
                    .map(|conversation| conversation.conversation_id.as_str())
                    .collect();
                state.active.retain(|id| held.contains(id.as_str()));
                for assignment in snapshot.assignments {
                    self.on_assigned(assignment.conversation_id, state, context, outcomes, rng);
                }
                for offer in snapshot.offers {
                    if let Some(offer_id) = offer.offer_id {
                        self.on_offer(offer_id, now, state, context, outcomes, rng);
                    }
                }
            }
            Some(Kind::Offer(offer)) => {
                if let Some(offer_id) = offer.offer_id {
                    self.on_offer(offer_id, now, state, context, outcomes, rng);
                }
            }
            Some(Kind::OfferRevoked(revoked)) => {
                let revoked_id = revoked.offer_id.map(|id| id.conversation_id);
                if state.pending_offer == revoked_id {
                    state.pending_offer = None;
                }
            }
            Some(Kind::Assignment(assignment)) => {
                if let Some(conversation) = assignment.conversation {
                    self.on_assigned(conversation.conversation_id, state, context, outcomes, rng);
                }
            }
            Some(Kind::ConversationEnded(ended)) => {
                state.active.remove(&ended.conversation_id);
                if state.pending_offer.as_deref() == Some(ended.conversation_id.as_str()) {
                    state.pending_offer = None;
                }
                let terminal = [
                    ConversationState::Completed,
                    ConversationState::Abandoned,
                    ConversationState::Expired,
                ]
                .iter()
                .any(|terminal| *terminal as i32 == ended.state);
                if terminal {
                    context.ledger.ended(&ended.conversation_id);
                }
            }
            // Put away (e.g. after missed offers): come back, as a user
            // who noticed would.
            Some(Kind::Notice(notice)) if notice.status == AgentStatus::Away as i32 => {
                let mut client = self.client.clone();
                let context = Arc::clone(context);
                context.tracker.clone().spawn(async move {
                    set_available(&mut client, &context).await;
                });
            }
            Some(Kind::Notice(_)) | None => {}
        }
    }

    fn on_offer(
        &mut self,
        offer_id: OfferId,
        at: Instant,
        state: &mut AgentState,
        context: &Arc<RunContext>,
        outcomes: &mpsc::UnboundedSender<Outcome>,
        rng: &mut StdRng,
    ) {
        if !state
            .offers_seen
            .insert((offer_id.conversation_id.clone(), offer_id.attempt))
        {
            return;
        }
        let metrics = &context.metrics;
        Counters::add(&metrics.counters.offered);
        context.ledger.offered(
            &offer_id.conversation_id,
            at,
            &self.id,
            &self.profile,
            metrics,
        );
        let capacity = context.capacity as usize;
        if state.active.len() >= capacity {
            context.ledger.over_capacity(
                &self.id,
                &offer_id.conversation_id,
                &state.active,
                capacity,
            );
        }
        state.pending_offer = Some(offer_id.conversation_id.clone());
        let choice = context.profile.offer_choice(rng);
        if choice == OfferChoice::Miss {
            Counters::add(&metrics.counters.missed);
            return;
        }
        let think = context.profile.think_time(rng);
        let mut client = self.client.clone();
        let context_for_call = Arc::clone(context);
        let outcomes = outcomes.clone();
        state.calls_in_flight += 1;
        context.tracker.spawn(async move {
            tokio::time::sleep(think).await;
            let context = context_for_call;
            let conversation_id = offer_id.conversation_id.clone();
            let outcome = if choice == OfferChoice::Accept {
                let request = AcceptOfferRequest {
                    offer_id: Some(offer_id),
                };
                match timed(
                    &context.metrics,
                    "AcceptOffer",
                    client.accept_offer(request),
                )
                .await
                {
                    Ok(_) => Outcome::Accepted(conversation_id),
                    Err(status) => {
                        refusal(&context, "AcceptOffer", &conversation_id, &status);
                        Outcome::AcceptRefused(conversation_id)
                    }
                }
            } else {
                Counters::add(&context.metrics.counters.declined);
                let request = DeclineOfferRequest {
                    offer_id: Some(offer_id),
                    reason: "load test decline".to_owned(),
                };
                if let Err(status) = timed(
                    &context.metrics,
                    "DeclineOffer",
                    client.decline_offer(request),
                )
                .await
                {
                    refusal(&context, "DeclineOffer", &conversation_id, &status);
                }
                Outcome::AcceptRefused(conversation_id)
            };
            let _ = outcomes.send(outcome);
        });
    }

    fn on_assigned(
        &mut self,
        conversation_id: String,
        state: &mut AgentState,
        context: &Arc<RunContext>,
        outcomes: &mpsc::UnboundedSender<Outcome>,
        rng: &mut StdRng,
    ) {
        if state.pending_offer.as_deref() == Some(conversation_id.as_str()) {
            state.pending_offer = None;
        }
        if !state.assignments_seen.insert(conversation_id.clone()) {
            return;
        }
        let metrics = &context.metrics;
        Counters::add(&metrics.counters.assigned);
        context
            .ledger
            .assigned(&conversation_id, Instant::now(), metrics);
        state.active.insert(conversation_id.clone());
        let capacity = context.capacity as usize;
        if state.active.len() > capacity {
            context
                .ledger
                .over_capacity(&self.id, &conversation_id, &state.active, capacity);
        }
        let handle = context.profile.handle_time(rng);
        let mut client = self.client.clone();
        let context_for_call = Arc::clone(context);
        let outcomes = outcomes.clone();
        state.calls_in_flight += 1;
        context.tracker.spawn(async move {
            let context = context_for_call;
            tokio::select! {
                () = context.agents_stop.cancelled() => {
                    let _ = outcomes.send(Outcome::Answered);
                    return;
                }
                () = tokio::time::sleep(handle) => {}
            }
            let _ = outcomes.send(Outcome::Completing(conversation_id.clone()));
            let request = CompleteConversationRequest {
                conversation_id: conversation_id.clone(),
                disposition: "resolved".to_owned(),
            };
            match timed(
                &context.metrics,
                "CompleteConversation",
                client.complete_conversation(request),
            )
            .await
            {
                Ok(_) => {
                    Counters::add(&context.metrics.counters.completed);
                    context.ledger.ended(&conversation_id);
                }
                Err(status) => refusal(&context, "CompleteConversation", &conversation_id, &status),
            }
            let _ = outcomes.send(Outcome::Answered);
        });
    }

    fn apply(
        &mut self,
        outcome: Outcome,
        state: &mut AgentState,
        context: &Arc<RunContext>,
        outcomes: &mpsc::UnboundedSender<Outcome>,
        rng: &mut StdRng,
    ) {
        match outcome {
            Outcome::Accepted(conversation_id) => {
                state.calls_in_flight = state.calls_in_flight.saturating_sub(1);
                self.on_assigned(conversation_id, state, context, outcomes, rng);
            }
            Outcome::AcceptRefused(conversation_id) => {
                state.calls_in_flight = state.calls_in_flight.saturating_sub(1);
                if state.pending_offer.as_deref() == Some(conversation_id.as_str()) {
                    state.pending_offer = None;
                }
            }
            Outcome::Completing(conversation_id) => {
                state.active.remove(&conversation_id);
            }
            Outcome::Answered => {
                state.calls_in_flight = state.calls_in_flight.saturating_sub(1);
            }
        }
    }
}

/// Classifies a refused agent call: provoked by the gateway's cancel or by
/// the end-of-run teardown (agents going offline requeue what they hold, so
/// a completion racing it is refused), or a real error.
fn refusal(context: &RunContext, method: &'static str, conversation_id: &str, status: &Status) {
    if context.ledger.was_cancelled(conversation_id) || context.agents_stop.is_cancelled() {
        context
            .metrics
            .record_expected_refusal(method, status.code());
    } else {
        context.metrics.record_error(method, status);
    }
}

async fn set_available(client: &mut AgentServiceClient<Authorized>, context: &RunContext) {
    let request = SetStatusRequest {
        status: AgentStatus::Available as i32,
        away_reason: String::new(),
    };
    if let Err(status) = timed(&context.metrics, "SetStatus", client.set_status(request)).await {
        context.metrics.record_error("SetStatus", &status);
    }
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
