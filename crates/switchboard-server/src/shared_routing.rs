//! With Redis, one routing config is in force for every replica: it lives
//! in Redis (`sb:routing`, see `switchboard_store_redis::routing_config`),
//! a reload on any replica puts a new one there, and every replica applies
//! it and reports the version it runs.
//!
//! # Design
//!
//! - **Startup.** Redis has no config yet: this replica's file (already
//!   validated) is stored (compare-and-set from "none", so of two replicas
//!   starting at once one stores and the other adopts it). Redis has one:
//!   this replica runs it, whatever its own file says, and logs loudly
//!   when they differ. Redis holds one this build cannot parse (a newer
//!   build stored a file using something this one lacks): the replica
//!   refuses to start ([`StartError::Unusable`], exit 64): it would
//!   otherwise dispatch by other rules than its neighbours, and there is
//!   nothing yet to keep serving.
//! - **Reload** (AdminService.ReloadRouting or SIGHUP, on any replica):
//!   read the version in force, read and validate the local file (a bad
//!   one changes nothing anywhere and every problem is returned), then a
//!   compare-and-set from the version read: two concurrent reloads cannot
//!   interleave, the second is refused with what is in force now. The
//!   replica applies its own new config at once, before answering.
//! - **Apply everywhere.** The stored version is published on
//!   `sb:routing:changed` in the same script; each replica subscribes (its
//!   own connection, resubscribed with backoff) and, because pub/sub loses
//!   what is sent while a subscriber reconnects, also polls the version
//!   every [`POLL_INTERVAL`] (one `HGET`). Either way it reads the config,
//!   parses it off the runtime and swaps the `Arc`: no connection, queue
//!   entry or offer is touched, and conversations already queued keep their
//!   plan. Applies are serialized with reloads (`apply_lock`), so an older
//!   version can never be applied over a newer one.
//! - **A config this build cannot parse, while running**: the replica keeps
//!   the config it runs (agents attached to it keep working), reports that
//!   version, goes NOT_SERVING (load balancers take it out of rotation, as
//!   for a dispatch config version not in force) and logs the problems once
//!   per version. It applies the next usable version by itself.
//! - **Reports.** Every [`REPORT_INTERVAL`], and at once after each apply,
//!   the replica writes its id and the version it runs to `sb:replicas`
//!   with Redis's time. A replica is live while its report is younger than
//!   [`LIVE_WITHIN`]; a stopping replica deletes its report. A reload waits
//!   up to [`RELOAD_WAIT`] for every live replica to report the new version
//!   and says which did not.
//! - **Redis lost the key** (restarted without persistence, flushed): a
//!   replica that runs a config stores it again (compare-and-set from
//!   none: one wins, the others adopt it), so a replica started later
//!   cannot put a different local file in force by accident.

use crate::routing::{InForce, Routing, parse};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_store_redis::routing_config::{
    Activation, NewRouting, ReplicaReport, RoutingChanges, RoutingConfigStore, StoredRouting,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often each replica compares its version with the one in force (the
/// fallback for a lost pub/sub message).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often each replica reports the version it runs.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// A replica whose last report is older than this is not listed.
pub const LIVE_WITHIN: Duration = Duration::from_secs(6);
/// How long a reload waits for the live replicas to run the new version.
pub const RELOAD_WAIT: Duration = Duration::from_secs(5);
/// Pauses before subscribing again after the pub/sub connection was lost.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

/// Why a replica does not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the routing config in force: {0}")]
    Unavailable(String),
    /// The config in force cannot be used by this build.
    #[error(
        "the routing config in force at redis `{address}` (version {version}, from `{source_file}` stored by replica \
         `{activated_by}`) cannot be used by this build: {}; run a build that accepts it, or reload a file this \
         build accepts from a replica (sbctl routing reload)",
        problems.join("; ")
    )]
    Unusable {
        address: String,
        version: String,
        source_file: String,
        activated_by: String,
        problems: Vec<String>,
    },
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedReloadError {
    /// This replica has no `routing.file`.
    NotConfigured,
    /// The local file has problems (one per entry).
    Invalid(Vec<String>),
    /// Redis cannot be reached: nothing was stored or applied.
    Unavailable(String),
    /// Another reload put `in_force` in force meanwhile.
    Conflict { in_force: Option<String> },
}

/// A reload that stored (or found already in force) `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub version: String,
    /// The version it replaced; `None` when none was in force, or when
    /// `version` already was.
    pub previous: Option<String>,
}

