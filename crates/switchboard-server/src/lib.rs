//! The Switchboard server: the gRPC edge (three services, health,
//! reflection), authentication, the event hub and the sweeper, around a
//! [`switchboard_store::Store`].
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and drive a real server in-process. With Redis, the binary
//! uses [`serve_gated`]: health also says whether this replica's config
//! version is the one in force (see [`config_version`]).

pub mod admission;
pub mod auth;
pub mod config;
pub mod config_version;
pub mod convert;
pub mod delivery;
pub mod error;
pub mod hub;
pub mod regions;
pub mod routing;
pub mod services;
pub mod shared_routing;
pub mod sweeper;
pub mod transport;

use crate::auth::Authenticator;
use crate::config_version::{ConfigGate, Verdict};
use crate::hub::Hub;
use crate::services::AppState;
use crate::services::admin::AdminApi;
use crate::services::agent::AgentApi;
use crate::services::gateway::GatewayApi;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use switchboard_auth::{Keyring, Role};
use switchboard_core::DispatchSettings;
use switchboard_proto::v1::admin_service_server::AdminServiceServer;
use switchboard_proto::v1::agent_service_server::AgentServiceServer;
use switchboard_proto::v1::gateway_service_server::GatewayServiceServer;
use switchboard_store::Store;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

/// What [`serve`] needs besides the listener.
pub struct ServerOptions {
    pub store: Arc<dyn Store>,
    pub keyring: Keyring,
    pub settings: DispatchSettings,
    pub dev_mode: bool,
    pub shutdown_grace: Duration,
    /// The routing file in force ([`routing::Routing::disabled`] for the
    /// built-in rules). With a file, SIGHUP reloads it.
    pub routing: Arc<routing::Routing>,
    /// With Redis: the routing config in force for every replica, which
    /// `routing` follows (see [`shared_routing`]); reloads go through it.
    pub shared_routing: Option<Arc<shared_routing::SharedRouting>>,
    /// This replica's id (`server.replica_id`), as GetRouting reports it.
    pub replica_id: String,
    /// New hand-offs in progress beyond which RequestAgent is refused with
    /// RESOURCE_EXHAUSTED (`server.max_pending_handoffs`; 0: no limit).
    pub max_pending_handoffs: usize,
    /// Runtime lag (ms) beyond which RequestAgent is refused
    /// (`server.max_runtime_lag_ms`; 0: never).
    pub max_runtime_lag_ms: u64,
}

/// Serves until `shutdown` resolves, then drains: health goes NOT_SERVING,
/// agent streams are told to reconnect elsewhere, in-flight calls finish,
/// background tasks stop, all within the grace period.
pub async fn serve(
    listener: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_gated(listener, options, None, shutdown).await
}

/// The health of every service and of the server as a whole (`""`), moved
/// together: SERVING while this replica's dispatch config version is in
/// force and it runs the routing config in force. Once shutdown began
/// nothing sets it back to SERVING.
struct Health {
    reporter: tonic_health::server::HealthReporter,
    /// A tokio mutex, held across the reporter's `.await`s, so a check that
    /// decided "serving" cannot land after shutdown set NOT_SERVING.
    state: tokio::sync::Mutex<HealthState>,
}

struct HealthState {
    stopping: bool,
    dispatch_in_force: bool,
    routing_in_step: bool,
}

impl Health {
    async fn set_dispatch(&self, in_force: bool) {
        let mut state = self.state.lock().await;
        state.dispatch_in_force = in_force;
        self.publish(&state).await;
    }

    async fn set_routing(&self, in_step: bool) {
        let mut state = self.state.lock().await;
        state.routing_in_step = in_step;
        self.publish(&state).await;
    }

    async fn stop(&self) {
        let mut state = self.state.lock().await;
        state.stopping = true;
        self.apply(false).await;
    }

    async fn publish(&self, state: &HealthState) {
        if !state.stopping {
            self.apply(state.dispatch_in_force && state.routing_in_step)
                .await;
        }
    }

    async fn apply(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        let reporter = &self.reporter;
        reporter
            .set_service_status(service_name::<AgentServiceServer<AgentApi>>(), status)
            .await;
        reporter
            .set_service_status(service_name::<GatewayServiceServer<GatewayApi>>(), status)
            .await;
        reporter
            .set_service_status(service_name::<AdminServiceServer<AdminApi>>(), status)
            .await;
        reporter.set_service_status("", status).await;
    }
}

/// How long a connection may stay silent before the server pings it: one
/// and a half heartbeat intervals (15 s by default), at least 1 s. hyper
/// pings only a connection from which no frame arrived for that long, so a
/// healthy app, which heartbeats every interval on the connection that
/// carries its stream, is never pinged; a dead one is noticed within this
/// plus the 5 s ping timeout, before its lease (3 intervals by default)
/// runs out. Pinging at exactly the heartbeat interval cost, with 10,000
/// agents, up to 1,000 pings and acks a second whenever a heartbeat came a
/// little late (docs/performance.md).
pub fn keepalive_interval(settings: &DispatchSettings) -> Duration {
    let ms = settings.heartbeat_interval_ms.saturating_mul(3) / 2;
    Duration::from_millis(u64::try_from(ms).unwrap_or(0).max(1_000))
}

fn service_name<S: tonic::server::NamedService>() -> &'static str {
    S::NAME
}

