//! The lifecycle's rules run over a store transaction. Each function does the whole change
//! of one event (a result, a progress report, an expired lease, a cancel); the caller commits.

use std::time::Duration;

use tutti_shared::job::{JobState, Stage, TaskKind, TaskState};
use tutti_shared::messages::{ErrorCode, Outcome};
use uuid::Uuid;

use super::events::{EventKind, JobEvent};
use super::rules::{after_denoise, after_failure, fence, AfterFailure, Fence};
use super::{check_output_key, Failure, LifecycleTx, LostTask, RetryPolicy, TaskRef};
use crate::error::Result;
use crate::notify::Change;
use crate::tenancy::Scope;

/// The end of an attempt: advance the job, retry, or fail it. A stale or duplicate result is
/// recorded in the history and changes nothing else.
/// What a worker's result did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// It moved its job on (or retried or failed it).
    Applied,
    /// Stale, duplicate, or for an ended job: kept in the history, nothing else.
    Dropped,
    /// No task of that job and chunk exists: a job this farm never accepted.
    UnknownTask,
}

pub async fn record_result(
    tx: &mut dyn LifecycleTx,
    task: TaskRef<'_>,
    outcome: &Outcome,
    policy: RetryPolicy,
) -> Result<Recorded> {
    let TaskRef {
        job,
        chunk,
        attempt,
        worker,
    } = task;
    let Some(row) = tx.lock_task(job, chunk).await? else {
        tracing::warn!(job_id = %job, chunk, attempt, "result for an unknown task, dropped");
        return Ok(Recorded::UnknownTask);
    };
    if fence(&row, attempt) == Fence::Stale {
        tracing::info!(job_id = %job, chunk, attempt, current_attempt = row.attempt, task_state = %row.state, "stale or duplicate result, dropped");
        let stale = JobEvent::StaleResult {
            stage: row.kind,
            outcome,
            worker,
            task_state: row.state,
            current_attempt: row.attempt,
        };
        tx.event(job, Some(chunk), Some(attempt), &stale).await?;
        return Ok(Recorded::Dropped);
    }
    let head = tx.lock_job(job).await?;
    if !head.state.is_active() {
        return Ok(Recorded::Dropped);
    }
    let applied: Result<()> = match outcome {
        Outcome::Done {
            millis,
            outputs,
            held,
        } => {
            tx.finish(task, *millis).await?;
            tx.add_stage_time(job, row.kind, *millis).await?;
            // Past its deadline, a job stops at this chunk boundary.
            let stop = row.kind == TaskKind::Denoise && head.deadline_passed;
            let next = match row.kind {
                TaskKind::Denoise if !stop => {
                    Some(after_denoise(chunk, head.steps_total, head.chunk_steps))
                }
                _ => None,
            };
            let done = JobEvent::ChunkDone {
                stage: row.kind,
                worker,
                millis: *millis,
                to_step: row.to_step,
                next: next.as_ref().map(|n| n.kind),
            };
            tx.event(job, Some(chunk), Some(attempt), &done).await?;
            match next {
                Some(next) => {
                    tx.raise_steps(job, row.to_step).await?;
                    tx.insert_task(job, &next, head.priority).await?;
                    if next.kind == TaskKind::Vocode {
                        tx.set_stage(job, Stage::Vocode).await?;
                    }
                    if *held {
                        // Chunk affinity for the next chunk, dispatched right away.
                        tx.add_hold(worker, job).await?;
                    }
                }
                None if stop => {
                    tx.raise_steps(job, row.to_step).await?;
                    cancel_for_deadline(tx, job).await?;
                }
                None => {
                    for o in outputs {
                        check_output_key(&o.key, &head.tenant, job)?;
                    }
                    tx.put_outputs(job, outputs).await?;
                    tx.succeed(job).await?;
                    tx.record_usage(job).await?;
                    tx.event(job, None, None, &JobEvent::Succeeded).await?;
                }
            }
            // A slot is free (and a denoise chunk queued the job's next task): waiting work goes
            // out now, not at the next poll.
            tx.notes().tasks();
            Ok(())
        }
        Outcome::Failed {
            code,
            message,
            retryable,
        } => {
            let failure = Failure {
                code: *code,
                message,
                retryable: *retryable,
            };
            retry_or_fail(tx, job, (chunk, row.kind), attempt, policy, failure).await
        }
        // The worker saw a cancel for a job that is not cancelled here (e.g. a stale
        // broadcast): run the chunk again.
        Outcome::Cancelled => {
            let failure = Failure {
                code: ErrorCode::CancelledByWorker,
                message: "worker stopped the task",
                retryable: true,
            };
            let at = (chunk, row.kind);
            retry_or_fail(tx, job, at, attempt, policy.at_once(), failure).await
        }
    };
    applied.map(|()| Recorded::Applied)
}

