//! The lifecycle's reads and writes on SQLite (`lifecycle::LifecycleTx`): the single writer's
//! transaction stands in for row locks, times are the transaction's own clock reading, and
//! notices go to the in-process notifier after the commit.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::MutexGuard;
use tutti_shared::job::{JobState, Stage, TaskKind};
use tutti_shared::messages::OutputInfo;
use uuid::Uuid;

use super::rows::{event, insert_task, now_us, uuid, Tx};
use super::SqliteStore;
use crate::error::{Error, Result};
use crate::lifecycle::events::{EventKind, JobEvent};
use crate::lifecycle::rules::NextTask;
use crate::lifecycle::{JobHead, LifecycleTx, LostTask, TaskRef, TaskRow};
use crate::notify::{Notifier, Pending};
use crate::tenancy::Scope;

pub(super) struct SqliteLifecycle<'c> {
    writer: MutexGuard<'c, ()>,
    tx: Tx<'c>,
    notes: Pending,
    notifier: &'c Notifier,
    now: i64,
}

impl<'c> SqliteLifecycle<'c> {
    pub(super) async fn begin(store: &'c SqliteStore) -> Result<Box<Self>> {
        let (writer, tx) = store.begin_write().await?;
        Ok(Box::new(Self {
            writer,
            tx,
            notes: Pending::default(),
            notifier: &store.notifier,
            now: now_us(),
        }))
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

fn lost(rows: Vec<(String, String, i64, i64, Option<String>)>) -> Result<Vec<LostTask>> {
    rows.into_iter()
        .map(|(job, kind, chunk, attempt, worker)| {
            Ok(LostTask {
                job: uuid(&job)?,
                kind: super::super::rows::kind(&kind)?,
                chunk: chunk as u32,
                attempt: attempt as u32,
                worker,
            })
        })
        .collect()
}

#[async_trait]
impl LifecycleTx for SqliteLifecycle<'_> {
    async fn lock_task(&mut self, job: Uuid, chunk: u32) -> Result<Option<TaskRow>> {
        let row: Option<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT kind, state, attempt, to_step FROM tasks WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job.to_string())
        .bind(i64::from(chunk))
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
        type Head = (String, i64, i64, i64, String, bool);
        let (state, priority, steps_total, chunk_steps, tenant, deadline_passed): Head =
            sqlx::query_as(
                "SELECT state, priority, steps_total, chunk_steps, tenant, \
                   COALESCE(deadline <= $2, 0) FROM jobs WHERE id = $1",
            )
            .bind(job.to_string())
            .bind(self.now)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(JobHead {
            state: state.parse().map_err(|e| internal("job state", e))?,
            priority: priority as i16,
            steps_total: steps_total as u32,
            chunk_steps: chunk_steps as u32,
            tenant,
            deadline_passed,
        })
    }

    async fn expired(&mut self, lease: Duration) -> Result<Vec<LostTask>> {
        let rows = sqlx::query_as(
            "SELECT job_id, kind, chunk, attempt, NULL FROM tasks \
             WHERE state = 'dispatched' AND heartbeat_at < $1",
        )
        .bind(self.now - lease.as_micros() as i64)
        .fetch_all(&mut *self.tx)
        .await?;
        lost(rows)
    }

    async fn of_lost_workers(&mut self, timeout: Duration) -> Result<Vec<LostTask>> {
        let rows = sqlx::query_as(
            "SELECT t.job_id, t.kind, t.chunk, t.attempt, w.worker \
             FROM tasks t JOIN workers w ON w.worker = COALESCE(t.worker, t.routed_to) \
             WHERE t.state = 'dispatched' AND w.last_seen < $1",
        )
        .bind(self.now - timeout.as_micros() as i64)
        .fetch_all(&mut *self.tx)
        .await?;
        lost(rows)
    }

