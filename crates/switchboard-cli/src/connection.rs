//! The connection to the server: one channel, bearer tokens, and the one
//! place where gRPC failures become the CLI's error messages.
//!
//! Every client sbctl builds goes through [`Server`], so the messages for
//! "cannot reach the server" and "token refused" are worded once, and every
//! unary call gets the same time limit.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use switchboard_auth::{Keyring, Role};
use switchboard_proto::code_name;
use switchboard_proto::v1::admin_service_client::AdminServiceClient;
use switchboard_proto::v1::agent_service_client::AgentServiceClient;
use switchboard_proto::v1::gateway_service_client::GatewayServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// How long sbctl waits for the TCP and HTTP/2 handshake before saying the
/// server cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one unary call may take. Admin calls read in-memory or Redis
/// state, so anything slower than this means the server is in trouble and
/// the operator is better served by an error than by a hung terminal.
pub const UNARY_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the tokens sbctl mints for itself stay valid. One hour covers
/// any single command and a long demo; nothing is written to disk.
const MINTED_TOKEN_LIFETIME_SECS: i64 = 3600;

/// A channel wrapped with the bearer token of one caller.
pub type AuthenticatedChannel = InterceptedService<Channel, BearerToken>;

/// The `authorization: Bearer <token>` header, added to every call.
///
/// Debug output never shows the token: tokens are secrets.
#[derive(Clone)]
pub struct BearerToken {
    header_value: MetadataValue<Ascii>,
}

impl BearerToken {
    /// Wraps a token given on the command line or in `SBCTL_TOKEN`.
    pub fn from_token(token: &str) -> anyhow::Result<Self> {
        let token = token.trim();
        if token.is_empty() {
            bail!("the token is empty (check --token or SBCTL_TOKEN)");
        }
        // Tokens are base64url with dots; anything else is a copy-and-paste
        // accident. The message deliberately does not quote the token.
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            bail!(
                "the token contains spaces or non-ASCII characters (check --token or SBCTL_TOKEN)"
            );
        }
        // The error deliberately does not quote the token.
        let mut header_value =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                anyhow!("the token contains characters that cannot go in a gRPC header")
            })?;
        // Keeps the value out of HTTP/2 header compression tables.
        header_value.set_sensitive(true);
        Ok(BearerToken { header_value })
    }

    /// Mints a development token signed with the public development secret,
    /// which a server in development mode accepts.
    pub fn mint_development(
        role: Role,
        pool: &str,
        agent_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        let token = Keyring::development()
            .mint(
                role,
                pool,
                agent_id,
                unix_now_secs()?,
                MINTED_TOKEN_LIFETIME_SECS,
                0,
            )
            .with_context(|| format!("cannot mint a development {role} token for pool `{pool}`"))?;
        BearerToken::from_token(&token)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("BearerToken(<redacted>)")
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header_value.clone());
        Ok(request)
    }
}

/// A connected server: the channel every client shares, and its URL for
/// error messages.
#[derive(Clone, Debug)]
pub struct Server {
    url: String,
    channel: Channel,
}

