//! The reads and writes of the lifecycle inside one store transaction: SQL only, one
//! implementation per dialect. Every write is unconditional; the decisions are `rules`'.

use std::time::Duration;

use async_trait::async_trait;
use tutti_shared::job::{JobState, Stage, TaskKind, TaskState};
use tutti_shared::messages::OutputInfo;
use uuid::Uuid;

use super::events::{EventKind, JobEvent};
use super::rules::NextTask;
use super::TaskRef;
use crate::error::Result;
use crate::notify::Pending;
use crate::tenancy::Scope;

/// What the fence and the advance read of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRow {
    pub kind: TaskKind,
    pub state: TaskState,
    pub attempt: u32,
    pub to_step: u32,
}

/// What the advance reads of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHead {
    pub state: JobState,
    pub priority: i16,
    pub steps_total: u32,
    pub chunk_steps: u32,
    pub tenant: String,
    /// Its deadline has passed (read by `lock_job`; false elsewhere).
    pub deadline_passed: bool,
}

/// A dispatched task whose worker went quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostTask {
    pub job: Uuid,
    pub kind: TaskKind,
    pub chunk: u32,
    pub attempt: u32,
    /// The worker it was with, when known.
    pub worker: Option<String>,
}

#[async_trait]
pub trait LifecycleTx: Send {
    /// The task, locked for the transaction; `None` when there is no such task.
    async fn lock_task(&mut self, job: Uuid, chunk: u32) -> Result<Option<TaskRow>>;
    /// The task's job, locked for the transaction.
    async fn lock_job(&mut self, job: Uuid) -> Result<JobHead>;
    /// Dispatched tasks with no sign of life for `lease`, locked (others skip them).
    async fn expired(&mut self, lease: Duration) -> Result<Vec<LostTask>>;
    /// Dispatched tasks of workers unheard of for `timeout`, locked (others skip them).
    async fn of_lost_workers(&mut self, timeout: Duration) -> Result<Vec<LostTask>>;

    /// A sign of life of a dispatched attempt; false when it is not the live attempt.
    async fn touch(&mut self, task: TaskRef<'_>) -> Result<bool>;
    /// Moves a running job's step count forward to `steps_done`; false when it was not behind.
    async fn progress(&mut self, job: Uuid, steps_done: u32) -> Result<bool>;
    /// The task is done by `task.worker` in `millis`.
    async fn finish(&mut self, task: TaskRef<'_>, millis: u64) -> Result<()>;
    /// Adds `millis` to the job's time in `kind`'s stage.
    async fn add_stage_time(&mut self, job: Uuid, kind: TaskKind, millis: u64) -> Result<()>;
    /// Raises the job's steps done to at least `steps`.
    async fn raise_steps(&mut self, job: Uuid, steps: u32) -> Result<()>;
    async fn insert_task(&mut self, job: Uuid, task: &NextTask, priority: i16) -> Result<()>;
    async fn set_stage(&mut self, job: Uuid, stage: Stage) -> Result<()>;
    /// Until its next heartbeat says otherwise, `worker` holds the job's latent.
    async fn add_hold(&mut self, worker: &str, job: Uuid) -> Result<()>;
    /// Stores (or replaces, for a redone vocode) the job's outputs.
    async fn put_outputs(&mut self, job: Uuid, outputs: &[OutputInfo]) -> Result<()>;
    async fn succeed(&mut self, job: Uuid) -> Result<()>;
    /// Back to the backlog as the next attempt, due after `delay`.
    async fn requeue(&mut self, job: Uuid, chunk: u32, error: &str, delay: Duration) -> Result<()>;
    async fn fail_task(&mut self, job: Uuid, chunk: u32, error: &str) -> Result<()>;
    /// Fails the job, if it is still active, with the cause.
    async fn fail_job(&mut self, job: Uuid, code: &str, message: &str) -> Result<()>;
    /// Cancels a job in scope that is still active, with its unfinished tasks; false when there
    /// was nothing to cancel.
    async fn cancel(&mut self, scope: Scope<'_>, job: Uuid) -> Result<bool>;
    /// A job in scope, locked, with whether its checkpoints were cleared; `None` for an unknown
    /// id or another tenant's job.
    async fn lock_scoped(&mut self, scope: Scope<'_>, job: Uuid)
        -> Result<Option<(JobHead, bool)>>;
    /// The job's last task (its highest chunk).
    async fn last_task(&mut self, job: Uuid) -> Result<Option<(u32, TaskRow)>>;
    /// The attempt a retry after the fact started the task at (its `retried` event), if any.
    async fn retried_at(&mut self, job: Uuid, chunk: u32) -> Result<Option<u32>>;
    /// Whether retention deleted the job's inputs (its init clip).
    async fn inputs_cleared(&mut self, job: Uuid) -> Result<bool>;
    /// Whether the job's history holds an event of `kind`.
    async fn has_event(&mut self, job: Uuid, kind: EventKind) -> Result<bool>;
    /// An ended task back to the backlog as its next attempt, due now.
    async fn reopen_task(&mut self, job: Uuid, chunk: u32) -> Result<()>;
    /// Drops every task after the first (their checkpoints are gone) and zeroes the progress.
    async fn rewind(&mut self, job: Uuid) -> Result<()>;
    /// An ended job back to queued, its error and its deadline cleared.
    async fn reopen_job(&mut self, job: Uuid) -> Result<()>;
    /// Active jobs past their deadline with nothing dispatched (at a chunk boundary), locked
    /// (others skip them).
    async fn past_deadline(&mut self) -> Result<Vec<Uuid>>;
    /// Records why an ended job ended (a cancel for its deadline).
    async fn set_error(&mut self, job: Uuid, code: &str, message: &str) -> Result<()>;
    /// The jobs of a tenant's batch items in `states`; `None` when there is no such batch.
    async fn batch_jobs(
        &mut self,
        tenant: &str,
        batch: Uuid,
        states: &[JobState],
    ) -> Result<Option<Vec<Uuid>>>;
    /// The batch finishes again (its results are rewritten); `uncancel` lifts its cancel.
    async fn reopen_batch(&mut self, batch: Uuid, uncancel: bool) -> Result<()>;
    /// Marks an ended job deleted (its prompt blanked, its outputs gone) unless it already is;
    /// returns whether this call did, and the blob keys of its outputs and own inputs.
    async fn mark_deleted(&mut self, job: Uuid) -> Result<(bool, Vec<String>)>;
    /// Writes (or rewrites) the usage record of a job that has ended; nothing for a live job.
    async fn record_usage(&mut self, job: Uuid) -> Result<()>;
    /// A line of the job's history, the metric that follows it, and its notice (sent with
    /// `notes` at commit).
    async fn event(
        &mut self,
        job: Uuid,
        chunk: Option<u32>,
        attempt: Option<u32>,
        ev: &JobEvent<'_>,
    ) -> Result<()>;
    /// Change notices, sent once the transaction commits.
    fn notes(&mut self) -> &mut Pending;
    /// Commits, then sends the notices.
    async fn commit(self: Box<Self>) -> Result<()>;
}
