//! The small, deliberate set of domain errors. The server maps each kind to
//! one gRPC status code in one place; messages name the field or the thing.

use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DomainError {
    /// Bad input: the field and why (maps to INVALID_ARGUMENT).
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },

    /// The thing does not exist in this pool (maps to NOT_FOUND).
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },

    /// The request is well formed but the state does not allow it
    /// (maps to FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),

    /// A repeated conversation id with a different payload (maps to
    /// ALREADY_EXISTS).
    #[error("conversation `{conversation_id}` already exists with a different `{field}`")]
    Conflict {
        conversation_id: String,
        field: String,
    },

    /// The caller may not do this (maps to PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        DomainError::FailedPrecondition(message.into())
    }
}
