//! Statements that every part of the Postgres store writes: a task row, a history line (and
//! the metric that follows it) and change notices.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::Result;
use crate::lifecycle::events::JobEvent;
use crate::notify::{Change, Pending};
use crate::store::webhooks::ENQUEUE_JOB;

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

/// A line of the job's history, the metric that follows it (`JobEvent::observe`) and its
/// webhooks' outbox rows, in the caller's transaction; its notice is the caller's to send.
pub(super) async fn event(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    chunk: Option<u32>,
    attempt: Option<u32>,
    ev: &JobEvent<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_events (job_id, kind, chunk, attempt, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job)
    .bind(ev.kind().as_str())
    .bind(chunk.map(|c| c as i32))
    .bind(attempt.map(|a| a as i32))
    .bind(ev.detail())
    .execute(&mut **tx)
    .await?;
    ev.observe();
    let (hooks, extra) = ev.webhooks();
    for &hook in hooks {
        let now = chrono::Utc::now();
        let payload = crate::webhooks::job_payload(hook, job, extra.as_ref(), now);
        sqlx::query(ENQUEUE_JOB)
            .bind(Uuid::now_v7())
            .bind(hook.as_str())
            .bind(payload.to_string())
            .bind(job)
            .bind(now)
            .execute(&mut **tx)
            .await?;
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
    what: Change,
) -> Result<()> {
    notify(tx, JOBS_CHANNEL, &job_payload(job, what)).await
}

/// The `NOTIFY` payload of a job change (`listen` reads it back).
pub(super) fn job_payload(job: Uuid, what: Change) -> String {
    format!("{job} {}", what.as_str())
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
