//! The one mapping from store and domain errors to gRPC statuses. Internal
//! detail goes to the log, not to the client.

use switchboard_core::DomainError;
use switchboard_store::StoreError;
use tonic::Status;

pub fn status(err: StoreError) -> Status {
    match err {
        StoreError::Domain(domain) => domain_status(domain),
        StoreError::Unavailable(message) => {
            tracing::warn!(error = %message, "store unavailable");
            Status::unavailable(format!(
                "dispatch store unavailable, retry shortly: {message}"
            ))
        }
        StoreError::Unsupported(what) => {
            Status::unimplemented(format!("`{what}` is not supported by the configured store"))
        }
        StoreError::Internal(message) => {
            tracing::error!(error = %message, "store internal error");
            Status::internal("internal error; the server log has the details")
        }
    }
}

pub fn domain_status(err: DomainError) -> Status {
    let message = err.to_string();
    match err {
        DomainError::Invalid { .. } => Status::invalid_argument(message),
        DomainError::NotFound { .. } => Status::not_found(message),
        DomainError::FailedPrecondition(_) => Status::failed_precondition(message),
        DomainError::Conflict { .. } => Status::already_exists(message),
        DomainError::PermissionDenied(_) => Status::permission_denied(message),
    }
}

/// A required message field that was left out.
pub fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("invalid `{field}`: is required"))
}