/// This replica's part in the deployment-wide routing config.
pub struct SharedRouting {
    routing: Arc<Routing>,
    store: RoutingConfigStore,
    replica_id: String,
    /// The version in force that this build refused (logged once), if any.
    refused: Mutex<Option<String>>,
    /// Whether this replica runs the version in force (health).
    in_step: watch::Sender<bool>,
    /// Serializes applying a config with a reload's compare-and-set and
    /// apply, so an older version is never applied over a newer one.
    apply_lock: tokio::sync::Mutex<()>,
}

impl SharedRouting {
    /// Puts this replica's config in force if Redis has none, else runs the
    /// one in force (see the module docs), and reports it.
    pub async fn start(
        routing: Arc<Routing>,
        store: RoutingConfigStore,
        replica_id: String,
    ) -> Result<Arc<SharedRouting>, StartError> {
        let shared = Arc::new(SharedRouting {
            routing,
            store,
            replica_id,
            refused: Mutex::new(None),
            in_step: watch::channel(true).0,
            apply_lock: tokio::sync::Mutex::new(()),
        });
        let unavailable = |e: switchboard_store_redis::routing_config::RoutingStoreError| {
            StartError::Unavailable(e.to_string())
        };
        // A conflict means another replica stored one meanwhile: adopt it.
        for _ in 0..3 {
            let stored = shared.store.get().await.map_err(unavailable)?;
            let Some(stored) = stored else {
                let Some(local) = shared.routing.in_force() else {
                    break; // no file here and none in force: built-in rules
                };
                match shared.seed(&local).await.map_err(unavailable)? {
                    Activation::Conflict { .. } => continue,
                    Activation::Stored { .. } | Activation::Unchanged => {
                        tracing::info!(
                            routing_version = %local.config.version(),
                            file = %local.source,
                            key = switchboard_store_redis::routing_config::ROUTING,
                            "no routing config was in force in redis: this replica's file is now"
                        );
                        break;
                    }
                }
            };
            if Some(&stored.version) == shared.routing.version().as_ref() {
                tracing::info!(
                    routing_version = %stored.version,
                    activated_by = %stored.activated_by,
                    "this replica's routing file is the config in force in redis"
                );
                break;
            }
            let loaded = parse_stored(&stored)
                .await
                .map_err(|problems| StartError::Unusable {
                    address: shared.store.address().to_owned(),
                    version: stored.version.clone(),
                    source_file: stored.source.clone(),
                    activated_by: stored.activated_by.clone(),
                    problems,
                })?;
            if let Some(local) = shared.routing.version() {
                tracing::warn!(
                    routing_version = %stored.version,
                    local_version = %local,
                    file = %shared.routing.path().map(|p| p.display().to_string()).unwrap_or_default(),
                    activated_by = %stored.activated_by,
                    stored_from = %stored.source,
                    "THIS REPLICA'S ROUTING FILE DIFFERS FROM THE CONFIG IN FORCE: running version {} from redis \
                     (stored by replica `{}` from `{}`), not the local file's {local}; `sbctl routing reload` on this \
                     replica would put the local file in force everywhere",
                    stored.version,
                    stored.activated_by,
                    stored.source
                );
            } else {
                tracing::info!(
                    routing_version = %stored.version,
                    activated_by = %stored.activated_by,
                    "running the routing config in force in redis (no routing.file on this replica)"
                );
            }
            shared.routing.replace(loaded);
            break;
        }
        shared.report().await;
        Ok(shared)
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Whether this replica runs the config in force (false while Redis
    /// holds one this build refused).
    pub fn in_step(&self) -> watch::Receiver<bool> {
        self.in_step.subscribe()
    }

    /// The config in force in Redis.
    pub async fn in_force(&self) -> Result<Option<StoredRouting>, String> {
        self.store.get().await.map_err(|e| e.to_string())
    }

    /// The live replicas and the version each runs.
    pub async fn replicas(&self) -> Result<Vec<ReplicaReport>, String> {
        self.store
            .replicas(LIVE_WITHIN)
            .await
            .map_err(|e| e.to_string())
    }

    /// Stores `local` if no config is in force.
    async fn seed(
        &self,
        local: &InForce,
    ) -> Result<Activation, switchboard_store_redis::routing_config::RoutingStoreError> {
        let version = local.config.version();
        self.store
            .activate(
                None,
                NewRouting {
                    version: &version,
                    text: &local.text,
                    source: &local.source,
                    activated_by: &self.replica_id,
                },
            )
            .await
    }

    /// Reads and validates the local file and puts it in force for every
    /// replica (see the module docs); applies it here before returning.
    pub async fn reload(&self) -> Result<Reloaded, SharedReloadError> {
        if self.routing.path().is_none() {
            return Err(SharedReloadError::NotConfigured);
        }
        let expected = self
            .store
            .version()
            .await
            .map_err(|e| SharedReloadError::Unavailable(e.to_string()))?;
        let routing = self.routing.clone();
        // Reading and validating polygons can take a moment: off the runtime.
        let loaded = tokio::task::spawn_blocking(move || routing.read_file())
            .await
            .map_err(|e| SharedReloadError::Invalid(vec![format!("routing reload failed: {e}")]))?
            .map_err(|e| match e {
                crate::routing::ReloadError::NotConfigured => SharedReloadError::NotConfigured,
                crate::routing::ReloadError::Invalid(errors) => SharedReloadError::Invalid(errors),
            })?;
        let version = loaded.config.version();
        let applying = self.apply_lock.lock().await;
        let activation = self
            .store
            .activate(
                expected.as_deref(),
                NewRouting {
                    version: &version,
                    text: &loaded.text,
                    source: &loaded.source,
                    activated_by: &self.replica_id,
                },
            )
            .await
            .map_err(|e| SharedReloadError::Unavailable(e.to_string()))?;
        let previous = match activation {
            Activation::Conflict { in_force } => {
                return Err(SharedReloadError::Conflict { in_force });
            }
            Activation::Stored { previous } => previous,
            Activation::Unchanged => None,
        };
        if self.routing.version().as_deref() != Some(version.as_str()) {
            self.routing.replace(loaded);
        }
        self.set_refused(None);
        drop(applying);
        self.report().await;
        Ok(Reloaded { version, previous })
    }

    /// [`SharedRouting::reload`] with logging, then up to [`RELOAD_WAIT`]
    /// for the live replicas; for SIGHUP and the admin call.
    pub async fn reload_logged(
        &self,
        trigger: &str,
    ) -> Result<(Reloaded, Vec<ReplicaReport>), SharedReloadError> {
        let running = self.routing.version().unwrap_or_default();
        let result = self.reload().await;
        match &result {
            Ok(reloaded) => {
                tracing::info!(
                    trigger,
                    previous = reloaded.previous.as_deref().unwrap_or(""),
                    routing_version = %reloaded.version,
                    "routing file reloaded and put in force for every replica"
                );
                let replicas = self.wait_for(&reloaded.version, RELOAD_WAIT).await;
                let behind: Vec<String> = replicas
                    .iter()
                    .filter(|r| r.routing_version != reloaded.version)
                    .map(|r| format!("{} ({})", r.replica_id, r.routing_version))
                    .collect();
                if behind.is_empty() {
                    tracing::info!(
                        trigger,
                        routing_version = %reloaded.version,
                        replicas = replicas.len(),
                        "every live replica runs the new routing version"
                    );
                } else {
                    tracing::warn!(
                        trigger,
                        routing_version = %reloaded.version,
                        behind = %behind.join(", "),
                        "some live replicas did not report the new routing version within {} s",
                        RELOAD_WAIT.as_secs()
                    );
                }
                return Ok((reloaded.clone(), replicas));
            }
            Err(SharedReloadError::NotConfigured) => tracing::warn!(
                trigger,
                "routing reload asked, but no routing.file is configured on this replica"
            ),
            Err(SharedReloadError::Invalid(errors)) => tracing::error!(
                trigger,
                routing_version = %running,
                errors = %errors.join("; "),
                "routing file refused; the routing config in force stays on every replica"
            ),
            Err(SharedReloadError::Unavailable(error)) => tracing::error!(
                trigger,
                routing_version = %running,
                error = %error,
                "routing reload not stored: redis unreachable; nothing changed"
            ),
            Err(SharedReloadError::Conflict { in_force }) => tracing::warn!(
                trigger,
                in_force = in_force.as_deref().unwrap_or(""),
                "routing reload not stored: another reload changed the config in force meanwhile"
            ),
        }
        result.map(|reloaded| (reloaded, Vec::new()))
    }

    /// Waits up to `within` until every live replica reports `version`;
    /// returns the live replicas as last read (an unreadable Redis: none).
    pub async fn wait_for(&self, version: &str, within: Duration) -> Vec<ReplicaReport> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let replicas = self.store.replicas(LIVE_WITHIN).await.unwrap_or_default();
            let done = replicas.iter().all(|r| r.routing_version == version);
            if done || tokio::time::Instant::now() >= deadline {
                return replicas;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Follows the config in force until `cancel`: pub/sub, the poll, the
    /// reports; deletes this replica's report when it stops.
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let mut changes: Option<RoutingChanges> = None;
        let mut resubscribe_at = tokio::time::Instant::now();
        let mut backoff = RESUBSCRIBE_MIN;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = tokio::time::interval(REPORT_INTERVAL);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if changes.is_none() && tokio::time::Instant::now() >= resubscribe_at {
                match self.store.subscribe().await {
                    Ok(subscribed) => {
                        changes = Some(subscribed);
                        backoff = RESUBSCRIBE_MIN;
                        // What was published while unsubscribed is lost.
                        self.check().await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to routing changes; polling");
                        resubscribe_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                published = next_change(&mut changes) => match published {
                    Some(_) => self.check().await,
                    None => {
                        tracing::debug!("routing change subscription lost; polling until resubscribed");
                        changes = None;
                        resubscribe_at = tokio::time::Instant::now() + backoff;
                    }
                },
                _ = poll.tick() => self.check().await,
                _ = report.tick() => self.report().await,
            }
        }
        if let Err(e) = self.store.forget(&self.replica_id).await {
            tracing::debug!(error = %e, "could not delete this replica's routing report");
        }
    }

    /// Applies the config in force if this replica runs another one.
    async fn check(&self) {
        let applying = self.apply_lock.lock().await;
        let in_force = match self.store.version().await {
            Ok(version) => version,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the routing version in force; checking again shortly");
                return;
            }
        };
        let running = self.routing.version();
        let Some(in_force) = in_force else {
            // Redis lost the key: store what this replica runs again.
            if let Some(local) = self.routing.in_force() {
                match self.seed(&local).await {
                    Ok(Activation::Stored { .. }) => tracing::warn!(
                        routing_version = %local.config.version(),
                        "no routing config was in force in redis (restarted empty or flushed?): \
                         stored the one this replica runs"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot store the routing config"),
                }
            }
            return;
        };
        if Some(&in_force) == running.as_ref() {
            self.set_refused(None);
            return;
        }
        if self.refused_version().as_ref() == Some(&in_force) {
            return;
        }
        let stored = match self.store.get().await {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the routing config in force");
                return;
            }
        };
        match parse_stored(&stored).await {
            Ok(loaded) => {
                self.routing.replace(loaded);
                self.set_refused(None);
                tracing::info!(
                    routing_version = %stored.version,
                    previous = running.as_deref().unwrap_or(""),
                    activated_by = %stored.activated_by,
                    "applied the routing config in force (reloaded on replica `{}`)",
                    stored.activated_by
                );
                drop(applying);
                self.report().await;
            }
            Err(problems) => {
                tracing::error!(
                    in_force = %stored.version,
                    routing_version = running.as_deref().unwrap_or(""),
                    activated_by = %stored.activated_by,
                    problems = %problems.join("; "),
                    "the routing config in force cannot be used by this build: keeping the one this replica runs, \
                     health NOT_SERVING until a usable one is in force"
                );
                self.set_refused(Some(stored.version));
            }
        }
    }

    /// Writes this replica's report; failures wait for the next one.
    async fn report(&self) {
        let version = self.routing.version().unwrap_or_default();
        if let Err(e) = self.store.report(&self.replica_id, &version).await {
            tracing::debug!(error = %e, "cannot report this replica's routing version");
        }
    }

    fn refused_version(&self) -> Option<String> {
        match self.refused.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_refused(&self, version: Option<String>) {
        let in_step = version.is_none();
        match self.refused.lock() {
            Ok(mut guard) => *guard = version,
            Err(poisoned) => *poisoned.into_inner() = version,
        }
        self.in_step.send_if_modified(|current| {
            let changed = *current != in_step;
            *current = in_step;
            changed
        });
    }
}

/// The next published version; pending forever while unsubscribed.
async fn next_change(changes: &mut Option<RoutingChanges>) -> Option<String> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// Parses a stored config off the runtime (polygons); its text must hash to
/// the stored version, or this build's versions are not that build's.
async fn parse_stored(stored: &StoredRouting) -> Result<InForce, Vec<String>> {
    let name = format!("redis sb:routing (from {})", stored.source);
    let text = stored.text.clone();
    let mut loaded = tokio::task::spawn_blocking(move || parse(&name, &text))
        .await
        .map_err(|e| vec![format!("parsing failed: {e}")])??;
    loaded.source = stored.source.clone();
    let version = loaded.config.version();
    if version != stored.version {
        return Err(vec![format!(
            "the stored text has version {version} for this build, not the stored {}",
            stored.version
        )]);
    }
    Ok(loaded)
}
