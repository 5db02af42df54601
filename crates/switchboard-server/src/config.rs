//! Server configuration: a TOML file, overridden by `SWITCHBOARD_*`
//! environment variables, overridden by flags. Parsed and validated before
//! any port is bound; every problem is reported at once, naming the key.
//!
//! Environment keys: `SWITCHBOARD_<KEY>` for top-level keys and
//! `SWITCHBOARD_<SECTION>__<KEY>` inside a section (double underscore),
//! e.g. `SWITCHBOARD_DISPATCH__OFFER_TIMEOUT_MS=15000`. The environment is
//! passed in as a map so tests need not touch the process environment.
//! Every other `SWITCHBOARD_*` variable is read as a key, so secrets named
//! by `auth.keys[].secret_env` must use another prefix (e.g. `SB_KEY_...`).

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use switchboard_auth::Keyring;
use switchboard_core::DispatchSettings;
use switchboard_store_redis::RowFormat;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve gRPC on.
    pub listen: SocketAddr,
    /// `pretty` (local) or `json` (deployment).
    pub log_format: String,
    /// How long a graceful shutdown may take before streams are cut.
    pub shutdown_grace_ms: u64,
    pub auth: AuthConfig,
    pub dispatch: DispatchSettings,
    pub store: StoreConfig,
    pub routing: RoutingSettings,
    pub server: ServerSettings,
}

/// This replica itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// This replica's id, as `GetRouting` and `sbctl routing show` list it
    /// (with Redis, every replica reports the routing version it runs under
    /// this id). 1–128 of `[A-Za-z0-9_.:@-]`, unique per deployment.
    /// Empty (the default): `<hostname>-<pid>` (in Kubernetes the hostname
    /// is the pod's name).
    pub replica_id: String,
    /// Load shedding: while this many hand-offs (RequestAgent calls) are in
    /// progress on this replica, a new one is refused at once with
    /// RESOURCE_EXHAUSTED, before any store work (accepts, completions and
    /// the rest are never shed). 0: no limit. The default, 64, is far
    /// above what a replica that keeps up has in progress (arrival rate ×
    /// time per hand-off: ~2 at 500/s on Redis, ~1 embedded) and low enough
    /// that an overloaded Redis keeps room for accepts and completions
    /// (measured: at 1,000/s offered to one Redis-backed replica, 1,024
    /// let every call time out; 64 served ~525/s with no other error:
    /// docs/performance.md).
    pub max_pending_handoffs: usize,
    /// Load shedding on the replica's own CPU: while its runtime wakes a
    /// timer more than this many ms late (measured every 25 ms), new
    /// hand-offs are refused with RESOURCE_EXHAUSTED. 250 ms is far above a
    /// healthy replica's lag (well under 1 ms) and well below the
    /// one-second offer-delivery grace, past which offers are withdrawn as
    /// undelivered and the overload feeds on itself. The same limit applies
    /// to the store's event feed (`Store::feed_lag`, Redis). 0: never.
    pub max_runtime_lag_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            replica_id: String::new(),
            max_pending_handoffs: 64,
            max_runtime_lag_ms: 250,
        }
    }
}

impl ServerSettings {
    /// The configured id, else `<hostname>-<pid>` with every character
    /// outside `[A-Za-z0-9_.:@-]` replaced by `-`.
    pub fn replica_id(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "switchboard".to_owned());
        let host: String = host
            .chars()
            .map(|c| if is_id_char(c) { c } else { '-' })
            .take(100)
            .collect();
        format!("{host}-{}", std::process::id())
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

/// The routing policy: a routing file (see docs/routing.md), or none for
/// the core's built-in rules.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// Path of the routing file (relative to the working directory).
    /// Validated at startup (every problem reported, exit 64); reloaded on
    /// SIGHUP and by AdminService.ReloadRouting. With Redis, the config in
    /// force is the one stored there (`sb:routing`, see docs/routing.md):
    /// this file seeds it and is what a reload on this replica stores.
    pub file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            log_format: "pretty".into(),
            shutdown_grace_ms: 10_000,
            auth: AuthConfig::default(),
            dispatch: DispatchSettings::default(),
            store: StoreConfig::default(),
            routing: RoutingSettings::default(),
            server: ServerSettings::default(),
        }
    }
}

