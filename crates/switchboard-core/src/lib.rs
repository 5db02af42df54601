//! The Switchboard domain: who may take which conversation, and the state
//! machine of one pool (agents, presence leases, queue, offers, events).
//!
//! # Design
//!
//! The core does no I/O and never reads a clock: every command takes `now`,
//! so tests control time and the Redis store can use Redis's own clock. It
//! knows nothing of gRPC, Redis or tokio. Stores wrap [`engine::PoolState`]
//! (the in-memory store does so directly) and the server converts between
//! protobuf and these types at its edge.

pub mod error;
pub mod event;
pub mod ids;
pub mod model;
pub mod plan;
pub mod settings;
pub mod time;
pub mod validate;

pub mod engine;

pub use error::DomainError;
pub use event::{Event, EventKind};
pub use ids::{AgentId, ConversationId, OfferId, PoolId};
pub use plan::RoutingPlan;
pub use settings::DispatchSettings;
pub use time::Timestamp;
