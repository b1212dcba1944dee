//! Statements that every part of the SQLite store writes: a task row and a history line (and
//! the metrics that follow it); times are microseconds since the epoch, ids text.

use chrono::Utc;
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use crate::error::{Error, Result};

pub(super) type Tx<'a> = Transaction<'a, Sqlite>;

pub(super) fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

pub(super) fn uuid(s: &str) -> Result<Uuid> {
    s.parse()
        .map_err(|e| Error::Internal(format!("stored id {s:?}: {e}")))
}

pub(super) async fn insert_task(
    tx: &mut Tx<'_>,
    job: Uuid,
    chunk: u32,
    kind: &str,
    from_step: u32,
    to_step: u32,
    priority: i16,
) -> Result<()> {
    let now = now_us();
    sqlx::query(
        "INSERT INTO tasks (job_id, chunk, kind, from_step, to_step, state, priority, not_before, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7)",
    )
    .bind(job.to_string())
    .bind(i64::from(chunk))
    .bind(kind)
    .bind(i64::from(from_step))
    .bind(i64::from(to_step))
    .bind(i64::from(priority))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn event(
    tx: &mut Tx<'_>,
    job: Uuid,
    kind: &str,
    chunk: Option<u32>,
    attempt: Option<u32>,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_events (job_id, kind, chunk, attempt, detail, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job.to_string())
    .bind(kind)
    .bind(chunk.map(i64::from))
    .bind(attempt.map(i64::from))
    .bind(detail.to_string())
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    observe_event(tx, job, kind, chunk, &detail).await
}

/// The metrics that follow the job history (see `pg::observe_event`).
async fn observe_event(
    tx: &mut Tx<'_>,
    job: Uuid,
    kind: &str,
    chunk: Option<u32>,
    detail: &serde_json::Value,
) -> Result<()> {
    let Some(chunk) = chunk else {
        return Ok(());
    };
    let event = crate::lifecycle::events::TaskEvent::of(kind, detail);
    if event.is_none() {
        return Ok(());
    }
    let row: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, priority, MAX(not_before, created_at) FROM tasks WHERE job_id = $1 AND chunk = $2",
    )
    .bind(job.to_string())
    .bind(i64::from(chunk))
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((stage, rank, due)) = row {
        let waited = (now_us() - due) as f64 / 1e6;
        crate::lifecycle::events::task_event(event, &stage, rank as i16, waited);
    }
    Ok(())
}
