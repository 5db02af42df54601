//! The routing file in force, and its translation into what the engine
//! executes: a [`RoutingPlan`] per hand-off and a region set per agent.
//!
//! # Design
//!
//! - The file is parsed and validated by `switchboard-routing` (every
//!   problem at once, with file:line:col); the server refuses to start on a
//!   bad one, and a bad reload leaves the running config in place and says
//!   why.
//! - The config in force is an `Arc` behind a `std::sync::RwLock`: no lock
//!   is held across an `.await`, and a reload swaps the `Arc`, so hand-offs
//!   being planned finish with the config they started with. Nothing already
//!   queued changes: a conversation keeps the plan it was handed off with
//!   (a reload applies to new hand-offs); connections, queue and offers
//!   stay.
//! - With Redis the config in force is the deployment's, kept in Redis:
//!   `shared_routing` decides what this `Routing` holds (it calls
//!   [`Routing::replace`]) and a reload goes through it; [`Routing::changes`]
//!   announces every swap, after which `regions` re-resolves the regions of
//!   the agents connected here.
//! - A plan is a pure function of the hand-off and the config: the queue
//!   (`queue_for(category)`, else the default queue, else the built-in
//!   policy with the pool's timings), the base requirements, every
//!   relaxation step precomputed with `requirements_at`, and, for an
//!   overflow, the target queue's plan (the loader refuses overflow cycles).
//! - An agent's regions are the names of the regions whose geofence admits
//!   its location (or admits agents without one), resolved at GoOnline, at
//!   every Heartbeat that carries a location and after every change of the
//!   config (see `regions` for which location counts). The engine checks
//!   membership and the roster.

use crate::shared_routing::SharedRouting;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use switchboard_core::model::{Handoff, Location};
use switchboard_core::plan::{
    PlanAging, PlanMaxWait, PlanMaxWaitAction, PlanRequirements, PlanStep, PlanStrategy,
    RoutingPlan,
};
use switchboard_routing::{
    CustomerRegion, MaxWaitAction, QueuePolicy, Requirements, RosterRegionPolicy, RoutingConfig,
    RoutingError, Strategy, base_requirements, next_relaxation_ms, region_allows, requirements_at,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How deep overflow chains are followed when planning (the loader refuses
/// cycles; this only bounds a pathological chain).
const MAX_OVERFLOW_DEPTH: usize = 16;

/// The routing config in force (if any), with the file it is reloaded from.
#[derive(Debug)]
pub struct Routing {
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<InForce>>>,
    /// The version in force, announced on every change: agents connected
    /// here have their regions re-resolved (`regions::follow_routing`).
    changes: watch::Sender<Option<String>>,
}

/// One routing config with the text it was parsed from and where that
/// text came from (a file path, as the replica that read it named it).
#[derive(Debug)]
pub struct InForce {
    pub config: Arc<RoutingConfig>,
    pub text: Arc<str>,
    pub source: String,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            path: None,
            current: RwLock::new(None),
            changes: watch::channel(None).0,
        }
    }
}

/// A reload that was refused: the running config stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// No `routing.file` is configured.
    NotConfigured,
    /// The file cannot be read, or has problems (one line each).
    Invalid(Vec<String>),
}

impl Routing {
    /// No routing file: hand-offs are routed with the core's built-in rules
    /// (with Redis, until a config in force there is applied).
    pub fn disabled() -> Arc<Routing> {
        Arc::new(Routing::default())
    }

    /// Loads and validates `path`. `Err` holds every problem, one per line,
    /// each with file:line:col.
    pub fn load(path: &Path) -> Result<Arc<Routing>, Vec<String>> {
        let loaded = read(path)?;
        let version = loaded.config.version();
        Ok(Arc::new(Routing {
            path: Some(path.to_owned()),
            current: RwLock::new(Some(Arc::new(loaded))),
            changes: watch::channel(Some(version)).0,
        }))
    }

    /// The file, when configured.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The config in force with its text, if any.
    pub fn in_force(&self) -> Option<Arc<InForce>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The config in force, if any.
    pub fn config(&self) -> Option<Arc<RoutingConfig>> {
        self.in_force().map(|f| f.config.clone())
    }

    /// The version in force (16 hex digits), if any.
    pub fn version(&self) -> Option<String> {
        self.config().map(|c| c.version())
    }

