//! Connections and calls: channels to the server, the bearer token on every
//! call, and the one helper that times a call and bounds it.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use switchboard_auth::{Keyring, Role};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;

/// A call without an answer after this long counts as DEADLINE_EXCEEDED.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub type Authorized = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each call.
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

/// Signs the tokens the simulated agents and gateway use: the public
/// development key by default (a server started without configuration
/// accepts it), or a key given with `--token-key-id/--token-secret`.
pub struct TokenMint {
    keyring: Keyring,
    pool: String,
    lifetime_secs: i64,
}

impl TokenMint {
    pub fn new(secret: Option<(String, String)>, pool: String, lifetime: Duration) -> TokenMint {
        let keyring = match secret {
            Some((key_id, secret)) => Keyring::single(key_id, secret),
            None => Keyring::development(),
        };
        TokenMint {
            keyring,
            pool,
            lifetime_secs: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
        }
    }

    pub fn bearer(&self, role: Role, agent_id: Option<&str>) -> anyhow::Result<Bearer> {
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock reads before 1970")?
            .as_secs();
        let token = self
            .keyring
            .mint(
                role,
                &self.pool,
                agent_id,
                i64::try_from(now_secs).unwrap_or(i64::MAX / 2),
                self.lifetime_secs,
                0,
            )
            .with_context(|| format!("cannot sign a {role} token for pool `{}`", self.pool))?;
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .context("a signed token is not a valid header value")?;
        Ok(Bearer(value))
    }
}

/// One HTTP/2 connection (a tonic channel connects once, eagerly).
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    if !url.starts_with("http://") {
        bail!("`{url}` is not a plain http:// URL (e.g. http://127.0.0.1:50051)");
    }
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("`{url}` is not a valid URL"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Opens `count` connections, `parallel` at a time.
pub async fn connect_many(url: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    stream::iter(0..count)
        .map(|_| connect(url))
        .buffered(64)
        .try_collect()
        .await
}

/// Runs one call with the time limit and records its latency (successful
/// calls only: a refusal's latency says little). The caller classifies the
/// error, because only it knows whether the refusal was provoked.
pub async fn timed<T>(
    metrics: &Metrics,
    method: &'static str,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Status::deadline_exceeded(
            "no answer within the call timeout",
        )),
    };
    if result.is_ok() {
        metrics.record_rpc(method, started.elapsed());
    }
    result.map(Response::into_inner)
}
