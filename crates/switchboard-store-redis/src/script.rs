//! The one Lua script (`dispatch.lua`) and its calling convention: which
//! command, which arguments, and how its JSON reply becomes a value, events
//! or a domain error.
//!
//! # Design
//!
//! One script with the command as its first argument, not one per command:
//! one SHA to load after a Redis restart, and the shared helpers (matching,
//! offers, sweep) exist once. The reply is a JSON document in serde's
//! shapes, so the Rust side is a single `serde_json::from_str` per call.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use switchboard_core::{DispatchSettings, DomainError, Event};
use switchboard_store::StoreError;

use crate::RedisOptions;

/// The script source. Loaded once per connection (EVALSHA, reloaded by
/// `Script::invoke_async` after NOSCRIPT).
pub const SOURCE: &str = include_str!("dispatch.lua");

/// How many deadlines one script acts on before returning; a long backlog
/// (after an outage) is worked off by further sweeps rather than by one
/// script that blocks Redis.
pub const SWEEP_LIMIT: u32 = 1_000;

/// The script's commands (its first argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    UpsertRoster,
    GoOnline,
    AttachStream,
    DetachStream,
    Heartbeat,
    SetStatus,
    GoOffline,
    Drain,
    Reassign,
    Transfer,
    ReportCsat,
    Request,
    SetAgentRegions,
    OfferDelivered,
    Accept,
    Decline,
    Complete,
    Cancel,
    Sweep,
    Availability,
    Conversation,
    AgentSnapshot,
    Agents,
    QueueStats,
    ShiftStats,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::UpsertRoster => "upsert_roster",
            Command::GoOnline => "go_online",
            Command::AttachStream => "attach_stream",
            Command::DetachStream => "detach_stream",
            Command::Heartbeat => "heartbeat",
            Command::SetStatus => "set_status",
            Command::GoOffline => "go_offline",
            Command::Drain => "drain",
            Command::Reassign => "reassign",
            Command::Transfer => "transfer",
            Command::ReportCsat => "report_csat",
            Command::Request => "request",
            Command::SetAgentRegions => "set_agent_regions",
            Command::OfferDelivered => "offer_delivered",
            Command::Accept => "accept",
            Command::Decline => "decline",
            Command::Complete => "complete",
            Command::Cancel => "cancel",
            Command::Sweep => "sweep",
            Command::Availability => "availability",
            Command::Conversation => "conversation",
            Command::AgentSnapshot => "agent_snapshot",
            Command::Agents => "agents",
            Command::QueueStats => "queue_stats",
            Command::ShiftStats => "shift_stats",
        }
    }
}

/// How many settings the script takes.
pub const SETTINGS: usize = 10;

/// The settings as the script reads them (ARGV[5..=14]), in order.
pub fn settings_args(settings: &DispatchSettings, options: &RedisOptions) -> [String; SETTINGS] {
    [
        settings.offer_timeout_ms.to_string(),
        settings.offer_delivery_grace_ms.to_string(),
        settings.lease_ms.to_string(),
        settings.max_wait_ms.to_string(),
        settings.missed_offers_before_away.to_string(),
        settings.retention_ms.to_string(),
        settings.wrap_up_ms.to_string(),
        options.outage_threshold.as_millis().to_string(),
        options.stream_max_len.to_string(),
        SWEEP_LIMIT.to_string(),
    ]
}

/// What the script returns: a value and the events it committed, or a
/// refusal. A refused command may still have swept (and committed events):
/// those reach subscribers through the stream, as the in-memory store
/// publishes them while returning only the error.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply<T> {
    Ok {
        value: T,
        events: Vec<Event>,
        #[serde(default)]
        outage: Option<Outage>,
    },
    Err {
        error: ScriptError,
        #[serde(default)]
        outage: Option<Outage>,
    },
}

/// The script found that nobody had reached the pool for a while and
/// extended the leases (see `RedisOptions::outage_threshold`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct Outage {
    pub gap_ms: i64,
    pub leases_extended: u32,
}

impl<T> Reply<T> {
    pub fn outage(&self) -> Option<Outage> {
        match self {
            Reply::Ok { outage, .. } | Reply::Err { outage, .. } => *outage,
        }
    }
}

impl<T: DeserializeOwned> Reply<T> {
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        serde_json::from_str(raw).map_err(|e| {
            tracing::error!(error = %e, "unreadable reply from the dispatch script");
            StoreError::Internal(format!("unreadable reply from the dispatch script: {e}"))
        })
    }
}

/// A domain refusal as the script reports it.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScriptError {
    NotFound {
        what: String,
        id: String,
    },
    /// An argument the script cannot read (the Rust side checks plans
    /// first, so this means a bug or a tampered call).
    Invalid {
        field: String,
        reason: String,
    },
    Precondition {
        message: String,
    },
    Permission {
        message: String,
    },
}

impl ScriptError {
    pub fn into_store_error(self) -> StoreError {
        match self {
            ScriptError::NotFound { what, id } => {
                // `DomainError::NotFound` names the thing with a static str;
                // the script can only name the things the engine names.
                let what: &'static str = match what.as_str() {
                    "conversation" => "conversation",
                    "roster entry for agent" => "roster entry for agent",
                    other => {
                        return StoreError::Internal(format!(
                            "the dispatch script named an unknown thing `{other}`"
                        ));
                    }
                };
                StoreError::Domain(DomainError::NotFound { what, id })
            }
            ScriptError::Invalid { field, reason } => {
                StoreError::Domain(DomainError::Invalid { field, reason })
            }
            ScriptError::Precondition { message } => {
                StoreError::Domain(DomainError::FailedPrecondition(message))
            }
            ScriptError::Permission { message } => {
                StoreError::Domain(DomainError::PermissionDenied(message))
            }
        }
    }
}

/// The sweep command's value.
#[derive(Debug, Deserialize)]
pub struct SweepValue {
    pub next: Option<i64>,
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_domain_errors() {
        let reply: Reply<()> = Reply::parse(
            r#"{"status":"err","error":{"kind":"not_found","what":"conversation","id":"c1"},"events":[]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let Reply::Err { error, .. } = reply else {
            panic!("expected a refusal")
        };
        assert_eq!(
            error.into_store_error(),
            StoreError::Domain(DomainError::NotFound {
                what: "conversation",
                id: "c1".into()
            })
        );
    }

    #[test]
    fn outage_reports_parse() {
        let reply: Reply<bool> = Reply::parse(
            r#"{"status":"ok","value":true,"events":[],"outage":{"gap_ms":5000,"leases_extended":2}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            reply.outage(),
            Some(Outage {
                gap_ms: 5_000,
                leases_extended: 2
            })
        );
    }

    #[test]
    fn unit_values_parse_from_null() {
        let reply: Reply<()> = Reply::parse(r#"{"status":"ok","value":null,"events":[]}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(reply, Reply::Ok { value: (), .. }));
    }
}
