//! The one Lua library (`dispatch.lua`) and its calling convention: which
//! command, which arguments, and how its JSON reply becomes a value, events
//! or a domain error.
//!
//! # Design
//!
//! One Redis function with the command as its first argument, not one per
//! command: one library to load after a Redis restart, and the shared
//! helpers (matching, offers, sweep) exist once. A function library rather
//! than an EVALSHA script because a script runs its whole body on every
//! call: defining the helpers cost ~65 µs of Redis's single thread per call
//! (measured with `INFO commandstats` against an early return), a library
//! defines them once at `FUNCTION LOAD`. The library and the function are
//! named after the source's SHA-1, so replicas running different builds
//! during a rolling upgrade each call their own code. The reply is a JSON
//! document in serde's shapes, so the Rust side is a single
//! `serde_json::from_str` per call.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use switchboard_core::{DispatchSettings, DomainError, Event};
use switchboard_store::StoreError;

use crate::RedisOptions;

/// The library source, with a placeholder for the function's name.
pub const SOURCE: &str = include_str!("dispatch.lua");

/// What `dispatch.lua` registers its function under until [`Library`]
/// names it.
const FUNCTION_PLACEHOLDER: &str = "__SWITCHBOARD_FUNCTION__";

/// The dispatch library as loaded into Redis: its versioned names and code.
#[derive(Clone, Debug)]
pub struct Library {
    /// `switchboard_<16 hex digits of the source's SHA-1>`.
    pub name: String,
    /// `sb_dispatch_<same digits>`: what FCALL names.
    pub function: String,
    /// The `FUNCTION LOAD` payload (`#!lua name=...` and the source).
    pub code: String,
}

impl Library {
    pub fn new() -> Self {
        let script = redis::Script::new(SOURCE);
        let version = &script.get_hash()[..16];
        let name = format!("switchboard_{version}");
        let function = format!("sb_dispatch_{version}");
        let code = format!(
            "#!lua name={name}\n{}",
            SOURCE.replace(FUNCTION_PLACEHOLDER, &function)
        );
        Library {
            name,
            function,
            code,
        }
    }
}

impl Default for Library {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `error` says the function is not loaded (Redis restarted
/// without persistence, or FUNCTION FLUSH): load it and call again.
pub fn is_function_missing(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|d| d.contains("Function not found"))
        || error.to_string().contains("Function not found")
}

/// Whether a `FUNCTION LOAD` failed only because another replica (or an
/// earlier connection) loaded the same library first.
pub fn is_library_present(error: &redis::RedisError) -> bool {
    error.to_string().contains("already exists")
}

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
pub const SETTINGS: usize = 12;

/// The settings as the library reads them (ARGV[5..=16]), in order.
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
        options.row_format.as_str().to_owned(),
        if options.events_in_replies { "1" } else { "0" }.to_owned(),
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
    fn the_library_is_named_after_its_source() {
        let library = Library::new();
        let script = redis::Script::new(SOURCE);
        let version = &script.get_hash()[..16];
        assert_eq!(library.name, format!("switchboard_{version}"));
        assert_eq!(library.function, format!("sb_dispatch_{version}"));
        assert!(
            library
                .code
                .starts_with(&format!("#!lua name=switchboard_{version}\n"))
        );
        assert!(library.code.contains(&format!(
            "redis.register_function('sb_dispatch_{version}', dispatch)"
        )));
        assert!(!library.code.contains(FUNCTION_PLACEHOLDER));
    }

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
