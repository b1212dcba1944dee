//! Job state in Postgres: jobs, their stage tasks, outputs and history. Every state change is
//! one transaction; `NOTIFY` inside it wakes dispatchers (`tutti_tasks`) and watchers
//! (`tutti_jobs`, payload `<job id> <event>`) only once it commits.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{ConnectOptions, PgPool, Postgres, Transaction};
use tutti_shared::job::{chunk_ranges, JobSpec, JobState, Stage};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::validate::NewJob;

pub const TASKS_CHANNEL: &str = "tutti_tasks";
pub const JOBS_CHANNEL: &str = "tutti_jobs";

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub tenant: String,
    pub state: String,
    pub stage: String,
    pub priority: i16,
    pub spec: Json<JobSpec>,
    pub request: Vec<u8>,
    pub steps_total: i32,
    pub steps_done: i32,
    pub attempts: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub timings: Json<BTreeMap<String, i64>>,
    pub labels: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    pub fn state(&self) -> Result<JobState> {
        self.state
            .parse()
            .map_err(|e| Error::Internal(format!("job {}: {e}", self.id)))
    }
    pub fn stage(&self) -> Result<Stage> {
        self.stage
            .parse()
            .map_err(|e| Error::Internal(format!("job {}: {e}", self.id)))
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutputRow {
    pub idx: i32,
    pub key: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub duration_s: f32,
    pub sample_rate: i32,
    pub format: String,
}

/// A job with its outputs.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub job: JobRow,
    pub outputs: Vec<OutputRow>,
}

const JOB_COLUMNS: &str =
    "id, tenant, state, stage, priority, spec, request, steps_total, steps_done, \
     attempts, error_code, error_message, timings, labels, created_at, started_at, finished_at";

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
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
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores a new job and its first task, or returns the job an idempotency key already names.
    /// Returns the job and whether it was created now.
    pub async fn insert_job(&self, tenant: &str, new: &NewJob) -> Result<(JobRecord, bool)> {
        let mut tx = self.pool.begin().await?;
        let id = Uuid::now_v7();
        let request = prost::Message::encode_to_vec(&new.accepted);
        let inserted: Option<(Uuid,)> = sqlx::query_as(
            "INSERT INTO jobs (id, tenant, state, stage, priority, spec, request, request_hash, \
                               idempotency_key, labels, steps_total, chunk_steps) \
             VALUES ($1, $2, 'queued', 'queued', $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING id",
        )
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
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id,)) = inserted else {
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
                .get_job(tenant, existing)
                .await?
                .ok_or_else(|| Error::Internal(format!("job {existing} vanished")))?;
            return Ok((job, false));
        };
        let (from, to) = chunk_ranges(new.spec.steps, new.chunk_steps)[0];
        insert_task(&mut tx, id, 0, "denoise", from, to, new.priority.rank()).await?;
        event(&mut tx, id, "queued", None, None, serde_json::json!({})).await?;
        notify(&mut tx, TASKS_CHANNEL, "").await?;
        notify_job(&mut tx, id, "queued").await?;
        tx.commit().await?;
        let job = self
            .get_job(tenant, id)
            .await?
            .ok_or_else(|| Error::Internal(format!("job {id} vanished")))?;
        Ok((job, true))
    }

    /// A job of the tenant; `None` for an unknown id or another tenant's job.
    pub async fn get_job(&self, tenant: &str, id: Uuid) -> Result<Option<JobRecord>> {
        let job: Option<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        let Some(job) = job else { return Ok(None) };
        let outputs = self.outputs(id).await?;
        Ok(Some(JobRecord { job, outputs }))
    }

    async fn outputs(&self, id: Uuid) -> Result<Vec<OutputRow>> {
        Ok(sqlx::query_as(
            "SELECT idx, key, sha256, size_bytes, duration_s, sample_rate, format \
             FROM outputs WHERE job_id = $1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A page of the tenant's jobs, newest first, after the cursor `(created_at, id)`.
    pub async fn list_jobs(
        &self,
        tenant: &str,
        state: Option<JobState>,
        labels: &BTreeMap<String, String>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRecord>> {
        let (after_at, after_id) = after.unzip();
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 \
               AND ($2::text IS NULL OR state = $2) \
               AND labels @> $3 \
               AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        ))
        .bind(tenant)
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

    /// Cancels a job that has not ended: the job and its unfinished tasks, in one transaction.
    /// Returns `None` for an unknown job and whether this call cancelled it.
    pub async fn cancel_job(&self, tenant: &str, id: Uuid) -> Result<Option<(JobRecord, bool)>> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = now() \
             WHERE id = $1 AND tenant = $2 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', finished_at = now() \
                 WHERE job_id = $1 AND state IN ('pending', 'dispatched')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            event(&mut tx, id, "cancelled", None, None, serde_json::json!({})).await?;
            notify_job(&mut tx, id, "cancelled").await?;
        }
        tx.commit().await?;
        Ok(self.get_job(tenant, id).await?.map(|j| (j, changed)))
    }

    /// A job regardless of tenant (for the coordinator's own loops).
    pub async fn job_tenant(&self, id: Uuid) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT tenant FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }
}

/// Creates the target database if it is missing (handy on a fresh server; harmless otherwise).
async fn ensure_database(opts: &PgConnectOptions) -> Result<()> {
    let Some(name) = opts.get_database().map(str::to_string) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = match admin.connect().await {
        Ok(c) => c,
        // Without access to `postgres`, assume the database exists; the pool will say if not.
        Err(_) => return Ok(()),
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut conn)
            .await
        {
            // Another replica may have created it between the check and here.
            tracing::debug!(error = %e, database = %name, "create database");
        }
    }
    Ok(())
}

pub(crate) async fn insert_task(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    chunk: u32,
    kind: &str,
    from_step: u32,
    to_step: u32,
    priority: i16,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tasks (job_id, chunk, kind, from_step, to_step, state, priority) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
    )
    .bind(job)
    .bind(chunk as i32)
    .bind(kind)
    .bind(from_step as i32)
    .bind(to_step as i32)
    .bind(priority)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn event(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    kind: &str,
    chunk: Option<u32>,
    attempt: Option<u32>,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_events (job_id, kind, chunk, attempt, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job)
    .bind(kind)
    .bind(chunk.map(|c| c as i32))
    .bind(attempt.map(|a| a as i32))
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    channel: &str,
    payload: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn notify_job(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    what: &str,
) -> Result<()> {
    notify(tx, JOBS_CHANNEL, &format!("{job} {what}")).await
}
