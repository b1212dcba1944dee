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
mod models;
mod routes;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tutti_shared::blob::BlobStore;

use crate::api::GenerationApi;
use crate::auth::Authenticator;
use crate::batches::BatchesApi;
use crate::operator::OperatorApi;

/// What the gateway calls: the same service values the gRPC server serves.
#[derive(Clone)]
pub struct Studio {
    pub(crate) auth: Authenticator,
    pub(crate) generation: GenerationApi,
    pub(crate) operator: OperatorApi,
    pub(crate) batches: BatchesApi,
    pub(crate) blobs: blobs::LocalUrls,
}

impl Studio {
    pub fn new(
        auth: Authenticator,
        generation: GenerationApi,
        operator: OperatorApi,
        batches: BatchesApi,
        blobs: Arc<dyn BlobStore>,
    ) -> Self {
        Self {
            auth,
            generation,
            operator,
            batches,
            blobs: blobs::LocalUrls::new(blobs),
        }
    }
}

/// Serves the studio on `listener` until `shutdown` flips to true.
pub async fn serve(
    studio: Studio,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "studio listening");
    axum::serve(listener, routes::router(studio))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .context("studio HTTP server")
}
