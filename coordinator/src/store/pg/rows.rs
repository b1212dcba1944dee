//! Statements that every part of the Postgres store writes: a task row, a history line (and
//! the metrics that follow it) and change notices.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::Result;
use crate::notify::Pending;

pub(super) const TASKS_CHANNEL: &str = "tutti_tasks";
pub(super) const JOBS_CHANNEL: &str = "tutti_jobs";

pub(super) async fn insert_task(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    chunk: u32,
    kind: &str,
    from_step: u32,
    to_step: u32,
    priority: i16,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tasks (job_id, chunk, kind, from_step, to_step, state, priority, tenant, \
                            job_created_at) \
         SELECT $1, $2, $3, $4, $5, 'pending', $6, tenant, created_at FROM jobs WHERE id = $1",
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

pub(super) async fn event(
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
    .bind(&detail)
    .execute(&mut **tx)
    .await?;
    observe_event(tx, job, kind, chunk, &detail).await
}

/// The metrics that follow the job history: every dispatch (with its wait in the backlog, from
/// the task coming due), every failed attempt and every stale result is written as an event.
/// Counted when written: a transaction that rolls back afterwards (a database error) over-counts.
async fn observe_event(
    tx: &mut Transaction<'_, Postgres>,
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
    let row: Option<(String, i16, f64)> = sqlx::query_as(
        "SELECT kind, priority, EXTRACT(EPOCH FROM now() - GREATEST(not_before, created_at))::float8 \
         FROM tasks WHERE job_id = $1 AND chunk = $2",
    )
    .bind(job)
    .bind(chunk as i32)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((stage, rank, waited)) = row {
        crate::lifecycle::events::task_event(event, &stage, rank, waited);
    }
    Ok(())
}

pub(super) async fn notify(
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

pub(super) async fn notify_job(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    what: &str,
) -> Result<()> {
    notify(tx, JOBS_CHANNEL, &format!("{job} {what}")).await
}

/// Sends notices gathered in a transaction (`NOTIFY` is delivered when it commits).
pub(super) async fn send_notes(tx: &mut Transaction<'_, Postgres>, notes: Pending) -> Result<()> {
    let (jobs, tasks) = notes.into_parts();
    for (job, what) in jobs {
        notify_job(tx, job, what).await?;
    }
    if tasks {
        notify(tx, TASKS_CHANNEL, "").await?;
    }
    Ok(())
}
