//! The coordinator's error type and its one mapping to gRPC status codes.

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
    /// A tenant limit was hit: `limit: what happened`.
    #[error("{limit}: {detail}")]
    ResourceExhausted { limit: &'static str, detail: String },
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
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
