//! The coordinator's error type and its one mapping to gRPC status codes.

use std::time::Duration;

use tonic_types::{ErrorDetails, StatusExt};
use tutti_shared::blob::BlobError;
use tutti_shared::queue::QueueError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field broke a rule: `field: rule`.
    #[error("{field}: {rule}")]
    InvalidArgument { field: String, rule: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// No API key, or one that is malformed, unknown or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller asked for what its key may not see (an operator call with a tenant key).
    #[error("{0}")]
    PermissionDenied(String),
    /// A tenant limit was hit: `limit: what happened`. `retry_after` is when a retry may pass
    /// (`None`: not by waiting, as with a class or a size the tenant may not use).
    #[error("{limit}: {detail}")]
    ResourceExhausted {
        limit: &'static str,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("blob store: {0}")]
    Blob(#[from] BlobError),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            rule: rule.into(),
        }
    }

    pub fn exhausted(limit: &'static str, detail: impl Into<String>) -> Self {
        Error::ResourceExhausted {
            limit,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// A limit that a retry passes after `delay` (sent as the gRPC `RetryInfo` detail, and as
    /// `Retry-After` over HTTP).
    pub fn exhausted_for(limit: &'static str, detail: impl Into<String>, delay: Duration) -> Self {
        Error::ResourceExhausted {
            limit,
            detail: detail.into(),
            retry_after: Some(delay),
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Error::ResourceExhausted { .. } => tonic::Code::ResourceExhausted,
            Error::Database(_) | Error::Queue(_) | Error::Blob(_) => tonic::Code::Unavailable,
            Error::Migrate(_) | Error::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        if matches!(
            e.grpc_code(),
            tonic::Code::Unavailable | tonic::Code::Internal
        ) {
            tracing::error!(error = %e, "request failed");
        }
        match e {
            Error::ResourceExhausted {
                retry_after: Some(delay),
                ..
            } => tonic::Status::with_error_details(
                e.grpc_code(),
                e.to_string(),
                ErrorDetails::with_retry_info(Some(delay)),
            ),
            _ => tonic::Status::new(e.grpc_code(), e.to_string()),
        }
    }
}

/// The retry delay a status carries (`RetryInfo`), if any.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
