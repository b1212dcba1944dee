//! Retention on SQLite: outputs, init clips and batch manifests past their tenant's retention
//! (the janitor's sweeps, `janitor.rs`), as `pg/mod.rs` answers them on Postgres.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rows::{now_us, uuid};
use super::SqliteStore;
use crate::error::Result;

pub(super) async fn outputs_to_expire(
    store: &SqliteStore,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, i32, String)>> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT job_id, idx, key FROM outputs \
         WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1 \
         ORDER BY expires_at LIMIT $2",
    )
    .bind(now.timestamp_micros())
    .bind(limit)
    .fetch_all(&store.pool)
    .await?;
    rows.into_iter()
        .map(|(job, idx, key)| Ok((uuid(&job)?, idx as i32, key)))
        .collect()
}

pub(super) async fn outputs_expired(store: &SqliteStore, outputs: &[(Uuid, i32)]) -> Result<()> {
    let (_w, mut tx) = store.begin_write().await?;
    let now = now_us();
    for (job, idx) in outputs {
        sqlx::query(
            "UPDATE outputs SET deleted_at = $3 \
             WHERE job_id = $1 AND idx = $2 AND deleted_at IS NULL",
        )
        .bind(job.to_string())
        .bind(i64::from(*idx))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn inputs_to_expire(
    store: &SqliteStore,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT j.id, json_extract(j.spec, '$.init_audio.key') \
         FROM jobs j JOIN tenants t ON t.name = j.tenant \
         WHERE t.retain_inputs_days IS NOT NULL AND j.inputs_cleared_at IS NULL \
           AND j.finished_at IS NOT NULL AND j.deleted_at IS NULL \
           AND json_extract(j.spec, '$.init_audio.key') LIKE 'inputs/' || j.tenant || '/%' \
           AND j.finished_at <= $1 - t.retain_inputs_days * 86400000000 \
         ORDER BY j.finished_at LIMIT $2",
    )
    .bind(now.timestamp_micros())
    .bind(limit)
    .fetch_all(&store.pool)
    .await?;
    rows.into_iter()
        .map(|(job, key)| Ok((uuid(&job)?, key)))
        .collect()
}

pub(super) async fn inputs_expired(store: &SqliteStore, jobs: &[Uuid]) -> Result<()> {
    let (_w, mut tx) = store.begin_write().await?;
    let now = now_us();
    for job in jobs {
        sqlx::query("UPDATE jobs SET inputs_cleared_at = $2 WHERE id = $1")
            .bind(job.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn manifests_to_expire(
    store: &SqliteStore,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, String, Option<String>, Option<String>)>> {
    let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT b.id, b.tenant, b.results_key, b.manifest_uri \
         FROM batches b JOIN tenants t ON t.name = b.tenant \
         WHERE t.retain_manifests_days IS NOT NULL AND b.manifests_cleared_at IS NULL \
           AND b.finished_at IS NOT NULL \
           AND b.finished_at <= $1 - t.retain_manifests_days * 86400000000 \
         ORDER BY b.finished_at LIMIT $2",
    )
    .bind(now.timestamp_micros())
    .bind(limit)
    .fetch_all(&store.pool)
    .await?;
    rows.into_iter()
        .map(|(b, t, r, m)| Ok((uuid(&b)?, t, r, m)))
        .collect()
}

pub(super) async fn manifests_expired(store: &SqliteStore, batches: &[Uuid]) -> Result<()> {
    let (_w, mut tx) = store.begin_write().await?;
    let now = now_us();
    for b in batches {
        sqlx::query("UPDATE batches SET manifests_cleared_at = $2 WHERE id = $1")
            .bind(b.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
