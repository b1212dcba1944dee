//! The lifecycle's rules run over a store transaction. Each function does the whole change
//! of one event (a result, a progress report, an expired lease, a cancel); the caller commits.

use std::time::Duration;

use tutti_shared::job::{JobState, Stage, TaskKind, TaskState};
use tutti_shared::messages::{ErrorCode, Outcome};
use uuid::Uuid;

use super::events::outcome_name;
use super::rules::{after_denoise, after_failure, fence, AfterFailure, Fence};
use super::{check_output_key, Failure, LifecycleTx, LostTask, RetryPolicy, TaskRef};
use crate::error::Result;
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
        let detail = serde_json::json!({
            "outcome": outcome_name(outcome),
            "worker": worker,
            "task_state": row.state.as_str(),
            "current_attempt": row.attempt,
        });
        tx.event(job, "stale_result", Some(chunk), Some(attempt), detail)
            .await?;
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
            let detail = serde_json::json!({
                "kind": row.kind.as_str(),
                "worker": worker,
                "millis": millis,
                "to_step": row.to_step,
            });
            tx.event(job, "chunk_done", Some(chunk), Some(attempt), detail)
                .await?;
            match row.kind {
                TaskKind::Denoise => {
                    tx.raise_steps(job, row.to_step).await?;
                    let next = after_denoise(chunk, head.steps_total, head.chunk_steps);
                    tx.insert_task(job, &next, head.priority).await?;
                    match next.kind {
                        TaskKind::Denoise => tx.notes().job(job, "step"),
                        TaskKind::Vocode => {
                            tx.set_stage(job, Stage::Vocode).await?;
                            tx.notes().job(job, "stage");
                        }
                    }
                    if *held {
                        // Chunk affinity for the next chunk, dispatched right away.
                        tx.add_hold(worker, job).await?;
                    }
                }
                TaskKind::Vocode => {
                    for o in outputs {
                        check_output_key(&o.key, &head.tenant, job)?;
                    }
                    tx.put_outputs(job, outputs).await?;
                    tx.succeed(job).await?;
                    tx.record_usage(job).await?;
                    tx.event(job, "succeeded", None, None, serde_json::json!({}))
                        .await?;
                    tx.notes().job(job, "succeeded");
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
            retry_or_fail(tx, job, chunk, attempt, policy, failure).await
        }
        // The worker saw a cancel for a job that is not cancelled here (e.g. a stale
        // broadcast): run the chunk again.
        Outcome::Cancelled => {
            let failure = Failure {
                code: ErrorCode::CancelledByWorker,
                message: "worker stopped the task",
                retryable: true,
            };
            retry_or_fail(tx, job, chunk, attempt, policy.at_once(), failure).await
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
        tx.notes().job(task.job, "step");
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
        retry_or_fail(tx, t.job, t.chunk, t.attempt, policy.at_once(), failure).await?;
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
        retry_or_fail(tx, job, chunk, attempt, policy.at_once(), failure).await?;
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
    tx.event(job, "cancelled", None, None, serde_json::json!({}))
        .await?;
    tx.notes().job(job, "cancelled");
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
) -> Result<Option<crate::deletion::Deleted>> {
    let Some((head, _)) = tx.lock_scoped(scope, job).await? else {
        return Ok(None);
    };
    let cancelled = head.state.is_active() && cancel(tx, scope, job).await?;
    let (newly, keys) = tx.mark_deleted(job).await?;
    if newly {
        let detail = serde_json::json!({ "objects": keys.len(), "cancelled": cancelled });
        tx.event(job, "deleted", None, None, detail).await?;
    }
    Ok(Some(crate::deletion::Deleted {
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
) -> Result<Option<Vec<(Uuid, crate::deletion::Deleted)>>> {
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
        s if s.is_active() && tx.has_event(job, "retried").await? => {
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
    let detail = serde_json::json!({
        "from": head.state.as_str(),
        "from_chunk": chunk,
        "rewound": rewound,
    });
    let attempt = last.map(|(_, t)| t.attempt + 1);
    tx.event(job, "retried", Some(chunk), attempt, detail)
        .await?;
    tx.notes().job(job, "queued");
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
    chunk: u32,
    attempt: u32,
    policy: RetryPolicy,
    failure: Failure<'_>,
) -> Result<()> {
    let Failure { code, message, .. } = failure;
    let error = format!("{code}: {message}");
    let code = code.as_str();
    // A retry after the fact gives the task a fresh set of attempts.
    let base = tx
        .retried_at(job, chunk)
        .await?
        .map_or(0, |a| a.saturating_sub(1));
    match after_failure(attempt.saturating_sub(base), failure.retryable, policy) {
        AfterFailure::Retry { delay } => {
            tx.requeue(job, chunk, &error, delay).await?;
            let detail = serde_json::json!({
                "code": code,
                "message": message,
                "delay_ms": delay.as_millis() as u64,
            });
            tx.event(job, "retry", Some(chunk), Some(attempt), detail)
                .await?;
            tx.notes().job(job, "retry");
        }
        AfterFailure::Fail => {
            tx.fail_task(job, chunk, &error).await?;
            tx.fail_job(job, code, message).await?;
            tx.record_usage(job).await?;
            let detail = serde_json::json!({ "code": code, "message": message });
            tx.event(job, "failed", Some(chunk), Some(attempt), detail)
                .await?;
            tx.notes().job(job, "failed");
        }
    }
    // Its slot is free (and a retry is waiting work).
    tx.notes().tasks();
    Ok(())
}