/// Where the dispatch state lives: the embedded in-memory store (the
/// default: one node, nothing else needed) or Redis (any number of
/// replicas share it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redis://[user:password@]host:port[/db]`. Empty: the embedded
    /// in-memory store. (`rediss://`, TLS, is refused: the redis client is
    /// built without a TLS feature.)
    pub redis_url: String,
    /// At startup, how long to keep retrying an unreachable Redis (with
    /// backoff, logging each failure) before exiting with code 69. Once
    /// serving, a lost Redis is retried forever and calls get UNAVAILABLE.
    pub redis_startup_timeout_ms: u64,
    /// How the Redis store writes rows: `msgpack` (the default) or `json`,
    /// which builds before MessagePack rows can read: set `json` while
    /// such builds still share the Redis (docs/redis.md, "Rolling
    /// upgrades").
    pub redis_row_format: RowFormat,
    /// Whether the Redis store sends the calls made while its previous call
    /// is in flight together when it returns (group commit: one FCALL per
    /// pool for all of them; the default), or each alone at once.
    pub redis_batch_calls: bool,
    /// Test only: milliseconds added to this replica's clock, so tests can
    /// run a replica whose clock is skewed. Zero in production.
    pub test_clock_offset_ms: i64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis_url: String::new(),
            redis_startup_timeout_ms: 30_000,
            redis_row_format: RowFormat::default(),
            redis_batch_calls: true,
            test_clock_offset_ms: 0,
        }
    }
}

impl StoreConfig {
    /// The Redis URL when Redis is configured.
    pub fn redis(&self) -> Option<&str> {
        Some(self.redis_url.as_str()).filter(|url| !url.is_empty())
    }
}

/// `redis://user:secret@host:6379/0` → `redis://***@host:6379/0`, for logs
/// and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `development` (the default: a fixed public secret, loopback only) or
    /// `keys` (the keys below).
    pub mode: String,
    /// The key id that signs tokens minted by `switchboard token`.
    pub signing_key_id: String,
    pub keys: Vec<KeyConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub id: String,
    /// Name of the environment variable that holds the secret (preferred:
    /// keeps secrets out of files).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The secret itself.
    #[serde(default)]
    pub secret: Option<String>,
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Flags that override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    /// `--redis URL`: use Redis at this URL.
    pub redis_url: Option<String>,
}

impl Config {
    /// Builds the configuration from an optional TOML text (with its file
    /// name for messages), the environment, and flags; then validates it.
    pub fn load(
        file: Option<(&str, &str)>,
        env: &HashMap<String, String>,
        overrides: &Overrides,
    ) -> Result<(Config, Keyring), ConfigErrors> {
        let mut problems = Vec::new();
        let mut value = match file {
            Some((name, text)) => match text.parse::<toml::Table>() {
                Ok(table) => table,
                Err(e) => return Err(ConfigErrors(vec![format!("{name}: {e}")])),
            },
            None => toml::Table::new(),
        };
        apply_env(&mut value, env, &mut problems);
        let source = file.map_or("configuration", |(name, _)| name);
        let mut config: Config = match toml::Value::Table(value).try_into() {
            Ok(config) => config,
            Err(e) => {
                problems.push(format!("{source}: {}", e.to_string().trim()));
                return Err(ConfigErrors(problems));
            }
        };
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(url) = &overrides.redis_url {
            config.store.redis_url = url.clone();
        }
        let keyring = config.validate(env, &mut problems);
        match keyring {
            Some(keyring) if problems.is_empty() => Ok((config, keyring)),
            _ => Err(ConfigErrors(problems)),
        }
    }

    pub fn is_development(&self) -> bool {
        self.auth.mode.is_empty() || self.auth.mode == "development"
    }