/// Step progress of a live attempt (dropped for any other attempt).
pub async fn record_progress(
    tx: &mut dyn LifecycleTx,
    task: TaskRef<'_>,
    steps_done: u32,
) -> Result<()> {
    if tx.touch(task).await? && tx.progress(task.job, steps_done).await? {
        tx.notes().job(task.job, Change::Step);
    }
    Ok(())
}

/// Dispatched tasks with no sign of life for `lease` go back to the backlog as a new attempt
/// at once (or fail their job past the bound).
pub async fn expire_leases(
    tx: &mut dyn LifecycleTx,
    lease: Duration,
    policy: RetryPolicy,
) -> Result<()> {
    let message = format!("task lease of {lease:?} expired");
    for t in tx.expired(lease).await? {
        let failure = Failure {
            code: ErrorCode::LeaseExpired,
            message: &message,
            retryable: true,
        };
        let at = (t.chunk, t.kind);
        retry_or_fail(tx, t.job, at, t.attempt, policy.at_once(), failure).await?;
    }
    Ok(())
}

/// Tasks of workers unheard of for `timeout` go back to the backlog as a new attempt at once,
/// without waiting for their lease.
pub async fn reclaim_lost(
    tx: &mut dyn LifecycleTx,
    timeout: Duration,
    policy: RetryPolicy,
) -> Result<()> {
    for LostTask {
        job,
        kind,
        chunk,
        attempt,
        worker,
    } in tx.of_lost_workers(timeout).await?
    {
        let message = format!(
            "worker {} stopped sending heartbeats",
            worker.as_deref().unwrap_or("?")
        );
        let failure = Failure {
            code: ErrorCode::WorkerLost,
            message: &message,
            retryable: true,
        };
        retry_or_fail(tx, job, (chunk, kind), attempt, policy.at_once(), failure).await?;
    }
    Ok(())
}

/// Cancels a job in scope that has not ended, with its unfinished tasks; true when this call
/// cancelled it.
pub async fn cancel(tx: &mut dyn LifecycleTx, scope: Scope<'_>, job: Uuid) -> Result<bool> {
    if !tx.cancel(scope, job).await? {
        return Ok(false);
    }
    tx.record_usage(job).await?;
    let ev = JobEvent::Cancelled {
        batch: None,
        deadline: false,
    };
    tx.event(job, None, None, &ev).await?;
    // Its dispatched tasks' slots are free.
    tx.notes().tasks();
    Ok(true)
}

/// Deletes a job in scope: cancels it first when it has not ended, then marks it deleted
/// (`LifecycleTx::mark_deleted`). `None` for a job not in scope.
pub async fn delete(
    tx: &mut dyn LifecycleTx,
    scope: Scope<'_>,
    job: Uuid,
) -> Result<Option<crate::lifecycle::deleted::Deleted>> {
    let Some((head, _)) = tx.lock_scoped(scope, job).await? else {
        return Ok(None);
    };
    let cancelled = head.state.is_active() && cancel(tx, scope, job).await?;
    let (newly, keys) = tx.mark_deleted(job).await?;
    if newly {
        let ev = JobEvent::Deleted {
            objects: keys.len(),
            cancelled,
        };
        tx.event(job, None, None, &ev).await?;
    }
    Ok(Some(crate::lifecycle::deleted::Deleted {
        keys,
        cancelled,
        newly,
    }))
}

/// Deletes every job of a tenant's batch (`delete`); `None` for an unknown batch.
pub async fn delete_batch(
    tx: &mut dyn LifecycleTx,
    tenant: &str,
    batch: Uuid,
) -> Result<Option<Vec<(Uuid, crate::lifecycle::deleted::Deleted)>>> {
    let every = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];
    let Some(jobs) = tx.batch_jobs(tenant, batch, &every).await? else {
        return Ok(None);
    };
    let mut deleted = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(d) = delete(tx, Scope::Tenant(tenant), job).await? {
            deleted.push((job, d));
        }
    }
    Ok(Some(deleted))
}

/// Jobs past their deadline with nothing dispatched are cancelled now (a running chunk's job
/// is cancelled when the chunk ends, by `record_result`). Returns how many.
pub async fn expire_deadlines(tx: &mut dyn LifecycleTx) -> Result<u64> {
    let mut n = 0;
    for job in tx.past_deadline().await? {
        n += u64::from(cancel_for_deadline(tx, job).await?);
    }
    Ok(n)
}

/// Cancels a job for its deadline, saying so in its error, its history and its webhook.
async fn cancel_for_deadline(tx: &mut dyn LifecycleTx, job: Uuid) -> Result<bool> {
    if !tx.cancel(Scope::All, job).await? {
        return Ok(false);
    }
    let code = ErrorCode::DeadlineExceeded;
    tx.set_error(
        job,
        code.as_str(),
        "the job's deadline passed before it finished",
    )
    .await?;
    tx.record_usage(job).await?;
    let ev = JobEvent::Cancelled {
        batch: None,
        deadline: true,
    };
    tx.event(job, None, None, &ev).await?;
    tx.notes().tasks();
    Ok(true)
}

