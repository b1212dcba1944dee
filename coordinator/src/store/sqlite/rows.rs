//! Statements that every part of the SQLite store writes: a task row and a history line (and
//! the metrics that follow it); times are microseconds since the epoch, ids text.

use chrono::Utc;
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::lifecycle::events::JobEvent;
use crate::store::webhooks::ENQUEUE_JOB;

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

/// A line of the job's history, the metric that follows it (`JobEvent::observe`) and its
/// webhooks' outbox rows, in the caller's transaction; its notice is the caller's to send.
pub(super) async fn event(
    tx: &mut Tx<'_>,
    job: Uuid,
    chunk: Option<u32>,
    attempt: Option<u32>,
    ev: &JobEvent<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_events (job_id, kind, chunk, attempt, detail, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job.to_string())
    .bind(ev.kind().as_str())
    .bind(chunk.map(i64::from))
    .bind(attempt.map(i64::from))
    .bind(ev.detail().to_string())
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    ev.observe();
    let (hooks, extra) = ev.webhooks();
    for &hook in hooks {
        let now = Utc::now();
        let payload = crate::webhooks::job_payload(hook, job, extra.as_ref(), now);
        sqlx::query(ENQUEUE_JOB)
            .bind(Uuid::now_v7().to_string())
            .bind(hook.as_str())
            .bind(payload.to_string())
            .bind(job.to_string())
            .bind(now.timestamp_micros())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