    fn validate(
        &self,
        env: &HashMap<String, String>,
        problems: &mut Vec<String>,
    ) -> Option<Keyring> {
        if !matches!(self.log_format.as_str(), "pretty" | "json") {
            problems.push(format!(
                "log_format: `{}` is not `pretty` or `json`",
                self.log_format
            ));
        }
        let d = &self.dispatch;
        for (key, value, min) in [
            ("dispatch.offer_timeout_ms", d.offer_timeout_ms, 100),
            (
                "dispatch.offer_delivery_grace_ms",
                d.offer_delivery_grace_ms,
                10,
            ),
            ("dispatch.lease_ms", d.lease_ms, 100),
            (
                "dispatch.heartbeat_interval_ms",
                d.heartbeat_interval_ms,
                10,
            ),
            ("dispatch.max_wait_ms", d.max_wait_ms, 100),
            ("dispatch.retention_ms", d.retention_ms, 1_000),
            ("dispatch.wrap_up_ms", d.wrap_up_ms, 0),
        ] {
            if value < min {
                problems.push(format!("{key}: {value} is below the minimum {min}"));
            }
        }
        if let Some(url) = self.store.redis() {
            use redis::IntoConnectionInfo;
            if let Err(e) = url.into_connection_info() {
                problems.push(format!(
                    "store.redis_url: `{}` cannot be used (expected redis://[user:password@]host:port[/db]): {e}",
                    redact_url(url)
                ));
            }
        }
        let id = &self.server.replica_id;
        if id.len() > 128 || id.chars().any(|c| !is_id_char(c)) {
            problems.push(format!(
                "server.replica_id: `{id}` must be 1 to 128 of A-Z a-z 0-9 _ . : @ - (empty: <hostname>-<pid>)"
            ));
        }
        if self
            .routing
            .file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            problems.push("routing.file: empty path; leave the key out for no routing file".into());
        }
        if d.heartbeat_interval_ms >= d.lease_ms {
            problems.push(format!(
                "dispatch.heartbeat_interval_ms: {} must be below dispatch.lease_ms ({})",
                d.heartbeat_interval_ms, d.lease_ms
            ));
        }
        if self.is_development() {
            if !self.listen.ip().is_loopback() {
                problems.push(format!(
                    "listen: development mode serves loopback only, not {}; configure auth.mode = \"keys\"",
                    self.listen
                ));
            }
            return Some(Keyring::development());
        }
        if self.auth.mode != "keys" {
            problems.push(format!(
                "auth.mode: `{}` is not `development` or `keys`",
                self.auth.mode
            ));
            return None;
        }
        if self.auth.keys.is_empty() {
            problems
                .push("auth.keys: at least one key is required with auth.mode = \"keys\"".into());
            return None;
        }
        let mut secrets: Vec<(String, String)> = Vec::new();
        for (i, key) in self.auth.keys.iter().enumerate() {
            let secret = match (&key.secret, &key.secret_env) {
                (Some(s), None) => s.clone(),
                (None, Some(var)) => match env.get(var) {
                    Some(s) => s.clone(),
                    None => {
                        problems.push(format!(
                            "auth.keys[{i}].secret_env: environment variable `{var}` is not set"
                        ));
                        continue;
                    }
                },
                _ => {
                    problems.push(format!(
                        "auth.keys[{i}]: give exactly one of `secret` or `secret_env`"
                    ));
                    continue;
                }
            };
            if secret.len() < 32 {
                problems.push(format!(
                    "auth.keys[{i}]: the secret is {} bytes; at least 32 are required",
                    secret.len()
                ));
                continue;
            }
            secrets.push((key.id.clone(), secret));
        }
        let signing = if self.auth.signing_key_id.is_empty() {
            &self.auth.keys[0].id
        } else {
            &self.auth.signing_key_id
        };
        let Some((_, signing_secret)) = secrets.iter().find(|(id, _)| id == signing) else {
            problems.push(format!(
                "auth.signing_key_id: `{signing}` is not one of the usable auth.keys"
            ));
            return None;
        };
        let ring = Keyring::single(signing.clone(), signing_secret);
        Some(
            secrets
                .iter()
                .fold(ring, |ring, (id, secret)| ring.with_key(id.clone(), secret)),
        )
    }
}