/// [`serve`], with health also following `gate`: NOT_SERVING while another
/// config version is in force for the deployment (checked before serving,
/// then every [`config_version::CHECK_INTERVAL`]).
pub async fn serve_gated(
    listener: TcpListener,
    options: ServerOptions,
    gate: Option<ConfigGate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let hub = Arc::new(Hub::new(options.store.clone()));
    tracker.spawn(
        hub.clone()
            .run(options.store.subscribe(), cancel.child_token()),
    );
    tracker.spawn(sweeper::run(options.store.clone(), cancel.child_token()));

    let locations = Arc::new(regions::AgentLocations::default());
    tracker.spawn(regions::follow_routing(
        options.routing.clone(),
        options.store.clone(),
        hub.clone(),
        locations.clone(),
        cancel.child_token(),
    ));
    let admission =
        admission::Admission::new(options.max_pending_handoffs, options.max_runtime_lag_ms);
    let delivery_grace =
        Duration::from_millis(u64::try_from(options.settings.offer_delivery_grace_ms).unwrap_or(0));
    tracker.spawn(admission.clone().monitor_lag(
        Some(options.store.clone()),
        Some(admission::DeliveryPause::new(delivery_grace)),
        cancel.child_token(),
    ));
    let (deliveries, sending) =
        delivery::DeliveryMarks::start(options.store.clone(), cancel.child_token());
    tracker.spawn(sending);
    let state = AppState {
        store: options.store.clone(),
        deliveries,
        hub,
        settings: options.settings.clone(),
        routing: options.routing.clone(),
        shared_routing: options.shared_routing.clone(),
        replica_id: options.replica_id.clone(),
        admission: admission.clone(),
        locations,
        dev_mode: options.dev_mode,
        shutdown: cancel.clone(),
        tracker: tracker.clone(),
    };
    if options.routing.path().is_some() {
        tracker.spawn(routing::reload_on_sighup(
            options.routing.clone(),
            options.shared_routing.clone(),
            cancel.child_token(),
        ));
    }
    let keyring = Arc::new(options.keyring);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let routing_in_step = options
        .shared_routing
        .as_ref()
        .is_none_or(|shared| *shared.in_step().borrow());
    let health = Arc::new(Health {
        reporter: health_reporter,
        state: tokio::sync::Mutex::new(HealthState {
            stopping: false,
            dispatch_in_force: true,
            routing_in_step,
        }),
    });
    if let Some(shared) = &options.shared_routing {
        tracker.spawn(shared.clone().follow(cancel.child_token()));
        let mut in_step = shared.in_step();
        let health = health.clone();
        let cancel = cancel.child_token();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = in_step.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let value = *in_step.borrow_and_update();
                        health.set_routing(value).await;
                    }
                }
            }
        });
    }
    let dispatch_in_force = match gate {
        None => true,
        Some(mut gate) => {
            // Before serving, so a replica whose version is not in force is
            // never SERVING, not even for a moment. Unreachable now: serve
            // (Redis was reached a moment ago) and let the checks decide.
            let verdict = gate.check().await.unwrap_or_else(|e| {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot read the config version in force; checking again shortly"
                );
                Verdict::InForce
            });
            gate.log(&verdict);
            let serving = verdict == Verdict::InForce;
            let health = health.clone();
            tracker.spawn(gate.follow(verdict, cancel.child_token(), move |serving| {
                let health = health.clone();
                async move { health.set_dispatch(serving).await }
            }));
            serving
        }
    };
    health.set_dispatch(dispatch_in_force).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let agent = AgentServiceServer::with_interceptor(
        AgentApi::new(state.clone()),
        Authenticator::new(keyring.clone(), Role::Agent),
    );
    let gateway = GatewayServiceServer::with_interceptor(
        GatewayApi::new(state.clone()),
        Authenticator::new(keyring.clone(), Role::Gateway),
    );
    let admin = AdminServiceServer::with_interceptor(
        AdminApi::new(state.clone()),
        Authenticator::new(keyring, Role::Admin),
    );

    // Nagle's algorithm would hold small replies for a delayed ACK; each
    // reply goes out in one write instead (see `transport`). The socket
    // options are set here: the builder's apply only to a listener tonic
    // binds itself.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
        .map(|accepted| accepted.map(transport::Coalesced::new));

    let drain_signal = cancel.clone();
    let on_shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, telling streams to reconnect");
        health.stop().await;
        // Streams end (with a reconnect notice), so the server can drain.
        drain_signal.cancel();
    };

    let server = tonic::transport::Server::builder()
        // Dead agent connections are noticed through HTTP/2 keepalive.
        .http2_keepalive_interval(Some(keepalive_interval(&options.settings)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent)
        .add_service(gateway)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, on_shutdown);

    let grace = options.shutdown_grace;
    let draining = cancel.clone();
    // In-flight calls get the grace period once shutdown starts; no longer.
    let served = tokio::select! {
        served = server => served,
        _ = async move { draining.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "connections still open after the grace period; closing");
            Ok(())
        }
    };
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "background tasks did not stop within the grace period"
        );
    }
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_waits_longer_than_a_heartbeat_and_less_than_a_lease() {
        let settings = DispatchSettings::default();
        let interval = keepalive_interval(&settings);
        assert_eq!(interval, Duration::from_secs(15));
        let heartbeat = Duration::from_millis(settings.heartbeat_interval_ms as u64);
        let lease = Duration::from_millis(settings.lease_ms as u64);
        assert!(interval > heartbeat);
        assert!(interval + Duration::from_secs(5) < lease);
        let tiny = DispatchSettings {
            heartbeat_interval_ms: 10,
            ..DispatchSettings::default()
        };
        assert_eq!(keepalive_interval(&tiny), Duration::from_secs(1));
    }
}
