//! The job store behind one trait: Postgres for the farm (several coordinators, `FOR UPDATE
//! SKIP LOCKED`, `LISTEN/NOTIFY`), SQLite for embedded mode (one process, one writer at a
//! time, an in-process notifier). One conformance suite (`tests.rs`) runs against both.
//!
//! The trait lives in the coordinator rather than in `shared` because its inputs and outputs
//! are the coordinator's own types (`NewJob` carries the accepted protobuf request, errors are
//! the coordinator's `Error` with its gRPC mapping); the workers never see the store.
//!
//! Invariants both keep: every state change is one transaction; dispatch reads committed
//! rows and marks them dispatched in the transaction that published them; results are fenced
//! by (job, chunk, attempt); a failed attempt retries with backoff up to a bound; a cancelled
//! job never comes back.

pub mod batches;
mod pg;
mod rows;
mod sql;
mod sqlite;
mod tenants;
#[cfg(test)]
mod tests;
pub mod usage;
pub mod views;
pub mod webhooks;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use tutti_shared::job::{JobSpec, JobState, Stage};
use tutti_shared::messages::Outcome;
use uuid::Uuid;

use crate::error::Result;
use crate::sched::RoundTx;
use crate::validate::NewJob;

pub use crate::lifecycle::{Recorded, Retried, RetryPolicy, TaskRef};
pub use crate::notify::{JobChange, Notifier};
pub use crate::tenancy::Scope;
pub use batches::BatchStore;
pub use pg::PgStore;
pub use sqlite::SqliteStore;
pub use tenants::{KeyInfo, KeyOwner, Tenant, TenantStore};
pub use usage::UsageStore;
pub use views::ViewStore;
pub use webhooks::WebhookStore;

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub tenant: String,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    #[sqlx(try_from = "String")]
    pub stage: Stage,
    pub priority: i16,
    pub spec: Json<JobSpec>,
    pub request: Vec<u8>,
    pub steps_total: i32,
    pub steps_done: i32,
    pub attempts: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub timings: Json<BTreeMap<String, i64>>,
    pub labels: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When DeleteJob removed its outputs and inputs and blanked its prompt.
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutputRow {
    pub idx: i32,
    pub key: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub duration_s: f32,
    pub sample_rate: i32,
    pub format: String,
    pub channels: i32,
    /// Integrated loudness (LUFS) and true peak (dBTP) after the gain stage; NULL for silence
    /// and for outputs from before the columns.
    pub loudness_lufs: Option<f32>,
    pub true_peak_dbtp: Option<f32>,
    /// When the tenant's retention deletes it (`None`: kept until the job is deleted).
    pub expires_at: Option<DateTime<Utc>>,
    /// Its object is gone (expired or deleted): no URL is handed out for it.
    pub deleted: bool,
}

impl OutputRow {
    /// Whether its object may be fetched at `now`.
    pub fn available(&self, now: DateTime<Utc>) -> bool {
        !self.deleted && self.expires_at.is_none_or(|t| t > now)
    }
}

/// A job with its outputs.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub job: JobRow,
    pub outputs: Vec<OutputRow>,
}

/// One line of a job's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    pub kind: String,
    pub chunk: Option<i32>,
    pub attempt: Option<i32>,
    pub detail: serde_json::Value,
}

/// A worker's sign of life: what it serves, how much at once, and which jobs' latents it holds.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat<'a> {
    pub worker: &'a str,
    pub denoise_slots: u32,
    pub vocode_slots: u32,
    /// Interactive tasks of each kind it serves that it takes beyond its slots.
    pub express_slots: u32,
    pub holds: &'a [Uuid],
    pub draining: bool,
    /// Where its model runs (`cpu`, `cuda:0`), for operators.
    pub device: &'a str,
    /// Denoise chunks per forward over its last minute, for operators.
    pub chunks_per_forward: f32,
    /// The model packs it serves (`name@version`); empty from an older worker.
    pub models: &'a [String],
}

