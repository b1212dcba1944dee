//! `ViewStore` on Postgres: the SQL of the read-only views.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use tutti_shared::job::JobState;
use uuid::Uuid;

use super::PgStore;
use crate::error::Result;
use crate::store::views::{
    overview, records, tenant_work, DeadLetterRow, DispatchedTask, FailedJob, FailedTask,
    QueueCounts, QueueOverview, ReplayRow, TenantWork, ViewStore, WorkerRow,
};
use crate::store::{DeadLetter, DEAD_LETTERS_KEPT};
use crate::store::{JobRecord, Scope};

#[async_trait]
impl ViewStore for PgStore {
    async fn workers_view(&self) -> Result<Vec<WorkerRow>> {
        type Row = (
            String,
            i32,
            i32,
            i32,
            Json<Vec<Uuid>>,
            bool,
            DateTime<Utc>,
            String,
            f32,
            Json<Vec<String>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT worker, denoise_slots, vocode_slots, express_slots, holds, draining, last_seen, \
                    device, chunks_per_forward, models \
             FROM workers ORDER BY worker",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(worker, d, v, e, holds, draining, last_seen, device, cpf, models)| WorkerRow {
                    worker,
                    denoise_slots: d.max(0) as u32,
                    vocode_slots: v.max(0) as u32,
                    express_slots: e.max(0) as u32,
                    holds: holds.0,
                    draining,
                    last_seen,
                    device,
                    chunks_per_forward: cpf,
                    models: models.0,
                },
            )
            .collect())
    }

    async fn dispatched_tasks(&self) -> Result<Vec<DispatchedTask>> {
        let rows: Vec<(String, Uuid, i32, String, i16)> = sqlx::query_as(
            "SELECT COALESCE(worker, routed_to), job_id, chunk, kind, priority FROM tasks \
             WHERE state = 'dispatched' AND COALESCE(worker, routed_to) IS NOT NULL \
             ORDER BY priority, dispatched_at",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(worker, job, chunk, kind, rank)| DispatchedTask {
                worker,
                job,
                chunk: chunk.max(0) as u32,
                kind,
                rank,
            })
            .collect())
    }

    async fn queue_overview(&self) -> Result<QueueOverview> {
        let rows: Vec<QueueCounts> = sqlx::query_as(
            "SELECT kind, priority, count(*) FILTER (WHERE state = 'pending'), \
                    count(*) FILTER (WHERE state = 'dispatched'), \
                    min(created_at) FILTER (WHERE state = 'pending') \
             FROM tasks WHERE state IN ('pending', 'dispatched') \
             GROUP BY kind, priority ORDER BY kind, priority",
        )
        .fetch_all(self.pool())
        .await?;
        let jobs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(overview(rows, jobs))
    }

    async fn tenant_work(&self, window: Duration) -> Result<Vec<TenantWork>> {
        let rows: Vec<(String, i16, i64, i64)> = sqlx::query_as(
            "SELECT j.tenant, t.priority, count(*), COALESCE(sum(t.millis), 0)::bigint \
             FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'done' AND t.finished_at >= now() - make_interval(secs => $1) \
             GROUP BY j.tenant, t.priority ORDER BY t.priority, j.tenant",
        )
        .bind(window.as_secs_f64())
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(tenant_work).collect())
    }

    async fn failed_jobs(&self, limit: i64) -> Result<Vec<FailedJob>> {
        type Row = (
            Uuid,
            String,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, tenant, error_code, error_message, finished_at FROM jobs \
             WHERE state = 'failed' ORDER BY finished_at DESC NULLS LAST LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job, tenant, code, message, at)| FailedJob {
                job,
                tenant,
                code: code.unwrap_or_default(),
                message: message.unwrap_or_default(),
                at,
            })
            .collect())
    }

    async fn failed_tasks(&self, limit: i64) -> Result<Vec<FailedTask>> {
        type Row = (
            Uuid,
            i32,
            String,
            i32,
            Option<String>,
            String,
            String,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT job_id, chunk, kind, attempt, worker, last_error, state, \
                    COALESCE(finished_at, not_before) AS at \
             FROM tasks WHERE last_error IS NOT NULL AND state IN ('failed', 'pending') \
             ORDER BY at DESC NULLS LAST LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(job, chunk, kind, attempt, worker, error, state, at)| FailedTask {
                    job,
                    chunk: chunk.max(0) as u32,
                    kind,
                    attempt: attempt.max(0) as u32,
                    worker,
                    error,
                    state,
                    at,
                },
            )
            .collect())
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>> {
        let rows: Vec<(String, String, String, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT refused_by, queue, error, size_bytes, at FROM dead_letters \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(by, queue, error, size, at)| DeadLetterRow {
                by,
                queue,
                error,
                size_bytes: size.max(0) as u64,
                at,
            })
            .collect())
    }

    async fn replays(&self, limit: i64) -> Result<Vec<ReplayRow>> {
        let rows: Vec<(String, String, i64, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT replayed_by, queue, messages, size_bytes, at FROM dead_letter_replays \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(by, queue, messages, size, at)| ReplayRow {
                by,
                queue,
                messages: messages.max(0) as u64,
                size_bytes: size.max(0) as u64,
                at,
            })
            .collect())
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
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE ($1::text IS NULL OR tenant = $1) \
               AND ($2::text IS NULL OR state = $2) \
               AND labels @> $3 \
               AND strpos(lower(spec->>'prompt'), lower($4)) > 0 \
               AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6)) \
             ORDER BY created_at DESC, id DESC LIMIT $7",
        )
        .bind(scope.tenant())
        .bind(state.map(JobState::as_str))
        .bind(Json(labels))
        .bind(text)
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        records(self, scope, ids).await
    }
}

/// Records a dead letter's cause and drops the ones past the newest `DEAD_LETTERS_KEPT`.
pub(super) async fn record_dead_letter(pool: &sqlx::PgPool, d: &DeadLetter<'_>) -> Result<()> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (refused_by, queue, error, size_bytes) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(d.by)
    .bind(d.queue)
    .bind(d.error)
    .bind(d.size_bytes as i64)
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
    pool: &sqlx::PgPool,
    by: &str,
    replays: &[(&str, u64, u64)],
) -> Result<()> {
    let mut tx = pool.begin().await?;
    for (queue, messages, bytes) in replays {
        sqlx::query(
            "INSERT INTO dead_letter_replays (replayed_by, queue, messages, size_bytes) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(by)
        .bind(queue)
        .bind(*messages as i64)
        .bind(*bytes as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
