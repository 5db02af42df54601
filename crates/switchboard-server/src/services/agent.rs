//! AgentService: the gig agent's mobile app. The agent is always the
//! token's agent.

use super::AppState;
use crate::auth::{Caller, caller};
use crate::convert::{self, Audience};
use crate::error::status;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_core::event::OFFER_NOT_DELIVERED;
use switchboard_core::model::{AgentSnapshot, TransferTarget};
use switchboard_core::{AgentId, ConversationId, Event, EventKind, PoolId};
use switchboard_proto::v1 as pb;
use switchboard_proto::v1::agent_event::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct AgentApi {
    state: AppState,
}

impl AgentApi {
    pub fn new(state: AppState) -> Self {
        AgentApi { state }
    }

    /// Records `location` as the agent's (see `crate::regions`) and, with a
    /// routing config in force, tells the store which regions' geofences
    /// admit the agent there.
    async fn resolve_regions(
        &self,
        caller: &Caller,
        location: Option<switchboard_core::model::Location>,
    ) -> Result<(), Status> {
        self.state
            .locations
            .record(&caller.pool, caller.agent()?, location);
        let Some(config) = self.state.routing.config() else {
            return Ok(());
        };
        let regions = crate::routing::agent_regions(&config, location);
        self.state
            .store
            .set_agent_regions(&caller.pool, caller.agent()?, Some(regions))
            .await
            .map_err(status)?;
        Ok(())
    }

    /// Refuses tokens issued before operations forced the agent offline.
    async fn check_epoch(&self, caller: &Caller) -> Result<(), Status> {
        let agent = caller.agent()?;
        let entry = self
            .state
            .store
            .roster_entry(&caller.pool, agent)
            .await
            .map_err(status)?;
        if entry.is_some_and(|e| e.token_epoch > caller.epoch) {
            return Err(Status::unauthenticated(
                "token refused: it was revoked when operations forced this agent offline; get a new token",
            ));
        }
        Ok(())
    }
}

fn agent_event(event: &Event) -> Option<pb::AgentEvent> {
    let kind = match &event.kind {
        EventKind::Offered {
            offer,
            deadline,
            conversation,
        } => Kind::Offer(pb::Offer {
            offer_id: Some(pb::OfferId {
                conversation_id: offer.conversation_id.to_string(),
                attempt: offer.attempt,
            }),
            deadline_ms: deadline.as_wire(),
            conversation: Some(convert::pb_conversation(conversation, Audience::Other)),
        }),
        EventKind::OfferRevoked { offer, reason, .. } => Kind::OfferRevoked(pb::OfferRevoked {
            offer_id: Some(pb::OfferId {
                conversation_id: offer.conversation_id.to_string(),
                attempt: offer.attempt,
            }),
            reason: reason.clone(),
        }),
        EventKind::Assigned { conversation } => Kind::Assignment(pb::Assignment {
            conversation: Some(convert::pb_conversation(
                conversation,
                Audience::AssignedAgent,
            )),
        }),
        EventKind::Ended { conversation } => Kind::ConversationEnded(pb::ConversationEnded {
            conversation_id: conversation.id().to_string(),
            state: convert::pb_state(conversation.state) as i32,
            reason: conversation.reason.clone(),
        }),
        EventKind::Notice {
            code,
            message,
            status,
        } => Kind::Notice(pb::Notice {
            code: code.clone(),
            message: message.clone(),
            status: convert::pb_status(*status) as i32,
        }),
        // Routed to an agent only when it held the conversation: it lost it
        // (went offline, forced offline, supervisor reassigned it).
        EventKind::Requeued { conversation } => Kind::ConversationEnded(pb::ConversationEnded {
            conversation_id: conversation.id().to_string(),
            state: convert::pb_state(conversation.state) as i32,
            reason: conversation.reason.clone(),
        }),
        EventKind::Queued { .. } => return None,
    };
    Some(pb::AgentEvent {
        conversation_id: event
            .conversation_id()
            .map(ToString::to_string)
            .unwrap_or_default(),
        seq: event.seq,
        at_ms: event.at.as_wire(),
        kind: Some(kind),
    })
}

fn snapshot_event(snapshot: &AgentSnapshot, at_ms: u64) -> pb::AgentEvent {
    pb::AgentEvent {
        conversation_id: String::new(),
        seq: 0,
        at_ms,
        kind: Some(Kind::Snapshot(convert::pb_snapshot(snapshot))),
    }
}

/// Tells the app to subscribe again (and get a fresh snapshot): the
/// stream ends right after it.
fn resubscribe_notice() -> pb::AgentEvent {
    pb::AgentEvent {
        kind: Some(Kind::Notice(pb::Notice {
            code: "resubscribe".into(),
            message: "an offer did not reach this stream in time; subscribe again".into(),
            status: pb::AgentStatus::Unspecified as i32,
        })),
        ..Default::default()
    }
}

type AgentStream = ReceiverStream<Result<pb::AgentEvent, Status>>;

