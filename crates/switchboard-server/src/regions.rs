//! Agents' regions: the last location each agent reported through this
//! replica, and the re-resolution of the regions of the agents connected
//! here whenever the routing config in force changes.
//!
//! # Design
//!
//! - What counts as the agent's location: `GoOnline` declares the session,
//!   so its location (or its lack of one) replaces whatever was known: an
//!   agent going online without a location has none, and the routing file's
//!   `agents_without_location` decides for it, even if an earlier session
//!   or heartbeat reported one. A `Heartbeat` with a location replaces it;
//!   one without changes nothing. Regions are always resolved from exactly
//!   this location, at GoOnline, at a located Heartbeat, and after a
//!   routing change.
//! - The record is this replica's: an app's calls travel on one HTTP/2
//!   connection, so GoOnline, Subscribe and Heartbeat reach the replica that
//!   holds its stream. After a routing change each replica re-resolves the
//!   agents whose stream is attached to it (the hub knows them), from its
//!   record; an agent with no record here (it went online through another
//!   replica) keeps its regions until its next located heartbeat.
//! - A `std::sync::Mutex`: held for a map update, never across an `.await`.
//!   Entries are removed at GoOffline and when the store says the agent is
//!   no longer online.

use crate::hub::Hub;
use crate::routing::{Routing, agent_regions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use switchboard_core::model::Location;
use switchboard_core::{AgentId, PoolId};
use switchboard_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// The last location (or none) each agent declared through this replica.
#[derive(Debug, Default)]
pub struct AgentLocations {
    known: Mutex<HashMap<(PoolId, AgentId), Option<Location>>>,
}

impl AgentLocations {
    /// Records what a GoOnline or a located Heartbeat said.
    pub fn record(&self, pool: &PoolId, agent: &AgentId, location: Option<Location>) {
        if let Ok(mut known) = self.known.lock() {
            known.insert((pool.clone(), agent.clone()), location);
        }
    }

    /// Forgets the agent (it went offline).
    pub fn forget(&self, pool: &PoolId, agent: &AgentId) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(&(pool.clone(), agent.clone()));
        }
    }

    /// The agent's last location: `None` when unknown here, `Some(None)`
    /// when it declared none.
    pub fn get(&self, pool: &PoolId, agent: &AgentId) -> Option<Option<Location>> {
        self.known
            .lock()
            .ok()
            .and_then(|known| known.get(&(pool.clone(), agent.clone())).copied())
    }
}

/// Re-resolves the regions of every agent attached here with a known
/// location under the config in force. Returns how many were updated.
pub async fn reresolve(
    routing: &Routing,
    store: &Arc<dyn Store>,
    hub: &Hub,
    locations: &AgentLocations,
) -> usize {
    let Some(config) = routing.config() else {
        return 0;
    };
    let mut updated = 0;
    for (pool, agent) in hub.attached_agents() {
        let Some(location) = locations.get(&pool, &agent) else {
            continue;
        };
        let regions = agent_regions(&config, location);
        match store.set_agent_regions(&pool, &agent, Some(regions)).await {
            Ok(_) => updated += 1,
            Err(StoreError::Domain(_)) => locations.forget(&pool, &agent),
            Err(StoreError::Unsupported(what)) => {
                tracing::debug!(what, "this store does not keep agent regions");
                return updated;
            }
            Err(e) => {
                tracing::warn!(pool = %pool, agent = %agent, error = %e, "could not re-resolve the agent's regions");
            }
        }
    }
    updated
}

/// After every change of the routing config in force, re-resolves the
/// regions of the agents connected here, until `cancel`.
pub async fn follow_routing(
    routing: Arc<Routing>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    locations: Arc<AgentLocations>,
    cancel: CancellationToken,
) {
    let mut changes = routing.changes();
    changes.mark_unchanged();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let version = changes.borrow_and_update().clone();
                let updated = reresolve(&routing, &store, &hub, &locations).await;
                tracing::info!(
                    routing_version = version.as_deref().unwrap_or(""),
                    agents = updated,
                    "regions of the agents connected here re-resolved under the routing config in force"
                );
            }
        }
    }
}
