//! tutti's worker: consumes denoise and vocode tasks and runs them with the model runtime
//! (`tutti-model`).

pub mod config;
pub mod engine;
mod gpu;
pub mod held;
pub mod runner;
mod trace;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tutti_shared::blob::{BlobStore, S3Store};
use tutti_shared::metrics::Health;
use tutti_shared::taskqueue::{AmqpQueue, TaskQueue};

pub use config::WorkerConfig;

/// Runs a worker until `shutdown` flips to true (then finishes the task in hand and returns).
pub async fn serve(cfg: &WorkerConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let device = tutti_model::device::select(&cfg.device).context("choosing the device")?;
    if let Some(n) = cfg.torch_threads {
        tch::set_num_threads(n);
    }
    let engine = engine::Engine::start(cfg.models_dir.clone(), device, cfg.engine_options(device))
        .with_context(|| format!("reading model packs under {}", cfg.models_dir.display()))?;
    let blobs: Arc<dyn BlobStore> = Arc::new(S3Store::new(&cfg.s3.settings()));
    let queue: Arc<dyn TaskQueue> = Arc::new(AmqpQueue::new(
        cfg.amqp.amqp_url.clone(),
        cfg.amqp.topology(),
    ));
    let worker = runner::Worker {
        name: cfg.worker_name(),
        queue: Arc::clone(&queue),
        stages: cfg.stages.iter().map(|s| (*s).into()).collect(),
        prefetch: cfg.prefetch,
        engine,
        blobs,
        outage_budget: cfg.outage_budget,
    };
    tracing::info!(worker = %worker.name, device = ?device, options = ?worker.engine.options(), "worker starting");
    let health = tutti_shared::metrics::Health::default();
    if let Some(addr) = cfg.metrics_listen {
        let bound = tutti_shared::metrics::serve(addr, health.clone()).await?;
        tracing::info!(addr = %bound, "metrics and probes listening");
    }
    // At 0 from the start, so that `increase()` sees the first one.
    metrics::counter!(tutti_shared::metrics::names::DEAD_LETTERS, "by" => "worker").increment(0);
    for op in ["get", "put"] {
        metrics::counter!(tutti_shared::metrics::names::S3_ERRORS, "op" => op).increment(0);
    }
    tokio::spawn(probe_ready(queue, health, shutdown.clone()));
    if matches!(device, tch::Device::Cuda(_)) {
        tokio::spawn(gpu::report(shutdown.clone()));
    }
    worker.run(shutdown).await;
    Ok(())
}

/// Ready while the broker answers and the worker takes work: a probe every second; a draining
/// worker reports not ready so that it gets no new traffic.
async fn probe_ready(
    queue: Arc<dyn TaskQueue>,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ready = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => continue,
        }
        let now = match tokio::time::timeout(Duration::from_secs(2), queue.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "broker probe failed");
                false
            }
            Err(_) => false,
        };
        if ready != Some(now) {
            if now {
                tracing::info!("ready");
            } else {
                tracing::warn!("not ready: the broker does not answer");
            }
            health.set_ready(now);
            ready = Some(now);
        }
    }
    health.set_ready(false);
}
