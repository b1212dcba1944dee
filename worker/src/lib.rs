//! tutti's worker: consumes denoise and vocode tasks and runs them with the model runtime.

pub mod bench;
pub mod bench_serve;
pub mod config;
pub mod engine;
pub mod held;
pub mod model;
pub mod runner;
pub mod train;

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tutti_shared::blob::{BlobStore, S3Store};
use tutti_shared::taskqueue::AmqpQueue;

pub use config::WorkerConfig;

/// Runs a worker until `shutdown` flips to true (then finishes the task in hand and returns).
pub async fn serve(cfg: &WorkerConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let device = model::device::select(&cfg.device).context("choosing the device")?;
    let engine = engine::Engine::start(cfg.models_dir.clone(), device, cfg.engine_options(device))
        .with_context(|| format!("reading model packs under {}", cfg.models_dir.display()))?;
    let blobs: Arc<dyn BlobStore> = Arc::new(S3Store::new(&cfg.s3.settings()));
    let worker = runner::Worker {
        name: cfg.worker_name(),
        queue: Arc::new(AmqpQueue::new(
            cfg.amqp.amqp_url.clone(),
            cfg.amqp.topology(),
        )),
        stages: cfg.stages.iter().map(|s| (*s).into()).collect(),
        prefetch: cfg.prefetch,
        engine,
        blobs,
    };
    tracing::info!(worker = %worker.name, device = ?device, options = ?worker.engine.options(), "worker starting");
    let health = tutti_shared::metrics::Health::default();
    if let Some(addr) = cfg.metrics_listen {
        let bound = tutti_shared::metrics::serve(addr, health.clone()).await?;
        tracing::info!(addr = %bound, "metrics and probes listening");
    }
    // Ready while taking work; a draining worker reports not ready so it gets no new traffic.
    health.set_ready(true);
    let mut drain = shutdown.clone();
    let draining = health.clone();
    tokio::spawn(async move {
        let _ = drain.wait_for(|s| *s).await;
        draining.set_ready(false);
    });
    worker.run(shutdown).await;
    Ok(())
}
