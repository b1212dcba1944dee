//! A queued job's place on Postgres: what waits before its next task, the fair-share clocks,
//! and the farm's live capacity and recent pace (read-only; no round lock).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;
use crate::sched::position::{Pace, QueueRead, Waiting};
use crate::store::rows::{class, kind, share_rows};
use crate::store::{sql, Scope};

/// The job's next task: kind, rank, tenant, job creation, steps total and done, chunk steps.
type HeadRow = (String, i16, String, DateTime<Utc>, i32, i32, i32);

/// How far back the pace looks.
const PACE_WINDOW_S: f64 = 900.0;

pub(super) async fn read(
    pool: &PgPool,
    scope: Scope<'_>,
    job: Uuid,
    worker_timeout: Duration,
) -> Result<Option<QueueRead>> {
    let head: Option<HeadRow> = sqlx::query_as(
        "SELECT t.kind, t.priority, t.tenant, t.job_created_at, j.steps_total, j.steps_done, \
                j.chunk_steps \
         FROM tasks t JOIN jobs j ON j.id = t.job_id \
         WHERE t.job_id = $1 AND t.state = 'pending' AND j.state = 'queued' \
           AND ($2::text IS NULL OR j.tenant = $2) \
         ORDER BY t.chunk LIMIT 1",
    )
    .bind(job)
    .bind(scope.tenant())
    .fetch_optional(pool)
    .await?;
    let Some((k, rank, tenant, created, steps_total, steps_done, chunk_steps)) = head else {
        return Ok(None);
    };
    let (higher,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM tasks t JOIN jobs j ON j.id = t.job_id \
         WHERE t.state = 'pending' AND t.kind = $1 AND t.priority < $2 \
           AND j.state IN ('queued', 'running')",
    )
    .bind(&k)
    .bind(rank)
    .fetch_one(pool)
    .await?;
    // Same class: other tenants' waiting tasks, and the own tenant's older jobs' tasks.
    let groups: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t.tenant, count(*) FROM tasks t JOIN jobs j ON j.id = t.job_id \
         WHERE t.state = 'pending' AND t.kind = $1 AND t.priority = $2 \
           AND j.state IN ('queued', 'running') \
           AND (t.tenant <> $3 OR (t.job_created_at, t.job_id) < ($4, $5)) \
         GROUP BY t.tenant",
    )
    .bind(&k)
    .bind(rank)
    .bind(&tenant)
    .bind(created)
    .bind(job)
    .fetch_all(pool)
    .await?;
    let classes: Vec<(String, i16, f64)> =
        sqlx::query_as(sql::CLASS_CLOCKS).fetch_all(pool).await?;
    let tenants: Vec<(String, i16, String, f64)> =
        sqlx::query_as(sql::TENANT_CLOCKS).fetch_all(pool).await?;
    let (slots, in_flight, per_step, per_vocode): (i64, i64, Option<f64>, Option<f64>) =
        sqlx::query_as(
            "SELECT \
               (SELECT COALESCE(SUM(denoise_slots), 0)::int8 FROM workers \
                WHERE NOT draining AND last_seen >= now() - make_interval(secs => $1)), \
               (SELECT count(*) FROM tasks WHERE state = 'dispatched' AND kind = 'denoise'), \
               (SELECT SUM(millis)::float8 / 1000 / NULLIF(SUM(to_step - from_step), 0) \
                FROM tasks WHERE kind = 'denoise' AND state = 'done' AND millis IS NOT NULL \
                  AND finished_at > now() - make_interval(secs => $2)), \
               (SELECT AVG(millis)::float8 / 1000 FROM tasks \
                WHERE kind = 'vocode' AND state = 'done' AND millis IS NOT NULL \
                  AND finished_at > now() - make_interval(secs => $2))",
        )
        .bind(worker_timeout.as_secs_f64())
        .bind(PACE_WINDOW_S)
        .fetch_one(pool)
        .await?;
    let mut others = BTreeMap::new();
    let mut own_ahead = 0;
    for (t, n) in groups {
        if t == tenant {
            own_ahead = n.max(0) as u64;
        } else {
            others.insert(t, n.max(0) as u64);
        }
    }
    Ok(Some(QueueRead {
        kind: kind(&k)?,
        class: class(rank)?,
        tenant,
        waiting: Waiting {
            higher: higher.max(0) as u64,
            own_ahead,
            others,
        },
        clocks: share_rows(classes, tenants)?,
        pace: Pace {
            slots: slots.clamp(0, i64::from(u32::MAX)) as u32,
            in_flight: in_flight.clamp(0, i64::from(u32::MAX)) as u32,
            secs_per_step: per_step,
            secs_per_vocode: per_vocode,
            chunk_steps: chunk_steps.max(1) as u32,
        },
        steps_left: (steps_total - steps_done).max(0) as u32,
    }))
}
