//! The task lifecycle on SQLite after dispatch, one to one with `pg_sched.rs`: the same
//! states, fences and history, with the single-writer transaction in place of row locks.

use std::time::Duration;

use tutti_shared::job::{chunk_ranges, TaskKind};
use tutti_shared::messages::{Outcome, OutputInfo};
use uuid::Uuid;

use super::notify::Pending;
use super::sqlite::{event, insert_task, now_us, uuid, SqliteStore, Tx};
use super::{check_output_key, outcome_name, RetryPolicy, TaskRef};
use crate::error::{Error, Result};

pub(super) async fn expire_leases(
    store: &SqliteStore,
    lease: Duration,
    policy: RetryPolicy,
) -> Result<()> {
    let (w, mut tx) = store.begin_write().await?;
    let cutoff = now_us() - lease.as_micros() as i64;
    let expired: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT job_id, chunk, attempt FROM tasks WHERE state = 'dispatched' AND heartbeat_at < $1",
    )
    .bind(cutoff)
    .fetch_all(&mut *tx)
    .await?;
    let mut notes = Pending::default();
    let policy = RetryPolicy {
        backoff: Duration::ZERO,
        ..policy
    };
    for (job, chunk, attempt) in expired {
        let error = format!("task lease of {lease:?} expired");
        retry_or_fail(
            &mut tx,
            &mut notes,
            uuid(&job)?,
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
    drop(w);
    notes.send(&store.notifier);
    Ok(())
}

pub(super) async fn progress(
    store: &SqliteStore,
    task: TaskRef<'_>,
    steps_done: u32,
) -> Result<()> {
    let (w, mut tx) = store.begin_write().await?;
    let job = task.job.to_string();
    let live = sqlx::query(
        "UPDATE tasks SET heartbeat_at = $4, worker = $5 \
         WHERE job_id = $1 AND chunk = $2 AND attempt = $3 AND state = 'dispatched'",
    )
    .bind(&job)
    .bind(i64::from(task.chunk))
    .bind(i64::from(task.attempt))
    .bind(now_us())
    .bind(task.worker)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let mut moved = false;
    if live {
        moved = sqlx::query(
            "UPDATE jobs SET steps_done = $2 WHERE id = $1 AND state = 'running' AND steps_done < $2",
        )
        .bind(&job)
        .bind(i64::from(steps_done))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
    }
    tx.commit().await?;
    drop(w);
    if moved {
        store.notifier.job_changed(task.job, "step");
    }
    Ok(())
}

pub(super) async fn result(
    store: &SqliteStore,
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
    let id = job.to_string();
    let (w, mut tx) = store.begin_write().await?;
    let mut notes = Pending::default();
    let row: Option<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT kind, state, attempt, to_step FROM tasks WHERE job_id = $1 AND chunk = $2",
    )
    .bind(&id)
    .bind(i64::from(chunk))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((kind, state, current_attempt, to_step)) = row else {
        tracing::warn!(job_id = %job, chunk, attempt, "result for an unknown task, dropped");
        return Ok(());
    };
    if state != "dispatched" || current_attempt as u32 != attempt {
        tracing::info!(job_id = %job, chunk, attempt, current_attempt, task_state = %state, "stale or duplicate result, dropped");
        event(
            &mut tx,
            job,
            "stale_result",
            Some(chunk),
            Some(attempt),
            serde_json::json!({ "outcome": outcome_name(outcome), "worker": worker, "task_state": state, "current_attempt": current_attempt }),
        )
        .await?;
        tx.commit().await?;
        return Ok(());
    }
    let (job_state, priority, steps_total, chunk_steps, tenant): (String, i64, i64, i64, String) =
        sqlx::query_as(
            "SELECT state, priority, steps_total, chunk_steps, tenant FROM jobs WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
    if job_state != "running" && job_state != "queued" {
        tx.commit().await?;
        return Ok(());
    }
    let kind: TaskKind = kind
        .parse()
        .map_err(|e| Error::Internal(format!("task kind: {e}")))?;
    let now = now_us();
    match outcome {
        Outcome::Done {
            millis,
            outputs,
            held,
        } => {
            sqlx::query(
                "UPDATE tasks SET state = 'done', finished_at = $3, worker = $4, millis = $5 \
                 WHERE job_id = $1 AND chunk = $2",
            )
            .bind(&id)
            .bind(i64::from(chunk))
            .bind(now)
            .bind(worker)
            .bind(*millis as i64)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE jobs SET timings = json_set(timings, '$.' || $2, \
                   COALESCE(json_extract(timings, '$.' || $2), 0) + $3) WHERE id = $1",
            )
            .bind(&id)
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
                    sqlx::query("UPDATE jobs SET steps_done = MAX(steps_done, $2) WHERE id = $1")
                        .bind(&id)
                        .bind(to_step)
                        .execute(&mut *tx)
                        .await?;
                    let ranges = chunk_ranges(steps_total as u32, chunk_steps as u32);
                    let next = chunk + 1;
                    match ranges.get(next as usize) {
                        Some((from, to)) => {
                            insert_task(&mut tx, job, next, "denoise", *from, *to, priority as i16)
                                .await?;
                            notes.job(job, "step");
                        }
                        None => {
                            let total = steps_total as u32;
                            insert_task(
                                &mut tx,
                                job,
                                next,
                                "vocode",
                                total,
                                total,
                                priority as i16,
                            )
                            .await?;
                            sqlx::query("UPDATE jobs SET stage = 'vocode' WHERE id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            notes.job(job, "stage");
                        }
                    }
                    if *held {
                        // Until its next heartbeat says otherwise, the worker holds the latent
                        // (chunk affinity for the next chunk, dispatched right away).
                        sqlx::query(
                            "UPDATE workers SET holds = json_insert(holds, '$[#]', $2) \
                             WHERE worker = $1 AND NOT EXISTS \
                               (SELECT 1 FROM json_each(workers.holds) WHERE value = $2)",
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
                        "UPDATE jobs SET state = 'succeeded', stage = 'done', finished_at = $2 WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    event(&mut tx, job, "succeeded", None, None, serde_json::json!({})).await?;
                    notes.job(job, "succeeded");
                }
            }
            // A slot is free (and a denoise chunk queued the job's next task): waiting work goes
            // out now, not at the next poll.
            notes.tasks();
        }
        Outcome::Failed {
            code,
            message,
            retryable,
        } => {
            retry_or_fail(
                &mut tx,
                &mut notes,
                job,
                i64::from(chunk),
                attempt,
                policy,
                code,
                message,
                *retryable,
            )
            .await?;
        }
        Outcome::Cancelled => {
            // The worker saw a cancel for a job that is not cancelled here: run it again.
            let policy = RetryPolicy {
                backoff: Duration::ZERO,
                ..policy
            };
            retry_or_fail(
                &mut tx,
                &mut notes,
                job,
                i64::from(chunk),
                attempt,
                policy,
                "CANCELLED_BY_WORKER",
                "worker stopped the task",
                true,
            )
            .await?;
        }
    }
    tx.commit().await?;
    drop(w);
    notes.send(&store.notifier);
    Ok(())
}

async fn insert_outputs(
    tx: &mut Tx<'_>,
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
             ON CONFLICT (job_id, idx) DO UPDATE SET key = excluded.key, sha256 = excluded.sha256, \
               size_bytes = excluded.size_bytes, duration_s = excluded.duration_s, \
               sample_rate = excluded.sample_rate, format = excluded.format",
        )
        .bind(job.to_string())
        .bind(i64::from(o.index))
        .bind(&o.key)
        .bind(&o.sha256)
        .bind(o.size_bytes as i64)
        .bind(f64::from(o.duration_s))
        .bind(i64::from(o.sample_rate))
        .bind(format)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A failed attempt: back to the backlog as attempt + 1 after the policy's backoff, or, past
/// the bound or for an error a retry cannot fix, the job fails with the cause.
#[allow(clippy::too_many_arguments)]
pub(super) async fn retry_or_fail(
    tx: &mut Tx<'_>,
    notes: &mut Pending,
    job: Uuid,
    chunk: i64,
    attempt: u32,
    policy: RetryPolicy,
    code: &str,
    message: &str,
    retryable: bool,
) -> Result<()> {
    let id = job.to_string();
    let now = now_us();
    if retryable && attempt < policy.max_attempts {
        let delay = policy.delay(attempt);
        sqlx::query(
            "UPDATE tasks SET state = 'pending', attempt = attempt + 1, last_error = $3, \
               not_before = $4 WHERE job_id = $1 AND chunk = $2",
        )
        .bind(&id)
        .bind(chunk)
        .bind(format!("{code}: {message}"))
        .bind(now + delay.as_micros() as i64)
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
        notes.job(job, "retry");
        notes.tasks();
    } else {
        sqlx::query(
            "UPDATE tasks SET state = 'failed', finished_at = $3, last_error = $4 \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(&id)
        .bind(chunk)
        .bind(now)
        .bind(format!("{code}: {message}"))
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, finished_at = $4 \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(&id)
        .bind(code)
        .bind(message)
        .bind(now)
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
        notes.job(job, "failed");
        notes.tasks();
    }
    Ok(())
}
