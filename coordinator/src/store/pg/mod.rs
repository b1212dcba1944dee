//! Job state in Postgres: jobs, their stage tasks, outputs and history. Every state change is
//! one transaction; `NOTIFY` inside it wakes dispatchers (`tutti_tasks`) and watchers
//! (`tutti_jobs`, payload `<job id> <event>`) only once it commits, on every replica.

mod batches;
mod lifecycle;
mod listen;
mod queue;
mod round;
mod rows;
mod tenants;
mod usage;
mod views;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{ConnectOptions, PgPool};
use tutti_shared::job::{chunk_ranges, JobState};
use tutti_shared::messages::Outcome;
use uuid::Uuid;

use self::lifecycle::PgLifecycle;
use self::listen::{ensure_database, listen};
use self::rows::{event, insert_task, job_payload, JOBS_CHANNEL, TASKS_CHANNEL};
use super::{
    DeadLetter, Heartbeat, HistoryEvent, JobRecord, JobRow, JobStore, Notifier, OutputRow, Retried,
    RetryPolicy, Scope, TaskRef,
};
use crate::error::{Error, Result};
use crate::lifecycle::events::JobEvent;
use crate::lifecycle::{LifecycleTx, Recorded};
use crate::notify::Change;
use crate::sched::RoundTx;
use crate::validate::NewJob;
use crate::webhooks::Subscription;

const JOB_COLUMNS: &str =
    "id, tenant, state, stage, priority, spec, request, steps_total, steps_done, \
     attempts, error_code, error_message, timings, labels, created_at, started_at, finished_at, \
     deleted_at";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    notifier: Arc<Notifier>,
}