/// Feeds one agent stream: the snapshot, then events newer than what the
/// snapshot showed, until the client leaves, the hub drops the stream, or the
/// server shuts down. Detaches the stream from the store at the end.
async fn run_stream(
    state: AppState,
    pool: PoolId,
    agent: AgentId,
    stream_id: u64,
    mut seen: HashMap<ConversationId, u64>,
    mut subscription: crate::hub::Subscription,
    out: mpsc::Sender<Result<pb::AgentEvent, Status>>,
) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                let notice = pb::AgentEvent {
                    kind: Some(Kind::Notice(pb::Notice {
                        code: "reconnect".into(),
                        message: "server shutting down: reconnect to another server".into(),
                        status: pb::AgentStatus::Unspecified as i32,
                    })),
                    ..Default::default()
                };
                let _ = out.send(Ok(notice)).await;
                break;
            }
            _ = out.closed() => break,
            received = subscription.events.recv() => {
                let Some(event) = received else {
                    let _ = out.send(Err(Status::unavailable("stream fell behind; resubscribe for a snapshot"))).await;
                    break;
                };
                if let Some(id) = event.conversation_id() {
                    if seen.get(id).is_some_and(|s| event.seq <= *s) {
                        continue;
                    }
                    if matches!(event.kind, EventKind::Ended { .. }) {
                        seen.remove(id);
                    } else {
                        seen.insert(id.clone(), event.seq);
                    }
                }
                let Some(message) = agent_event(&event) else { continue };
                if out.send(Ok(message)).await.is_err() {
                    break;
                }
                if let EventKind::OfferRevoked { reason, .. } = &event.kind
                    && reason == OFFER_NOT_DELIVERED
                {
                    // The store took this stream out of dispatch when it
                    // withdrew the offer: without a new subscription the
                    // agent would stay online and never be offered again.
                    let _ = out.send(Ok(resubscribe_notice())).await;
                    break;
                }
                if let EventKind::Offered { offer, .. } = &event.kind {
                    state.deliveries.delivered(&pool, &agent, offer).await;
                }
            }
        }
    }
    if let Err(e) = state.store.detach_stream(&pool, &agent, stream_id).await {
        tracing::warn!(error = %e, "could not detach agent stream");
    }
    tracing::debug!(pool = %pool, agent = %agent, stream_id, "agent stream ended");
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    type SubscribeStream = AgentStream;

    #[tracing::instrument(skip_all)]
    async fn go_online(
        &self,
        request: Request<pb::GoOnlineRequest>,
    ) -> Result<Response<pb::GoOnlineResponse>, Status> {
        let caller = caller(&request)?;
        let online = convert::go_online(request.get_ref())?;
        self.check_epoch(&caller).await?;
        let location = online.location;
        let presence = self
            .state
            .store
            .go_online(&caller.pool, caller.agent()?, online, self.state.dev_mode)
            .await
            .map_err(status)?
            .value;
        // GoOnline declares the session: no location means none (the
        // file's `agents_without_location`), whatever was known before.
        self.resolve_regions(&caller, location).await?;
        Ok(Response::new(pb::GoOnlineResponse {
            status: convert::pb_status(presence.status) as i32,
            lease_expires_at_ms: presence.lease_expires.as_wire(),
            heartbeat_interval_ms: u64::try_from(self.state.settings.heartbeat_interval_ms)
                .unwrap_or(10_000),
            skills: presence
                .skills
                .iter()
                .map(|s| pb::Skill {
                    name: s.name.clone(),
                    level: u32::from(s.level),
                })
                .collect(),
            languages: presence.languages.clone(),
            capacity: presence.capacity,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller(&request)?;
        self.check_epoch(&caller).await?;
        let agent = caller.agent()?.clone();
        let pool = caller.pool.clone();
        // Register before attaching, so no event between the two is missed.
        let subscription = self
            .state
            .hub
            .subscribe_agent(&pool, &agent)
            .await
            .map_err(status)?;
        // Regions from the last location known here, under the config in
        // force now (it may have changed while no stream was attached).
        if let Some(location) = self.state.locations.get(&pool, &agent) {
            self.resolve_regions(&caller, location).await?;
        }
        let (stream_id, snapshot) = self
            .state
            .store
            .attach_stream(&pool, &agent)
            .await
            .map_err(status)?
            .value;
        let now = self.state.store.now().await.map_err(status)?;
        let (out, rx) = mpsc::channel(64);
        out.send(Ok(snapshot_event(&snapshot, now.as_wire())))
            .await
            .map_err(|_| Status::cancelled("client left"))?;
        let mut seen = HashMap::new();
        let mut delivered = Vec::with_capacity(snapshot.offers.len());
        for (record, conversation) in &snapshot.offers {
            seen.insert(conversation.id().clone(), conversation.seq);
            let offer = switchboard_core::OfferId {
                conversation_id: conversation.id().clone(),
                attempt: record.attempt,
            };
            delivered.push((agent.clone(), offer));
        }
        if !delivered.is_empty() {
            // The snapshot is sent: its offers are delivered (one call).
            self.state
                .store
                .offers_delivered(&pool, &delivered)
                .await
                .map_err(status)?;
        }
        for conversation in &snapshot.assignments {
            seen.insert(conversation.id().clone(), conversation.seq);
        }
        let state = self.state.clone();
        self.state.tracker.spawn(run_stream(
            state,
            pool,
            agent,
            stream_id,
            seen,
            subscription,
            out,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all)]
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = caller(&request)?;
        let location = convert::heartbeat_location(request.get_ref())?;
        let presence = self
            .state
            .store
            .heartbeat(&caller.pool, caller.agent()?, location)
            .await
            .map_err(status)?
            .value;
        if location.is_some() {
            self.resolve_regions(&caller, location).await?;
        }
        Ok(Response::new(pb::HeartbeatResponse {
            lease_expires_at_ms: presence.lease_expires.as_wire(),
            status: convert::pb_status(presence.status) as i32,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn set_status(
        &self,
        request: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::SetStatusResponse>, Status> {
        let caller = caller(&request)?;
        let choice = convert::status_choice(request.get_ref())?;
        let status_now = self
            .state
            .store
            .set_status(&caller.pool, caller.agent()?, choice)
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::SetStatusResponse {
            status: convert::pb_status(status_now) as i32,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn accept_offer(
        &self,
        request: Request<pb::AcceptOfferRequest>,
    ) -> Result<Response<pb::AcceptOfferResponse>, Status> {
        let caller = caller(&request)?;
        let offer = convert::offer_id(request.get_ref().offer_id.as_ref())?;
        let conversation = self
            .state
            .store
            .accept(&caller.pool, caller.agent()?, &offer)
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::AcceptOfferResponse {
            conversation: Some(convert::pb_conversation(
                &conversation,
                Audience::AssignedAgent,
            )),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn decline_offer(
        &self,
        request: Request<pb::DeclineOfferRequest>,
    ) -> Result<Response<pb::DeclineOfferResponse>, Status> {
        let caller = caller(&request)?;
        let offer = convert::offer_id(request.get_ref().offer_id.as_ref())?;
        let reason = convert::short_text("reason", &request.get_ref().reason)?;
        self.state
            .store
            .decline(&caller.pool, caller.agent()?, &offer, &reason)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeclineOfferResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn complete_conversation(
        &self,
        request: Request<pb::CompleteConversationRequest>,
    ) -> Result<Response<pb::CompleteConversationResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let id = convert::conversation_id("conversation_id", &body.conversation_id)?;
        let disposition = convert::short_text("disposition", &body.disposition)?;
        let conversation = self
            .state
            .store
            .complete(&caller.pool, caller.agent()?, &id, &disposition)
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::CompleteConversationResponse {
            conversation: Some(convert::pb_conversation(
                &conversation,
                Audience::AssignedAgent,
            )),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn transfer_conversation(
        &self,
        request: Request<pb::TransferConversationRequest>,
    ) -> Result<Response<pb::TransferConversationResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let id = convert::conversation_id("conversation_id", &body.conversation_id)?;
        let note = convert::short_text("note", &body.note)?;
        let target = convert::transfer_target(body.target)?;
        // With a routing file, a transfer to a queue is routed by that
        // queue's plan for the hand-off as the transfer leaves it.
        let plan = match (&target, self.state.routing.config()) {
            (
                TransferTarget::Queue {
                    category,
                    required_skills,
                    language,
                },
                Some(config),
            ) => {
                let store = &self.state.store;
                let mut handoff = Arc::unwrap_or_clone(
                    store
                        .conversation(&caller.pool, &id)
                        .await
                        .map_err(status)?
                        .handoff,
                );
                handoff.category = category.clone();
                handoff.required_skills = required_skills.clone();
                if let Some(language) = language {
                    handoff.language = language.clone();
                }
                let plan = crate::routing::plan_for(&config, &handoff)
                    .map_err(|e| Status::invalid_argument(format!("invalid `region`: {e}")))?;
                Some(plan)
            }
            _ => None,
        };
        let conversation = self
            .state
            .store
            .transfer(&caller.pool, caller.agent()?, &id, target, &note, plan)
            .await
            .map_err(status)?
            .value;
        // The transferring agent no longer holds it: no chat reference.
        Ok(Response::new(pb::TransferConversationResponse {
            conversation: Some(convert::pb_conversation(&conversation, Audience::Other)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn go_offline(
        &self,
        request: Request<pb::GoOfflineRequest>,
    ) -> Result<Response<pb::GoOfflineResponse>, Status> {
        let caller = caller(&request)?;
        let store = &self.state.store;
        self.state.locations.forget(&caller.pool, caller.agent()?);
        if request.get_ref().drain {
            let offline = store
                .drain(&caller.pool, caller.agent()?)
                .await
                .map_err(status)?
                .value;
            return Ok(Response::new(pb::GoOfflineResponse {
                requeued_conversation_ids: vec![],
                offline,
            }));
        }
        let requeued = store
            .go_offline(&caller.pool, caller.agent()?, "agent went offline")
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::GoOfflineResponse {
            requeued_conversation_ids: requeued.iter().map(ToString::to_string).collect(),
            offline: true,
        }))
    }
}
