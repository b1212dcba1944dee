//! Job state in SQLite, for embedded mode: one process owns the file. SQLite has neither
//! `SKIP LOCKED` nor `LISTEN`, so every write runs as one `BEGIN IMMEDIATE` transaction under
//! an in-process writer lock (one writer at a time; readers go on, WAL), and notices go to an
//! in-process `Notifier` right after the commit that caused them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{Row, SqlitePool};
use tokio::sync::{Mutex, MutexGuard};
use tutti_shared::job::{chunk_ranges, JobState};
use tutti_shared::messages::Outcome;
use uuid::Uuid;

mod batches;
mod lifecycle;
mod queue;
mod retention;
mod round;
mod rows;
mod tenants;
mod usage;
mod views;
mod webhooks;

use self::lifecycle::SqliteLifecycle;
use self::rows::{event, insert_task, now_us, uuid, Tx};
use super::{
    DeadLetter, Heartbeat, HistoryEvent, JobRecord, JobRow, JobStore, Notifier, OutputRow, Retried,
    RetryPolicy, Scope, TaskRef,
};
use crate::error::{Error, Result};
use crate::lifecycle::events::JobEvent;
use crate::lifecycle::{LifecycleTx, Recorded};
use crate::notify::{Change, Pending};
use crate::sched::RoundTx;
use crate::validate::NewJob;
use crate::webhooks::Subscription;

const JOB_COLUMNS: &str =
    "id, tenant, state, stage, priority, spec, request, steps_total, steps_done, \
     attempts, error_code, error_message, timings, labels, created_at, started_at, finished_at, \
     deleted_at";

pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    write: Mutex<()>,
    pub(super) notifier: Notifier,
}

fn time(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| Error::Internal(format!("time {us}")))
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Internal(format!("stored json: {e}")))
}

/// A stored enum (a state, a stage) back from its text.
fn parse<T: std::str::FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| Error::Internal(format!("stored value: {e}")))
}