/// Applies `SWITCHBOARD_*` variables onto the parsed table. Values are read
/// as TOML scalars (numbers, booleans) and fall back to strings.
fn apply_env(table: &mut toml::Table, env: &HashMap<String, String>, problems: &mut Vec<String>) {
    let mut keys: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with("SWITCHBOARD_"))
        .collect();
    keys.sort();
    for key in keys {
        let path: Vec<String> = key["SWITCHBOARD_".len()..]
            .split("__")
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) || path.len() > 2 {
            problems.push(format!(
                "{key}: expected SWITCHBOARD_<KEY> or SWITCHBOARD_<SECTION>__<KEY>"
            ));
            continue;
        }
        let raw = &env[key];
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let target = if path.len() == 2 {
            let section = table
                .entry(path[0].clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match section.as_table_mut() {
                Some(section) => section,
                None => {
                    problems.push(format!("{key}: `{}` is not a section", path[0]));
                    continue;
                }
            }
        } else {
            &mut *table
        };
        target.insert(path[path.len() - 1].clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_development_on_loopback() {
        let (config, keyring) = Config::load(None, &HashMap::new(), &Overrides::default()).unwrap();
        assert!(config.is_development());
        assert!(keyring.is_development());
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let file = "listen = \"127.0.0.1:7000\"\n[dispatch]\noffer_timeout_ms = 5000\n";
        let vars = env(&[
            ("SWITCHBOARD_DISPATCH__OFFER_TIMEOUT_MS", "7000"),
            ("SWITCHBOARD_LOG_FORMAT", "json"),
        ]);
        let flags = Overrides {
            listen: Some("127.0.0.1:7001".parse().unwrap()),
            ..Overrides::default()
        };
        let (config, _) = Config::load(Some(("a.toml", file)), &vars, &flags).unwrap();
        assert_eq!(config.dispatch.offer_timeout_ms, 7000);
        assert_eq!(config.log_format, "json");
        assert_eq!(config.listen.port(), 7001);
    }

    #[test]
    fn every_problem_is_reported_naming_the_key() {
        let file = "log_format = \"xml\"\nlisten = \"0.0.0.0:1\"\n[dispatch]\noffer_timeout_ms = 1\nlease_ms = 100\nheartbeat_interval_ms = 200\n";
        let err = Config::load(
            Some(("bad.toml", file)),
            &HashMap::new(),
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "log_format",
            "dispatch.offer_timeout_ms",
            "dispatch.heartbeat_interval_ms",
            "listen: development mode",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let err = Config::load(
            Some(("bad.toml", "nonsense_key = 1\n")),
            &HashMap::new(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nonsense_key"), "{err}");
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let text = include_str!("../../../deploy/switchboard.example.toml");
        let vars = env(&[("SB_KEY_2026_11", "0123456789abcdef0123456789abcdef")]);
        let (config, _) = Config::load(
            Some(("switchboard.example.toml", text)),
            &vars,
            &Overrides::default(),
        )
        .unwrap();
        assert!(!config.is_development());
        assert_eq!(
            config.dispatch,
            DispatchSettings::default(),
            "the example documents the defaults"
        );
        assert_eq!(
            config.store.redis(),
            None,
            "the embedded store is the default"
        );
        assert_eq!(
            config.store.redis_startup_timeout_ms,
            StoreConfig::default().redis_startup_timeout_ms
        );
    }

    #[test]
    fn the_store_is_embedded_unless_redis_is_configured() {
        let (config, _) = Config::load(None, &HashMap::new(), &Overrides::default()).unwrap();
        assert_eq!(config.store.redis(), None);

        let file = "[store]\nredis_url = \"redis://file:6379\"\n";
        let (config, _) = Config::load(
            Some(("s.toml", file)),
            &HashMap::new(),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.store.redis(), Some("redis://file:6379"));

        let vars = env(&[("SWITCHBOARD_STORE__REDIS_URL", "redis://env:6379/2")]);
        let (config, _) =
            Config::load(Some(("s.toml", file)), &vars, &Overrides::default()).unwrap();
        assert_eq!(config.store.redis(), Some("redis://env:6379/2"));

        let flags = Overrides {
            redis_url: Some("redis://flag:6379".into()),
            ..Overrides::default()
        };
        let (config, _) = Config::load(Some(("s.toml", file)), &vars, &flags).unwrap();
        assert_eq!(config.store.redis(), Some("redis://flag:6379"));
    }

    #[test]
    fn redis_rows_are_msgpack_unless_json_is_asked_for() {
        let row_format = |file: &str, vars: &[(&str, &str)]| {
            Config::load(Some(("s.toml", file)), &env(vars), &Overrides::default())
                .map(|(config, _)| config.store.redis_row_format)
        };
        assert_eq!(row_format("", &[]).unwrap(), RowFormat::Msgpack);
        let json = "[store]\nredis_row_format = \"json\"\n";
        assert_eq!(row_format(json, &[]).unwrap(), RowFormat::Json);
        let from_env = [("SWITCHBOARD_STORE__REDIS_ROW_FORMAT", "msgpack")];
        assert_eq!(row_format(json, &from_env).unwrap(), RowFormat::Msgpack);

        let err = row_format("[store]\nredis_row_format = \"xml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis_row_format"), "{err}");
        assert!(err.contains("msgpack") && err.contains("json"), "{err}");
    }

    #[test]
    fn redis_calls_are_batched_unless_turned_off() {
        let batch = |file: &str, vars: &[(&str, &str)]| {
            Config::load(Some(("s.toml", file)), &env(vars), &Overrides::default())
                .map(|(config, _)| config.store.redis_batch_calls)
        };
        assert!(batch("", &[]).unwrap());
        let off = "[store]\nredis_batch_calls = false\n";
        assert!(!batch(off, &[]).unwrap());
        let from_env = [("SWITCHBOARD_STORE__REDIS_BATCH_CALLS", "true")];
        assert!(batch(off, &from_env).unwrap());
        let err = batch("[store]\nredis_batch_calls = \"yes\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis_batch_calls"), "{err}");
    }

    #[test]
    fn a_bad_redis_url_is_a_config_error_without_its_password() {
        for bad in [
            "http://localhost:6379",
            "redis://user:hunter2@[::1",
            "localhost:6379",
            // No TLS feature in the client: refused now, not at connect.
            "rediss://user:hunter2@localhost:6379",
        ] {
            let flags = Overrides {
                redis_url: Some(bad.into()),
                ..Overrides::default()
            };
            let err = Config::load(None, &HashMap::new(), &flags).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("store.redis_url"), "{bad}: {text}");
            assert!(!text.contains("hunter2"), "{bad}: {text}");
        }
        assert_eq!(
            redact_url("redis://user:secret@db:6379/0"),
            "redis://***@db:6379/0"
        );
    }

    #[test]
    fn routing_file_comes_from_file_or_env_with_or_without_redis() {
        let (config, _) = Config::load(
            Some((
                "sb.toml",
                "[routing]\nfile = \"deploy/routing.example.toml\"\n",
            )),
            &HashMap::new(),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.routing.file.as_deref(),
            Some(std::path::Path::new("deploy/routing.example.toml"))
        );
        let (config, _) = Config::load(
            None,
            &env(&[("SWITCHBOARD_ROUTING__FILE", "/etc/switchboard/routing.toml")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.routing.file.as_deref(),
            Some(std::path::Path::new("/etc/switchboard/routing.toml"))
        );
        // With Redis too (issue 5): the file seeds the config in force there.
        let (config, _) = Config::load(
            None,
            &env(&[("SWITCHBOARD_ROUTING__FILE", "routing.toml")]),
            &Overrides {
                redis_url: Some("redis://127.0.0.1:6379".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.store.redis(), Some("redis://127.0.0.1:6379"));
        assert_eq!(
            config.routing.file.as_deref(),
            Some(std::path::Path::new("routing.toml"))
        );
        // Every other check still applies alongside.
        let err = Config::load(
            Some((
                "sb.toml",
                "[routing]\nfile = \"\"\n[dispatch]\nlease_ms = 1\n",
            )),
            &HashMap::new(),
            &Overrides {
                redis_url: Some("redis://127.0.0.1:6379".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("routing.file: empty path"), "{text}");
        assert!(text.contains("dispatch.lease_ms"), "{text}");
    }

    #[test]
    fn the_replica_id_is_configured_or_derived_from_host_and_pid() {
        let (config, _) = Config::load(
            Some(("sb.toml", "[server]\nreplica_id = \"eu-1.a\"\n")),
            &HashMap::new(),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.replica_id(), "eu-1.a");
        let (config, _) = Config::load(
            None,
            &env(&[("SWITCHBOARD_SERVER__REPLICA_ID", "pod-7")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.server.replica_id(), "pod-7");
        let derived = ServerSettings::default().replica_id();
        assert!(
            derived.ends_with(&format!("-{}", std::process::id())),
            "{derived}"
        );
        assert!(derived.chars().all(is_id_char), "{derived}");
        let err = Config::load(
            Some(("sb.toml", "[server]\nreplica_id = \"has space\"\n")),
            &HashMap::new(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("server.replica_id: `has space`"),
            "{err}"
        );
    }

    #[test]
    fn keys_mode_reads_secrets_from_env() {
        let file = "listen = \"0.0.0.0:50051\"\n[auth]\nmode = \"keys\"\n[[auth.keys]]\nid = \"k1\"\nsecret_env = \"SB_KEY\"\n";
        let err = Config::load(
            Some(("c.toml", file)),
            &HashMap::new(),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`SB_KEY` is not set"), "{err}");
        let vars = env(&[("SB_KEY", "0123456789abcdef0123456789abcdef")]);
        let (config, keyring) =
            Config::load(Some(("c.toml", file)), &vars, &Overrides::default()).unwrap();
        assert!(!config.is_development());
        assert!(!keyring.is_development());
    }
}
