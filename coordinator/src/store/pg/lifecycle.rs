//! The lifecycle's reads and writes on Postgres (`lifecycle::LifecycleTx`): row locks with
//! `FOR UPDATE`, expiry scans with `SKIP LOCKED` so that replicas split the work, and notices
//! sent with `NOTIFY` inside the transaction (delivered when it commits).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgPool, Postgres, Transaction};
use tutti_shared::job::{JobState, Stage, TaskKind};
use tutti_shared::messages::OutputInfo;
use uuid::Uuid;

use super::rows::{event, insert_task, send_notes};
use crate::error::{Error, Result};
use crate::lifecycle::events::{EventKind, JobEvent};
use crate::lifecycle::rules::NextTask;
use crate::lifecycle::{JobHead, LifecycleTx, LostTask, TaskRef, TaskRow};
use crate::notify::Pending;
use crate::tenancy::Scope;

pub(super) struct PgLifecycle {
    tx: Transaction<'static, Postgres>,
    notes: Pending,
}

impl PgLifecycle {
    pub(super) async fn begin(pool: &PgPool) -> Result<Box<Self>> {
        Ok(Box::new(Self {
            tx: pool.begin().await?,
            notes: Pending::default(),
        }))
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

fn lost((job, kind, chunk, attempt, worker): LostRow) -> Result<LostTask> {
    Ok(LostTask {
        job,
        kind: super::super::rows::kind(&kind)?,
        chunk: chunk as u32,
        attempt: attempt as u32,
        worker,
    })
}

type LostRow = (Uuid, String, i32, i32, Option<String>);

#[async_trait]
impl LifecycleTx for PgLifecycle {
    async fn lock_task(&mut self, job: Uuid, chunk: u32) -> Result<Option<TaskRow>> {
        let row: Option<(String, String, i32, i32)> = sqlx::query_as(
            "SELECT kind, state, attempt, to_step FROM tasks \
             WHERE job_id = $1 AND chunk = $2 FOR UPDATE",
        )
        .bind(job)
        .bind(chunk as i32)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|(kind, state, attempt, to_step)| {
            Ok(TaskRow {
                kind: kind.parse().map_err(|e| internal("task kind", e))?,
                state: state.parse().map_err(|e| internal("task state", e))?,
                attempt: attempt as u32,
                to_step: to_step as u32,
            })
        })
        .transpose()
    }

    async fn lock_job(&mut self, job: Uuid) -> Result<JobHead> {
        type Head = (String, i16, i32, i32, String, bool);
        let (state, priority, steps_total, chunk_steps, tenant, deadline_passed): Head =
            sqlx::query_as(
                "SELECT state, priority, steps_total, chunk_steps, tenant, \
                   COALESCE(deadline <= now(), FALSE) FROM jobs WHERE id = $1 FOR UPDATE",
            )
            .bind(job)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(JobHead {
            state: state.parse().map_err(|e| internal("job state", e))?,
            priority,
            steps_total: steps_total as u32,
            chunk_steps: chunk_steps as u32,
            tenant,
            deadline_passed,
        })
    }

    async fn expired(&mut self, lease: Duration) -> Result<Vec<LostTask>> {
        let rows: Vec<LostRow> = sqlx::query_as(
            "SELECT job_id, kind, chunk, attempt, NULL::text FROM tasks \
             WHERE state = 'dispatched' AND heartbeat_at < now() - make_interval(secs => $1) \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(lease.as_secs_f64())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter().map(lost).collect()
    }

    async fn of_lost_workers(&mut self, timeout: Duration) -> Result<Vec<LostTask>> {
        let rows: Vec<LostRow> = sqlx::query_as(
            "SELECT t.job_id, t.kind, t.chunk, t.attempt, w.worker \
             FROM tasks t JOIN workers w ON w.worker = COALESCE(t.worker, t.routed_to) \
             WHERE t.state = 'dispatched' AND w.last_seen < now() - make_interval(secs => $1) \
             FOR UPDATE OF t SKIP LOCKED",
        )
        .bind(timeout.as_secs_f64())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter().map(lost).collect()
    }

    async fn touch(&mut self, task: TaskRef<'_>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE tasks SET heartbeat_at = now(), worker = $4 \
             WHERE job_id = $1 AND chunk = $2 AND attempt = $3 AND state = 'dispatched'",
        )
        .bind(task.job)
        .bind(task.chunk as i32)
        .bind(task.attempt as i32)
        .bind(task.worker)
        .execute(&mut *self.tx)
        .await?;
        Ok(n.rows_affected() == 1)
    }

    async fn progress(&mut self, job: Uuid, steps_done: u32) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE jobs SET steps_done = $2 WHERE id = $1 AND state = 'running' AND steps_done < $2",
        )
        .bind(job)
        .bind(steps_done as i32)
        .execute(&mut *self.tx)
        .await?;
        Ok(n.rows_affected() == 1)
    }

    async fn finish(&mut self, task: TaskRef<'_>, millis: u64) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'done', finished_at = now(), worker = $3, millis = $4 \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(task.job)
        .bind(task.chunk as i32)
        .bind(task.worker)
        .bind(millis as i64)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn add_stage_time(&mut self, job: Uuid, kind: TaskKind, millis: u64) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET timings = jsonb_set(timings, ARRAY[$2::text], \
               to_jsonb(COALESCE((timings->>$2)::bigint, 0) + $3)) WHERE id = $1",
        )
        .bind(job)
        .bind(kind.as_str())
        .bind(millis as i64)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn raise_steps(&mut self, job: Uuid, steps: u32) -> Result<()> {
        sqlx::query("UPDATE jobs SET steps_done = GREATEST(steps_done, $2) WHERE id = $1")
            .bind(job)
            .bind(steps as i32)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn insert_task(&mut self, job: Uuid, task: &NextTask, priority: i16) -> Result<()> {
        insert_task(
            &mut self.tx,
            job,
            task.chunk,
            task.kind.as_str(),
            task.from_step,
            task.to_step,
            priority,
        )
        .await
    }

    async fn set_stage(&mut self, job: Uuid, stage: Stage) -> Result<()> {
        sqlx::query("UPDATE jobs SET stage = $2 WHERE id = $1")
            .bind(job)
            .bind(stage.as_str())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn add_hold(&mut self, worker: &str, job: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET holds = holds || to_jsonb($2::text) \
             WHERE worker = $1 AND NOT holds @> to_jsonb($2::text)",
        )
        .bind(worker)
        .bind(job.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn put_outputs(&mut self, job: Uuid, outputs: &[OutputInfo]) -> Result<()> {
        for o in outputs {
            let format = o.key.rsplit('.').next().unwrap_or("wav");
            sqlx::query(
                "INSERT INTO outputs (job_id, idx, key, sha256, size_bytes, duration_s, sample_rate, format, channels, \
                   loudness_lufs, true_peak_dbtp, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                   (SELECT now() + make_interval(days => t.retain_outputs_days) FROM tenants t \
                    JOIN jobs j ON j.tenant = t.name WHERE j.id = $1)) \
                 ON CONFLICT (job_id, idx) DO UPDATE SET key = EXCLUDED.key, sha256 = EXCLUDED.sha256, \
                   size_bytes = EXCLUDED.size_bytes, duration_s = EXCLUDED.duration_s, \
                   sample_rate = EXCLUDED.sample_rate, format = EXCLUDED.format, channels = EXCLUDED.channels, \
                   loudness_lufs = EXCLUDED.loudness_lufs, true_peak_dbtp = EXCLUDED.true_peak_dbtp, \
                   expires_at = EXCLUDED.expires_at, deleted_at = NULL",
            )
            .bind(job)
            .bind(o.index as i32)
            .bind(&o.key)
            .bind(&o.sha256)
            .bind(o.size_bytes as i64)
            .bind(o.duration_s)
            .bind(o.sample_rate as i32)
            .bind(format)
            .bind(i32::from(o.channels))
            .bind(o.loudness_lufs)
            .bind(o.true_peak_dbtp)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn succeed(&mut self, job: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'succeeded', stage = 'done', finished_at = now() WHERE id = $1",
        )
        .bind(job)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn requeue(&mut self, job: Uuid, chunk: u32, error: &str, delay: Duration) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'pending', attempt = attempt + 1, last_error = $3, \
               not_before = now() + make_interval(secs => $4) \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job)
        .bind(chunk as i32)
        .bind(error)
        .bind(delay.as_secs_f64())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn fail_task(&mut self, job: Uuid, chunk: u32, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'failed', finished_at = now(), last_error = $3 \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job)
        .bind(chunk as i32)
        .bind(error)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn fail_job(&mut self, job: Uuid, code: &str, message: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, finished_at = now() \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(job)
        .bind(code)
        .bind(message)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn cancel(&mut self, scope: Scope<'_>, job: Uuid) -> Result<bool> {
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = now() \
             WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) \
               AND state IN ('queued', 'running')",
        )
        .bind(job)
        .bind(scope.tenant())
        .execute(&mut *self.tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', finished_at = now() \
                 WHERE job_id = $1 AND state IN ('pending', 'dispatched')",
            )
            .bind(job)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(changed)
    }

    async fn lock_scoped(
        &mut self,
        scope: Scope<'_>,
        job: Uuid,
    ) -> Result<Option<(JobHead, bool)>> {
        let row: Option<(String, i16, i32, i32, String, bool)> = sqlx::query_as(
            "SELECT state, priority, steps_total, chunk_steps, tenant, checkpoints_cleared FROM jobs \
             WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE",
        )
        .bind(job)
        .bind(scope.tenant())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(
            |(state, priority, steps_total, chunk_steps, tenant, cleared)| {
                let head = JobHead {
                    state: state.parse().map_err(|e| internal("job state", e))?,
                    priority,
                    steps_total: steps_total as u32,
                    chunk_steps: chunk_steps as u32,
                    tenant,
                    deadline_passed: false,
                };
                Ok((head, cleared))
            },
        )
        .transpose()
    }

    async fn last_task(&mut self, job: Uuid) -> Result<Option<(u32, TaskRow)>> {
        let row: Option<(i32, String, String, i32, i32)> = sqlx::query_as(
            "SELECT chunk, kind, state, attempt, to_step FROM tasks \
             WHERE job_id = $1 ORDER BY chunk DESC LIMIT 1 FOR UPDATE",
        )
        .bind(job)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|(chunk, kind, state, attempt, to_step)| {
            Ok((
                chunk as u32,
                TaskRow {
                    kind: kind.parse().map_err(|e| internal("task kind", e))?,
                    state: state.parse().map_err(|e| internal("task state", e))?,
                    attempt: attempt as u32,
                    to_step: to_step as u32,
                },
            ))
        })
        .transpose()
    }

    async fn retried_at(&mut self, job: Uuid, chunk: u32) -> Result<Option<u32>> {
        let (at,): (Option<i32>,) = sqlx::query_as(
            "SELECT MAX(attempt) FROM job_events WHERE job_id = $1 AND chunk = $2 AND kind = $3",
        )
        .bind(job)
        .bind(chunk as i32)
        .bind(EventKind::Retried.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(at.map(|a| a.max(0) as u32))
    }

    async fn inputs_cleared(&mut self, job: Uuid) -> Result<bool> {
        let (cleared,): (bool,) =
            sqlx::query_as("SELECT inputs_cleared_at IS NOT NULL FROM jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&mut *self.tx)
                .await?;
        Ok(cleared)
    }

    async fn has_event(&mut self, job: Uuid, kind: EventKind) -> Result<bool> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM job_events WHERE job_id = $1 AND kind = $2)",
        )
        .bind(job)
        .bind(kind.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(found)
    }

    async fn reopen_task(&mut self, job: Uuid, chunk: u32) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'pending', attempt = attempt + 1, not_before = now(), \
               finished_at = NULL, routed_to = NULL \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job)
        .bind(chunk as i32)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn rewind(&mut self, job: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM tasks WHERE job_id = $1 AND chunk > 0")
            .bind(job)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("UPDATE jobs SET steps_done = 0, stage = 'denoise', checkpoints_cleared = FALSE WHERE id = $1")
            .bind(job)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn reopen_job(&mut self, job: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'queued', error_code = NULL, error_message = NULL, \
               finished_at = NULL, deadline = NULL WHERE id = $1",
        )
        .bind(job)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn past_deadline(&mut self) -> Result<Vec<Uuid>> {
        let jobs: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM jobs j WHERE deadline <= now() AND state IN ('queued', 'running') \
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'dispatched') \
             LIMIT 100 FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(jobs.into_iter().map(|(j,)| j).collect())
    }

    async fn set_error(&mut self, job: Uuid, code: &str, message: &str) -> Result<()> {
        sqlx::query("UPDATE jobs SET error_code = $2, error_message = $3 WHERE id = $1")
            .bind(job)
            .bind(code)
            .bind(message)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn batch_jobs(
        &mut self,
        tenant: &str,
        batch: Uuid,
        states: &[JobState],
    ) -> Result<Option<Vec<Uuid>>> {
        let found: Option<(Uuid,)> =
            sqlx::query_as("SELECT id FROM batches WHERE id = $1 AND tenant = $2 FOR UPDATE")
                .bind(batch)
                .bind(tenant)
                .fetch_optional(&mut *self.tx)
                .await?;
        if found.is_none() {
            return Ok(None);
        }
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let jobs: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT j.id FROM batch_items i JOIN jobs j ON j.id = i.job_id \
             WHERE i.batch_id = $1 AND j.state = ANY($2) ORDER BY i.line, i.item_id",
        )
        .bind(batch)
        .bind(&states)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(Some(jobs.into_iter().map(|(j,)| j).collect()))
    }

    async fn reopen_batch(&mut self, batch: Uuid, uncancel: bool) -> Result<()> {
        sqlx::query(
            "UPDATE batches SET results_key = NULL, finished_at = NULL, finishing_until = NULL, \
               manifests_cleared_at = NULL, cancelled = cancelled AND NOT $2 WHERE id = $1",
        )
        .bind(batch)
        .bind(uncancel)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn mark_deleted(&mut self, job: Uuid) -> Result<(bool, Vec<String>)> {
        let (tenant, spec, request, deleted): (
            String,
            sqlx::types::Json<tutti_shared::job::JobSpec>,
            Vec<u8>,
            bool,
        ) = sqlx::query_as(
            "SELECT tenant, spec, request, deleted_at IS NOT NULL FROM jobs WHERE id = $1",
        )
        .bind(job)
        .fetch_one(&mut *self.tx)
        .await?;
        let mut keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM outputs WHERE job_id = $1 ORDER BY idx")
                .bind(job)
                .fetch_all(&mut *self.tx)
                .await?;
        keys.extend(crate::lifecycle::deleted::own_input(&spec.0, &tenant));
        if deleted {
            return Ok((false, keys));
        }
        let mut spec = spec.0;
        crate::lifecycle::deleted::blank_spec(&mut spec);
        sqlx::query("UPDATE jobs SET spec = $2, request = $3, deleted_at = now() WHERE id = $1")
            .bind(job)
            .bind(sqlx::types::Json(&spec))
            .bind(crate::lifecycle::deleted::blank_request(&request)?)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(
            "UPDATE outputs SET deleted_at = now() WHERE job_id = $1 AND deleted_at IS NULL",
        )
        .bind(job)
        .execute(&mut *self.tx)
        .await?;
        Ok((true, keys))
    }

    async fn record_usage(&mut self, job: Uuid) -> Result<()> {
        super::usage::record_usage(&mut self.tx, job).await
    }

    async fn event(
        &mut self,
        job: Uuid,
        chunk: Option<u32>,
        attempt: Option<u32>,
        ev: &JobEvent<'_>,
    ) -> Result<()> {
        event(&mut self.tx, job, chunk, attempt, ev).await?;
        if let Some(change) = ev.notice() {
            self.notes.job(job, change);
        }
        Ok(())
    }

    fn notes(&mut self) -> &mut Pending {
        &mut self.notes
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let Self { mut tx, notes } = *self;
        send_notes(&mut tx, notes).await?;
        tx.commit().await?;
        Ok(())
    }
}
