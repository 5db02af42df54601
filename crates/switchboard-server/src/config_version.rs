//! The config version: one dispatch configuration in force for a whole pool
//! deployment, kept in Redis, so a replica running another one takes itself
//! out of rotation (health NOT_SERVING) instead of dispatching by other
//! rules than its neighbours.
//!
//! # Design
//!
//! - The version is a hash of the `[dispatch]` settings. Settings that do
//!   not change decisions (listen address, log format, keys) are not in it,
//!   so they can differ between replicas. The routing file is not in it
//!   either (the server passes `None` as [`config_version`]'s second
//!   argument): with Redis the routing config has its own version in force,
//!   `sb:routing`, which every replica follows by itself
//!   (`shared_routing`), so reloading it never takes replicas out of
//!   rotation.
//! - The version in force is one global key, [`KEY`], outside every pool's
//!   slot (like the pool set `sb:pools`). A replica never overwrites it: each
//!   check is `SET NX` (the first replica of a new deployment, or the first
//!   after the key was lost, puts its own version in force) then `GET`.
//!   Changing it is a deliberate operator act, `switchboard activate-config`
//!   ([`activate`]), which prints the old and the new version.
//! - Replicas check every [`CHECK_INTERVAL`], so health follows an
//!   activation within a few seconds, with no restart. A check that cannot
//!   reach Redis changes nothing: a Redis outage affects every replica
//!   alike, and calls already answer UNAVAILABLE.
//! - Health, not refusal: a replica whose version is not in force still
//!   answers calls (agents attached to it keep working while it is drained),
//!   but load balancers and probes take it out of rotation.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use switchboard_core::DispatchSettings;
use switchboard_store_redis::{RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY, RECONNECT_RETRIES};
use tokio_util::sync::CancellationToken;

use crate::config::redact_url;

/// The Redis key holding the version in force (a string of 16 hex digits).
pub const KEY: &str = "sb:config_version";

/// How often a replica compares its version with the one in force.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long one check or activation may wait for Redis.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The version of the configuration that governs dispatch: FNV-1a (64 bit)
/// of the dispatch settings in a canonical text (one `key = value` line per
/// setting, sorted by key, so the order of fields in the source does not
/// matter) plus, when given, the routing file's version. 16 hex digits.
///
/// A build that adds a dispatch setting computes a new version for the same
/// file: it is a new configuration, activated like any other change.
pub fn config_version(settings: &DispatchSettings, routing_version: Option<&str>) -> String {
    let mut text = String::from("switchboard config version 1\n");
    match toml::Value::try_from(settings) {
        Ok(toml::Value::Table(table)) => {
            let mut lines: Vec<String> = table
                .iter()
                .map(|(key, value)| format!("dispatch.{key} = {value}\n"))
                .collect();
            lines.sort();
            text.extend(lines);
        }
        // Plain integers always serialize; this is never reached, and a
        // debug rendering would still be a stable function of the settings.
        _ => text.push_str(&format!("dispatch = {settings:?}\n")),
    }
    if let Some(routing) = routing_version {
        text.push_str(&format!("routing = {routing}\n"));
    }
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// FNV-1a, 64 bit: stable across builds and platforms (unlike std's
/// `DefaultHasher`), and enough to tell configurations apart.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This replica's version is the one in force.
    InForce,
    /// Another version is in force.
    Other { in_force: String },
}

/// Compares this replica's config version with the one in force in Redis.
pub struct ConfigGate {
    connection: ConnectionManager,
    version: String,
    /// The Redis address for messages, without credentials.
    address: String,
}

