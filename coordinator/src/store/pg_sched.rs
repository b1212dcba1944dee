//! The task lifecycle on Postgres after dispatch (`pg_dispatch.rs`): lease expiry, progress,
//! and results fenced by (job, chunk, attempt). A crash between publish and commit
//! re-dispatches the same attempt; the fence drops the duplicate result.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tutti_shared::job::{chunk_ranges, TaskKind};
use tutti_shared::messages::{Outcome, OutputInfo};
use uuid::Uuid;

use super::pg::{event, insert_task, notify, notify_job, TASKS_CHANNEL};
use super::{check_output_key, outcome_name, RetryPolicy, TaskRef};
use crate::error::{Error, Result};

pub(super) async fn expire_leases(
    pool: &PgPool,
    lease: Duration,
    policy: RetryPolicy,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let expired: Vec<(Uuid, i32, i32)> = sqlx::query_as(
        "SELECT job_id, chunk, attempt FROM tasks \
         WHERE state = 'dispatched' AND heartbeat_at < now() - make_interval(secs => $1) \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(lease.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    for (job, chunk, attempt) in expired {
        let error = format!("task lease of {:?} expired", lease);
        let policy = RetryPolicy {
            backoff: Duration::ZERO,
            ..policy
        };
        retry_or_fail(
            &mut tx,
            job,
            chunk,
            attempt as u32,
            policy,
            "LEASE_EXPIRED",
            &error,
            true,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn progress(pool: &PgPool, task: TaskRef<'_>, steps_done: u32) -> Result<()> {
    let TaskRef {
        job,
        chunk,
        attempt,
        worker,
    } = task;
    let mut tx = pool.begin().await?;
    let live = sqlx::query(
        "UPDATE tasks SET heartbeat_at = now(), worker = $4 \
         WHERE job_id = $1 AND chunk = $2 AND attempt = $3 AND state = 'dispatched'",
    )
    .bind(job)
    .bind(chunk as i32)
    .bind(attempt as i32)
    .bind(worker)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if live {
        let moved = sqlx::query(
            "UPDATE jobs SET steps_done = $2 WHERE id = $1 AND state = 'running' AND steps_done < $2",
        )
        .bind(job)
        .bind(steps_done as i32)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if moved {
            notify_job(&mut tx, job, "step").await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn result(
    pool: &PgPool,
    task: TaskRef<'_>,
    outcome: &Outcome,
    policy: RetryPolicy,
) -> Result<()> {
    let TaskRef {
        job,
        chunk,
        attempt,
        worker,
    } = task;
    let mut tx = pool.begin().await?;
    let task: Option<(String, String, i32, i32, i32)> = sqlx::query_as(
        "SELECT kind, state, attempt, from_step, to_step FROM tasks \
         WHERE job_id = $1 AND chunk = $2 FOR UPDATE",
    )
    .bind(job)
    .bind(chunk as i32)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((kind, state, current_attempt, _from, to_step)) = task else {
        tracing::warn!(job_id = %job, chunk, attempt, "result for an unknown task, dropped");
        return Ok(());
    };
    let outcome_name = outcome_name(outcome);
    if state != "dispatched" || current_attempt as u32 != attempt {
        tracing::info!(job_id = %job, chunk, attempt, current_attempt, task_state = %state, "stale or duplicate result, dropped");
        event(
            &mut tx,
            job,
            "stale_result",
            Some(chunk),
            Some(attempt),
            serde_json::json!({ "outcome": outcome_name, "worker": worker, "task_state": state, "current_attempt": current_attempt }),
        )
        .await?;
        tx.commit().await?;
        return Ok(());
    }
    let (job_state, priority, steps_total, chunk_steps, tenant): (String, i16, i32, i32, String) =
        sqlx::query_as(
            "SELECT state, priority, steps_total, chunk_steps, tenant FROM jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(job)
        .fetch_one(&mut *tx)
        .await?;
    if job_state != "running" && job_state != "queued" {
        tx.commit().await?;
        return Ok(());
    }
    let kind: TaskKind = kind
        .parse()
        .map_err(|e| Error::Internal(format!("task kind: {e}")))?;
    match outcome {
        Outcome::Done {
            millis,
            outputs,
            held,
        } => {
            sqlx::query(
                "UPDATE tasks SET state = 'done', finished_at = now(), worker = $3, millis = $4 \
                 WHERE job_id = $1 AND chunk = $2",
            )
            .bind(job)
            .bind(chunk as i32)
            .bind(worker)
            .bind(*millis as i64)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE jobs SET timings = jsonb_set(timings, ARRAY[$2::text], \
                   to_jsonb(COALESCE((timings->>$2)::bigint, 0) + $3)) WHERE id = $1",
            )
            .bind(job)
            .bind(kind.as_str())
            .bind(*millis as i64)
            .execute(&mut *tx)
            .await?;
            event(
                &mut tx,
                job,
                "chunk_done",
                Some(chunk),
                Some(attempt),
                serde_json::json!({ "kind": kind.as_str(), "worker": worker, "millis": millis, "to_step": to_step }),
            )
            .await?;
            match kind {
                TaskKind::Denoise => {
                    sqlx::query(
                        "UPDATE jobs SET steps_done = GREATEST(steps_done, $2) WHERE id = $1",
                    )
                    .bind(job)
                    .bind(to_step)
                    .execute(&mut *tx)
                    .await?;
                    let ranges = chunk_ranges(steps_total as u32, chunk_steps as u32);
                    let next = chunk + 1;
                    match ranges.get(next as usize) {
                        Some((from, to)) => {
                            insert_task(&mut tx, job, next, "denoise", *from, *to, priority)
                                .await?;
                            notify_job(&mut tx, job, "step").await?;
                        }
                        None => {
                            insert_task(
                                &mut tx,
                                job,
                                next,
                                "vocode",
                                steps_total as u32,
                                steps_total as u32,
                                priority,
                            )
                            .await?;
                            sqlx::query("UPDATE jobs SET stage = 'vocode' WHERE id = $1")
                                .bind(job)
                                .execute(&mut *tx)
                                .await?;
                            notify_job(&mut tx, job, "stage").await?;
                        }
                    }
                    if *held {
                        // Until its next heartbeat says otherwise, the worker holds the latent
                        // (chunk affinity for the next chunk, dispatched right away).
                        sqlx::query(
                            "UPDATE workers SET holds = holds || to_jsonb($2::text) \
                             WHERE worker = $1 AND NOT holds @> to_jsonb($2::text)",
                        )
                        .bind(worker)
                        .bind(job.to_string())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                TaskKind::Vocode => {
                    insert_outputs(&mut tx, job, &tenant, outputs).await?;
                    sqlx::query(
                        "UPDATE jobs SET state = 'succeeded', stage = 'done', finished_at = now() WHERE id = $1",
                    )
                    .bind(job)
                    .execute(&mut *tx)
                    .await?;
                    event(&mut tx, job, "succeeded", None, None, serde_json::json!({})).await?;
                    notify_job(&mut tx, job, "succeeded").await?;
                }
            }
            // A slot is free (and a denoise chunk queued the job's next task): waiting work goes
            // out now, not at the next poll.
            notify(&mut tx, TASKS_CHANNEL, "").await?;
        }
        Outcome::Failed {
            code,
            message,
            retryable,
        } => {
            retry_or_fail(
                &mut tx,
                job,
                chunk as i32,
                attempt,
                policy,
                code,
                message,
                *retryable,
            )
            .await?;
        }
        Outcome::Cancelled => {
            // The worker saw a cancel for a job that is not cancelled here (e.g. a stale
            // broadcast): run the chunk again.
            retry_or_fail(
                &mut tx,
                job,
                chunk as i32,
                attempt,
                RetryPolicy {
                    backoff: Duration::ZERO,
                    ..policy
                },
                "CANCELLED_BY_WORKER",
                "worker stopped the task",
                true,
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn insert_outputs(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    tenant: &str,
    outputs: &[OutputInfo],
) -> Result<()> {
    for o in outputs {
        check_output_key(&o.key, tenant, job)?;
        let format = o.key.rsplit('.').next().unwrap_or("wav");
        sqlx::query(
            "INSERT INTO outputs (job_id, idx, key, sha256, size_bytes, duration_s, sample_rate, format) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (job_id, idx) DO UPDATE SET key = EXCLUDED.key, sha256 = EXCLUDED.sha256, \
               size_bytes = EXCLUDED.size_bytes, duration_s = EXCLUDED.duration_s, \
               sample_rate = EXCLUDED.sample_rate, format = EXCLUDED.format",
        )
        .bind(job)
        .bind(o.index as i32)
        .bind(&o.key)
        .bind(&o.sha256)
        .bind(o.size_bytes as i64)
        .bind(o.duration_s)
        .bind(o.sample_rate as i32)
        .bind(format)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A failed attempt: back to the backlog as attempt + 1 after an exponential backoff, or, past
/// the bound or for an error a retry cannot fix, the job fails with the cause.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn retry_or_fail(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    chunk: i32,
    attempt: u32,
    policy: RetryPolicy,
    code: &str,
    message: &str,
    retryable: bool,
) -> Result<()> {
    if retryable && attempt < policy.max_attempts {
        let delay = policy.delay(attempt);
        sqlx::query(
            "UPDATE tasks SET state = 'pending', attempt = attempt + 1, last_error = $3, \
               not_before = now() + make_interval(secs => $4) \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job)
        .bind(chunk)
        .bind(format!("{code}: {message}"))
        .bind(delay.as_secs_f64())
        .execute(&mut **tx)
        .await?;
        event(
            tx,
            job,
            "retry",
            Some(chunk as u32),
            Some(attempt),
            serde_json::json!({ "code": code, "message": message, "delay_ms": delay.as_millis() as u64 }),
        )
        .await?;
        notify_job(tx, job, "retry").await?;
        notify(tx, TASKS_CHANNEL, "").await?;
    } else {
        sqlx::query(
            "UPDATE tasks SET state = 'failed', finished_at = now(), last_error = $3 \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job)
        .bind(chunk)
        .bind(format!("{code}: {message}"))
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, finished_at = now() \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(job)
        .bind(code)
        .bind(message)
        .execute(&mut **tx)
        .await?;
        event(
            tx,
            job,
            "failed",
            Some(chunk as u32),
            Some(attempt),
            serde_json::json!({ "code": code, "message": message }),
        )
        .await?;
        notify_job(tx, job, "failed").await?;
        // Its slot is free.
        notify(tx, TASKS_CHANNEL, "").await?;
    }
    Ok(())
}
