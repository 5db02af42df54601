//! The authentication interceptor: every call of our three services carries
//! a bearer token, verified here (signature in constant time, expiry, role)
//! before the handler runs. Health and reflection are not intercepted.

use std::sync::Arc;
use switchboard_auth::{Keyring, Role};
use switchboard_core::{AgentId, PoolId};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Who is calling, as the token says. Handlers take the pool and the agent
/// from here, never from a request field.
#[derive(Clone, Debug)]
pub struct Caller {
    pub role: Role,
    pub pool: PoolId,
    pub agent: Option<AgentId>,
    pub epoch: u64,
}

impl Caller {
    /// The caller's agent id (present on every agent token: checked at
    /// verification).
    pub fn agent(&self) -> Result<&AgentId, Status> {
        self.agent
            .as_ref()
            .ok_or_else(|| Status::unauthenticated("agent token has no agent id"))
    }
}

/// Verifies tokens and requires one role per service.
#[derive(Clone)]
pub struct Authenticator {
    keyring: Arc<Keyring>,
    role: Role,
}

impl Authenticator {
    pub fn new(keyring: Arc<Keyring>, role: Role) -> Self {
        Authenticator { keyring, role }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization` metadata: send `Bearer <token>`")
        })?;
        let header = header
            .to_str()
            .map_err(|_| Status::unauthenticated("`authorization` metadata is not ASCII"))?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            Status::unauthenticated("`authorization` metadata must be `Bearer <token>`")
        })?;
        let now_secs = chrono::Utc::now().timestamp();
        let claims = self
            .keyring
            .verify(token.trim(), now_secs)
            .map_err(|e| Status::unauthenticated(format!("token refused: {e}")))?;
        if claims.role != self.role {
            return Err(Status::permission_denied(format!(
                "this service needs a {} token; the token's role is {}",
                self.role, claims.role
            )));
        }
        let pool = PoolId::parse("token.pool", &claims.pool)
            .map_err(|e| Status::unauthenticated(format!("token refused: {e}")))?;
        let agent = claims
            .agent
            .as_deref()
            .map(|a| AgentId::parse("token.agent", a))
            .transpose()
            .map_err(|e| Status::unauthenticated(format!("token refused: {e}")))?;
        request.extensions_mut().insert(Caller {
            role: claims.role,
            pool,
            agent,
            epoch: claims.epoch,
        });
        Ok(request)
    }
}

/// The caller the interceptor put on the request.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified caller on the request"))
}
