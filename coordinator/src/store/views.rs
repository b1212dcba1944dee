//! Read-only views for operators and the studio: the fleet as the workers table and the
//! dispatched tasks tell it, the backlog per stage and class, tenants' recent work, recent
//! failures, and a search of jobs by prompt text. Both dialects answer the same rows
//! (`views_pg.rs`, `views_sqlite.rs`); nothing here writes.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tutti_shared::job::JobState;
use uuid::Uuid;

use super::{JobRecord, JobStore, Scope};
use crate::error::{Error, Result};

/// A worker's latest heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub worker: String,
    pub denoise_slots: u32,
    pub vocode_slots: u32,
    pub express_slots: u32,
    pub holds: Vec<Uuid>,
    pub draining: bool,
    pub last_seen: DateTime<Utc>,
    pub device: String,
    pub chunks_per_forward: f32,
    /// The model packs it serves (`name@version`); empty when its release does not say.
    pub models: Vec<String>,
}

/// A dispatched task and the worker that has it (or was routed it).
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchedTask {
    pub worker: String,
    pub job: Uuid,
    pub chunk: u32,
    /// `denoise` or `vocode`.
    pub kind: String,
    /// The class's rank (0 interactive, 1 standard, 2 batch).
    pub rank: i16,
}

/// Unfinished tasks of one stage and class.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    pub kind: String,
    pub rank: i16,
    pub pending: u64,
    pub in_flight: u64,
    /// When the oldest pending task was created.
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// Work a tenant's tasks of one class finished in a window.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantWork {
    pub tenant: String,
    pub rank: i16,
    pub tasks: u64,
    pub millis: i64,
}

/// A failed job.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedJob {
    pub job: Uuid,
    pub tenant: String,
    pub code: String,
    pub message: String,
    pub at: Option<DateTime<Utc>>,
}

/// A task whose last attempt failed: out of attempts (`failed`) or waiting to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedTask {
    pub job: Uuid,
    pub chunk: u32,
    pub kind: String,
    pub attempt: u32,
    pub worker: Option<String>,
    pub error: String,
    pub state: String,
    pub at: Option<DateTime<Utc>>,
}

/// A dead-lettered message's recorded cause.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    pub by: String,
    pub queue: String,
    pub error: String,
    pub size_bytes: u64,
    pub at: DateTime<Utc>,
}

/// Dead letters of one queue an operator put back on it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRow {
    pub by: String,
    pub queue: String,
    pub messages: u64,
    pub size_bytes: u64,
    pub at: DateTime<Utc>,
}

/// Backlog, in flight and jobs not ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueOverview {
    pub queues: Vec<QueueRow>,
    pub jobs_queued: u64,
    pub jobs_running: u64,
}

/// At most this many failures of each kind are listed.
pub const FAILURES_LISTED: i64 = 20;

#[async_trait]
pub trait ViewStore: Send + Sync {
    /// Every worker that ever sent a heartbeat, by name.
    async fn workers_view(&self) -> Result<Vec<WorkerRow>>;
    /// Every dispatched task with a known worker.
    async fn dispatched_tasks(&self) -> Result<Vec<DispatchedTask>>;
    async fn queue_overview(&self) -> Result<QueueOverview>;
    /// Finished tasks' work per tenant and class over the last `window`.
    async fn tenant_work(&self, window: Duration) -> Result<Vec<TenantWork>>;
    /// Failed jobs, newest first.
    async fn failed_jobs(&self, limit: i64) -> Result<Vec<FailedJob>>;
    /// Tasks whose last attempt failed, newest first.
    async fn failed_tasks(&self, limit: i64) -> Result<Vec<FailedTask>>;
    /// Dead letters' causes, newest first.
    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>>;
    /// Dead-letter replays, newest first.
    async fn replays(&self, limit: i64) -> Result<Vec<ReplayRow>>;
    /// `list_jobs` narrowed to jobs whose prompt text contains `text` (case-insensitive).
    async fn search_jobs(
        &self,
        scope: Scope<'_>,
        state: Option<JobState>,
        labels: &BTreeMap<String, String>,
        text: &str,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRecord>>;
}

/// The records of `ids`, in order (a job deleted in between is left out).
pub(crate) async fn records(
    store: &dyn JobStore,
    scope: Scope<'_>,
    ids: Vec<Uuid>,
) -> Result<Vec<JobRecord>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = store.get_job(scope, id).await? {
            out.push(r);
        }
    }
    Ok(out)
}

/// (kind, rank, pending, in flight, oldest pending) of one stage and class.
pub(crate) type QueueCounts = (String, i16, i64, i64, Option<DateTime<Utc>>);

pub(crate) fn overview(rows: Vec<QueueCounts>, jobs: Vec<(String, i64)>) -> QueueOverview {
    let count = |s: &str| {
        jobs.iter()
            .find(|(state, _)| state == s)
            .map_or(0, |(_, n)| (*n).max(0) as u64)
    };
    QueueOverview {
        queues: rows
            .into_iter()
            .map(
                |(kind, rank, pending, in_flight, oldest_pending)| QueueRow {
                    kind,
                    rank,
                    pending: pending.max(0) as u64,
                    in_flight: in_flight.max(0) as u64,
                    oldest_pending,
                },
            )
            .collect(),
        jobs_queued: count("queued"),
        jobs_running: count("running"),
    }
}

pub(crate) fn tenant_work((tenant, rank, tasks, millis): (String, i16, i64, i64)) -> TenantWork {
    TenantWork {
        tenant,
        rank,
        tasks: tasks.max(0) as u64,
        millis,
    }
}

/// A stored id of the SQLite dialect (text).
pub(crate) fn parse_uuid(s: &str) -> Result<Uuid> {
    s.parse()
        .map_err(|e| Error::Internal(format!("stored id {s:?}: {e}")))
}