    /// Follows the version in force.
    pub fn changes(&self) -> watch::Receiver<Option<String>> {
        self.changes.subscribe()
    }

    /// Reads and validates the file without applying it.
    pub fn read_file(&self) -> Result<InForce, ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NotConfigured)?;
        read(path).map_err(ReloadError::Invalid)
    }

    /// Puts `loaded` in force (an `Arc` swap) and announces its version.
    pub fn replace(&self, loaded: InForce) {
        let version = loaded.config.version();
        {
            let mut guard = match self.current.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            *guard = Some(Arc::new(loaded));
        }
        self.changes.send_replace(Some(version));
    }

    /// Reads the file again; a good one replaces the config in force (the
    /// new version is returned), a bad one changes nothing.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let loaded = self.read_file()?;
        let version = loaded.config.version();
        self.replace(loaded);
        Ok(version)
    }

    /// [`Routing::reload`] with logging, for SIGHUP and the admin call.
    pub fn reload_logged(&self, trigger: &str) -> Result<String, ReloadError> {
        let previous = self.version();
        let result = self.reload();
        match &result {
            Ok(version) => tracing::info!(
                trigger,
                previous = previous.as_deref().unwrap_or(""),
                routing_version = %version,
                "routing file reloaded"
            ),
            Err(ReloadError::NotConfigured) => {
                tracing::warn!(
                    trigger,
                    "routing reload asked, but no routing.file is configured"
                );
            }
            Err(ReloadError::Invalid(errors)) => tracing::error!(
                trigger,
                routing_version = previous.as_deref().unwrap_or(""),
                errors = %errors.join("; "),
                "routing file refused; the running routing config stays"
            ),
        }
        result
    }
}

/// Reloads the routing file on every SIGHUP until `cancel`; a bad file is
/// logged and the running config stays. With Redis (`shared`), the reload
/// is the deployment-wide one of [`SharedRouting::reload_logged`].
pub async fn reload_on_sighup(
    routing: Arc<Routing>,
    shared: Option<Arc<SharedRouting>>,
    cancel: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload with AdminService.ReloadRouting");
                return;
            }
        };
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    if let Some(shared) = &shared {
                        // Up to the reload's wait for the other replicas;
                        // shutdown does not wait for it.
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            _ = shared.reload_logged("SIGHUP") => {}
                        }
                        continue;
                    }
                    let routing = routing.clone();
                    let _ = tokio::task::spawn_blocking(move || routing.reload_logged("SIGHUP")).await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (routing, shared);
        cancel.cancelled().await;
    }
}

fn read(path: &Path) -> Result<InForce, Vec<String>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{name}: cannot read the routing file: {e}")])?;
    parse(&name, &text)
}

/// Parses and validates routing file text; `source` names it in the
/// problems (one per entry, with line and column).
pub fn parse(source: &str, text: &str) -> Result<InForce, Vec<String>> {
    let config = RoutingConfig::from_toml(source, text).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    })?;
    Ok(InForce {
        config: Arc::new(config),
        text: Arc::from(text),
        source: source.to_owned(),
    })
}

/// The plan for a hand-off under `config`. A region the config lacks is
/// an error (`INVALID_ARGUMENT` on `region` for the gateway).
pub fn plan_for(config: &RoutingConfig, handoff: &Handoff) -> Result<RoutingPlan, RoutingError> {
    match config.queue_for(&handoff.category) {
        Some(queue) => plan_in(config, queue, handoff, 0),
        None => {
            // No queue: the hand-off's own requirements (regions resolved),
            // the pool's timings, aging and the preferred-agent window.
            let queue = QueuePolicy::builtin(handoff.category.clone());
            let mut plan = plan_in(config, &queue, handoff, 0)?;
            plan.offer_timeout_ms = None;
            plan.wrap_up_ms = None;
            plan.max_wait = None;
            Ok(plan)
        }
    }
}