impl PgStore {
    /// Connects, creating the database when it does not exist, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts: PgConnectOptions = url.parse()?;
        let opts = opts.log_statements(tracing::log::LevelFilter::Trace);
        ensure_database(&opts).await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let notifier = Arc::new(Notifier::default());
        tokio::spawn(listen(pool.clone(), Arc::downgrade(&notifier)));
        Ok(Self { pool, notifier })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn insert_job_impl(&self, tenant: &str, new: &NewJob) -> Result<(JobRecord, bool)> {
        let mut tx = self.pool.begin().await?;
        let (in_flight, budgets) = tenants::admission(&mut tx, tenant).await?;
        let id = Uuid::now_v7();
        let request = prost::Message::encode_to_vec(&new.accepted);
        // The new row comes back from the insert: a submit reads nothing after its commit.
        let inserted: Option<JobRow> = sqlx::query_as(&format!(
            "INSERT INTO jobs (id, tenant, state, stage, priority, spec, request, request_hash, \
                               idempotency_key, labels, steps_total, chunk_steps, api_key_id, \
                               deadline) \
             VALUES ($1, $2, 'queued', 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(tenant)
        .bind(new.priority.rank())
        .bind(Json(&new.spec))
        .bind(&request)
        .bind(&new.request_hash)
        .bind(&new.idempotency_key)
        .bind(Json(&new.labels))
        .bind(new.spec.steps as i32)
        .bind(new.chunk_steps as i32)
        .bind(&new.api_key)
        .bind(crate::deadline::of_accepted(&new.accepted))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = inserted else {
            let (existing, hash): (Uuid, String) = sqlx::query_as(
                "SELECT id, request_hash FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
            )
            .bind(tenant)
            .bind(&new.idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            if hash != new.request_hash {
                return Err(Error::AlreadyExists(format!(
                    "idempotency_key {:?} was used for job {existing} with other parameters",
                    new.idempotency_key.as_deref().unwrap_or_default()
                )));
            }
            let job = self
                .get_job_impl(Scope::Tenant(tenant), existing)
                .await?
                .ok_or_else(|| Error::Internal(format!("job {existing} vanished")))?;
            return Ok((job, false));
        };
        if let Some(max) = in_flight {
            tenants::check_in_flight(&mut tx, tenant, max).await?;
        }
        if !budgets.is_empty() {
            usage::check_budgets(&mut tx, tenant, &budgets).await?;
        }
        let (from, to) = chunk_ranges(new.spec.steps, new.chunk_steps)[0];
        insert_task(&mut tx, id, 0, "denoise", from, to, new.priority.rank()).await?;
        if let Some(hook) = Subscription::of_accepted(&new.accepted) {
            sqlx::query("INSERT INTO job_webhooks (job_id, url, events) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(&hook.url)
                .bind(&hook.events)
                .execute(&mut *tx)
                .await?;
        }
        let queued = JobEvent::Queued { batch: None };
        event(&mut tx, id, None, None, &queued).await?;
        // Both wake-ups in one round trip: the dispatchers' and the job's watchers'.
        sqlx::query("SELECT pg_notify($1, ''), pg_notify($2, $3)")
            .bind(TASKS_CHANNEL)
            .bind(JOBS_CHANNEL)
            .bind(job_payload(id, Change::Queued))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((
            JobRecord {
                job: row,
                outputs: Vec::new(),
            },
            true,
        ))
    }

    async fn get_job_impl(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<JobRecord>> {
        let job: Option<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
        ))
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        let Some(job) = job else { return Ok(None) };
        let outputs = self.outputs(id).await?;
        Ok(Some(JobRecord { job, outputs }))
    }

    async fn outputs(&self, id: Uuid) -> Result<Vec<OutputRow>> {
        Ok(sqlx::query_as(
            "SELECT idx, key, sha256, size_bytes, duration_s, sample_rate, format, channels, \
                    loudness_lufs, true_peak_dbtp, expires_at, (deleted_at IS NOT NULL) AS deleted \
             FROM outputs WHERE job_id = $1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn list_jobs_impl(
        &self,
        scope: Scope<'_>,
        state: Option<JobState>,
        labels: &BTreeMap<String, String>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRecord>> {
        let (after_at, after_id) = after.unzip();
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR tenant = $1) \
               AND ($2::text IS NULL OR state = $2) \
               AND labels @> $3 \
               AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(scope.tenant())
        .bind(state.map(JobState::as_str))
        .bind(Json(labels))
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for job in rows {
            let outputs = self.outputs(job.id).await?;
            out.push(JobRecord { job, outputs });
        }
        Ok(out)
    }

    async fn cancel_job_impl(
        &self,
        scope: Scope<'_>,
        id: Uuid,
    ) -> Result<Option<(JobRecord, bool)>> {
        let changed = transaction_retried(|| async move {
            let mut tx = PgLifecycle::begin(&self.pool).await?;
            let changed = crate::lifecycle::cancel(tx.as_mut(), scope, id).await?;
            tx.commit().await?;
            Ok(changed)
        })
        .await?;
        Ok(self.get_job_impl(scope, id).await?.map(|j| (j, changed)))
    }
}

/// Whether a transaction failed only because Postgres aborted it to break a deadlock (40P01) or
/// a serialization conflict (40001). It rolled back whole, so running it again is safe: a
/// caller's cancel, retry or delete racing the dispatcher's round over the same rows should
/// wait its turn, not come back UNAVAILABLE.
fn aborted_by_conflict(e: &Error) -> bool {
    matches!(e, Error::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Runs a transaction (`attempt` begins, works and commits) up to five times while Postgres
/// aborts it to break a conflict, waiting 20, 40, 80, 160 ms between tries.
async fn transaction_retried<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Err(e) if aborted_by_conflict(&e) && tries < 4 => {
                tries += 1;
                tracing::warn!(error = %e, tries, "transaction aborted by a conflict; running it again");
                tokio::time::sleep(Duration::from_millis(10 << tries)).await;
            }
            done => return done,
        }
    }
}

#[async_trait]
impl JobStore for PgStore {
    async fn insert_job(&self, tenant: &str, new: &NewJob) -> Result<(JobRecord, bool)> {
        self.insert_job_impl(tenant, new).await
    }
    async fn get_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<JobRecord>> {
        self.get_job_impl(scope, id).await
    }
    async fn list_jobs(
        &self,
        scope: Scope<'_>,
        state: Option<JobState>,
        labels: &BTreeMap<String, String>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRecord>> {
        self.list_jobs_impl(scope, state, labels, after, limit)
            .await
    }
    async fn cancel_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<(JobRecord, bool)>> {
        self.cancel_job_impl(scope, id).await
    }
    async fn retry_job(&self, scope: Scope<'_>, id: Uuid) -> Result<Option<(JobRecord, Retried)>> {
        let retried = transaction_retried(|| async move {
            let mut tx = PgLifecycle::begin(&self.pool).await?;
            let retried = crate::lifecycle::retry(tx.as_mut(), scope, id).await?;
            tx.commit().await?;
            Ok(retried)
        })
        .await?;
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
        let deleted = transaction_retried(|| async move {
            let mut tx = PgLifecycle::begin(&self.pool).await?;
            let deleted = crate::lifecycle::delete(tx.as_mut(), scope, id).await?;
            tx.commit().await?;
            Ok(deleted)
        })
        .await?;
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
        transaction_retried(|| async move {
            let mut tx = PgLifecycle::begin(&self.pool).await?;
            let deleted = crate::lifecycle::delete_batch(tx.as_mut(), tenant, batch).await?;
            tx.commit().await?;
            Ok(deleted)
        })
        .await
    }
    async fn retry_batch_items(
        &self,
        tenant: &str,
        batch: Uuid,
        include_cancelled: bool,
    ) -> Result<Option<Vec<(Uuid, bool)>>> {
        transaction_retried(|| async move {
            let mut tx = PgLifecycle::begin(&self.pool).await?;
            let retried =
                crate::lifecycle::retry_batch(tx.as_mut(), tenant, batch, include_cancelled)
                    .await?;
            tx.commit().await?;
            Ok(retried)
        })
        .await
    }
    async fn begin_round(&self) -> Result<Box<dyn RoundTx + '_>> {
        round::begin_round(&self.pool).await
    }
    async fn record_heartbeat(&self, hb: &Heartbeat<'_>) -> Result<()> {
        round::heartbeat(&self.pool, hb).await
    }
    async fn record_dead_letter(&self, letter: &DeadLetter<'_>) -> Result<()> {
        views::record_dead_letter(&self.pool, letter).await
    }
    async fn record_replays(&self, by: &str, replays: &[(&str, u64, u64)]) -> Result<()> {
        views::record_replays(&self.pool, by, replays).await
    }
    async fn reclaim_lost(&self, timeout: Duration, policy: RetryPolicy) -> Result<()> {
        let mut tx = PgLifecycle::begin(&self.pool).await?;
        crate::lifecycle::reclaim_lost(tx.as_mut(), timeout, policy).await?;
        tx.commit().await
    }
    async fn expire_leases(&self, lease: Duration, policy: RetryPolicy) -> Result<()> {
        let mut tx = PgLifecycle::begin(&self.pool).await?;
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
        let mut tx = PgLifecycle::begin(&self.pool).await?;
        let n = crate::lifecycle::expire_deadlines(tx.as_mut()).await?;
        tx.commit().await?;
        Ok(n)
    }
    async fn record_progress(&self, task: TaskRef<'_>, steps_done: u32) -> Result<()> {
        let mut tx = PgLifecycle::begin(&self.pool).await?;
        crate::lifecycle::record_progress(tx.as_mut(), task, steps_done).await?;
        tx.commit().await
    }
    async fn record_result(
        &self,
        task: TaskRef<'_>,
        outcome: &Outcome,
        policy: RetryPolicy,
    ) -> Result<Recorded> {
        let mut tx = PgLifecycle::begin(&self.pool).await?;
        let recorded = crate::lifecycle::record_result(tx.as_mut(), task, outcome, policy).await?;
        tx.commit().await?;
        Ok(recorded)
    }
    async fn checkpoints_to_clear(&self, grace: Duration, limit: i64) -> Result<Vec<(Uuid, u32)>> {
        let rows: Vec<(Uuid, i32, i32)> = sqlx::query_as(
            "SELECT id, steps_total, chunk_steps FROM jobs \
             WHERE NOT checkpoints_cleared AND finished_at IS NOT NULL \
               AND finished_at <= now() - make_interval(secs => $1) \
             ORDER BY finished_at LIMIT $2",
        )
        .bind(grace.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, steps, chunk)| (id, super::denoise_chunks(steps, chunk)))
            .collect())
    }

    async fn checkpoints_cleared(&self, jobs: &[Uuid]) -> Result<()> {
        sqlx::query("UPDATE jobs SET checkpoints_cleared = TRUE WHERE id = ANY($1)")
            .bind(jobs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outputs_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, i32, String)>> {
        Ok(sqlx::query_as(
            "SELECT job_id, idx, key FROM outputs \
             WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn outputs_expired(&self, outputs: &[(Uuid, i32)]) -> Result<()> {
        let (jobs, idx): (Vec<Uuid>, Vec<i32>) = outputs.iter().copied().unzip();
        sqlx::query(
            "UPDATE outputs o SET deleted_at = now() FROM UNNEST($1::uuid[], $2::int[]) AS d(job, idx) \
             WHERE o.job_id = d.job AND o.idx = d.idx AND o.deleted_at IS NULL",
        )
        .bind(&jobs)
        .bind(&idx)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn inputs_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>> {
        Ok(sqlx::query_as(
            "SELECT j.id, j.spec->'init_audio'->>'key' FROM jobs j JOIN tenants t ON t.name = j.tenant \
             WHERE t.retain_inputs_days IS NOT NULL AND j.inputs_cleared_at IS NULL \
               AND j.finished_at IS NOT NULL AND j.deleted_at IS NULL \
               AND j.spec->'init_audio'->>'key' LIKE 'inputs/' || j.tenant || '/%' \
               AND j.finished_at <= $1::timestamptz - make_interval(days => t.retain_inputs_days) \
             ORDER BY j.finished_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn inputs_expired(&self, jobs: &[Uuid]) -> Result<()> {
        sqlx::query("UPDATE jobs SET inputs_cleared_at = now() WHERE id = ANY($1)")
            .bind(jobs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn manifests_to_expire(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String, Option<String>, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT b.id, b.tenant, b.results_key, b.manifest_uri \
             FROM batches b JOIN tenants t ON t.name = b.tenant \
             WHERE t.retain_manifests_days IS NOT NULL AND b.manifests_cleared_at IS NULL \
               AND b.finished_at IS NOT NULL \
               AND b.finished_at <= $1::timestamptz - make_interval(days => t.retain_manifests_days) \
             ORDER BY b.finished_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn manifests_expired(&self, batches: &[Uuid]) -> Result<()> {
        sqlx::query("UPDATE batches SET manifests_cleared_at = now() WHERE id = ANY($1)")
            .bind(batches)
            .execute(&self.pool)
            .await?;
        Ok(())
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
        let rows: Vec<(String, Option<i32>, Option<i32>, serde_json::Value)> = sqlx::query_as(
            "SELECT kind, chunk, attempt, detail FROM job_events WHERE job_id = $1 ORDER BY id",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(kind, chunk, attempt, detail)| HistoryEvent {
                kind,
                chunk,
                attempt,
                detail,
            })
            .collect())
    }
    fn notifier(&self) -> &Notifier {
        &self.notifier
    }
    fn batches(&self) -> &dyn super::BatchStore {
        self
    }
}

#[cfg(test)]
mod conflict_tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Postgres itself raises the deadlock's SQLSTATE: the first two tries fail with it and the
    /// third commits; any other database error comes back at once.
    #[tokio::test]
    async fn a_transaction_aborted_by_a_deadlock_runs_again() {
        let store = crate::store::tests::pg().await;
        let pool = store.pool();
        let raise = |code: &'static str| async move {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$"
            ))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        };
        let calls = AtomicU32::new(0);
        let got = transaction_retried(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                raise("40P01").await?;
            }
            Ok(7)
        })
        .await;
        assert_eq!((got.ok(), calls.load(Ordering::SeqCst)), (Some(7), 3));

        let calls = AtomicU32::new(0);
        let got: Result<()> = transaction_retried(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            raise("23505").await
        })
        .await;
        assert!(got.is_err_and(|e| !aborted_by_conflict(&e)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a unique violation is not retried"
        );

        // A conflict that does not clear gives up after five tries.
        let calls = AtomicU32::new(0);
        let got: Result<()> = transaction_retried(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            raise("40001").await
        })
        .await;
        assert!(got.is_err_and(|e| aborted_by_conflict(&e)));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }
}