    async fn touch(&mut self, task: TaskRef<'_>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE tasks SET heartbeat_at = $4, worker = $5 \
             WHERE job_id = $1 AND chunk = $2 AND attempt = $3 AND state = 'dispatched'",
        )
        .bind(task.job.to_string())
        .bind(i64::from(task.chunk))
        .bind(i64::from(task.attempt))
        .bind(self.now)
        .bind(task.worker)
        .execute(&mut *self.tx)
        .await?;
        Ok(n.rows_affected() == 1)
    }

    async fn progress(&mut self, job: Uuid, steps_done: u32) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE jobs SET steps_done = $2 WHERE id = $1 AND state = 'running' AND steps_done < $2",
        )
        .bind(job.to_string())
        .bind(i64::from(steps_done))
        .execute(&mut *self.tx)
        .await?;
        Ok(n.rows_affected() == 1)
    }

    async fn finish(&mut self, task: TaskRef<'_>, millis: u64) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'done', finished_at = $3, worker = $4, millis = $5 \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(task.job.to_string())
        .bind(i64::from(task.chunk))
        .bind(self.now)
        .bind(task.worker)
        .bind(millis as i64)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn add_stage_time(&mut self, job: Uuid, kind: TaskKind, millis: u64) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET timings = json_set(timings, '$.' || $2, \
               COALESCE(json_extract(timings, '$.' || $2), 0) + $3) WHERE id = $1",
        )
        .bind(job.to_string())
        .bind(kind.as_str())
        .bind(millis as i64)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn raise_steps(&mut self, job: Uuid, steps: u32) -> Result<()> {
        sqlx::query("UPDATE jobs SET steps_done = MAX(steps_done, $2) WHERE id = $1")
            .bind(job.to_string())
            .bind(i64::from(steps))
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
            .bind(job.to_string())
            .bind(stage.as_str())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn add_hold(&mut self, worker: &str, job: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET holds = json_insert(holds, '$[#]', $2) \
             WHERE worker = $1 AND NOT EXISTS \
               (SELECT 1 FROM json_each(workers.holds) WHERE value = $2)",
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
                   (SELECT $12 + t.retain_outputs_days * 86400000000 FROM tenants t \
                    JOIN jobs j ON j.tenant = t.name WHERE j.id = $1)) \
                 ON CONFLICT (job_id, idx) DO UPDATE SET key = excluded.key, sha256 = excluded.sha256, \
                   size_bytes = excluded.size_bytes, duration_s = excluded.duration_s, \
                   sample_rate = excluded.sample_rate, format = excluded.format, channels = excluded.channels, \
                   loudness_lufs = excluded.loudness_lufs, true_peak_dbtp = excluded.true_peak_dbtp, \
                   expires_at = excluded.expires_at, deleted_at = NULL",
            )
            .bind(job.to_string())
            .bind(i64::from(o.index))
            .bind(&o.key)
            .bind(&o.sha256)
            .bind(o.size_bytes as i64)
            .bind(f64::from(o.duration_s))
            .bind(i64::from(o.sample_rate))
            .bind(format)
            .bind(i64::from(o.channels))
            .bind(o.loudness_lufs.map(f64::from))
            .bind(o.true_peak_dbtp.map(f64::from))
            .bind(self.now)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn succeed(&mut self, job: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'succeeded', stage = 'done', finished_at = $2 WHERE id = $1",
        )
        .bind(job.to_string())
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn requeue(&mut self, job: Uuid, chunk: u32, error: &str, delay: Duration) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'pending', attempt = attempt + 1, last_error = $3, \
               not_before = $4 WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job.to_string())
        .bind(i64::from(chunk))
        .bind(error)
        .bind(self.now + delay.as_micros() as i64)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn fail_task(&mut self, job: Uuid, chunk: u32, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'failed', finished_at = $3, last_error = $4 \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job.to_string())
        .bind(i64::from(chunk))
        .bind(self.now)
        .bind(error)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn fail_job(&mut self, job: Uuid, code: &str, message: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, finished_at = $4 \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(job.to_string())
        .bind(code)
        .bind(message)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn cancel(&mut self, scope: Scope<'_>, job: Uuid) -> Result<bool> {
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $3 \
             WHERE id = $1 AND ($2 IS NULL OR tenant = $2) AND state IN ('queued', 'running')",
        )
        .bind(job.to_string())
        .bind(scope.tenant())
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', finished_at = $2 \
                 WHERE job_id = $1 AND state IN ('pending', 'dispatched')",
            )
            .bind(job.to_string())
            .bind(self.now)
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
        // The single writer's transaction is the lock.
        let row: Option<(String, i64, i64, i64, String, bool)> = sqlx::query_as(
            "SELECT state, priority, steps_total, chunk_steps, tenant, checkpoints_cleared FROM jobs \
             WHERE id = $1 AND ($2 IS NULL OR tenant = $2)",
        )
        .bind(job.to_string())
        .bind(scope.tenant())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(
            |(state, priority, steps_total, chunk_steps, tenant, cleared)| {
                let head = JobHead {
                    state: state.parse().map_err(|e| internal("job state", e))?,
                    priority: priority as i16,
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
        let row: Option<(i64, String, String, i64, i64)> = sqlx::query_as(
            "SELECT chunk, kind, state, attempt, to_step FROM tasks \
             WHERE job_id = $1 ORDER BY chunk DESC LIMIT 1",
        )
        .bind(job.to_string())
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
        let (at,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(attempt) FROM job_events WHERE job_id = $1 AND chunk = $2 AND kind = $3",
        )
        .bind(job.to_string())
        .bind(i64::from(chunk))
        .bind(EventKind::Retried.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(at.map(|a| a.max(0) as u32))
    }

    async fn inputs_cleared(&mut self, job: Uuid) -> Result<bool> {
        let (cleared,): (Option<i64>,) =
            sqlx::query_as("SELECT inputs_cleared_at FROM jobs WHERE id = $1")
                .bind(job.to_string())
                .fetch_one(&mut *self.tx)
                .await?;
        Ok(cleared.is_some())
    }

    async fn has_event(&mut self, job: Uuid, kind: EventKind) -> Result<bool> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM job_events WHERE job_id = $1 AND kind = $2)",
        )
        .bind(job.to_string())
        .bind(kind.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(found)
    }

    async fn reopen_task(&mut self, job: Uuid, chunk: u32) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = 'pending', attempt = attempt + 1, not_before = $3, \
               finished_at = NULL, routed_to = NULL \
             WHERE job_id = $1 AND chunk = $2",
        )
        .bind(job.to_string())
        .bind(i64::from(chunk))
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn rewind(&mut self, job: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM tasks WHERE job_id = $1 AND chunk > 0")
            .bind(job.to_string())
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("UPDATE jobs SET steps_done = 0, stage = 'denoise', checkpoints_cleared = 0 WHERE id = $1")
            .bind(job.to_string())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn reopen_job(&mut self, job: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'queued', error_code = NULL, error_message = NULL, \
               finished_at = NULL, deadline = NULL WHERE id = $1",
        )
        .bind(job.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn past_deadline(&mut self) -> Result<Vec<Uuid>> {
        let jobs: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM jobs j WHERE deadline <= $1 AND state IN ('queued', 'running') \
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'dispatched') \
             LIMIT 100",
        )
        .bind(self.now)
        .fetch_all(&mut *self.tx)
        .await?;
        jobs.iter().map(|(j,)| uuid(j)).collect()
    }

    async fn set_error(&mut self, job: Uuid, code: &str, message: &str) -> Result<()> {
        sqlx::query("UPDATE jobs SET error_code = $2, error_message = $3 WHERE id = $1")
            .bind(job.to_string())
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
        let found: Option<(String,)> =
            sqlx::query_as("SELECT id FROM batches WHERE id = $1 AND tenant = $2")
                .bind(batch.to_string())
                .bind(tenant)
                .fetch_optional(&mut *self.tx)
                .await?;
        if found.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for state in states {
            let jobs: Vec<(String, i64, String)> = sqlx::query_as(
                "SELECT j.id, i.line, i.item_id FROM batch_items i JOIN jobs j ON j.id = i.job_id \
                 WHERE i.batch_id = $1 AND j.state = $2",
            )
            .bind(batch.to_string())
            .bind(state.as_str())
            .fetch_all(&mut *self.tx)
            .await?;
            out.extend(jobs);
        }
        out.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
        out.into_iter()
            .map(|(j, _, _)| uuid(&j))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn reopen_batch(&mut self, batch: Uuid, uncancel: bool) -> Result<()> {
        sqlx::query(
            "UPDATE batches SET results_key = NULL, finished_at = NULL, finishing_until = NULL, \
               manifests_cleared_at = NULL, cancelled = cancelled AND NOT $2 WHERE id = $1",
        )
        .bind(batch.to_string())
        .bind(uncancel)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn mark_deleted(&mut self, job: Uuid) -> Result<(bool, Vec<String>)> {
        let (tenant, spec, request, deleted): (String, String, Vec<u8>, Option<i64>) =
            sqlx::query_as("SELECT tenant, spec, request, deleted_at FROM jobs WHERE id = $1")
                .bind(job.to_string())
                .fetch_one(&mut *self.tx)
                .await?;
        let mut spec: tutti_shared::job::JobSpec =
            serde_json::from_str(&spec).map_err(|e| internal("stored spec", e))?;
        let mut keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM outputs WHERE job_id = $1 ORDER BY idx")
                .bind(job.to_string())
                .fetch_all(&mut *self.tx)
                .await?;
        keys.extend(crate::lifecycle::deleted::own_input(&spec, &tenant));
        if deleted.is_some() {
            return Ok((false, keys));
        }
        crate::lifecycle::deleted::blank_spec(&mut spec);
        let spec = serde_json::to_string(&spec).map_err(|e| internal("encoding spec", e))?;
        sqlx::query("UPDATE jobs SET spec = $2, request = $3, deleted_at = $4 WHERE id = $1")
            .bind(job.to_string())
            .bind(spec)
            .bind(crate::lifecycle::deleted::blank_request(&request)?)
            .bind(self.now)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("UPDATE outputs SET deleted_at = $2 WHERE job_id = $1 AND deleted_at IS NULL")
            .bind(job.to_string())
            .bind(self.now)
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
        let Self {
            writer,
            tx,
            notes,
            notifier,
            ..
        } = *self;
        tx.commit().await?;
        drop(writer);
        notes.send(notifier);
        Ok(())
    }
}
