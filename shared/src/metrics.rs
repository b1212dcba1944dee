//! Prometheus metrics and the HTTP probes beside them: `/metrics`, `/healthz` (the process
//! answers) and `/readyz` (it can do its work: database and broker reachable, not draining).
//! Every metric name is a constant here, so dashboards and alerts can be checked against them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names, all prefixed `tutti_`.
pub mod names {
    /// Jobs accepted, by class (counter).
    pub const JOBS_SUBMITTED: &str = "tutti_jobs_submitted_total";
    /// Jobs that ended, by state and class (counter).
    pub const JOBS_FINISHED: &str = "tutti_jobs_finished_total";
    /// Jobs by state and class, read from the job store (gauge).
    pub const JOBS: &str = "tutti_jobs";
    /// Tasks waiting in the backlog, by class and queue (gauge).
    pub const BACKLOG: &str = "tutti_backlog";
    /// Tasks dispatched and not finished, by queue (gauge).
    pub const IN_FLIGHT: &str = "tutti_tasks_in_flight";
    /// Time from a task becoming due to its dispatch, by queue and class (histogram, seconds).
    pub const QUEUE_LATENCY: &str = "tutti_queue_latency_seconds";
    /// Tasks dispatched, by queue and class (counter).
    pub const DISPATCHED: &str = "tutti_tasks_dispatched_total";
    /// Task attempts that failed and were retried or failed their job, by stage and code (counter).
    pub const TASK_RETRIES: &str = "tutti_task_retries_total";
    /// Messages rejected to the dead-letter queue, by who rejected them (counter).
    pub const DEAD_LETTERS: &str = "tutti_dead_letters_total";
    /// Results dropped as stale or duplicate, by stage (counter).
    pub const STALE_RESULTS: &str = "tutti_stale_results_total";
    /// Work time of a task on a worker, by stage (histogram, seconds).
    pub const STAGE_DURATION: &str = "tutti_stage_duration_seconds";
    /// Denoising steps run (counter; its rate is steps per second).
    pub const STEPS: &str = "tutti_denoise_steps_total";
    /// Tasks a worker finished, by stage and outcome (counter).
    pub const WORKER_TASKS: &str = "tutti_worker_tasks_total";
    /// Samples in the worker's current denoiser batch (gauge).
    pub const BATCH_OCCUPANCY: &str = "tutti_batch_occupancy";
    /// Denoise chunks advanced by the worker's latest denoiser forward (gauge).
    pub const WORKER_BATCH_OCCUPANCY: &str = "tutti_worker_batch_occupancy";
    /// Denoising steps per second of a worker's step loop over its last forwards, summed over
    /// the chunks of each batch (gauge).
    pub const WORKER_STEPS_PER_SECOND: &str = "tutti_worker_steps_per_second";
    /// Chunks that started from the worker's in-memory latent instead of the S3 checkpoint,
    /// by `source` (`memory` or `checkpoint`) (counter).
    pub const WORKER_CHUNK_STARTS: &str = "tutti_worker_chunk_starts_total";
    /// Postgres errors seen by the coordinator's loops (counter).
    pub const POSTGRES_ERRORS: &str = "tutti_postgres_errors_total";
    /// S3 errors, by operation (counter).
    pub const S3_ERRORS: &str = "tutti_s3_errors_total";
    /// 1 while the process is ready (gauge).
    pub const READY: &str = "tutti_ready";
    /// Memory in use on a worker's GPU, by gpu (gauge, bytes; CUDA workers only).
    pub const GPU_MEMORY_USED: &str = "tutti_gpu_memory_used_bytes";
    /// Memory of a worker's GPU, by gpu (gauge, bytes; CUDA workers only).
    pub const GPU_MEMORY_TOTAL: &str = "tutti_gpu_memory_total_bytes";

    /// Every name above.
    pub const ALL: &[&str] = &[
        JOBS_SUBMITTED,
        JOBS_FINISHED,
        JOBS,
        BACKLOG,
        IN_FLIGHT,
        QUEUE_LATENCY,
        DISPATCHED,
        TASK_RETRIES,
        DEAD_LETTERS,
        STALE_RESULTS,
        STAGE_DURATION,
        STEPS,
        WORKER_TASKS,
        BATCH_OCCUPANCY,
        WORKER_BATCH_OCCUPANCY,
        WORKER_STEPS_PER_SECOND,
        WORKER_CHUNK_STARTS,
        POSTGRES_ERRORS,
        S3_ERRORS,
        READY,
        GPU_MEMORY_USED,
        GPU_MEMORY_TOTAL,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("installing the metrics recorder: {0}")]
    Install(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let seconds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Liveness and readiness as the probes report them.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        metrics::gauge!(names::READY).set(if ready { 1.0 } else { 0.0 });
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, health: Health) -> Result<SocketAddr, MetricsError> {
    let handle = install()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = axum::Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route(
            "/readyz",
            get(move || {
                let ready = health.is_ready();
                std::future::ready(if ready {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                })
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
