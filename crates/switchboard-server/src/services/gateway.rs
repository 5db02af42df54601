//! GatewayService: the customer chat gateway hands conversations over and
//! watches them until a human has them.

use super::AppState;
use crate::auth::caller;
use crate::convert::{self, Audience};
use crate::error::status;
use crate::routing;
use switchboard_core::{Event, EventKind};
use switchboard_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct GatewayApi {
    state: AppState,
}

impl GatewayApi {
    pub fn new(state: AppState) -> Self {
        GatewayApi { state }
    }
}

fn watch_event(event: &Event) -> Option<pb::ConversationEvent> {
    let conversation = event.kind.conversation()?;
    Some(pb::ConversationEvent {
        seq: event.seq,
        at_ms: event.at.as_wire(),
        kind: event.kind.name().to_owned(),
        conversation: Some(convert::pb_conversation(conversation, Audience::Gateway)),
    })
}

/// Availability counts eligible free agents up to this many.
const AVAILABILITY_LIMIT: usize = 1_000;

type WatchStream = ReceiverStream<Result<pb::ConversationEvent, Status>>;

#[tonic::async_trait]
impl pb::gateway_service_server::GatewayService for GatewayApi {
    type WatchConversationStream = WatchStream;

    #[tracing::instrument(skip_all)]
    async fn request_agent(
        &self,
        request: Request<pb::RequestAgentRequest>,
    ) -> Result<Response<pb::RequestAgentResponse>, Status> {
        let caller = caller(&request)?;
        // Shed before any work when this replica is already behind.
        let _admitted = self.state.admission.admit()?;
        let handoff = convert::handoff(request.into_inner())?;
        let requested = match self.state.routing.config() {
            None => self.state.store.request(&caller.pool, handoff).await,
            Some(config) => {
                let plan = routing::plan_for(&config, &handoff)
                    .map_err(|e| Status::invalid_argument(format!("invalid `region`: {e}")))?;
                self.state
                    .store
                    .request_with_plan(&caller.pool, handoff, plan)
                    .await
            }
        };
        let (conversation, created) = requested.map_err(status)?.value;
        // The ticket carries position and expected wait: read the view.
        let view = if conversation.state == switchboard_core::model::ConversationState::Queued {
            self.state
                .store
                .conversation(&caller.pool, conversation.id())
                .await
                .map_err(status)?
        } else {
            conversation
        };
        Ok(Response::new(pb::RequestAgentResponse {
            conversation: Some(convert::pb_conversation(&view, Audience::Gateway)),
            created,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn watch_conversation(
        &self,
        request: Request<pb::WatchConversationRequest>,
    ) -> Result<Response<Self::WatchConversationStream>, Status> {
        let caller = caller(&request)?;
        let id = convert::conversation_id("conversation_id", &request.get_ref().conversation_id)?;
        // Register before reading the snapshot, so nothing in between is missed.
        let mut subscription = self
            .state
            .hub
            .subscribe_conversation(&caller.pool, &id)
            .await
            .map_err(status)?;
        let view = self
            .state
            .store
            .conversation(&caller.pool, &id)
            .await
            .map_err(status)?;
        let now = self.state.store.now().await.map_err(status)?;
        let (out, rx) = mpsc::channel(16);
        let snapshot = pb::ConversationEvent {
            seq: view.seq,
            at_ms: now.as_wire(),
            kind: "snapshot".into(),
            conversation: Some(convert::pb_conversation(&view, Audience::Gateway)),
        };
        out.send(Ok(snapshot))
            .await
            .map_err(|_| Status::cancelled("client left"))?;
        if view.state.is_terminal() {
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let mut last_seq = view.seq;
        let shutdown = self.state.shutdown.clone();
        self.state.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = out.send(Err(Status::unavailable("server shutting down: watch again"))).await;
                        break;
                    }
                    _ = out.closed() => break,
                    received = subscription.events.recv() => {
                        let Some(event) = received else {
                            let _ = out.send(Err(Status::unavailable("watch fell behind; watch again for a snapshot"))).await;
                            break;
                        };
                        if event.seq <= last_seq {
                            continue;
                        }
                        last_seq = event.seq;
                        let Some(message) = watch_event(&event) else { continue };
                        if out.send(Ok(message)).await.is_err() {
                            break;
                        }
                        if matches!(event.kind, EventKind::Ended { .. }) {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let caller = caller(&request)?;
        let id = convert::conversation_id("conversation_id", &request.get_ref().conversation_id)?;
        let view = self
            .state
            .store
            .conversation(&caller.pool, &id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(convert::pb_conversation(&view, Audience::Gateway)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_conversation(
        &self,
        request: Request<pb::CancelConversationRequest>,
    ) -> Result<Response<pb::CancelConversationResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let id = convert::conversation_id("conversation_id", &body.conversation_id)?;
        let reason = convert::short_text("reason", &body.reason)?;
        let view = self
            .state
            .store
            .cancel(&caller.pool, &id, &reason)
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::CancelConversationResponse {
            conversation: Some(convert::pb_conversation(&view, Audience::Gateway)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn report_csat(
        &self,
        request: Request<pb::ReportCsatRequest>,
    ) -> Result<Response<pb::ReportCsatResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let id = convert::conversation_id("conversation_id", &body.conversation_id)?;
        let score = convert::csat_score(body.score)?;
        let view = self
            .state
            .store
            .report_csat(&caller.pool, &id, score)
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::ReportCsatResponse {
            conversation: Some(convert::pb_conversation(&view, Audience::Gateway)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn check_availability(
        &self,
        request: Request<pb::CheckAvailabilityRequest>,
    ) -> Result<Response<pb::CheckAvailabilityResponse>, Status> {
        let caller = caller(&request)?;
        let probe = convert::availability_probe(request.get_ref())?;
        let store = &self.state.store;
        let (agents_available, expected_wait_ms) = match self.state.routing.config() {
            None => {
                store
                    .availability(&caller.pool, &probe, AVAILABILITY_LIMIT)
                    .await
            }
            Some(config) => {
                let plan = routing::plan_for(&config, &probe)
                    .map_err(|e| Status::invalid_argument(format!("invalid `region`: {e}")))?;
                store
                    .availability_with_plan(&caller.pool, &probe, &plan, AVAILABILITY_LIMIT)
                    .await
            }
        }
        .map_err(status)?;
        Ok(Response::new(pb::CheckAvailabilityResponse {
            agents_available,
            expected_wait_ms: u64::try_from(expected_wait_ms).unwrap_or(0),
        }))
    }
}
