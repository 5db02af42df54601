//! The routing policy of Switchboard: which agent may take which waiting
//! conversation, how that loosens with the wait, and who goes first.
//!
//! # Design
//!
//! Pure functions over a validated [`RoutingConfig`]; no I/O, no clock
//! (waits and `now` are passed in), no async. The engine in
//! `switchboard-core` calls in here; this crate depends only on the core's
//! types. Loading from text ([`RoutingConfig::from_toml`]) is the one entry
//! that can fail, and it reports every problem at once.
//!
//! The pieces, in the order a conversation meets them:
//! - [`RoutingConfig::queue_for`]: the hand-off's category → its queue.
//! - [`base_requirements`] then [`requirements_at`]: what an agent needs,
//!   loosening in the queue's relaxation steps as the wait grows.
//! - [`effective_priority`]: queue order, aging so nobody starves.
//! - [`eligible`]: one agent against the requirements, with the reason.
//! - [`pick`]: the queue's strategy chooses among eligible agents.

pub mod aging;
pub mod config;
pub mod eligibility;
pub mod error;
mod load;
pub mod region;
pub mod requirements;
pub mod strategy;

pub use aging::{Aging, EffectivePriority, QueueKey, effective_priority};
pub use config::{
    LanguageWidening, MaxWait, MaxWaitAction, Penalties, QueuePolicy, RelaxStep, Relaxation,
    RoutingConfig, Strategy,
};
pub use eligibility::{AgentProfile, Ineligible, OfferContext, check_requirements, eligible};
pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, RoutingError};
pub use region::{CustomerRegion, NoLocationPolicy, Region, RegionId, Regions, RosterRegionPolicy};
pub use requirements::{
    LanguageLookup, LanguageRequirement, Requirements, base_requirements, next_relaxation_ms,
    primary_subtag, requirements_at,
};
pub use strategy::{Candidate, Csat, pick};

use switchboard_core::model::Location;

/// Whether an agent at `agent_location` may serve a customer in
/// `customer` under `config`'s regions (borders inclusive, holes outside,
/// agents with no location per the config). See [`region`].
pub fn region_allows(
    config: &RoutingConfig,
    customer: CustomerRegion<'_>,
    agent_location: Option<Location>,
) -> bool {
    config.regions.region_allows(customer, agent_location)
}

/// The region a customer location lies in (the smallest, when nested).
pub fn resolve_region(config: &RoutingConfig, location: Location) -> Option<RegionId> {
    config.regions.resolve_region(location)
}
