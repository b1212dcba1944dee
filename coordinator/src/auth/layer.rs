//! The auth layer: a tower service around one gRPC service (the job API, the Batches API)
//! that resolves the caller from the `authorization` metadata and puts it into the request's
//! extensions, or answers UNAUTHENTICATED without calling the service. Health and reflection
//! are added to the server unwrapped, so probes need no key.
//!
//! No cache: every call reads the key from the store (one primary-key lookup), so a revoked
//! key stops working at once on every replica.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;

use super::{ApiKey, AuthMode, Caller, DEFAULT_TENANT};
use crate::error::{Error, Result};
use crate::store::JobStore;

/// Resolves callers; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    store: Arc<dyn JobStore>,
}

impl Authenticator {
    pub fn new(mode: AuthMode, store: Arc<dyn JobStore>) -> Self {
        Self { mode, store }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The caller of a request with these headers.
    pub async fn caller(&self, headers: &http::HeaderMap) -> Result<Caller> {
        match self.mode {
            AuthMode::Off => {
                // The local tenant still gets limits when an operator gave it some.
                let limits = self
                    .store
                    .tenant(DEFAULT_TENANT)
                    .await?
                    .map(|t| t.limits)
                    .unwrap_or_default();
                Ok(Caller {
                    tenant: DEFAULT_TENANT.to_string(),
                    admin: false,
                    key: None,
                    limits,
                })
            }
            AuthMode::Required => {
                let key = bearer(headers)?;
                match self.store.key_owner(&key).await? {
                    Some(owner) => {
                        tracing::debug!(key = %key.prefix(), tenant = %owner.tenant, admin = owner.admin, "caller");
                        Ok(Caller {
                            tenant: owner.tenant,
                            admin: owner.admin,
                            key: Some(key.prefix()),
                            limits: owner.limits,
                        })
                    }
                    None => {
                        tracing::info!(key = %key.prefix(), "refused an unknown or revoked API key");
                        Err(Error::Unauthenticated("unknown or revoked API key".into()))
                    }
                }
            }
        }
    }

    /// Wraps a gRPC service so that every request carries its `Caller`.
    pub fn layer<S>(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            auth: self.clone(),
            inner,
        }
    }
}

/// The key in `authorization: Bearer <key>`.
fn bearer(headers: &http::HeaderMap) -> Result<ApiKey> {
    let missing = || {
        Error::Unauthenticated(
            "missing API key: send the metadata `authorization: Bearer <key>`".into(),
        )
    };
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    ApiKey::parse(token.trim())
}

/// A gRPC service behind the auth layer.
#[derive(Clone)]
pub struct Authenticated<S> {
    auth: Authenticator,
    inner: S,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The service that was polled ready serves this call; a fresh clone takes its place.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let auth = self.auth.clone();
        Box::pin(async move {
            match auth.caller(req.headers()).await {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(e) => Ok(tonic::Status::from(e).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            v.parse().expect("header value"),
        );
        h
    }

    #[test]
    fn bearer_needs_the_scheme_and_a_well_formed_key() {
        let key = ApiKey::generate();
        let parsed = bearer(&headers(&format!("Bearer {}", key.expose()))).expect("bearer");
        assert_eq!(parsed, key);
        assert!(bearer(&headers(&format!("bearer {}", key.expose()))).is_ok());
        for bad in [
            key.expose().to_string(),
            format!("Basic {}", key.expose()),
            "Bearer nope".into(),
        ] {
            let err = bearer(&headers(&bad)).expect_err(&bad);
            assert_eq!(err.grpc_code(), tonic::Code::Unauthenticated);
        }
        assert!(bearer(&http::HeaderMap::new()).is_err());
    }
}