fn job_row(r: &SqliteRow) -> Result<JobRow> {
    let opt_time = |c: &str| -> Result<Option<DateTime<Utc>>> {
        r.try_get::<Option<i64>, _>(c)?.map(time).transpose()
    };
    Ok(JobRow {
        id: uuid(r.try_get("id")?)?,
        tenant: r.try_get("tenant")?,
        state: parse(r.try_get("state")?)?,
        stage: parse(r.try_get("stage")?)?,
        priority: r.try_get::<i64, _>("priority")? as i16,
        spec: Json(json(r.try_get("spec")?)?),
        request: r.try_get("request")?,
        steps_total: r.try_get::<i64, _>("steps_total")? as i32,
        steps_done: r.try_get::<i64, _>("steps_done")? as i32,
        attempts: r.try_get::<i64, _>("attempts")? as i32,
        error_code: r.try_get("error_code")?,
        error_message: r.try_get("error_message")?,
        timings: Json(json(r.try_get("timings")?)?),
        labels: Json(json(r.try_get("labels")?)?),
        created_at: time(r.try_get("created_at")?)?,
        started_at: opt_time("started_at")?,
        finished_at: opt_time("finished_at")?,
        deleted_at: opt_time("deleted_at")?,
    })
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations_sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            write: Mutex::new(()),
            notifier: Notifier::default(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The single writer: the lock serialises this process's writers (no `SQLITE_BUSY` on a
    /// read-to-write upgrade), `BEGIN IMMEDIATE` keeps out any other process.
    async fn begin_write(&self) -> Result<(MutexGuard<'_, ()>, Tx<'_>)> {
        let guard = self.write.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok((guard, tx))
    }

    /// Puts tasks that were dispatched to an in-process queue that died with the previous
    /// process back to pending (same attempt: no result of it can arrive any more). What the
    /// broker's redelivery does for the farm; run once when an embedded farm starts.
    pub async fn requeue_in_flight(&self) -> Result<u64> {
        let (_w, mut tx) = self.begin_write().await?;
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT job_id, chunk, attempt FROM tasks WHERE state = 'dispatched'")
                .fetch_all(&mut *tx)
                .await?;
        for (job, chunk, attempt) in &rows {
            sqlx::query(
                "UPDATE tasks SET state = 'pending', not_before = $3 WHERE job_id = $1 AND chunk = $2",
            )
            .bind(job)
            .bind(chunk)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
            let (chunk, attempt) = (Some(*chunk as u32), Some(*attempt as u32));
            event(
                &mut tx,
                uuid(job)?,
                chunk,
                attempt,
                &JobEvent::RequeuedOnRestart,
            )
            .await?;
        }
        tx.commit().await?;
        self.notifier.tasks_changed();
        Ok(rows.len() as u64)
    }

    async fn outputs(&self, id: Uuid) -> Result<Vec<OutputRow>> {
        let rows = sqlx::query(
            "SELECT idx, key, sha256, size_bytes, duration_s, sample_rate, format, channels, \
                    loudness_lufs, true_peak_dbtp, expires_at, deleted_at \
             FROM outputs WHERE job_id = $1 ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutputRow {
                    idx: r.try_get::<i64, _>("idx")? as i32,
                    key: r.try_get("key")?,
                    sha256: r.try_get("sha256")?,
                    size_bytes: r.try_get("size_bytes")?,
                    duration_s: r.try_get::<f64, _>("duration_s")? as f32,
                    sample_rate: r.try_get::<i64, _>("sample_rate")? as i32,
                    format: r.try_get("format")?,
                    channels: r.try_get::<i64, _>("channels")? as i32,
                    loudness_lufs: r
                        .try_get::<Option<f64>, _>("loudness_lufs")?
                        .map(|v| v as f32),
                    true_peak_dbtp: r
                        .try_get::<Option<f64>, _>("true_peak_dbtp")?
                        .map(|v| v as f32),
                    expires_at: r
                        .try_get::<Option<i64>, _>("expires_at")?
                        .map(time)
                        .transpose()?,
                    deleted: r.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
                })
            })
            .collect()
    }

    async fn record(&self, job: JobRow) -> Result<JobRecord> {
        let outputs = self.outputs(job.id).await?;
        Ok(JobRecord { job, outputs })
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_job(&self, tenant: &str, new: &NewJob) -> Result<(JobRecord, bool)> {
        let (w, mut tx) = self.begin_write().await?;
        let (in_flight, budgets) = tenants::admission(&mut tx, tenant).await?;
        let id = Uuid::now_v7();
        let request = prost::Message::encode_to_vec(&new.accepted);
        let spec = serde_json::to_string(&new.spec)
            .map_err(|e| Error::Internal(format!("encoding spec: {e}")))?;
        let labels = serde_json::to_string(&new.labels)
            .map_err(|e| Error::Internal(format!("encoding labels: {e}")))?;
        let inserted: Option<(String,)> = sqlx::query_as(
            "INSERT INTO jobs (id, tenant, state, stage, priority, spec, request, request_hash, \
                               idempotency_key, labels, steps_total, chunk_steps, created_at, \
                               api_key_id, deadline) \
             VALUES ($1, $2, 'queued', 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(id.to_string())
        .bind(tenant)
        .bind(i64::from(new.priority.rank()))
        .bind(spec)
        .bind(&request)
        .bind(&new.request_hash)
        .bind(&new.idempotency_key)
        .bind(labels)
        .bind(i64::from(new.spec.steps))
        .bind(i64::from(new.chunk_steps))
        .bind(now_us())
        .bind(&new.api_key)
        .bind(crate::deadline::of_accepted(&new.accepted).map(|d| d.timestamp_micros()))
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            let (existing, hash): (String, String) = sqlx::query_as(
                "SELECT id, request_hash FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
            )
            .bind(tenant)
            .bind(&new.idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            drop(w);
            let existing = uuid(&existing)?;
            if hash != new.request_hash {
                return Err(Error::AlreadyExists(format!(
                    "idempotency_key {:?} was used for job {existing} with other parameters",
                    new.idempotency_key.as_deref().unwrap_or_default()
                )));
            }
            let job = self
                .get_job(Scope::Tenant(tenant), existing)
                .await?
                .ok_or_else(|| Error::Internal(format!("job {existing} vanished")))?;
            return Ok((job, false));
        }
        if let Some(max) = in_flight {
            tenants::check_in_flight(&mut tx, tenant, max).await?;
        }
        if !budgets.is_empty() {
            usage::check_budgets(&mut tx, tenant, &budgets).await?;
        }
        let mut notes = Pending::default();
        let (from, to) = chunk_ranges(new.spec.steps, new.chunk_steps)[0];
        insert_task(&mut tx, id, 0, "denoise", from, to, new.priority.rank()).await?;
        if let Some(hook) = Subscription::of_accepted(&new.accepted) {
            sqlx::query("INSERT INTO job_webhooks (job_id, url, events) VALUES ($1, $2, $3)")
                .bind(id.to_string())
                .bind(&hook.url)
                .bind(&hook.events)
                .execute(&mut *tx)
                .await?;
        }
        let queued = JobEvent::Queued { batch: None };
        event(&mut tx, id, None, None, &queued).await?;
        notes.tasks();
        notes.job(id, Change::Queued);
        tx.commit().await?;
        drop(w);
        notes.send(&self.notifier);
        let job = self
            .get_job(Scope::Tenant(tenant), id)
            .await?
            .ok_or_else(|| Error::Internal(format!("job {id} vanished")))?;
        Ok((job, true))
    }

    async fn get_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<JobRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2 IS NULL OR tenant = $2)"
        ))
        .bind(id.to_string())
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some(self.record(job_row(&r)?).await?)),
            None => Ok(None),
        }
    }

    async fn list_jobs(
        &self,
        scope: Scope<'_>,
        state: Option<JobState>,
        labels: &BTreeMap<String, String>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRecord>> {
        let (after_at, after_id) = after.unzip();
        let labels = serde_json::to_string(labels)
            .map_err(|e| Error::Internal(format!("encoding labels: {e}")))?;
        // `labels @> $3` of Postgres: no wanted pair is missing from the job's labels.
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR tenant = $1) \
               AND ($2 IS NULL OR state = $2) \
               AND NOT EXISTS (SELECT 1 FROM json_each($3) AS want WHERE NOT EXISTS \
                   (SELECT 1 FROM json_each(jobs.labels) AS have \
                    WHERE have.key = want.key AND have.value = want.value)) \
               AND ($4 IS NULL OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(scope.tenant())
        .bind(state.map(JobState::as_str))
        .bind(labels)
        .bind(after_at.map(|t| t.timestamp_micros()))
        .bind(after_id.map(|id| id.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.record(job_row(r)?).await?);
        }
        Ok(out)
    }

    async fn cancel_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<(JobRecord, bool)>> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        let changed = crate::lifecycle::cancel(tx.as_mut(), scope, id).await?;
        tx.commit().await?;
        Ok(self.get_job(scope, id).await?.map(|j| (j, changed)))
    }

    async fn retry_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<(JobRecord, Retried)>> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        let retried = crate::lifecycle::retry(tx.as_mut(), scope, id).await?;
        tx.commit().await?;
        let Some(retried) = retried else {
            return Ok(None);
        };
        Ok(self.get_job(scope, id).await?.map(|j| (j, retried)))
    }
    async fn delete_job(
        &self,
        scope: Scope<'_>,
        id: Uuid,
    ) -> Result<Option<(JobRecord, crate::lifecycle::deleted::Deleted)>> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        let deleted = crate::lifecycle::delete(tx.as_mut(), scope, id).await?;
        tx.commit().await?;
        let Some(deleted) = deleted else {
            return Ok(None);
        };
        Ok(self.get_job(scope, id).await?.map(|j| (j, deleted)))
    }
    async fn delete_batch(
        &self,
        tenant: &str,
        batch: Uuid,
    ) -> Result<Option<Vec<(Uuid, crate::lifecycle::deleted::Deleted)>>> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        let deleted = crate::lifecycle::delete_batch(tx.as_mut(), tenant, batch).await?;
        tx.commit().await?;
        Ok(deleted)
    }
    async fn retry_batch_items(
        &self,
        tenant: &str,
        batch: Uuid,
        include_cancelled: bool,
    ) -> Result<Option<Vec<(Uuid, bool)>>> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        let retried =
            crate::lifecycle::retry_batch(tx.as_mut(), tenant, batch, include_cancelled).await?;
        tx.commit().await?;
        Ok(retried)
    }
    async fn begin_round(&self) -> Result<Box<dyn RoundTx + '_>> {
        round::begin_round(self).await
    }
    async fn record_heartbeat(&self, hb: &Heartbeat<'_>) -> Result<()> {
        round::heartbeat(self, hb).await
    }
    async fn record_dead_letter(&self, letter: &DeadLetter<'_>) -> Result<()> {
        views::record_dead_letter(self, letter).await
    }
    async fn record_replays(&self, by: &str, replays: &[(&str, u64, u64)]) -> Result<()> {
        views::record_replays(self, by, replays).await
    }
    async fn reclaim_lost(&self, timeout: Duration, policy: RetryPolicy) -> Result<()> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        crate::lifecycle::reclaim_lost(tx.as_mut(), timeout, policy).await?;
        tx.commit().await
    }
    async fn expire_leases(&self, lease: Duration, policy: RetryPolicy) -> Result<()> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        crate::lifecycle::expire_leases(tx.as_mut(), lease, policy).await?;
        tx.commit().await
    }
    async fn queue_read(
        &self,
        scope: Scope<'_>,
        job: Uuid,
        worker_timeout: Duration,
    ) -> Result<Option<crate::sched::position::QueueRead>> {
        queue::read(&self.pool, scope, job, worker_timeout).await
    }
    async fn expire_deadlines(&self) -> Result<u64> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        let n = crate::lifecycle::expire_deadlines(tx.as_mut()).await?;
        tx.commit().await?;
        Ok(n)
    }
    async fn record_progress(&self, task: TaskRef<'_>, steps_done: u32) -> Result<()> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        crate::lifecycle::record_progress(tx.as_mut(), task, steps_done).await?;
        tx.commit().await
    }
    async fn record_result(
        &self,
        task: TaskRef<'_>,
        outcome: &Outcome,
        policy: RetryPolicy,
    ) -> Result<Recorded> {
        let mut tx = SqliteLifecycle::begin(self).await?;
        let recorded = crate::lifecycle::record_result(tx.as_mut(), task, outcome, policy).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn checkpoints_to_clear(&self, grace: Duration, limit: i64) -> Result<Vec<(Uuid, u32)>> {
        let before = now_us() - i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT id, steps_total, chunk_steps FROM jobs \
             WHERE NOT checkpoints_cleared AND finished_at IS NOT NULL AND finished_at <= $1 \
             ORDER BY finished_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, steps, chunk)| {
                let id =
                    Uuid::parse_str(&id).map_err(|e| Error::Internal(format!("job id: {e}")))?;
                Ok((id, super::denoise_chunks(steps as i32, chunk as i32)))
            })
            .collect()
    }

    async fn checkpoints_cleared(&self, jobs: &[Uuid]) -> Result<()> {
        let (w, mut tx) = self.begin_write().await?;
        for id in jobs {
            sqlx::query("UPDATE jobs SET checkpoints_cleared = 1 WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        drop(w);
        Ok(())
    }

    async fn outputs_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, i32, String)>> {
        retention::outputs_to_expire(self, now, limit).await
    }
    async fn outputs_expired(&self, outputs: &[(Uuid, i32)]) -> Result<()> {
        retention::outputs_expired(self, outputs).await
    }
    async fn inputs_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>> {
        retention::inputs_to_expire(self, now, limit).await
    }
    async fn inputs_expired(&self, jobs: &[Uuid]) -> Result<()> {
        retention::inputs_expired(self, jobs).await
    }
    async fn manifests_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String, Option<String>, Option<String>)>> {
        retention::manifests_to_expire(self, now, limit).await
    }
    async fn manifests_expired(&self, batches: &[Uuid]) -> Result<()> {
        retention::manifests_expired(self, batches).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn stats(&self) -> Result<super::Stats> {
        Ok(super::Stats {
            jobs: sqlx::query_as(super::sql::STATS_JOBS_SQL)
                .fetch_all(&self.pool)
                .await?,
            backlog: sqlx::query_as(super::sql::STATS_BACKLOG_SQL)
                .fetch_all(&self.pool)
                .await?,
            in_flight: sqlx::query_as(super::sql::STATS_IN_FLIGHT_SQL)
                .fetch_all(&self.pool)
                .await?,
        })
    }
    async fn history(&self, job: Uuid) -> Result<Vec<HistoryEvent>> {
        let rows: Vec<(String, Option<i64>, Option<i64>, String)> = sqlx::query_as(
            "SELECT kind, chunk, attempt, detail FROM job_events WHERE job_id = $1 ORDER BY id",
        )
        .bind(job.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(kind, chunk, attempt, detail)| {
                Ok(HistoryEvent {
                    kind,
                    chunk: chunk.map(|c| c as i32),
                    attempt: attempt.map(|a| a as i32),
                    detail: json(&detail)?,
                })
            })
            .collect()
    }

    fn notifier(&self) -> &Notifier {
        &self.notifier
    }
    fn batches(&self) -> &dyn super::BatchStore {
        self
    }
}
