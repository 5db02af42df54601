//! AdminService: operations staff through `sbctl`.

use super::AppState;
use crate::auth::caller;
use crate::convert;
use crate::error::status;
use crate::routing::ReloadError;
use crate::shared_routing::{SharedReloadError, SharedRouting};
use switchboard_proto::v1 as pb;
use switchboard_store_redis::routing_config::ReplicaReport;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    state: AppState,
}

impl AdminApi {
    pub fn new(state: AppState) -> Self {
        AdminApi { state }
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    #[tracing::instrument(skip_all)]
    async fn upsert_roster_entry(
        &self,
        request: Request<pb::UpsertRosterEntryRequest>,
    ) -> Result<Response<pb::UpsertRosterEntryResponse>, Status> {
        let caller = caller(&request)?;
        let entry = convert::roster_entry(request.into_inner().entry)?;
        let (entry, created) = self
            .state
            .store
            .upsert_roster(&caller.pool, entry)
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::UpsertRosterEntryResponse {
            entry: Some(convert::pb_roster_entry(&entry)),
            created,
        }))
    }

    async fn list_roster(
        &self,
        request: Request<pb::ListRosterRequest>,
    ) -> Result<Response<pb::ListRosterResponse>, Status> {
        let caller = caller(&request)?;
        let entries = self
            .state
            .store
            .roster(&caller.pool)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRosterResponse {
            entries: entries.iter().map(convert::pb_roster_entry).collect(),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = caller(&request)?;
        let agents = self
            .state
            .store
            .agents(&caller.pool)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(convert::pb_presence).collect(),
        }))
    }

    async fn queue_stats(
        &self,
        request: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<pb::QueueStatsResponse>, Status> {
        let caller = caller(&request)?;
        let stats = self
            .state
            .store
            .queue_stats(&caller.pool)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::pb_queue_stats(&stats)))
    }

    async fn shift_stats(
        &self,
        request: Request<pb::ShiftStatsRequest>,
    ) -> Result<Response<pb::ShiftStatsResponse>, Status> {
        let caller = caller(&request)?;
        let shifts = self
            .state
            .store
            .shift_stats(&caller.pool)
            .await
            .map_err(status)?;
        let agents: Vec<pb::AgentShift> = shifts.iter().map(convert::pb_shift).collect();
        let total = convert::pb_shift_total(&agents);
        Ok(Response::new(pb::ShiftStatsResponse {
            agents,
            total: Some(total),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn force_offline(
        &self,
        request: Request<pb::ForceOfflineRequest>,
    ) -> Result<Response<pb::ForceOfflineResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let agent = convert::agent_id("agent_id", &body.agent_id)?;
        let reason = convert::short_text("reason", &body.reason)?;
        let store = &self.state.store;
        let mut entry = store
            .roster_entry(&caller.pool, &agent)
            .await
            .map_err(status)?
            .ok_or_else(|| {
                Status::not_found(format!("roster entry for agent `{agent}` not found"))
            })?;
        let why = if reason.is_empty() {
            "forced offline by operations".to_owned()
        } else {
            format!("forced offline by operations: {reason}")
        };
        let requeued = store
            .go_offline(&caller.pool, &agent, &why)
            .await
            .map_err(status)?
            .value;
        // Void every token issued so far: the app needs a new one to return.
        entry.token_epoch += 1;
        store
            .upsert_roster(&caller.pool, entry)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ForceOfflineResponse {
            requeued_conversation_ids: requeued.iter().map(ToString::to_string).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn reassign(
        &self,
        request: Request<pb::ReassignRequest>,
    ) -> Result<Response<pb::ReassignResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let id = convert::conversation_id("conversation_id", &body.conversation_id)?;
        let target = match body.agent_id.as_str() {
            "" => None,
            agent => Some(convert::agent_id("agent_id", agent)?),
        };
        let reason = convert::short_text("reason", &body.reason)?;
        let conversation = self
            .state
            .store
            .reassign(&caller.pool, &id, target.as_ref(), &reason)
            .await
            .map_err(status)?
            .value;
        Ok(Response::new(pb::ReassignResponse {
            conversation: Some(convert::pb_conversation(
                &conversation,
                convert::Audience::Gateway,
            )),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn reload_routing(
        &self,
        request: Request<pb::ReloadRoutingRequest>,
    ) -> Result<Response<pb::ReloadRoutingResponse>, Status> {
        caller(&request)?;
        if let Some(shared) = &self.state.shared_routing {
            return self.reload_shared(shared).await.map(Response::new);
        }
        let routing = self.state.routing.clone();
        // Reading and validating polygons can take a moment: off the runtime.
        let result = tokio::task::spawn_blocking(move || routing.reload_logged("admin"))
            .await
            .map_err(|e| Status::internal(format!("routing reload failed: {e}")))?;
        let running = self.state.routing.version().unwrap_or_default();
        let replica_id = self.replica_id();
        match result {
            Ok(version) => Ok(Response::new(pb::ReloadRoutingResponse {
                applied: true,
                replicas: vec![self.this_replica()],
                version,
                errors: Vec::new(),
                previous_version: String::new(),
                replica_id,
            })),
            Err(ReloadError::NotConfigured) => Err(not_configured()),
            Err(ReloadError::Invalid(errors)) => Ok(Response::new(pb::ReloadRoutingResponse {
                applied: false,
                version: running,
                errors,
                previous_version: String::new(),
                replicas: Vec::new(),
                replica_id,
            })),
        }
    }

    async fn get_routing(
        &self,
        request: Request<pb::GetRoutingRequest>,
    ) -> Result<Response<pb::GetRoutingResponse>, Status> {
        caller(&request)?;
        let routing = &self.state.routing;
        let (in_force, replicas) = match &self.state.shared_routing {
            None => (None, vec![self.this_replica()]),
            Some(shared) => {
                let in_force = shared.in_force().await.map_err(unavailable)?;
                let replicas = shared.replicas().await.map_err(unavailable)?;
                (
                    in_force.map(|stored| pb::RoutingInForce {
                        version: stored.version,
                        source: stored.source,
                        activated_by: stored.activated_by,
                        activated_at_ms: stored.activated_at_ms,
                    }),
                    replicas.into_iter().map(pb_replica).collect(),
                )
            }
        };
        Ok(Response::new(pb::GetRoutingResponse {
            file: routing
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            version: routing.version().unwrap_or_default(),
            replica_id: self.replica_id(),
            in_force,
            replicas,
        }))
    }
}

impl AdminApi {
    fn replica_id(&self) -> String {
        self.state.replica_id.clone()
    }

    /// This server as the only replica (no Redis).
    fn this_replica(&self) -> pb::ReplicaRouting {
        pb::ReplicaRouting {
            replica_id: self.replica_id(),
            version: self.state.routing.version().unwrap_or_default(),
            reported_at_ms: u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0),
        }
    }

    /// A reload with Redis: stored for every replica, then up to 5 s for the
    /// live replicas to report it.
    async fn reload_shared(
        &self,
        shared: &SharedRouting,
    ) -> Result<pb::ReloadRoutingResponse, Status> {
        let running = self.state.routing.version().unwrap_or_default();
        match shared.reload_logged("admin").await {
            Ok((reloaded, replicas)) => Ok(pb::ReloadRoutingResponse {
                applied: true,
                version: reloaded.version,
                errors: Vec::new(),
                previous_version: reloaded.previous.unwrap_or_default(),
                replicas: replicas.into_iter().map(pb_replica).collect(),
                replica_id: self.replica_id(),
            }),
            Err(SharedReloadError::Invalid(errors)) => Ok(pb::ReloadRoutingResponse {
                applied: false,
                version: running,
                errors,
                previous_version: String::new(),
                replicas: Vec::new(),
                replica_id: self.replica_id(),
            }),
            Err(SharedReloadError::NotConfigured) => Err(not_configured()),
            Err(SharedReloadError::Unavailable(error)) => Err(Status::unavailable(format!(
                "routing reload not applied: the routing config in force cannot be stored: {error}; \
                 nothing changed, retry shortly"
            ))),
            Err(SharedReloadError::Conflict { in_force }) => Err(Status::aborted(format!(
                "routing reload not applied: another reload put version {} in force while this one \
                 was validating the file; nothing changed, reload again to put this file in force",
                in_force.as_deref().unwrap_or("(none)")
            ))),
        }
    }
}

fn not_configured() -> Status {
    Status::failed_precondition(
        "no routing file is configured on this replica (routing.file); nothing to reload",
    )
}

fn unavailable(error: String) -> Status {
    Status::unavailable(format!("cannot read the routing config in force: {error}"))
}

fn pb_replica(report: ReplicaReport) -> pb::ReplicaRouting {
    pb::ReplicaRouting {
        replica_id: report.replica_id,
        version: report.routing_version,
        reported_at_ms: report.reported_at_ms,
    }
}