/// What a retry after the fact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// Back to queued from `chunk` (0 with `rewound`: from the start, no checkpoint to resume).
    Requeued {
        chunk: u32,
        rewound: bool,
        /// It was cancelled: workers must forget its cancel.
        was_cancelled: bool,
    },
    /// Already re-queued by an earlier retry and not ended since: nothing changed.
    AlreadyRequeued,
    /// Not failed or cancelled, and never retried: refused.
    Refused(JobState),
    /// Retention deleted its init clip: it cannot run again.
    InputsGone,
}

/// A failed or cancelled job goes back to queued with the same request and seed: its last
/// task runs again as the next attempt, from the checkpoint it started from, or, once the
/// janitor has cleared the checkpoints, the job starts over. `None` for a job not in scope.
pub async fn retry(
    tx: &mut dyn LifecycleTx,
    scope: Scope<'_>,
    job: Uuid,
) -> Result<Option<Retried>> {
    let Some((head, cleared)) = tx.lock_scoped(scope, job).await? else {
        return Ok(None);
    };
    match head.state {
        JobState::Failed | JobState::Cancelled => {}
        // Only a retry re-queues an ended job, so an active job with a retry in its history
        // is this retry's own (a client repeating the call).
        s if s.is_active() && tx.has_event(job, EventKind::Retried).await? => {
            return Ok(Some(Retried::AlreadyRequeued))
        }
        s => return Ok(Some(Retried::Refused(s))),
    }
    if tx.inputs_cleared(job).await? {
        return Ok(Some(Retried::InputsGone));
    }
    let last = tx.last_task(job).await?;
    let resumable =
        matches!(last, Some((_, t)) if matches!(t.state, TaskState::Failed | TaskState::Cancelled));
    let (chunk, rewound) = match last {
        Some((chunk, _)) if resumable && !cleared => (chunk, false),
        _ => {
            tx.rewind(job).await?;
            (0, true)
        }
    };
    tx.reopen_task(job, chunk).await?;
    tx.reopen_job(job).await?;
    let retried = JobEvent::Retried {
        from: head.state,
        from_chunk: chunk,
        rewound,
    };
    let attempt = last.map(|(_, t)| t.attempt + 1);
    tx.event(job, Some(chunk), attempt, &retried).await?;
    tx.notes().tasks();
    Ok(Some(Retried::Requeued {
        chunk,
        rewound,
        was_cancelled: head.state == JobState::Cancelled,
    }))
}

/// Retries a tenant's batch items whose jobs failed (and cancelled ones with
/// `include_cancelled`), and reopens the batch so that its results are written again. `None`
/// for an unknown batch; otherwise the jobs retried, with whether each was cancelled.
pub async fn retry_batch(
    tx: &mut dyn LifecycleTx,
    tenant: &str,
    batch: Uuid,
    include_cancelled: bool,
) -> Result<Option<Vec<(Uuid, bool)>>> {
    let mut states = vec![JobState::Failed];
    if include_cancelled {
        states.push(JobState::Cancelled);
    }
    let Some(jobs) = tx.batch_jobs(tenant, batch, &states).await? else {
        return Ok(None);
    };
    let mut retried = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(Retried::Requeued { was_cancelled, .. }) =
            retry(tx, Scope::Tenant(tenant), job).await?
        {
            retried.push((job, was_cancelled));
        }
    }
    if !retried.is_empty() {
        tx.reopen_batch(batch, include_cancelled).await?;
    }
    Ok(Some(retried))
}

/// A failed attempt: back to the backlog as attempt + 1 after the policy's backoff, or, past
/// the bound or for an error a retry cannot fix, the job fails with the cause.
async fn retry_or_fail(
    tx: &mut dyn LifecycleTx,
    job: Uuid,
    (chunk, stage): (u32, TaskKind),
    attempt: u32,
    policy: RetryPolicy,
    failure: Failure<'_>,
) -> Result<()> {
    let Failure { code, message, .. } = failure;
    let error = format!("{code}: {message}");
    // A retry after the fact gives the task a fresh set of attempts.
    let base = tx
        .retried_at(job, chunk)
        .await?
        .map_or(0, |a| a.saturating_sub(1));
    match after_failure(attempt.saturating_sub(base), failure.retryable, policy) {
        AfterFailure::Retry { delay } => {
            tx.requeue(job, chunk, &error, delay).await?;
            let retry = JobEvent::Retry {
                stage,
                code,
                message,
                delay,
            };
            tx.event(job, Some(chunk), Some(attempt), &retry).await?;
        }
        AfterFailure::Fail => {
            tx.fail_task(job, chunk, &error).await?;
            tx.fail_job(job, code.as_str(), message).await?;
            tx.record_usage(job).await?;
            let failed = JobEvent::Failed {
                stage,
                code,
                message,
            };
            tx.event(job, Some(chunk), Some(attempt), &failed).await?;
        }
    }
    // Its slot is free (and a retry is waiting work).
    tx.notes().tasks();
    Ok(())
}