fn plan_in(
    config: &RoutingConfig,
    queue: &QueuePolicy,
    handoff: &Handoff,
    depth: usize,
) -> Result<RoutingPlan, RoutingError> {
    let base = base_requirements(config, queue, handoff)?;
    let mut steps = vec![PlanStep {
        after_ms: 0,
        requirements: core_requirements(&requirements_at(queue, &base, 0)),
    }];
    let mut waited = 0;
    while let Some(next) = next_relaxation_ms(queue, waited) {
        steps.push(PlanStep {
            after_ms: next,
            requirements: core_requirements(&requirements_at(queue, &base, next)),
        });
        waited = next;
    }
    let action = match &queue.max_wait.action {
        MaxWaitAction::Expire { reason } => Some(PlanMaxWaitAction::Expire {
            reason: reason.clone(),
        }),
        MaxWaitAction::Callback { priority, reason } => Some(PlanMaxWaitAction::Callback {
            priority: *priority,
            reason: reason.clone(),
        }),
        MaxWaitAction::Overflow { queue: target } => match config.queue(target) {
            Some(next) if depth < MAX_OVERFLOW_DEPTH => Some(PlanMaxWaitAction::Overflow {
                queue: target.clone(),
                plan: Box::new(plan_in(config, next, handoff, depth + 1)?),
            }),
            // Unreachable for a loaded config; expiring is the safe end.
            _ => None,
        },
    };
    Ok(RoutingPlan {
        queue: queue.name.clone(),
        priority: queue.base_priority(handoff.priority),
        steps,
        strategy: strategy(queue.strategy),
        aging: PlanAging {
            rate_micro_per_second: config.aging.rate_micro_per_second,
            ceiling: config.aging.ceiling,
        },
        offer_timeout_ms: Some(queue.offer_timeout_ms),
        wrap_up_ms: Some(queue.wrap_up_ms),
        max_wait: Some(PlanMaxWait {
            after_ms: queue.max_wait.after_ms,
            action: action.unwrap_or(PlanMaxWaitAction::Expire {
                reason: "no agent available".to_owned(),
            }),
        }),
        preferred_window_ms: config.preferred_agent_window_ms,
        roster_regions_if_listed: config.regions.roster_policy == RosterRegionPolicy::IfListed,
        misses_before_away: Some(config.penalties.misses_before_away),
        reject_delay_ms: config.penalties.reject_delay_ms,
    })
}

fn core_requirements(requirements: &Requirements) -> PlanRequirements {
    PlanRequirements {
        language: requirements.language.tag.clone(),
        language_widened: requirements.language.widened,
        skills: requirements.skills.clone(),
        attributes: requirements.attributes.clone(),
        regions: requirements.regions.clone(),
    }
}

fn strategy(strategy: Strategy) -> PlanStrategy {
    match strategy {
        Strategy::LongestIdle => PlanStrategy::LongestIdle,
        Strategy::LeastOccupied => PlanStrategy::LeastOccupied,
        Strategy::BestSkillMatch => PlanStrategy::BestSkillMatch,
        Strategy::RoundRobin => PlanStrategy::RoundRobin,
        Strategy::QualityWeighted => PlanStrategy::QualityWeighted,
    }
}

