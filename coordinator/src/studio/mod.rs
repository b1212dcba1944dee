//! tutti studio: a web page for writing prompts, hearing the results and watching the farm,
//! served on its own HTTP port by the coordinator and by `tutti dev`.
//!
//! The page speaks JSON over HTTP and reads job progress as server-sent events. The gateway
//! holds no logic of its own: each route builds the `tonic::Request` the gRPC server would
//! hand to the service (the caller's `authorization` in its metadata, the `Caller` the same
//! `Authenticator` resolves in its extensions) and calls the service trait method in process,
//! so scoping, validation and errors are the gRPC API's own. Messages use the proto3 JSON
//! mapping (pbjson) with the .proto field names, so a field error names the form's field.

mod assets;
mod batches;
mod blobs;
mod gateway;
mod guard;
mod models;
mod openapi;
mod rest;
mod routes;
mod webhooks;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tutti_shared::blob::BlobStore;

use crate::api::GenerationApi;
use crate::auth::Authenticator;
use crate::batches::BatchesApi;
use crate::operator::OperatorApi;
use crate::webhook_service::api::WebhooksApi;

/// How the gateway serves browsers and uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudioOptions {
    /// Origins (`https://app.example.com`) allowed to call the API from their pages (CORS).
    pub allowed_origins: Vec<String>,
    /// Host names (without port) served beside loopback names on a loopback listener, or the
    /// only ones served elsewhere when not empty.
    pub allowed_hosts: Vec<String>,
    /// The largest manifest one upload may be.
    pub max_upload_bytes: usize,
    /// Uploaded manifests a tenant keeps at once (each is a submitted batch's).
    pub max_uploads: usize,
}

impl Default for StudioOptions {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            // A 100,000-row catalog is about 20 MB.
            max_upload_bytes: 64 << 20,
            max_uploads: 10_000,
        }
    }
}

/// What the gateway calls: the same service values the gRPC server serves.
#[derive(Clone)]
pub struct Studio {
    pub(crate) auth: Authenticator,
    pub(crate) generation: GenerationApi,
    pub(crate) operator: OperatorApi,
    pub(crate) batches: BatchesApi,
    pub(crate) webhooks: WebhooksApi,
    pub(crate) blobs: blobs::LocalUrls,
    options: StudioOptions,
}

impl Studio {
    pub fn new(
        auth: Authenticator,
        generation: GenerationApi,
        operator: OperatorApi,
        batches: BatchesApi,
        webhooks: WebhooksApi,
        blobs: Arc<dyn BlobStore>,
        options: StudioOptions,
    ) -> Self {
        Self {
            auth,
            generation,
            operator,
            batches,
            webhooks,
            blobs: blobs::LocalUrls::new(blobs),
            options,
        }
    }
}

/// Serves the studio on `listener` until `shutdown` flips to true.
pub async fn serve(
    studio: Studio,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "studio listening");
    let guard = guard::Guard::new(studio.options.clone(), addr);
    axum::serve(listener, routes::router(studio, guard))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .context("studio HTTP server")
}
