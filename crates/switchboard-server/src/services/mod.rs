//! The three gRPC services. Handlers take identity from the verified
//! [`crate::auth::Caller`], validate input in [`crate::convert`], run one
//! store command, and convert the result back.

pub mod admin;
pub mod agent;
pub mod gateway;

use crate::hub::Hub;
use crate::regions::AgentLocations;
use crate::routing::Routing;
use crate::shared_routing::SharedRouting;
use std::sync::Arc;
use switchboard_core::DispatchSettings;
use switchboard_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every service shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Where agent streams report the offers they wrote (batched).
    pub deliveries: crate::delivery::DeliveryMarks,
    pub hub: Arc<Hub>,
    pub settings: DispatchSettings,
    /// The routing file in force, if any (swapped by a reload).
    pub routing: Arc<Routing>,
    /// With Redis: the routing config in force for every replica.
    pub shared_routing: Option<Arc<SharedRouting>>,
    /// This replica's id (`server.replica_id`).
    pub replica_id: String,
    /// The gate in front of new hand-offs (load shedding).
    pub admission: Arc<crate::admission::Admission>,
    /// The last location each agent declared through this replica.
    pub locations: Arc<AgentLocations>,
    /// Development mode: unknown agents self-register on going online.
    pub dev_mode: bool,
    /// Cancelled when the server starts shutting down: streams say goodbye.
    pub shutdown: CancellationToken,
    /// Every stream task, so shutdown can wait for them.
    pub tracker: TaskTracker,
}