/// The regions whose geofence admits an agent at `location` (or without
/// one, per the config's `agents_without_location`).
pub fn agent_regions(config: &RoutingConfig, location: Option<Location>) -> BTreeSet<String> {
    config
        .regions
        .names()
        .filter(|name| region_allows(config, CustomerRegion::Named(name), location))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::ids::ConversationId;
    use switchboard_core::model::Skill;

    const FILE: &str = r#"
[routing]
default_queue = "general"
preferred_agent_window_seconds = 30

[aging]
rate_per_second = 0.05

[regions.berlin]
wkt = "POLYGON((13.08 52.34, 13.76 52.34, 13.76 52.68, 13.08 52.68, 13.08 52.34))"

[queues.general]

[queues.billing]
categories = ["invoice"]
skills = { billing = 4 }
strategy = "best_skill_match"
offer_timeout_seconds = 25
wrap_up_seconds = 60
max_wait = { after_seconds = 300, action = "overflow", queue = "general" }

[[queues.billing.relax]]
after_seconds = 30
lower_skill = "billing"
to_level = 3

[[queues.billing.relax]]
after_seconds = 90
widen_language = "parent"
"#;

    fn handoff(category: &str) -> Handoff {
        Handoff {
            conversation_id: ConversationId::parse("conversation_id", "c1").unwrap(),
            customer_id: "cust".into(),
            language: "de-at".into(),
            category: category.into(),
            required_skills: vec![],
            priority: 2,
            summary: String::new(),
            attributes: Default::default(),
            customer_asked_for_human: false,
            chat_reference: String::new(),
            preferred_agent: None,
            region: Some("berlin".into()),
            customer_location: None,
        }
    }

    #[test]
    fn plan_carries_every_step_and_the_overflow_target() {
        let config = RoutingConfig::from_toml("routing.toml", FILE).unwrap();
        let plan = plan_for(&config, &handoff("invoice")).unwrap();
        assert_eq!(plan.queue, "billing");
        assert_eq!(plan.strategy, PlanStrategy::BestSkillMatch);
        assert_eq!(plan.offer_timeout_ms, Some(25_000));
        assert_eq!(plan.wrap_up_ms, Some(60_000));
        assert_eq!(plan.preferred_window_ms, 30_000);
        assert_eq!(plan.aging.rate_micro_per_second, 50_000);
        let at: Vec<i64> = plan.steps.iter().map(|s| s.after_ms).collect();
        assert_eq!(at, [0, 30_000, 90_000]);
        assert_eq!(
            plan.steps[0].requirements.skills,
            [Skill::new("billing", 4)]
        );
        assert_eq!(
            plan.steps[1].requirements.skills,
            [Skill::new("billing", 3)]
        );
        assert!(plan.steps[2].requirements.language_widened);
        assert_eq!(plan.steps[2].requirements.language, "de");
        assert_eq!(
            plan.steps[0].requirements.regions,
            Some(BTreeSet::from(["berlin".to_owned()]))
        );
        let Some(PlanMaxWait {
            after_ms: 300_000,
            action: PlanMaxWaitAction::Overflow { queue, plan: next },
        }) = &plan.max_wait
        else {
            panic!("expected an overflow: {:?}", plan.max_wait);
        };
        assert_eq!(queue, "general");
        assert_eq!(next.queue, "general");
        assert!(next.steps[0].requirements.skills.is_empty());
    }

    #[test]
    fn unknown_region_is_an_error_and_agents_resolve_by_location() {
        let config = RoutingConfig::from_toml("routing.toml", FILE).unwrap();
        let mut h = handoff("general");
        h.region = Some("mars".into());
        assert!(matches!(
            plan_for(&config, &h),
            Err(RoutingError::UnknownRegion(r)) if r == "mars"
        ));
        let inside = Location {
            latitude: 52.5,
            longitude: 13.4,
        };
        let outside = Location {
            latitude: 48.1,
            longitude: 11.6,
        };
        assert_eq!(
            agent_regions(&config, Some(inside)),
            BTreeSet::from(["berlin".to_owned()])
        );
        assert!(agent_regions(&config, Some(outside)).is_empty());
        assert!(agent_regions(&config, None).is_empty());
    }

    #[test]
    fn the_deploy_example_loads_and_plans_every_queue() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/routing.example.toml");
        let routing = Routing::load(&path).unwrap();
        let config = routing.config().unwrap();
        for name in config.queues.keys() {
            let mut h = handoff(name);
            h.region = None;
            let plan = plan_for(&config, &h).unwrap();
            assert_eq!(&plan.queue, name);
            assert!(plan.steps.windows(2).all(|w| w[0].after_ms < w[1].after_ms));
        }
    }

    #[test]
    fn a_bad_reload_keeps_the_running_config() {
        let dir = std::env::temp_dir().join(format!("sb-routing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routing.toml");
        std::fs::write(&path, FILE).unwrap();
        let routing = Routing::load(&path).unwrap();
        let version = routing.version().unwrap();
        std::fs::write(&path, "[defaults]\nstrategy = \"fastest\"\n").unwrap();
        let Err(ReloadError::Invalid(errors)) = routing.reload() else {
            panic!("a bad file must be refused");
        };
        assert!(errors[0].contains("routing.toml:2:"), "{errors:?}");
        assert!(
            errors[0].contains("unknown strategy `fastest`"),
            "{errors:?}"
        );
        assert_eq!(routing.version().unwrap(), version);
        std::fs::write(&path, format!("{FILE}\n# edited\n")).unwrap();
        let new = routing.reload().unwrap();
        assert_ne!(new, version);
        assert_eq!(routing.version().unwrap(), new);
        assert_eq!(
            Routing::disabled().reload(),
            Err(ReloadError::NotConfigured)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
