//! Helpers for tests that run several real `switchboard` replicas on one
//! harness-started `redis-server`: a replica with given settings, clients for
//! any replica, an agent app's heartbeat loop, and the pool's event log read
//! straight from Redis (what every replica's feed reads).

use crate::*;
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard_core::Event;

/// The pool every test here uses (the development tokens' pool).
pub const POOL: &str = "default";

/// Timings for fault tests: 1 s leases and 500 ms offers, so a lapsed lease
/// or a timed-out offer shows within about a second.
pub fn fault_settings() -> DispatchSettings {
    DispatchSettings {
        offer_timeout_ms: 500,
        offer_delivery_grace_ms: 300,
        lease_ms: 1_000,
        heartbeat_interval_ms: 100,
        max_wait_ms: 60_000,
        missed_offers_before_away: 3,
        retention_ms: 60_000,
        wrap_up_ms: 0,
    }
}

/// `settings` as the `SWITCHBOARD_DISPATCH__*` variables the binary reads.
pub fn settings_env(settings: &DispatchSettings) -> Vec<(String, String)> {
    let s = settings;
    [
        ("OFFER_TIMEOUT_MS", s.offer_timeout_ms.to_string()),
        (
            "OFFER_DELIVERY_GRACE_MS",
            s.offer_delivery_grace_ms.to_string(),
        ),
        ("LEASE_MS", s.lease_ms.to_string()),
        ("HEARTBEAT_INTERVAL_MS", s.heartbeat_interval_ms.to_string()),
        ("MAX_WAIT_MS", s.max_wait_ms.to_string()),
        (
            "MISSED_OFFERS_BEFORE_AWAY",
            s.missed_offers_before_away.to_string(),
        ),
        ("RETENTION_MS", s.retention_ms.to_string()),
        ("WRAP_UP_MS", s.wrap_up_ms.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (format!("SWITCHBOARD_DISPATCH__{key}"), value))
    .collect()
}

/// A real `switchboard serve --redis <url>` with `settings`, plus `extra`
/// environment (e.g. `SWITCHBOARD_STORE__TEST_CLOCK_OFFSET_MS`).
pub async fn start_replica(
    redis_url: &str,
    settings: &DispatchSettings,
    extra: &[(&str, &str)],
) -> ServerProcess {
    let mut env = settings_env(settings);
    env.push(("RUST_LOG".into(), "info".into()));
    env.push(("SWITCHBOARD_LOG_FORMAT".into(), "json".into()));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ServerProcess::start(&["--redis", redis_url], &env).await
}

/// A replica named `id` with [`fast_settings`] and the routing file at
/// `file`, SERVING. The first replica on a Redis puts its file in force;
/// later ones run the config in force, whatever their file says.
pub async fn routing_replica(
    redis: &switchboard_testkit::RedisServer,
    id: &str,
    file: &std::path::Path,
) -> ServerProcess {
    let file = file.display().to_string();
    start_replica(
        &redis.url(),
        &fast_settings(),
        &[
            ("SWITCHBOARD_ROUTING__FILE", &file),
            ("SWITCHBOARD_SERVER__REPLICA_ID", id),
        ],
    )
    .await
}

/// Like [`start_replica`], but returns as soon as the replica answers health
/// checks, SERVING or not (a replica whose config version is not the one in
/// force never turns SERVING).
pub async fn launch_replica(
    redis_url: &str,
    settings: &DispatchSettings,
    extra: &[(&str, &str)],
) -> ServerProcess {
    let mut env = settings_env(settings);
    env.push(("RUST_LOG".into(), "info".into()));
    env.push(("SWITCHBOARD_LOG_FORMAT".into(), "json".into()));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let process = ServerProcess::spawn(&["--redis", redis_url], env);
    let deadline = tokio::time::Instant::now() + WAIT;
    while health_statuses(&process.url).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica at {} not answering health checks within {WAIT:?}; log: {}",
            process.url,
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process
}

/// The services whose health a replica reports, `""` being the whole server.
pub const HEALTH_SERVICES: [&str; 4] = [
    "",
    "switchboard.v1.AgentService",
    "switchboard.v1.GatewayService",
    "switchboard.v1.AdminService",
];

/// Whether the replica at `url` reports SERVING, for each of
/// [`HEALTH_SERVICES`]; `None` while it does not answer.
pub async fn health_statuses(url: &str) -> Option<Vec<bool>> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .ok()?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut statuses = Vec::new();
    for service in HEALTH_SERVICES {
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        };
        let status = health.check(request).await.ok()?.into_inner().status;
        statuses.push(status == ServingStatus::Serving as i32);
    }
    Some(statuses)
}

