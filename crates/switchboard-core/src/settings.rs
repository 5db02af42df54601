//! Dispatch timings and thresholds of one pool.

use serde::{Deserialize, Serialize};

/// How long things may take before the engine acts on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchSettings {
    /// An offer not answered by then is a miss: requeued, agent excluded.
    pub offer_timeout_ms: i64,
    /// An offer that no agent stream took within this is withdrawn, and is
    /// not the agent's miss.
    pub offer_delivery_grace_ms: i64,
    /// Presence lease: offline when no heartbeat arrives for this long.
    pub lease_ms: i64,
    /// What the app is told to heartbeat at.
    pub heartbeat_interval_ms: i64,
    /// No human by then: the conversation expires, with a reason.
    pub max_wait_ms: i64,
    /// Consecutive missed offers that put an agent away ("missed_offers").
    pub missed_offers_before_away: u32,
    /// How long a finished conversation is kept for idempotent replies.
    pub retention_ms: i64,
    /// After completing a conversation the agent is in wrap-up this long
    /// before new offers (0 = none); the app may end it early.
    pub wrap_up_ms: i64,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            offer_timeout_ms: 20_000,
            offer_delivery_grace_ms: 1_000,
            lease_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            max_wait_ms: 600_000,
            missed_offers_before_away: 3,
            retention_ms: 3_600_000,
            wrap_up_ms: 0,
        }
    }
}