/// A message refused to the dead-letter queue, and why.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Who refused it: a worker's name, or `coordinator`.
    pub by: &'a str,
    /// The queue it came from (`denoise`, `vocode`, `results`).
    pub queue: &'a str,
    pub error: &'a str,
    pub size_bytes: u64,
}

/// Dead letters' causes kept for operators (older ones are dropped as new ones come).
pub const DEAD_LETTERS_KEPT: i64 = 1000;

/// Counts for the metrics gauges: jobs by (state, priority rank), pending tasks by (priority
/// rank, kind) and dispatched tasks by kind.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub jobs: Vec<(String, i16, i64)>,
    pub backlog: Vec<(i16, String, i64)>,
    pub in_flight: Vec<(String, i64)>,
}

#[async_trait]
pub trait JobStore: TenantStore + ViewStore + UsageStore + WebhookStore + Send + Sync {
    /// Stores a new job and its first task, or returns the job an idempotency key already
    /// names. Returns the job and whether it was created now. RESOURCE_EXHAUSTED (and nothing
    /// stored) when the tenant's `max_jobs_in_flight` is reached.
    async fn insert_job(&self, tenant: &str, new: &NewJob) -> Result<(JobRecord, bool)>;
    /// A job in scope; `None` for an unknown id or another tenant's job.
    async fn get_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<JobRecord>>;
    /// A page of the jobs in scope, newest first, after the cursor `(created_at, id)`.
    async fn list_jobs(
        &self,
        scope: Scope<'_>,
        state: Option<JobState>,
        labels: &BTreeMap<String, String>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRecord>>;
    /// Cancels a job that has not ended, with its unfinished tasks. `None` for an unknown
    /// job; otherwise the job and whether this call cancelled it.
    async fn cancel_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<(JobRecord, bool)>>;
    /// Deletes a job in scope (`lifecycle::delete`): `None` for an unknown job or another
    /// tenant's; otherwise the job as it is now and what the delete did.
    async fn delete_job(
        &self,
        scope: Scope<'_>,
        id: Uuid,
    ) -> Result<Option<(JobRecord, crate::lifecycle::deleted::Deleted)>>;
    /// Deletes every job of a tenant's batch in one transaction (`lifecycle::delete_batch`):
    /// `None` for an unknown batch; otherwise each job and what its delete did.
    async fn delete_batch(
        &self,
        tenant: &str,
        batch: Uuid,
    ) -> Result<Option<Vec<(Uuid, crate::lifecycle::deleted::Deleted)>>>;
    /// Retries a failed or cancelled job with the same request and seed, from its last
    /// checkpoint when one is left (`lifecycle::retry`). `None` for a job not in scope.
    async fn retry_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<(JobRecord, Retried)>>;
    /// Retries the failed items of a tenant's batch (and its cancelled ones with
    /// `include_cancelled`) in one transaction; the batch finishes again. `None` for an unknown
    /// batch; otherwise the jobs retried, each with whether it was cancelled.
    async fn retry_batch_items(
        &self,
        tenant: &str,
        batch: Uuid,
        include_cancelled: bool,
    ) -> Result<Option<Vec<(Uuid, bool)>>>;
    /// Opens a dispatch round: a transaction that no other round runs beside (see
    /// `sched::plan_round` and `dispatcher::dispatch_once`).
    async fn begin_round(&self) -> Result<Box<dyn RoundTx + '_>>;
    /// Records a worker's heartbeat (its capacity and the latents it holds).
    async fn record_heartbeat(&self, hb: &Heartbeat<'_>) -> Result<()>;
    /// Records why a message was dead-lettered (the newest `DEAD_LETTERS_KEPT` are kept).
    async fn record_dead_letter(&self, letter: &DeadLetter<'_>) -> Result<()>;
    /// Records a replay of dead letters by `by`: (queue, messages, bytes) per queue.
    async fn record_replays(&self, by: &str, replays: &[(&str, u64, u64)]) -> Result<()>;
    /// Tasks of workers unheard of for `timeout` go back to the backlog as a new attempt at
    /// once, without waiting for their lease.
    async fn reclaim_lost(&self, timeout: Duration, policy: RetryPolicy) -> Result<()>;
    /// Dispatched tasks with no sign of life for `lease` go back to the backlog as a new
    /// attempt (or fail their job past the bound).
    async fn expire_leases(&self, lease: Duration, policy: RetryPolicy) -> Result<()>;
    /// What a queued job's place depends on (`sched::position`); `None` when the job is not
    /// queued or not in scope.
    async fn queue_read(
        &self,
        scope: Scope<'_>,
        job: Uuid,
        worker_timeout: Duration,
    ) -> Result<Option<crate::sched::position::QueueRead>>;
    /// Jobs past their deadline with nothing dispatched are cancelled (running ones when
    /// their chunk ends); returns how many.
    async fn expire_deadlines(&self) -> Result<u64>;
    /// Step progress of a live attempt (dropped for any other attempt).
    async fn record_progress(&self, task: TaskRef<'_>, steps_done: u32) -> Result<()>;
    /// The end of an attempt: advance the job, retry, or fail it. Stale and duplicate
    /// results are recorded in the history and change nothing else.
    async fn record_result(
        &self,
        task: TaskRef<'_>,
        outcome: &Outcome,
        policy: RetryPolicy,
    ) -> Result<Recorded>;
    /// Ended jobs, finished at least `grace` ago, whose checkpoints may still be in the blob
    /// store: at most `limit`, oldest first, each with its number of denoise chunks.
    async fn checkpoints_to_clear(&self, grace: Duration, limit: i64) -> Result<Vec<(Uuid, u32)>>;
    /// Marks the jobs' checkpoints deleted.
    async fn checkpoints_cleared(&self, jobs: &[Uuid]) -> Result<()>;
    /// Outputs whose retention ran out by `now` and whose objects are still there: at most
    /// `limit`, soonest expired first, as (job, index, key).
    async fn outputs_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, i32, String)>>;
    /// Marks outputs' objects deleted.
    async fn outputs_expired(&self, outputs: &[(Uuid, i32)]) -> Result<()>;
    /// Ended jobs whose own init clip is past its tenant's input retention by `now`: at most
    /// `limit`, as (job, key). A deleted job is not among them (its delete removed the clip).
    async fn inputs_to_expire(&self, now: DateTime<Utc>, limit: i64)
        -> Result<Vec<(Uuid, String)>>;
    /// Marks the jobs' inputs deleted.
    async fn inputs_expired(&self, jobs: &[Uuid]) -> Result<()>;
    /// Finished batches past their tenant's manifest retention by `now`, not yet cleared: at
    /// most `limit`, as (batch, tenant, results key, manifest URI).
    async fn manifests_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String, Option<String>, Option<String>)>>;
    /// Marks the batches' manifests deleted.
    async fn manifests_expired(&self, batches: &[Uuid]) -> Result<()>;
    /// A job's history, oldest first.
    async fn history(&self, job: Uuid) -> Result<Vec<HistoryEvent>>;
    /// Counts for the metrics gauges.
    async fn stats(&self) -> Result<Stats>;
    /// One round trip to the database (readiness probes).
    async fn ping(&self) -> Result<()>;
    /// Change notices: job changes for watchers, task changes for dispatchers.
    fn notifier(&self) -> &Notifier;
    /// The same store's backfill batches.
    fn batches(&self) -> &dyn BatchStore;
}

/// Denoise chunks of a job of `steps` in chunks of `chunk_steps` (its checkpoints' count).
pub(crate) fn denoise_chunks(steps: i32, chunk_steps: i32) -> u32 {
    tutti_shared::job::chunk_ranges(steps.max(0) as u32, chunk_steps.max(1) as u32).len() as u32
}
