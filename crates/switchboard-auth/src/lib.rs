//! Bearer tokens for agents, gateways and operations.
//!
//! A token is `sb1.<claims>.<signature>`: the claims are base64url JSON
//! (role, pool, agent id for agents, expiry, key id, epoch), the signature
//! is HMAC-SHA256 over `sb1.<claims>` with the key the key id names. Keys
//! rotate by adding a key id; verification compares signatures in constant
//! time (`Mac::verify_slice`). Tokens are secrets: never log one.
//!
//! # Development mode
//!
//! [`DEV_SECRET`] is a fixed, public secret under key id [`DEV_KEY_ID`]. A
//! server in development mode accepts tokens signed with it and listens on
//! loopback only; `sbctl` and the demo mint their own tokens with it, so
//! nothing has to be copied around on a developer's machine.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use thiserror::Error;

/// The development secret. Public by design: never use it beyond loopback.
pub const DEV_SECRET: &str = "switchboard-development-secret-not-for-production";
/// The key id of [`DEV_SECRET`].
pub const DEV_KEY_ID: &str = "dev";
const PREFIX: &str = "sb1";

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Gateway,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Agent => "agent",
            Role::Gateway => "gateway",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "gateway" => Ok(Role::Gateway),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: expected agent, gateway or admin"
            )),
        }
    }
}

/// What a token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub role: Role,
    pub pool: String,
    /// Present for agents only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Key id of the signing key.
    pub kid: String,
    /// The agent's token epoch at issue: forcing an agent offline bumps the
    /// roster's epoch, and older tokens are refused.
    #[serde(default)]
    pub epoch: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token key id `{0}` is not known to this server")]
    UnknownKey(String),
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("agent token has no agent id")]
    MissingAgent,
    #[error("signing key `{0}` is not in the keyring")]
    NoSigningKey(String),
}

/// Secrets by key id; one of them signs new tokens.
#[derive(Clone)]
pub struct Keyring {
    keys: HashMap<String, Vec<u8>>,
    signing_key_id: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("signing_key_id", &self.signing_key_id)
            .finish()
    }
}

impl Keyring {
    /// A keyring with one key that also signs.
    pub fn single(key_id: impl Into<String>, secret: impl AsRef<[u8]>) -> Self {
        let key_id = key_id.into();
        let mut keys = HashMap::new();
        keys.insert(key_id.clone(), secret.as_ref().to_vec());
        Keyring {
            keys,
            signing_key_id: key_id,
        }
    }

    /// The development keyring (see the crate docs).
    pub fn development() -> Self {
        Keyring::single(DEV_KEY_ID, DEV_SECRET)
    }

    /// Adds a verification key (rotation: old tokens stay valid).
    pub fn with_key(mut self, key_id: impl Into<String>, secret: impl AsRef<[u8]>) -> Self {
        self.keys.insert(key_id.into(), secret.as_ref().to_vec());
        self
    }

    pub fn is_development(&self) -> bool {
        self.keys
            .get(DEV_KEY_ID)
            .is_some_and(|k| k == DEV_SECRET.as_bytes())
    }

    /// Signs claims with the signing key (the claims' `kid` is set to it).
    pub fn sign(&self, mut claims: Claims) -> Result<String, TokenError> {
        let secret = self
            .keys
            .get(&self.signing_key_id)
            .ok_or_else(|| TokenError::NoSigningKey(self.signing_key_id.clone()))?;
        claims.kid = self.signing_key_id.clone();
        let json = serde_json::to_vec(&claims)
            .map_err(|_| TokenError::Malformed("claims do not serialise"))?;
        let body = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let mut mac =
            HmacSha256::new_from_slice(secret).map_err(|_| TokenError::Malformed("bad key"))?;
        mac.update(body.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Ok(format!("{body}.{signature}"))
    }

    /// Mints a token for `role` in `pool`, valid `ttl_secs` from `now_secs`.
    pub fn mint(
        &self,
        role: Role,
        pool: &str,
        agent: Option<&str>,
        now_secs: i64,
        ttl_secs: i64,
        epoch: u64,
    ) -> Result<String, TokenError> {
        self.sign(Claims {
            role,
            pool: pool.to_owned(),
            agent: agent.map(str::to_owned),
            exp: now_secs.saturating_add(ttl_secs),
            kid: String::new(),
            epoch,
        })
    }

    /// Verifies a token at `now_secs`, returning its claims.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(prefix), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed("unknown token version"));
        }
        let json = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("claims are not valid"))?;
        let secret = self
            .keys
            .get(&claims.kid)
            .ok_or_else(|| TokenError::UnknownKey(claims.kid.clone()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac =
            HmacSha256::new_from_slice(secret).map_err(|_| TokenError::Malformed("bad key"))?;
        mac.update(prefix.as_bytes());
        mac.update(b".");
        mac.update(claims_b64.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        if claims.role == Role::Agent && claims.agent.as_deref().is_none_or(str::is_empty) {
            return Err(TokenError::MissingAgent);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip() {
        let ring = Keyring::single("k1", "secret-one");
        let token = ring
            .mint(Role::Agent, "eu", Some("alice"), 1_000, 60, 2)
            .unwrap();
        let claims = ring.verify(&token, 1_010).unwrap();
        assert_eq!(claims.role, Role::Agent);
        assert_eq!(claims.agent.as_deref(), Some("alice"));
        assert_eq!(
            (claims.pool.as_str(), claims.kid.as_str(), claims.epoch),
            ("eu", "k1", 2)
        );
    }

    #[test]
    fn rejects_tampering_expiry_and_unknown_keys() {
        let ring = Keyring::single("k1", "secret-one");
        let token = ring.mint(Role::Gateway, "eu", None, 1_000, 60, 0).unwrap();
        assert_eq!(ring.verify(&token, 1_060), Err(TokenError::Expired));
        let other = Keyring::single("k1", "another-secret");
        assert_eq!(other.verify(&token, 1_000), Err(TokenError::BadSignature));
        let rotated = Keyring::single("k2", "x");
        assert_eq!(
            rotated.verify(&token, 1_000),
            Err(TokenError::UnknownKey("k1".into()))
        );
        // Swap in claims for admin, keep the signature.
        let forged_claims =
            URL_SAFE_NO_PAD.encode(br#"{"role":"admin","pool":"eu","exp":9999,"kid":"k1"}"#);
        let signature = token.rsplit('.').next().unwrap();
        let forged = format!("sb1.{forged_claims}.{signature}");
        assert_eq!(ring.verify(&forged, 1_000), Err(TokenError::BadSignature));
        assert!(matches!(
            ring.verify("garbage", 0),
            Err(TokenError::Malformed(_))
        ));
        let agentless = ring.mint(Role::Agent, "eu", None, 1_000, 60, 0).unwrap();
        assert_eq!(
            ring.verify(&agentless, 1_000),
            Err(TokenError::MissingAgent)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = Keyring::single("k1", "one");
        let token = old.mint(Role::Admin, "eu", None, 0, 100, 0).unwrap();
        let new = Keyring::single("k2", "two").with_key("k1", "one");
        assert!(new.verify(&token, 1).is_ok());
        assert!(!new.is_development());
        assert!(Keyring::development().is_development());
    }
}
