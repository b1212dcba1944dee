//! A queued job's place on SQLite (see `pg::queue`); times are microseconds since the epoch.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::SqlitePool;
use uuid::Uuid;

use super::rows::now_us;
use crate::error::Result;
use crate::sched::position::{Pace, QueueRead, Waiting};
use crate::store::rows::{class, kind, share_rows};
use crate::store::{sql, Scope};

/// The job's next task: kind, rank, tenant, job creation, steps total and done, chunk steps.
type HeadRow = (String, i64, String, i64, i64, i64, i64);

/// How far back the pace looks.
const PACE_WINDOW_US: i64 = 900_000_000;

pub(super) async fn read(
    pool: &SqlitePool,
    scope: Scope<'_>,
    job: Uuid,
    worker_timeout: Duration,
) -> Result<Option<QueueRead>> {
    let head: Option<HeadRow> = sqlx::query_as(
        "SELECT t.kind, t.priority, j.tenant, j.created_at, j.steps_total, j.steps_done, \
                j.chunk_steps \
         FROM tasks t JOIN jobs j ON j.id = t.job_id \
         WHERE t.job_id = $1 AND t.state = 'pending' AND j.state = 'queued' \
           AND ($2 IS NULL OR j.tenant = $2) \
         ORDER BY t.chunk LIMIT 1",
    )
    .bind(job.to_string())
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
    let groups: Vec<(String, i64)> = sqlx::query_as(
        "SELECT j.tenant, count(*) FROM tasks t JOIN jobs j ON j.id = t.job_id \
         WHERE t.state = 'pending' AND t.kind = $1 AND t.priority = $2 \
           AND j.state IN ('queued', 'running') \
           AND (j.tenant <> $3 OR j.created_at < $4 OR (j.created_at = $4 AND t.job_id < $5)) \
         GROUP BY j.tenant",
    )
    .bind(&k)
    .bind(rank)
    .bind(&tenant)
    .bind(created)
    .bind(job.to_string())
    .fetch_all(pool)
    .await?;
    let classes: Vec<(String, i64, f64)> =
        sqlx::query_as(sql::CLASS_CLOCKS).fetch_all(pool).await?;
    let tenants: Vec<(String, i64, String, f64)> =
        sqlx::query_as(sql::TENANT_CLOCKS).fetch_all(pool).await?;
    let now = now_us();
    let (slots, in_flight, per_step, per_vocode): (i64, i64, Option<f64>, Option<f64>) =
        sqlx::query_as(
            "SELECT \
               (SELECT COALESCE(SUM(denoise_slots), 0) FROM workers \
                WHERE NOT draining AND last_seen >= $1), \
               (SELECT count(*) FROM tasks WHERE state = 'dispatched' AND kind = 'denoise'), \
               (SELECT CAST(SUM(millis) AS REAL) / 1000 / NULLIF(SUM(to_step - from_step), 0) \
                FROM tasks WHERE kind = 'denoise' AND state = 'done' AND millis IS NOT NULL \
                  AND finished_at > $2), \
               (SELECT AVG(millis) / 1000.0 FROM tasks \
                WHERE kind = 'vocode' AND state = 'done' AND millis IS NOT NULL \
                  AND finished_at > $2)",
        )
        .bind(now - worker_timeout.as_micros() as i64)
        .bind(now - PACE_WINDOW_US)
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
