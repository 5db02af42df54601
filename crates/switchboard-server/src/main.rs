//! `switchboard`: the server binary.
//!
//! `switchboard serve` starts the server (embedded in-memory store, or
//! Redis when configured); `switchboard token` mints a bearer token with the
//! configured signing key; `switchboard activate-config` puts a
//! configuration's version in force for every replica on one Redis (see
//! `config_version`). Bad configuration exits with code 64 (so does a
//! routing config in force in Redis that this build cannot use); a Redis
//! still unreachable after `store.redis_startup_timeout_ms` (or, for
//! `activate-config`, at once) exits with 69.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use switchboard_auth::Role;
use switchboard_server::config::{Config, Overrides, redact_url};
use switchboard_server::config_version::{self, ConfigGate};
use switchboard_server::routing::Routing;
use switchboard_server::shared_routing::{SharedRouting, StartError};
use switchboard_server::{ServerOptions, serve_gated};
use switchboard_store::{MemoryStore, Store, StoreError, SystemClock};
use switchboard_store_redis::routing_config::RoutingConfigStore;
use switchboard_store_redis::{RedisOptions, RedisStore};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: with Redis, glibc's allocator took
/// ~20% of the server's CPU samples at 1,000 hand-offs/s, and jemalloc
/// cut the server's CPU by a tenth at the same memory (mimalloc cut it a
/// little more but took 60% more memory); docs/performance.md, 5 Dec 2026.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when Redis stays unreachable at startup (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Startup retries of an unreachable Redis: first pause and longest pause.
const REDIS_RETRY_MIN: Duration = Duration::from_millis(100);
const REDIS_RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Dispatch of customer conversations to online gig support agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve {
        /// TOML configuration file (see deploy/switchboard.example.toml).
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the file and SWITCHBOARD_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Keep the dispatch state in the Redis at this URL, shared with any
        /// number of replicas (overrides `store.redis_url` and
        /// SWITCHBOARD_STORE__REDIS_URL). Default: the embedded store.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
    },
    /// Put this configuration's version in force for every replica on the
    /// Redis (key `sb:config_version`): replicas running it turn SERVING,
    /// the others NOT_SERVING, within a few seconds. Prints old → new.
    ActivateConfig {
        /// TOML configuration file, as given to `serve` (the environment
        /// applies too, as for `serve`).
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// The Redis the replicas use (overrides `store.redis_url`).
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Only print this configuration's version and the one in force.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mint a bearer token with the configured signing key.
    Token {
        #[arg(long, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// agent, gateway or admin.
        #[arg(long)]
        role: Role,
        #[arg(long, default_value = "default")]
        pool: String,
        /// The agent id (agent tokens only).
        #[arg(long)]
        agent: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: i64,
        /// The agent's current token epoch (see `sbctl roster list`).
        #[arg(long, default_value_t = 0)]
        epoch: u64,
    },
}

