//! tutti's coordinator: the gRPC API, job state in Postgres, dispatch over RabbitMQ and the
//! consumer of worker results. Several replicas may run against one database and broker.

pub mod api;
pub mod auth;
pub mod batches;
pub mod catalogue;
pub mod config;
pub mod deadline;
pub mod deletion;
pub mod delivery;
pub mod dispatcher;
pub mod error;
mod health;
pub mod hearing;
pub mod init_audio;
pub mod janitor;
pub mod lifecycle;
pub mod notify;
mod observe;
pub mod operator;
pub mod page_token;
pub mod preview;
pub mod results;
pub mod sched;
pub mod settings;
pub mod song;
pub mod store;
pub mod studio;
pub mod tenancy;
pub mod text;
pub mod usage;
pub mod validate;
pub mod webhook_service;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tutti_proto::v1::batches_server::BatchesServer;
use tutti_proto::v1::generation_server::GenerationServer;
use tutti_proto::v1::operator_server::OperatorServer;
use tutti_proto::v1::webhooks_server::WebhooksServer;
use tutti_shared::blob::{BlobStore, S3Store};
use tutti_shared::models::ModelRegistry;
use tutti_shared::queue::Topology;
use tutti_shared::taskqueue::{AmqpQueue, TaskQueue};

pub use auth::AuthMode;
pub use config::{CoordinatorConfig, TlsFiles};
pub use settings::{FarmArgs, Settings};

/// Where a coordinator keeps its state and sends its work: Postgres, RabbitMQ and S3 for the
/// farm; SQLite, the in-process queue and a local folder in embedded mode.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn store::JobStore>,
    pub queue: Arc<dyn TaskQueue>,
    pub blobs: Arc<dyn BlobStore>,
}

impl From<&CoordinatorConfig> for Settings {
    fn from(cfg: &CoordinatorConfig) -> Self {
        cfg.farm.apply(Settings {
            models_dir: cfg.models_dir.clone(),
            tls: cfg.tls.files(),
            ..Settings::default()
        })
    }
}

/// Runs a coordinator on `listener` until `shutdown` flips to true.
pub async fn serve(
    cfg: &CoordinatorConfig,
    topology: Topology,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let store = store::PgStore::connect(&cfg.database.database_url)
        .await
        .with_context(|| {
            format!(
                "connecting to Postgres at {}",
                tutti_shared::config::redact_url(&cfg.database.database_url)
            )
        })?;
    if cfg.migrate_only {
        tracing::info!("migrations applied; exiting (--migrate-only)");
        return Ok(());
    }
    let health = tutti_shared::metrics::Health::default();
    if let Some(addr) = cfg.metrics_listen {
        let bound = tutti_shared::metrics::serve(addr, health.clone()).await?;
        tracing::info!(addr = %bound, "metrics and probes listening");
    }
    let studio = match cfg.studio_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the studio's address {addr}"))?,
        ),
        None => None,
    };
    let s3 = S3Store::new(&cfg.s3.settings());
    s3.ensure_bucket()
        .await
        .with_context(|| format!("checking bucket {:?}", cfg.s3.s3_bucket))?;
    let backend = Backend {
        store: Arc::new(store),
        queue: Arc::new(AmqpQueue::new(cfg.amqp.amqp_url.clone(), topology)),
        blobs: Arc::new(s3),
    };
    let result = serve_with_studio(
        &Settings::from(cfg),
        backend,
        health.clone(),
        listener,
        studio,
        shutdown,
    )
    .await;
    health.set_ready(false);
    result
}

/// Runs the gRPC API, the dispatcher and the results consumer over any backend on
/// `listener` until `shutdown` flips to true. `health` (the `/readyz` probe) and gRPC health
/// follow the store's and the queue's reachability.
pub async fn serve_backend(
    cfg: &Settings,
    backend: Backend,
    health: tutti_shared::metrics::Health,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    serve_with_studio(cfg, backend, health, listener, None, shutdown).await
}

