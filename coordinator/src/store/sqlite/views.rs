//! `ViewStore` on SQLite (times are INTEGER microseconds, ids and holds are text).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tutti_shared::job::JobState;
use uuid::Uuid;

use super::SqliteStore;
use crate::error::{Error, Result};
use crate::store::views::{
    overview, parse_uuid, records, tenant_work, DeadLetterRow, DispatchedTask, FailedJob,
    FailedTask, QueueOverview, ReplayRow, TenantWork, ViewStore, WorkerRow,
};
use crate::store::{DeadLetter, JobRecord, Scope, DEAD_LETTERS_KEPT};

fn time(us: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| Error::Internal(format!("time {us}")))
}

fn opt_time(us: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    us.map(time).transpose()
}

#[async_trait]
impl ViewStore for SqliteStore {
    async fn workers_view(&self) -> Result<Vec<WorkerRow>> {
        type Row = (
            String,
            i64,
            i64,
            i64,
            String,
            bool,
            i64,
            String,
            f64,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT worker, denoise_slots, vocode_slots, express_slots, holds, draining, last_seen, \
                    device, chunks_per_forward, models \
             FROM workers ORDER BY worker",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(worker, d, v, e, holds, draining, last_seen, device, cpf, models)| {
                    Ok(WorkerRow {
                        worker,
                        denoise_slots: d.max(0) as u32,
                        vocode_slots: v.max(0) as u32,
                        express_slots: e.max(0) as u32,
                        holds: serde_json::from_str(&holds)
                            .map_err(|e| Error::Internal(format!("stored holds: {e}")))?,
                        draining,
                        last_seen: time(last_seen)?,
                        device,
                        chunks_per_forward: cpf as f32,
                        models: serde_json::from_str(&models)
                            .map_err(|e| Error::Internal(format!("stored models: {e}")))?,
                    })
                },
            )
            .collect()
    }

    async fn dispatched_tasks(&self) -> Result<Vec<DispatchedTask>> {
        let rows: Vec<(String, String, i64, String, i64)> = sqlx::query_as(
            "SELECT COALESCE(worker, routed_to), job_id, chunk, kind, priority FROM tasks \
             WHERE state = 'dispatched' AND COALESCE(worker, routed_to) IS NOT NULL \
             ORDER BY priority, dispatched_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(worker, job, chunk, kind, rank)| {
                Ok(DispatchedTask {
                    worker,
                    job: parse_uuid(&job)?,
                    chunk: chunk.max(0) as u32,
                    kind,
                    rank: rank as i16,
                })
            })
            .collect()
    }

    async fn queue_overview(&self) -> Result<QueueOverview> {
        let rows: Vec<(String, i64, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT kind, priority, \
                    SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN state = 'dispatched' THEN 1 ELSE 0 END), \
                    MIN(CASE WHEN state = 'pending' THEN created_at END) \
             FROM tasks WHERE state IN ('pending', 'dispatched') \
             GROUP BY kind, priority ORDER BY kind, priority",
        )
        .fetch_all(&self.pool)
        .await?;
        let rows = rows
            .into_iter()
            .map(|(kind, rank, pending, in_flight, oldest)| {
                Ok((kind, rank as i16, pending, in_flight, opt_time(oldest)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let jobs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(overview(rows, jobs))
    }

    async fn tenant_work(&self, window: Duration) -> Result<Vec<TenantWork>> {
        let since = Utc::now().timestamp_micros() - window.as_micros() as i64;
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT j.tenant, t.priority, count(*), COALESCE(sum(t.millis), 0) \
             FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'done' AND t.finished_at >= $1 \
             GROUP BY j.tenant, t.priority ORDER BY t.priority, j.tenant",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(t, rank, n, ms)| tenant_work((t, rank as i16, n, ms)))
            .collect())
    }

    async fn failed_jobs(&self, limit: i64) -> Result<Vec<FailedJob>> {
        type Row = (String, String, Option<String>, Option<String>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, tenant, error_code, error_message, finished_at FROM jobs \
             WHERE state = 'failed' ORDER BY finished_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(job, tenant, code, message, at)| {
                Ok(FailedJob {
                    job: parse_uuid(&job)?,
                    tenant,
                    code: code.unwrap_or_default(),
                    message: message.unwrap_or_default(),
                    at: opt_time(at)?,
                })
            })
            .collect()
    }

    async fn failed_tasks(&self, limit: i64) -> Result<Vec<FailedTask>> {
        type Row = (
            String,
            i64,
            String,
            i64,
            Option<String>,
            String,
            String,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT job_id, chunk, kind, attempt, worker, last_error, state, \
                    COALESCE(finished_at, not_before) AS at \
             FROM tasks WHERE last_error IS NOT NULL AND state IN ('failed', 'pending') \
             ORDER BY at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(job, chunk, kind, attempt, worker, error, state, at)| {
                Ok(FailedTask {
                    job: parse_uuid(&job)?,
                    chunk: chunk.max(0) as u32,
                    kind,
                    attempt: attempt.max(0) as u32,
                    worker,
                    error,
                    state,
                    at: opt_time(at)?,
                })
            })
            .collect()
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>> {
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT refused_by, queue, error, size_bytes, at FROM dead_letters \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(by, queue, error, size, at)| {
                Ok(DeadLetterRow {
                    by,
                    queue,
                    error,
                    size_bytes: size.max(0) as u64,
                    at: time(at)?,
                })
            })
            .collect()
    }

    async fn replays(&self, limit: i64) -> Result<Vec<ReplayRow>> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT replayed_by, queue, messages, size_bytes, at FROM dead_letter_replays \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(by, queue, messages, size, at)| {
                Ok(ReplayRow {
                    by,
                    queue,
                    messages: messages.max(0) as u64,
                    size_bytes: size.max(0) as u64,
                    at: time(at)?,
                })
            })
            .collect()
    }

    async fn search_jobs(
        &self,
        scope: Scope<'_>,
        state: Option<JobState>,
        labels: &BTreeMap<String, String>,
        text: &str,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRecord>> {
        let (after_at, after_id) = after.unzip();
        let labels = serde_json::to_string(labels)
            .map_err(|e| Error::Internal(format!("encoding labels: {e}")))?;
        // The filters of `list_jobs` (sqlite.rs), and the prompt text.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE ($1 IS NULL OR tenant = $1) \
               AND ($2 IS NULL OR state = $2) \
               AND NOT EXISTS (SELECT 1 FROM json_each($3) AS want WHERE NOT EXISTS \
                   (SELECT 1 FROM json_each(jobs.labels) AS have \
                    WHERE have.key = want.key AND have.value = want.value)) \
               AND instr(lower(json_extract(spec, '$.prompt')), lower($4)) > 0 \
               AND ($5 IS NULL OR (created_at, id) < ($5, $6)) \
             ORDER BY created_at DESC, id DESC LIMIT $7",
        )
        .bind(scope.tenant())
        .bind(state.map(JobState::as_str))
        .bind(labels)
        .bind(text)
        .bind(after_at.map(|t| t.timestamp_micros()))
        .bind(after_id.map(|id| id.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let ids = ids
            .iter()
            .map(|s| parse_uuid(s))
            .collect::<Result<Vec<_>>>()?;
        records(self, scope, ids).await
    }
}

/// Records a dead letter's cause and drops the ones past the newest `DEAD_LETTERS_KEPT`.
pub(super) async fn record_dead_letter(store: &SqliteStore, d: &DeadLetter<'_>) -> Result<()> {
    let (_w, mut tx) = store.begin_write().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (refused_by, queue, error, size_bytes, at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(d.by)
    .bind(d.queue)
    .bind(d.error)
    .bind(d.size_bytes as i64)
    .bind(super::rows::now_us())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM dead_letters WHERE id <= $1")
        .bind(id - DEAD_LETTERS_KEPT)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Records one replay, a row per queue, in one transaction.
pub(super) async fn record_replays(
    store: &SqliteStore,
    by: &str,
    replays: &[(&str, u64, u64)],
) -> Result<()> {
    let (_w, mut tx) = store.begin_write().await?;
    let now = super::rows::now_us();
    for (queue, messages, bytes) in replays {
        sqlx::query(
            "INSERT INTO dead_letter_replays (replayed_by, queue, messages, size_bytes, at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(by)
        .bind(queue)
        .bind(*messages as i64)
        .bind(*bytes as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
