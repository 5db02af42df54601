//! Identifiers, validated once at the edge so the engine can trust them.

use crate::error::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest id we accept, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn check_id(field: &str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(DomainError::invalid(
            field,
            format!("is {} bytes, the limit is {MAX_ID_LEN}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@')))
    {
        return Err(DomainError::invalid(
            field,
            format!("contains {bad:?}; allowed are ASCII letters, digits and _ - . : @"),
        ));
    }
    Ok(())
}

/// Ids are immutable shared strings: the engine files the same id in
/// several indexes, deadlines, offers and events, and copying one is then
/// a reference count, not an allocation. Equality, order, hashing, `Debug`
/// and the serialised form are those of the string.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` as this id; `field` names it in the error.
            pub fn parse(field: &str, value: &str) -> Result<Self, DomainError> {
                check_id(field, value)?;
                Ok($name(Arc::from(value)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A pool: the unit of tenancy and sharding. Nothing crosses pools.
    PoolId
);
id_type!(
    /// An agent, unique within its pool.
    AgentId
);
id_type!(
    /// A conversation: the gateway's id, the idempotency key.
    ConversationId
);

/// An offer: the conversation and the attempt number (1, 2, ...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OfferId {
    pub conversation_id: ConversationId,
    pub attempt: u32,
}

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.conversation_id, self.attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_naming_the_field() {
        assert!(AgentId::parse("agent_id", "alice-1").is_ok());
        let err = AgentId::parse("agent_id", "").unwrap_err();
        assert_eq!(err.to_string(), "invalid `agent_id`: must not be empty");
        let err = ConversationId::parse("conversation_id", &"x".repeat(129)).unwrap_err();
        assert!(err.to_string().contains("the limit is 128"), "{err}");
        let err = PoolId::parse("pool", "a b").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
    }
}