/// `serve_backend`, and the studio (the web page and its HTTP gateway over the same services)
/// on `studio` when given.
pub async fn serve_with_studio(
    cfg: &Settings,
    backend: Backend,
    health: tutti_shared::metrics::Health,
    listener: TcpListener,
    studio: Option<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let registry = ModelRegistry::scan(&cfg.models_dir)
        .with_context(|| format!("reading model packs under {}", cfg.models_dir.display()))?;
    if registry.is_empty() {
        tracing::warn!(dir = %cfg.models_dir.display(), "no model packs found: every request will be NOT_FOUND");
    }
    for m in registry.all() {
        tracing::info!(model = %m.name, version = %m.version, dir = %m.dir.display(), "model pack");
    }
    let validator = validate::Validator::new(registry, cfg.default_model.clone(), cfg.chunk_steps)?;
    let hearing = hearing::Hearing::default();
    let dispatcher = dispatcher::Dispatcher {
        store: Arc::clone(&backend.store),
        queue: Arc::clone(&backend.queue),
        policy: cfg.sched.clone(),
        retry: cfg.retry,
        task_lease: cfg.task_lease,
        hearing: hearing.clone(),
    };
    let dispatch_task = tokio::spawn(dispatcher.run(shutdown.clone()));
    let results = results::ResultsConsumer {
        store: Arc::clone(&backend.store),
        queue: Arc::clone(&backend.queue),
        retry: cfg.retry,
        blobs: Arc::clone(&backend.blobs),
        hearing: hearing.clone(),
    };
    let results_task = tokio::spawn(results.run(shutdown.clone()));
    observe::register_counters();
    tokio::spawn(observe::refresh_gauges(
        Arc::clone(&backend.store),
        shutdown.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the first probe has reached the store and the queue.
    health_reporter
        .set_not_serving::<GenerationServer<api::GenerationApi>>()
        .await;
    let probe_task = tokio::spawn(health::probe(
        Arc::clone(&backend.store),
        Arc::clone(&backend.queue),
        hearing,
        health,
        health_reporter,
        shutdown.clone(),
    ));

    let auth = auth::Authenticator::new(cfg.auth, Arc::clone(&backend.store));
    tokio::spawn(batches::finish_batches(
        Arc::clone(&backend.store),
        Arc::clone(&backend.blobs),
        shutdown.clone(),
    ));
    tokio::spawn(janitor::clear_checkpoints(
        Arc::clone(&backend.store),
        Arc::clone(&backend.blobs),
        cfg.checkpoint_grace,
        std::time::Duration::from_secs(2),
        shutdown.clone(),
    ));
    tokio::spawn(janitor::clear_unknown_jobs(
        Arc::clone(&backend.store),
        Arc::clone(&backend.blobs),
        janitor::UNKNOWN_SWEEP_EVERY,
        shutdown.clone(),
    ));

    if cfg.webhooks.send {
        let sender =
            webhook_service::sender::Sender::new(Arc::clone(&backend.store), cfg.webhooks.clone())
                .context("building the webhook client")?;
        tokio::spawn(sender.run(shutdown.clone()));
    }
    let webhooks_api =
        webhook_service::api::WebhooksApi(Arc::new(webhook_service::api::WebhooksService {
            store: Arc::clone(&backend.store),
            allow_private: cfg.webhooks.allow_private,
        }));

    let operator = operator::OperatorApi(Arc::new(operator::OperatorService {
        store: Arc::clone(&backend.store),
        policy: cfg.sched.clone(),
        queue: Arc::clone(&backend.queue),
    }));
    let blobs = Arc::clone(&backend.blobs);
    let service = Arc::new(api::GenerationService {
        store: backend.store,
        validator,
        blob_access: tenancy::blobs::BlobAccess::new(
            backend.blobs.uri(""),
            cfg.admin_blob_prefixes.clone(),
        ),
        blobs: backend.blobs,
        queue: backend.queue,
        url_ttl: cfg.url_ttl,
        submit_rate: auth::SubmitRate::default(),
        worker_timeout: cfg.sched.worker_timeout,
        webhook_allow_private: cfg.webhooks.allow_private,
        weights: cfg.sched.weights.clone(),
    });
    let batches_api = batches::BatchesApi(Arc::new(batches::BatchesService {
        generation: Arc::clone(&service),
    }));
    let generation = api::GenerationApi(service);
    let studio_task = studio.map(|listener| {
        let studio = studio::Studio::new(
            auth.clone(),
            generation.clone(),
            operator.clone(),
            batches_api.clone(),
            webhooks_api.clone(),
            blobs,
            cfg.studio_options.clone(),
        );
        tokio::spawn(studio::serve(studio, listener, shutdown.clone()))
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tutti_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;

    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &cfg.tls {
        // rustls is built with two crypto providers in this workspace, so it cannot pick
        // one itself; an error only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        server = server
            .tls_config(tls.server_config()?)
            .context("configuring TLS for the gRPC server")?;
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        auth = ?cfg.auth,
        tls = cfg.tls.is_some(),
        mutual_tls = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "coordinator listening"
    );
    let mut stop = shutdown.clone();
    // Health and reflection stay outside the auth layer: probes carry no key.
    server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(auth.layer(BatchesServer::new(batches_api)))
        .add_service(auth.layer(GenerationServer::new(generation)))
        .add_service(auth.layer(OperatorServer::new(operator)))
        .add_service(auth.layer(WebhooksServer::new(webhooks_api)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("gRPC server")?;
    let _ = dispatch_task.await;
    let _ = results_task.await;
    let _ = probe_task.await;
    if let Some(task) = studio_task {
        match task.await {
            Ok(r) => r?,
            Err(e) => tracing::warn!(error = %e, "the studio task ended abnormally"),
        }
    }
    Ok(())
}
