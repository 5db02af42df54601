//! Test support for the end-to-end tests: a real switchboard server on a
//! free port (in-process through [`switchboard_server::serve`], or the real
//! binary), and real generated gRPC clients carrying real tokens. Every test
//! goes through these helpers, so an API change touches one place.

// Test support: failures should panic with their message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod replicas;
pub mod routing_scenarios;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use switchboard_auth::{Keyring, Role};
use switchboard_core::DispatchSettings;
use switchboard_proto::v1 as pb;
use switchboard_proto::v1::agent_event::Kind;
use switchboard_server::routing::Routing;
use switchboard_server::{ServerOptions, serve};
use switchboard_store::{MemoryStore, SystemClock};
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

pub use pb::*;
pub use switchboard_proto::v1::admin_service_client::AdminServiceClient;
pub use switchboard_proto::v1::agent_service_client::AgentServiceClient;
pub use switchboard_proto::v1::gateway_service_client::GatewayServiceClient;

/// How long a test waits for an event it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// Short timings so time-dependent tests take about a second each.
pub fn fast_settings() -> DispatchSettings {
    DispatchSettings {
        offer_timeout_ms: 600,
        offer_delivery_grace_ms: 300,
        lease_ms: 60_000,
        heartbeat_interval_ms: 200,
        max_wait_ms: 60_000,
        missed_offers_before_away: 3,
        retention_ms: 60_000,
        wrap_up_ms: 0,
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A switchboard server running in this process on a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub keyring: Keyring,
    pub pool: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Development mode, in-memory store, real clock.
    pub async fn start(settings: DispatchSettings) -> TestServer {
        TestServer::start_with(settings, Routing::disabled()).await
    }

    /// [`TestServer::start`] with the routing file at `path` in force
    /// (panics with every problem if it is invalid). Reload it through
    /// `AdminService.ReloadRouting`.
    pub async fn start_with_routing(
        settings: DispatchSettings,
        path: &std::path::Path,
    ) -> TestServer {
        let routing = Routing::load(path)
            .unwrap_or_else(|errors| panic!("invalid routing file: {}", errors.join("\n")));
        TestServer::start_with(settings, routing).await
    }

    async fn start_with(settings: DispatchSettings, routing: Arc<Routing>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(MemoryStore::new(
            settings.clone(),
            Arc::new(SystemClock::default()),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServerOptions {
            store,
            keyring: Keyring::development(),
            settings,
            dev_mode: true,
            shutdown_grace: Duration::from_secs(2),
            routing,
            shared_routing: None,
            replica_id: "test-server".into(),
            max_pending_handoffs: 0,
            max_runtime_lag_ms: 0,
        };
        let task = tokio::spawn(serve(listener, options, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            keyring: Keyring::development(),
            pool: "default".into(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.url()).await
    }

    pub fn token(&self, role: Role, agent: Option<&str>) -> String {
        mint(&self.keyring, role, &self.pool, agent, 0)
    }

    pub async fn gateway(&self) -> GatewayServiceClient<Authed> {
        GatewayServiceClient::with_interceptor(
            self.channel().await,
            bearer(&self.token(Role::Gateway, None)),
        )
    }

    pub async fn admin(&self) -> AdminServiceClient<Authed> {
        AdminServiceClient::with_interceptor(
            self.channel().await,
            bearer(&self.token(Role::Admin, None)),
        )
    }

    pub async fn agent_client(&self, agent: &str) -> AgentServiceClient<Authed> {
        AgentServiceClient::with_interceptor(
            self.channel().await,
            bearer(&self.token(Role::Agent, Some(agent))),
        )
    }

    /// An agent app: online with `skills` in English, capacity 1, stream
    /// subscribed and its snapshot read.
    pub async fn agent(&self, id: &str, skills: &[(&str, u32)]) -> AgentApp {
        let client = self.agent_client(id).await;
        AgentApp::online(id, client, skills).await
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn mint(keyring: &Keyring, role: Role, pool: &str, agent: Option<&str>, epoch: u64) -> String {
    keyring
        .mint(
            role,
            pool,
            agent,
            chrono::Utc::now().timestamp(),
            3_600,
            epoch,
        )
        .unwrap()
}

pub fn bearer(token: &str) -> Bearer {
    Bearer(format!("Bearer {token}").parse().unwrap())
}

/// Connects, retrying briefly while the server starts (no fixed sleeps).
pub async fn connect(url: &str) -> Channel {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("cannot connect to {url}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A simulated agent app: its client and its event stream, dropping
/// (conversation, seq) pairs already seen as a real app must.
pub struct AgentApp {
    pub id: String,
    pub client: AgentServiceClient<Authed>,
    pub events: Streaming<AgentEvent>,
    pub snapshot: AgentSnapshot,
    seen: HashSet<(String, u64)>,
}

impl AgentApp {
    pub async fn online(
        id: &str,
        client: AgentServiceClient<Authed>,
        skills: &[(&str, u32)],
    ) -> AgentApp {
        AgentApp::online_at(id, client, skills, None).await
    }

    /// [`AgentApp::online`] at `location` (none: the agent has no location).
    pub async fn online_at(
        id: &str,
        mut client: AgentServiceClient<Authed>,
        skills: &[(&str, u32)],
        location: Option<Location>,
    ) -> AgentApp {
        client
            .go_online(GoOnlineRequest {
                skills: skills
                    .iter()
                    .map(|(n, l)| Skill {
                        name: (*n).into(),
                        level: *l,
                    })
                    .collect(),
                languages: vec!["en".into()],
                capacity: 1,
                location,
            })
            .await
            .unwrap();
        Self::subscribe(id, client).await
    }

    pub async fn subscribe(id: &str, mut client: AgentServiceClient<Authed>) -> AgentApp {
        let mut events = client
            .subscribe(SubscribeRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(WAIT, events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(Kind::Snapshot(snapshot)) = first.kind else {
            panic!("first event is not a snapshot: {first:?}")
        };
        let mut seen = HashSet::new();
        for offer in &snapshot.offers {
            let c = offer.conversation.as_ref().unwrap();
            seen.insert((c.conversation_id.clone(), c.seq));
        }
        AgentApp {
            id: id.into(),
            client,
            events,
            snapshot,
            seen,
        }
    }

    /// The next event not seen before, or `None` after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Kind> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = match tokio::time::timeout(remaining, self.events.message()).await {
                Err(_) => return None,
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => panic!("agent {} stream failed: {status}", self.id),
            };
            if event.seq > 0 && !self.seen.insert((event.conversation_id.clone(), event.seq)) {
                continue;
            }
            return event.kind;
        }
    }

    /// The next event other than a notice within `wait`, if any. Agent
    /// notices (online, status changes) carry no sequence number and may
    /// reach a stream after its snapshot when the replica's feed is behind
    /// (with Redis it reads them back from the pool's stream); a check that
    /// nothing happened to this agent's work skips them.
    pub async fn next_work_within(&mut self, wait: Duration) -> Option<Kind> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(remaining).await {
                Some(Kind::Notice(_)) => continue,
                other => return other,
            }
        }
    }

    pub async fn next(&mut self) -> Kind {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("agent {} got no event within {WAIT:?}", self.id))
    }

    /// Skips notices and news of earlier conversations until an offer
    /// arrives; a revoked offer is a failure.
    pub async fn expect_offer(&mut self) -> Offer {
        loop {
            match self.next().await {
                Kind::Offer(offer) => return offer,
                Kind::Notice(_) | Kind::Assignment(_) | Kind::ConversationEnded(_) => continue,
                other => panic!("agent {} expected an offer, got {other:?}", self.id),
            }
        }
    }

    /// The next offer within `wait`, skipping notices and news of earlier
    /// conversations; `None` if none came (a revoked offer is a failure).
    pub async fn offer_within(&mut self, wait: Duration) -> Option<Offer> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(remaining).await? {
                Kind::Offer(offer) => return Some(offer),
                Kind::Notice(_) | Kind::Assignment(_) | Kind::ConversationEnded(_) => continue,
                other => panic!(
                    "agent {} expected an offer or nothing, got {other:?}",
                    self.id
                ),
            }
        }
    }

    pub async fn accept(&mut self, offer: &Offer) -> Result<Conversation, Status> {
        let response = self
            .client
            .accept_offer(AcceptOfferRequest {
                offer_id: offer.offer_id.clone(),
            })
            .await?;
        Ok(response.into_inner().conversation.unwrap())
    }

    pub async fn decline(&mut self, offer: &Offer) -> Result<(), Status> {
        self.client
            .decline_offer(DeclineOfferRequest {
                offer_id: offer.offer_id.clone(),
                reason: "busy".into(),
            })
            .await
            .map(|_| ())
    }

    pub async fn complete(&mut self, conversation_id: &str) -> Result<Conversation, Status> {
        let response = self
            .client
            .complete_conversation(CompleteConversationRequest {
                conversation_id: conversation_id.into(),
                disposition: "resolved".into(),
            })
            .await?;
        Ok(response.into_inner().conversation.unwrap())
    }
}

/// A hand-off request with sensible defaults.
pub fn handoff(id: &str, skill: &str, level: u32) -> RequestAgentRequest {
    RequestAgentRequest {
        conversation_id: id.into(),
        customer_id: "customer-42".into(),
        language: "en".into(),
        category: "billing".into(),
        required_skills: vec![Skill {
            name: skill.into(),
            level,
        }],
        priority: 1,
        context: Some(HandoffContext {
            summary: "double charge on invoice".into(),
            attributes: Default::default(),
        }),
        customer_asked_for_human: true,
        chat_reference: format!("chat://secret/{id}"),
        preferred_agent_id: String::new(),
        customer_location: None,
        region: String::new(),
    }
}

/// Reads a watch stream until an event of `kind`, returning it.
pub async fn watch_until(
    stream: &mut Streaming<ConversationEvent>,
    kind: &str,
) -> ConversationEvent {
    loop {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no `{kind}` event within {WAIT:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("watch ended before `{kind}`"));
        if event.kind == kind {
            return event;
        }
    }
}

/// The workspace's built binary `name` (built by `cargo build --bins`, as
/// scripts/test does before the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `switchboard` binary, killed on drop. Its stderr (the log) is
/// read all along, so a chatty server never blocks on a full pipe, and kept
/// for [`ServerProcess::log`].
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub url: String,
    log: Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let process = ServerProcess::spawn(args, env.iter().copied());
        process.wait_serving().await;
        process
    }

    /// Starts `switchboard serve` on a free port with `args` and `env`,
    /// collecting its log, without waiting for it to serve.
    pub fn spawn<K, V>(args: &[&str], env: impl IntoIterator<Item = (K, V)>) -> ServerProcess
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = tokio::process::Command::new(binary("switchboard"));
        command
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .args(args)
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.kill_on_drop(true).spawn().unwrap();
        let url = format!("http://{listen}");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        ServerProcess { child, url, log }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Kills the server now (SIGKILL), as a crash would, and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits until the standard health service answers SERVING.
    pub async fn wait_serving(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(channel) = Endpoint::from_shared(self.url.clone())
                .unwrap()
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if let Ok(response) = health.check(request).await
                    && response.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server at {} not serving within {WAIT:?}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM (through `kill(1)`: the workspace forbids unsafe code).
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -TERM {pid} failed");
        }
    }
}