impl ConfigGate {
    /// Connects (its own connection: a check must not queue behind dispatch
    /// commands, nor they behind it).
    pub async fn connect(url: &str, version: String) -> anyhow::Result<ConfigGate> {
        let address = redact_url(url);
        Ok(ConfigGate {
            connection: connect(url).await?,
            version,
            address,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Puts this replica's version in force if none is (`SET NX`), then
    /// reads the one in force.
    pub async fn check(&mut self) -> anyhow::Result<Verdict> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(KEY)
            .arg(&self.version)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(KEY);
        let call = pipe.query_async::<(Option<String>,)>(&mut self.connection);
        let (in_force,) = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| anyhow::anyhow!("redis at `{}` did not answer", self.address))??;
        Ok(match in_force {
            Some(v) if v == self.version => Verdict::InForce,
            // Deleted between the two commands: the next check sets it.
            None => Verdict::InForce,
            Some(in_force) => Verdict::Other { in_force },
        })
    }

    /// The version in force, if any (a plain `GET`: changes nothing).
    pub async fn in_force(&mut self) -> anyhow::Result<Option<String>> {
        let mut get = redis::cmd("GET");
        get.arg(KEY);
        let call = get.query_async::<Option<String>>(&mut self.connection);
        Ok(tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| anyhow::anyhow!("redis at `{}` did not answer", self.address))??)
    }

    /// Checks every [`CHECK_INTERVAL`] until cancelled, calling `apply` with
    /// whether this replica should serve each time the answer changes
    /// (`last`: what health says now). Logs each change once.
    pub async fn follow<F, Fut>(mut self, mut last: Verdict, cancel: CancellationToken, apply: F)
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            let verdict = match self.check().await {
                Ok(verdict) => verdict,
                Err(e) => {
                    tracing::debug!(
                        error = format!("{e:#}"),
                        "config version check failed; health unchanged"
                    );
                    continue;
                }
            };
            if verdict != last {
                self.log(&verdict);
                apply(verdict == Verdict::InForce).await;
                last = verdict;
            }
        }
    }

    /// Says which version is in force and, when it is not this replica's,
    /// how to change that.
    pub fn log(&self, verdict: &Verdict) {
        match verdict {
            Verdict::InForce => tracing::info!(
                config_version = %self.version,
                key = KEY,
                "this replica's config version is in force: health SERVING"
            ),
            Verdict::Other { in_force } => tracing::error!(
                config_version = %self.version,
                in_force = %in_force,
                key = KEY,
                "config version {in_force} is in force for this deployment, not this replica's {}: \
                 health NOT_SERVING; run the configuration in force, or put this one in force with \
                 `switchboard activate-config --config <this file>` (see docs/operations.md)",
                self.version
            ),
        }
    }
}

/// Puts `version` in force (`SET ... GET`); returns the version it
/// replaced, if any.
pub async fn activate(url: &str, version: &str) -> anyhow::Result<Option<String>> {
    let address = redact_url(url);
    let mut connection = connect(url).await?;
    let mut set = redis::cmd("SET");
    set.arg(KEY).arg(version).arg("GET");
    let call = set.query_async::<Option<String>>(&mut connection);
    let previous = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("redis at `{address}` did not answer"))?
        .map_err(|e| anyhow::anyhow!("redis at `{address}` refused SET {KEY}: {e}"))?;
    Ok(previous)
}

/// A connection with the store's reconnect policy, bounded at first.
async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let address = redact_url(url);
    let client = redis::Client::open(url)
        .map_err(|e| anyhow::anyhow!("invalid redis url `{address}`: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY);
    let connecting = ConnectionManager::new_with_config(client, config);
    tokio::time::timeout(CALL_TIMEOUT * 2, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("redis at `{address}` is unreachable: no connection"))?
        .map_err(|e| anyhow::anyhow!("redis at `{address}` is unreachable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_version_is_a_function_of_what_governs_dispatch() {
        let settings = DispatchSettings::default();
        let version = config_version(&settings, None);
        assert_eq!(version.len(), 16, "{version}");
        assert!(version.chars().all(|c| c.is_ascii_hexdigit()), "{version}");
        assert_eq!(version, config_version(&settings.clone(), None));

        let other = DispatchSettings {
            offer_timeout_ms: settings.offer_timeout_ms + 1,
            ..settings.clone()
        };
        assert_ne!(config_version(&other, None), version);

        let with_routing = config_version(&settings, Some("00000000000000ab"));
        assert_ne!(with_routing, version);
        assert_ne!(
            with_routing,
            config_version(&settings, Some("00000000000000ac"))
        );
    }
}