fn load_config(
    path: Option<&PathBuf>,
    overrides: &Overrides,
) -> Result<(Config, switchboard_auth::Keyring), String> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let text = match path {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let name = path.map(|p| p.display().to_string()).unwrap_or_default();
    Config::load(text.as_deref().map(|t| (name.as_str(), t)), &env, overrides)
        .map_err(|e| e.to_string())
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: not in journald or
    // files, and not paid for on every span of a loaded server.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

async fn run_server(
    config: Config,
    keyring: switchboard_auth::Keyring,
    routing: Arc<Routing>,
) -> anyhow::Result<()> {
    let dev_mode = config.is_development();
    if dev_mode {
        tracing::warn!(
            listen = %config.listen,
            "DEVELOPMENT MODE: tokens signed with the public development secret are accepted and unknown agents \
             self-register; serving loopback only. Set auth.mode = \"keys\" for anything else."
        );
    }
    let store = tokio::select! {
        store = open_store(&config) => store?,
        () = shutdown_signal() => {
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    if let Some(path) = routing.path() {
        tracing::info!(
            file = %path.display(),
            routing_version = routing.version().as_deref().unwrap_or(""),
            "routing file loaded (reload: SIGHUP or AdminService.ReloadRouting)"
        );
    }
    // The routing file is not part of the dispatch config version: with
    // Redis its own version in force lives in `sb:routing`, which every
    // replica follows (shared_routing), so a reload never takes replicas
    // out of rotation.
    let version = config_version::config_version(&config.dispatch, None);
    let replica_id = config.server.replica_id();
    let (gate, shared_routing) = match config.store.redis() {
        Some(url) => {
            let gate = ConfigGate::connect(url, version.clone())
                .await
                .map_err(|e| RedisUnreachable(format!("{e:#}")))?;
            let address = redact_url(url);
            let store = RoutingConfigStore::connect(url, &address)
                .await
                .map_err(|e| RedisUnreachable(e.to_string()))?;
            let shared =
                match SharedRouting::start(routing.clone(), store, replica_id.clone()).await {
                    Ok(shared) => shared,
                    Err(StartError::Unavailable(message)) => {
                        return Err(RedisUnreachable(message).into());
                    }
                    Err(unusable) => return Err(UnusableRouting(unusable.to_string()).into()),
                };
            tracing::info!(
                replica_id = %replica_id,
                routing_version = routing.version().as_deref().unwrap_or(""),
                "routing config shared through redis (sb:routing)"
            );
            (Some(gate), Some(shared))
        }
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, config_version = %version, "switchboard serving");
    serve_gated(
        listener,
        ServerOptions {
            store,
            keyring,
            settings: config.dispatch.clone(),
            dev_mode,
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            routing,
            shared_routing,
            replica_id,
            max_pending_handoffs: config.server.max_pending_handoffs,
            max_runtime_lag_ms: config.server.max_runtime_lag_ms,
        },
        gate,
        shutdown_signal(),
    )
    .await
}

/// The routing config in force in Redis cannot be used by this build.
#[derive(Debug)]
struct UnusableRouting(String);

impl std::fmt::Display for UnusableRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnusableRouting {}

/// Redis stayed unreachable for the whole startup timeout.
#[derive(Debug)]
struct RedisUnreachable(String);

impl std::fmt::Display for RedisUnreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisUnreachable {}

/// The configured store: Redis when `store.redis_url` is set, else the
/// embedded in-memory one. Logs which.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let offset_ms = config.store.test_clock_offset_ms;
    if offset_ms != 0 {
        tracing::warn!(
            offset_ms,
            "TEST ONLY: this replica's clock is skewed by store.test_clock_offset_ms"
        );
    }
    let Some(url) = config.store.redis() else {
        tracing::info!(
            store = "memory",
            "dispatch state in the embedded in-memory store (one node; lost on restart)"
        );
        return Ok(Arc::new(MemoryStore::new(
            config.dispatch.clone(),
            Arc::new(SystemClock { offset_ms }),
        )));
    };
    let address = redact_url(url);
    let options = RedisOptions {
        // The Redis store reads no local clock; the offset only warns.
        clock_offset_ms: offset_ms,
        outage_threshold: outage_threshold(&config.dispatch),
        row_format: config.store.redis_row_format,
        // The server takes every event from the feed, never from a reply.
        events_in_replies: false,
        batch_calls: config.store.redis_batch_calls,
        ..RedisOptions::default()
    };
    let within = Duration::from_millis(config.store.redis_startup_timeout_ms);
    let store = connect_redis(url, &address, config, options, within).await?;
    tracing::info!(store = "redis", redis = %address, "dispatch state in redis, shared with every replica using it");
    Ok(Arc::new(store))
}

/// How long no replica may reach a pool before the store treats the gap as
/// an outage and extends every lease (agents could not heartbeat either).
/// It must stay below the lease minus the heartbeat interval, or a gap that
/// already cost a heartbeat would not count; and well above the sweepers'
/// pace (every pool many times a second), or a busy moment would count.
fn outage_threshold(settings: &switchboard_core::DispatchSettings) -> Duration {
    let default = RedisOptions::default().outage_threshold;
    let slack_ms = settings.lease_ms - settings.heartbeat_interval_ms;
    let half_slack = Duration::from_millis(u64::try_from(slack_ms / 2).unwrap_or(0));
    half_slack.max(Duration::from_millis(200)).min(default)
}

/// Connects to Redis, retrying with backoff for up to `within`: in a fresh
/// deployment Redis may come up after the replicas, and an orchestrator
/// restart loop would only add delay. After that, exits (code 69) rather
/// than serve nothing while reporting healthy.
async fn connect_redis(
    url: &str,
    address: &str,
    config: &Config,
    options: RedisOptions,
    within: Duration,
) -> anyhow::Result<RedisStore> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = REDIS_RETRY_MIN;
    let mut attempt = 1u32;
    loop {
        // One attempt may itself retry for seconds (the connection
        // manager's own backoff): bound it by what is left of the timeout.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempted = tokio::time::timeout(
            left.max(REDIS_RETRY_MIN),
            RedisStore::connect_with(url, config.dispatch.clone(), options.clone()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no connection within {} ms",
                left.as_millis()
            )))
        });
        match attempted {
            Ok(store) => return Ok(store),
            Err(StoreError::Unavailable(message)) => {
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(RedisUnreachable(format!(
                        "redis at `{address}` still unreachable after {attempt} attempt(s) in {} ms \
                         (store.redis_startup_timeout_ms): {message}",
                        within.as_millis()
                    ))
                    .into());
                }
                tracing::warn!(
                    redis = %address,
                    attempt,
                    retry_in_ms = pause.as_millis() as u64,
                    error = %message,
                    "redis unreachable at startup; retrying"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REDIS_RETRY_MAX);
                attempt += 1;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot use redis at `{address}`"));
            }
        }
    }
}