impl Server {
    /// Connects eagerly, so an unreachable server is reported before any
    /// work starts (a lazy channel would fail on the first call instead,
    /// possibly halfway through the demo).
    pub async fn connect(url: &str) -> anyhow::Result<Server> {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            bail!(
                "`{url}` is not a valid server URL: it must start with http://, e.g. http://127.0.0.1:50051"
            );
        }
        if url.starts_with("https://") {
            // The workspace builds tonic without a TLS backend.
            bail!(
                "cannot reach the server at {url}: this build of sbctl speaks plain http:// only, not TLS"
            );
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| {
                format!("`{url}` is not a valid server URL (expected e.g. http://127.0.0.1:50051)")
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // HTTP/2 keepalive is off by default in tonic; the demo holds
            // long-lived streams and should notice a dead server.
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|error| {
            anyhow!(
                "cannot reach the server at {url}: {}",
                error_chain_text(&error.to_string(), error.source())
            )
        })?;
        Ok(Server {
            url: url.to_owned(),
            channel,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn admin_client(&self, token: &BearerToken) -> AdminServiceClient<AuthenticatedChannel> {
        AdminServiceClient::with_interceptor(self.channel.clone(), token.clone())
    }

    pub fn agent_client(&self, token: &BearerToken) -> AgentServiceClient<AuthenticatedChannel> {
        AgentServiceClient::with_interceptor(self.channel.clone(), token.clone())
    }

    pub fn gateway_client(
        &self,
        token: &BearerToken,
    ) -> GatewayServiceClient<AuthenticatedChannel> {
        GatewayServiceClient::with_interceptor(self.channel.clone(), token.clone())
    }

    /// Runs one call (unary, or the opening of a stream) with the unary time
    /// limit, turning a failure into the CLI's wording. `operation` names
    /// the call in the message, e.g. "list agents".
    pub async fn call<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(UNARY_CALL_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.explain(operation, &status)),
            Err(_elapsed) => Err(anyhow!(
                "{operation} failed: the server at {} did not answer within {} s",
                self.url,
                UNARY_CALL_TIMEOUT.as_secs()
            )),
        }
    }

    /// Words a gRPC status for a person: unreachable server, refused token,
    /// or the server's own message with its code. The result wraps a
    /// [`CallFailure`], so a caller can still tell the code apart.
    pub fn explain(&self, operation: &str, status: &Status) -> anyhow::Error {
        let message = if status.message().is_empty() {
            status.code().description()
        } else {
            status.message()
        };
        let text = match status.code() {
            // tonic reports transport failures (connection refused, reset,
            // keepalive timeout) as UNAVAILABLE with the transport error as
            // the source; a server that answers UNAVAILABLE itself sends no
            // source, and that case is worded differently below.
            Code::Unavailable if status.source().is_some() => format!(
                "cannot reach the server at {}: {}",
                self.url,
                error_chain_text(status.message(), status.source())
            ),
            Code::Unavailable => format!("the server at {} is unavailable: {message}", self.url),
            Code::Unauthenticated | Code::PermissionDenied => {
                // The server may already say "token refused: ..."; say it once.
                let reason = message.strip_prefix("token refused: ").unwrap_or(message);
                format!("token refused: {reason} ({})", code_name(status.code()))
            }
            code => format!("{operation} failed: {message} ({})", code_name(code)),
        };
        anyhow::Error::new(CallFailure {
            code: status.code(),
            text,
        })
    }
}

/// A call the server refused or could not take, worded for a person, with
/// the gRPC code kept for callers that react to it.
#[derive(Debug)]
pub struct CallFailure {
    pub code: Code,
    text: String,
}

impl fmt::Display for CallFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

impl std::error::Error for CallFailure {}

/// The gRPC code behind an error from [`Server::call`], if it came from one.
pub fn call_failure_code(error: &anyhow::Error) -> Option<Code> {
    error
        .downcast_ref::<CallFailure>()
        .map(|failure| failure.code)
}

/// An error's message followed by its sources, without repeats: transport
/// errors often repeat their source's text in their own message
/// ("tcp connect error: tcp connect error: Connection refused").
fn error_chain_text(
    message: &str,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !message.is_empty() {
        parts.push(message.to_owned());
    }
    while let Some(error) = source {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = error.source();
    }
    parts.join(": ")
}

/// Seconds since the Unix epoch, for token expiry.
pub fn unix_now_secs() -> anyhow::Result<i64> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is set before 1970")?;
    i64::try_from(since_epoch.as_secs())
        .context("the system clock is implausibly far in the future")
}

/// Milliseconds since the Unix epoch, to compare with the server's
/// timestamps. A clock before 1970 reads as 0 here: it only skews the
/// "ago" columns, which is not worth failing a command for.
pub fn unix_now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since_epoch| u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