/// Waits until the replica at `url` reports `serving` for the server and
/// every service alike; panics with what it reports after `within`.
pub async fn wait_health(url: &str, serving: bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let statuses = health_statuses(url).await;
        if statuses
            .as_ref()
            .is_some_and(|s| s.iter().all(|status| *status == serving))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica at {url} not {} within {within:?}: {statuses:?} for {HEALTH_SERVICES:?}",
            if serving { "SERVING" } else { "NOT_SERVING" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `switchboard activate-config --redis <url>` with `settings` (as the
/// replicas get them, through the environment): its exit code and output.
pub async fn activate_config(
    redis_url: &str,
    settings: &DispatchSettings,
    extra_args: &[&str],
) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(binary("switchboard"))
            .args(["activate-config", "--redis", redis_url])
            .args(extra_args)
            .envs(settings_env(settings))
            .output(),
    )
    .await
    .expect("activate-config returns")
    .unwrap()
}

fn token(role: Role, agent: Option<&str>) -> String {
    mint(&Keyring::development(), role, POOL, agent, 0)
}

/// A gateway client of the replica at `url`.
pub async fn gateway_at(url: &str) -> GatewayServiceClient<Authed> {
    GatewayServiceClient::with_interceptor(connect(url).await, bearer(&token(Role::Gateway, None)))
}

/// An admin client of the replica at `url`.
pub async fn admin_at(url: &str) -> AdminServiceClient<Authed> {
    AdminServiceClient::with_interceptor(connect(url).await, bearer(&token(Role::Admin, None)))
}

/// Agent `agent`'s client of the replica at `url`.
pub async fn agent_client_at(url: &str, agent: &str) -> AgentServiceClient<Authed> {
    AgentServiceClient::with_interceptor(
        connect(url).await,
        bearer(&token(Role::Agent, Some(agent))),
    )
}

impl ServerProcess {
    pub async fn gateway(&self) -> GatewayServiceClient<Authed> {
        gateway_at(&self.url).await
    }

    pub async fn admin(&self) -> AdminServiceClient<Authed> {
        admin_at(&self.url).await
    }

    pub async fn agent_client(&self, agent: &str) -> AgentServiceClient<Authed> {
        agent_client_at(&self.url, agent).await
    }

    /// An agent app on this replica: online with `skills`, capacity 1,
    /// stream subscribed and its snapshot read.
    pub async fn agent(&self, id: &str, skills: &[(&str, u32)]) -> AgentApp {
        AgentApp::online(id, self.agent_client(id).await, skills).await
    }

    /// Whether the process is still running (it did not crash or panic).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// An agent app's heartbeat loop, stopped on drop. Failures are counted,
/// never fatal: the app keeps trying, as a real one on a mobile network.
pub struct Heartbeats {
    task: tokio::task::JoinHandle<()>,
    /// The lease expiry from the last successful heartbeat (ms since epoch).
    pub lease_expires_at_ms: Arc<AtomicU64>,
    /// Successful heartbeats so far.
    pub beats: Arc<AtomicU64>,
}

impl Heartbeats {
    pub fn start(mut client: AgentServiceClient<Authed>, every: Duration) -> Heartbeats {
        let lease_expires_at_ms = Arc::new(AtomicU64::new(0));
        let beats = Arc::new(AtomicU64::new(0));
        let (lease, count) = (lease_expires_at_ms.clone(), beats.clone());
        let task = tokio::spawn(async move {
            loop {
                let call = client.heartbeat(HeartbeatRequest::default());
                if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                    lease.store(response.into_inner().lease_expires_at_ms, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(every).await;
            }
        });
        Heartbeats {
            task,
            lease_expires_at_ms,
            beats,
        }
    }

    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::SeqCst)
    }

    /// Waits until `n` more heartbeats have succeeded.
    pub async fn wait_beats(&self, n: u64, within: Duration) {
        let target = self.beats() + n;
        let deadline = tokio::time::Instant::now() + within;
        while self.beats() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} heartbeats succeeded within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every event of [`POOL`] in Redis's event stream, oldest first.
pub async fn pool_events(redis: &switchboard_testkit::RedisServer) -> Vec<Event> {
    let mut connection = redis.connection().await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("sb:{{{POOL}}}:events"))
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| {
            let raw: String = entry.get("event").expect("a stream entry with an event");
            serde_json::from_str(&raw).unwrap()
        })
        .collect()
}

/// How many events of `kind` (see `EventKind::name`) the log holds for
/// `conversation`.
pub fn count_events(events: &[Event], conversation: &str, kind: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e.conversation_id()
                .is_some_and(|c| c.as_str() == conversation)
        })
        .filter(|e| e.kind.name() == kind)
        .count()
}

/// GetConversation, retried briefly on UNAVAILABLE.
pub async fn get_conversation(
    gateway: &mut GatewayServiceClient<Authed>,
    id: &str,
) -> Result<Conversation, Status> {
    let response = gateway
        .get_conversation(GetConversationRequest {
            conversation_id: id.into(),
        })
        .await?;
    Ok(response.into_inner().conversation.unwrap())
}

/// Polls GetConversation (through `gateway`) until `done` holds for the view,
/// returning it; panics with the last view after `within`.
pub async fn wait_conversation(
    gateway: &mut GatewayServiceClient<Authed>,
    id: &str,
    within: Duration,
    done: impl Fn(&Conversation) -> bool,
) -> Conversation {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let view = get_conversation(gateway, id).await;
        if let Ok(view) = &view
            && done(view)
        {
            return view.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "conversation {id} not as expected within {within:?}; last: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn is_assigned(view: &Conversation) -> bool {
    view.state == ConversationState::Assigned as i32
}
