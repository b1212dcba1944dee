//! Consumes worker events and advances jobs: the next chunk, the vocode stage, done. Results are
//! fenced by (job, chunk, attempt): only the attempt a task is waiting for, while it is
//! dispatched, changes anything; stale and duplicate results are recorded and dropped.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;
use tutti_shared::job::{chunk_ranges, TaskKind};
use tutti_shared::messages::{Outcome, OutputInfo, WorkerEvent};
use tutti_shared::queue::{self, Topology};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::{self, Store};

pub struct ResultsConsumer {
    pub store: Store,
    pub amqp_url: String,
    pub topology: Topology,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
}

impl ResultsConsumer {
    /// Consumes until `shutdown` flips; reconnects with backoff when the broker goes away.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            match self.consume(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "results consumer: reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume(&self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let conn = queue::connect(&self.amqp_url, Duration::from_secs(2)).await?;
        queue::declare_topology(&conn, &self.topology).await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(queue::QueueError::from)?;
        queue::set_prefetch(&ch, 64).await?;
        let mut consumer = ch
            .basic_consume(
                &self.topology.results_queue(),
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(queue::QueueError::from)?;
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = shutdown.changed() => {
                    let _ = conn.close(200, "coordinator shutting down").await;
                    return Ok(());
                }
            };
            let Some(delivery) = delivery else {
                return Err(Error::Internal("results consumer stream ended".into()));
            };
            let delivery = delivery.map_err(queue::QueueError::from)?;
            let event: WorkerEvent = match serde_json::from_slice(&delivery.data) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "unparseable worker event, dead-lettering");
                    delivery
                        .nack(BasicNackOptions {
                            requeue: false,
                            multiple: false,
                        })
                        .await
                        .map_err(queue::QueueError::from)?;
                    continue;
                }
            };
            match self.apply(&event).await {
                Ok(()) => delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(queue::QueueError::from)?,
                Err(e) => {
                    // Leave it to the broker: the event is redelivered once the database is back.
                    tracing::warn!(error = %e, "applying worker event failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        })
                        .await
                        .map_err(queue::QueueError::from)?;
                }
            }
        }
    }

    pub async fn apply(&self, event: &WorkerEvent) -> Result<()> {
        match event {
            WorkerEvent::Progress {
                job_id,
                chunk,
                attempt,
                worker,
                steps_done,
            } => {
                self.progress(*job_id, *chunk, *attempt, worker, *steps_done)
                    .await
            }
            WorkerEvent::Result {
                job_id,
                chunk,
                attempt,
                worker,
                outcome,
            } => {
                self.result(*job_id, *chunk, *attempt, worker, outcome)
                    .await
            }
        }
    }

    async fn progress(
        &self,
        job: Uuid,
        chunk: u32,
        attempt: u32,
        worker: &str,
        steps_done: u32,
    ) -> Result<()> {
        let mut tx = self.store.pool().begin().await?;
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
                store::notify_job(&mut tx, job, "step").await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn result(
        &self,
        job: Uuid,
        chunk: u32,
        attempt: u32,
        worker: &str,
        outcome: &Outcome,
    ) -> Result<()> {
        let mut tx = self.store.pool().begin().await?;
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
        let outcome_name = match outcome {
            Outcome::Done { .. } => "done",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
        };
        if state != "dispatched" || current_attempt as u32 != attempt {
            tracing::info!(job_id = %job, chunk, attempt, current_attempt, task_state = %state, "stale or duplicate result, dropped");
            store::event(
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
            Outcome::Done { millis, outputs } => {
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
                store::event(
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
                                store::insert_task(
                                    &mut tx, job, next, "denoise", *from, *to, priority,
                                )
                                .await?;
                                store::notify_job(&mut tx, job, "step").await?;
                            }
                            None => {
                                store::insert_task(
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
                                store::notify_job(&mut tx, job, "stage").await?;
                            }
                        }
                        store::notify(&mut tx, store::TASKS_CHANNEL, "").await?;
                    }
                    TaskKind::Vocode => {
                        insert_outputs(&mut tx, job, &tenant, outputs).await?;
                        sqlx::query(
                            "UPDATE jobs SET state = 'succeeded', stage = 'done', finished_at = now() WHERE id = $1",
                        )
                        .bind(job)
                        .execute(&mut *tx)
                        .await?;
                        store::event(&mut tx, job, "succeeded", None, None, serde_json::json!({}))
                            .await?;
                        store::notify_job(&mut tx, job, "succeeded").await?;
                    }
                }
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
                    self.max_attempts,
                    self.retry_backoff,
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
                    self.max_attempts,
                    Duration::ZERO,
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
}

async fn insert_outputs(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    tenant: &str,
    outputs: &[OutputInfo],
) -> Result<()> {
    for o in outputs {
        // Keys are derived from the tenant and job; anything else is a worker bug.
        if !o.key.starts_with(&format!("outputs/{tenant}/{job}/")) {
            return Err(Error::Internal(format!(
                "output key {} outside the job",
                o.key
            )));
        }
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
    max_attempts: u32,
    backoff: Duration,
    code: &str,
    message: &str,
    retryable: bool,
) -> Result<()> {
    if retryable && attempt < max_attempts {
        let delay = backoff.saturating_mul(1 << (attempt - 1).min(10));
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
        store::event(
            tx,
            job,
            "retry",
            Some(chunk as u32),
            Some(attempt),
            serde_json::json!({ "code": code, "message": message, "delay_ms": delay.as_millis() as u64 }),
        )
        .await?;
        store::notify_job(tx, job, "retry").await?;
        store::notify(tx, store::TASKS_CHANNEL, "").await?;
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
        store::event(
            tx,
            job,
            "failed",
            Some(chunk as u32),
            Some(attempt),
            serde_json::json!({ "code": code, "message": message }),
        )
        .await?;
        store::notify_job(tx, job, "failed").await?;
    }
    Ok(())
}