/// `switchboard activate-config`: prints `old → new` (or both, dry run).
async fn activate_config(config: &Config, url: &str, dry_run: bool) -> anyhow::Result<()> {
    let address = redact_url(url);
    let version = config_version::config_version(&config.dispatch, None);
    if dry_run {
        let mut gate = ConfigGate::connect(url, version.clone()).await?;
        let in_force = gate.in_force().await?;
        println!(
            "this configuration: {version}; in force at {address}: {}",
            in_force.as_deref().unwrap_or("(none)")
        );
        return Ok(());
    }
    let previous = config_version::activate(url, &version).await?;
    match previous {
        Some(previous) if previous == version => {
            println!("config version {version} was already in force at {address}");
        }
        previous => {
            println!(
                "config version in force at {address}: {} → {version}",
                previous.as_deref().unwrap_or("(none)")
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            redis,
        } => {
            let overrides = Overrides {
                listen,
                redis_url: redis,
            };
            let (config, keyring) = match load_config(config.as_ref(), &overrides) {
                Ok(loaded) => loaded,
                Err(message) => {
                    eprintln!("switchboard: {message}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let routing = match &config.routing.file {
                None => Routing::disabled(),
                Some(path) => match Routing::load(path) {
                    Ok(routing) => routing,
                    Err(errors) => {
                        eprintln!(
                            "switchboard: invalid routing file {} ({} problem(s)):",
                            path.display(),
                            errors.len()
                        );
                        for error in &errors {
                            eprintln!("  - {error}");
                        }
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
            };
            init_logging(&config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("switchboard: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_server(config, keyring, routing)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "switchboard failed");
                    eprintln!("switchboard: {e:#}");
                    if e.downcast_ref::<RedisUnreachable>().is_some() {
                        ExitCode::from(EXIT_UNAVAILABLE)
                    } else if e.downcast_ref::<UnusableRouting>().is_some() {
                        ExitCode::from(EXIT_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
        Command::ActivateConfig {
            config,
            redis,
            dry_run,
        } => {
            let overrides = Overrides {
                listen: None,
                redis_url: redis,
            };
            let (config, url) = match load_config(config.as_ref(), &overrides) {
                Ok((config, _)) if config.store.redis().is_some() => {
                    let url = config.store.redis_url.clone();
                    (config, url)
                }
                Ok(_) => {
                    eprintln!(
                        "switchboard: activate-config needs the replicas' redis: give --redis URL or store.redis_url"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
                Err(message) => {
                    eprintln!("switchboard: {message}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("switchboard: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(activate_config(&config, &url, dry_run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchboard: {e:#}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            }
        }
        Command::Token {
            config,
            role,
            pool,
            agent,
            ttl_secs,
            epoch,
        } => {
            let (_, keyring) = match load_config(config.as_ref(), &Overrides::default()) {
                Ok(loaded) => loaded,
                Err(message) => {
                    eprintln!("switchboard: {message}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if role == Role::Agent && agent.is_none() {
                eprintln!("switchboard: --agent is required for an agent token");
                return ExitCode::from(EXIT_CONFIG);
            }
            let now = chrono::Utc::now().timestamp();
            match keyring.mint(role, &pool, agent.as_deref(), now, ttl_secs, epoch) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchboard: cannot mint token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
