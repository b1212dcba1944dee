//! `TenantStore` on SQLite (embedded mode), and the jobs-in-flight check that
//! `SqliteStore::insert_job` runs inside its write transaction (one writer at a time, so no
//! row lock is needed).

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::rows::{now_us, Tx};
use super::SqliteStore;
use crate::error::{Error, Result};
use crate::store::tenants::{
    unknown_key, unknown_tenant, KeyInfo, KeyOwner, LimitCols, Tenant, TenantStore, LIMIT_COLUMNS,
};
use crate::tenancy::key::{hashes_match, ApiKey};
use crate::tenancy::limits::Limits;
use crate::tenancy::Budgets;

fn time(us: i64) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_micros(us).ok_or_else(|| Error::Internal(format!("time {us}")))
}

/// The budget columns of a tenant row.
fn budgets(r: &SqliteRow) -> Result<Budgets> {
    Ok(Budgets {
        audio_seconds_per_day: r.try_get("audio_seconds_per_day")?,
        audio_seconds_per_month: r.try_get("audio_seconds_per_month")?,
        device_seconds_per_day: r.try_get("device_seconds_per_day")?,
        device_seconds_per_month: r.try_get("device_seconds_per_month")?,
    })
}

fn limits(r: &SqliteRow) -> Result<Limits> {
    LimitCols {
        max_jobs_in_flight: r.try_get("max_jobs_in_flight")?,
        submits_per_second: r.try_get("submits_per_second")?,
        submit_burst: r.try_get("submit_burst")?,
        max_batch_items: r.try_get("max_batch_items")?,
        priorities: r.try_get("priorities")?,
        max_duration_s: r.try_get("max_duration_s")?,
        budgets: budgets(r)?,
        retain_outputs_days: r.try_get("retain_outputs_days")?,
        retain_inputs_days: r.try_get("retain_inputs_days")?,
        retain_manifests_days: r.try_get("retain_manifests_days")?,
        max_steps: r.try_get("max_steps")?,
    }
    .into_limits()
}

fn tenant(r: &SqliteRow) -> Result<Tenant> {
    Ok(Tenant {
        name: r.try_get("name")?,
        limits: limits(r)?,
        created_at: time(r.try_get("created_at")?)?,
    })
}

/// The tenant's `max_jobs_in_flight` and budgets (the single writer needs no row lock).
pub(super) async fn admission(tx: &mut Tx<'_>, tenant: &str) -> Result<(Option<u32>, Budgets)> {
    let row = sqlx::query(
        "SELECT max_jobs_in_flight, audio_seconds_per_day, audio_seconds_per_month, \
                device_seconds_per_day, device_seconds_per_month FROM tenants WHERE name = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(r) = row else {
        return Ok((None, Budgets::default()));
    };
    let max = r
        .try_get::<Option<i64>, _>("max_jobs_in_flight")?
        .map(|m| m.clamp(0, i64::from(u32::MAX)) as u32);
    Ok((max, budgets(&r)?))
}

/// Fails (and so rolls back the insert) when the tenant now has more than `max` jobs queued
/// or running, the one just inserted included.
pub(super) async fn check_in_flight(tx: &mut Tx<'_>, tenant: &str, max: u32) -> Result<()> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE tenant = $1 AND state IN ('queued', 'running')",
    )
    .bind(tenant)
    .fetch_one(&mut **tx)
    .await?;
    if n > i64::from(max) {
        return Err(Limits::in_flight_exhausted(tenant, max));
    }
    Ok(())
}

#[async_trait]
impl TenantStore for SqliteStore {
    async fn create_tenant(&self, name: &str, limits: &Limits) -> Result<()> {
        let c = LimitCols::from(limits);
        let (_w, mut tx) = self.begin_write().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO tenants (name, {LIMIT_COLUMNS}, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (name) DO NOTHING"
        ))
        .bind(name)
        .bind(c.max_jobs_in_flight)
        .bind(c.submits_per_second)
        .bind(c.submit_burst)
        .bind(c.max_batch_items)
        .bind(c.priorities)
        .bind(c.max_duration_s)
        .bind(c.max_steps)
        .bind(c.budgets.audio_seconds_per_day)
        .bind(c.budgets.audio_seconds_per_month)
        .bind(c.budgets.device_seconds_per_day)
        .bind(c.budgets.device_seconds_per_month)
        .bind(c.retain_outputs_days)
        .bind(c.retain_inputs_days)
        .bind(c.retain_manifests_days)
        .bind(now_us())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if inserted == 0 {
            return Err(Error::AlreadyExists(format!(
                "tenant {name:?} already exists"
            )));
        }
        Ok(())
    }

    async fn set_limits(&self, name: &str, limits: &Limits) -> Result<()> {
        let c = LimitCols::from(limits);
        let (_w, mut tx) = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE tenants SET max_jobs_in_flight = $2, submits_per_second = $3, \
             submit_burst = $4, max_batch_items = $5, priorities = $6, max_duration_s = $7, \
             max_steps = $8, audio_seconds_per_day = $9, audio_seconds_per_month = $10, \
             device_seconds_per_day = $11, device_seconds_per_month = $12, \
             retain_outputs_days = $13, retain_inputs_days = $14, \
             retain_manifests_days = $15 WHERE name = $1",
        )
        .bind(name)
        .bind(c.max_jobs_in_flight)
        .bind(c.submits_per_second)
        .bind(c.submit_burst)
        .bind(c.max_batch_items)
        .bind(c.priorities)
        .bind(c.max_duration_s)
        .bind(c.max_steps)
        .bind(c.budgets.audio_seconds_per_day)
        .bind(c.budgets.audio_seconds_per_month)
        .bind(c.budgets.device_seconds_per_day)
        .bind(c.budgets.device_seconds_per_month)
        .bind(c.retain_outputs_days)
        .bind(c.retain_inputs_days)
        .bind(c.retain_manifests_days)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if updated == 0 {
            return Err(unknown_tenant(name));
        }
        Ok(())
    }

    async fn tenant(&self, name: &str) -> Result<Option<Tenant>> {
        sqlx::query(&format!(
            "SELECT name, {LIMIT_COLUMNS}, created_at FROM tenants WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(tenant)
        .transpose()
    }

    async fn tenants(&self) -> Result<Vec<Tenant>> {
        sqlx::query(&format!(
            "SELECT name, {LIMIT_COLUMNS}, created_at FROM tenants ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(tenant)
        .collect()
    }

    async fn insert_key(&self, tenant: &str, key: &ApiKey, admin: bool) -> Result<()> {
        let (_w, mut tx) = self.begin_write().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(unknown_tenant(tenant));
        }
        sqlx::query(
            "INSERT INTO api_keys (id, tenant, admin, key_sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id())
        .bind(tenant)
        .bind(admin)
        .bind(key.sha256())
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_key(&self, id: &str) -> Result<bool> {
        let (_w, mut tx) = self.begin_write().await?;
        let revoked =
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now_us())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        match (revoked, exists) {
            (1, _) => Ok(true),
            (_, Some(_)) => Ok(false),
            _ => Err(unknown_key(id)),
        }
    }

    async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, tenant, admin, created_at, revoked_at FROM api_keys \
             ORDER BY tenant, created_at, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyInfo {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant")?,
                    admin: r.try_get("admin")?,
                    created_at: time(r.try_get("created_at")?)?,
                    revoked_at: r
                        .try_get::<Option<i64>, _>("revoked_at")?
                        .map(time)
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn key_owner(&self, key: &ApiKey) -> Result<Option<KeyOwner>> {
        // The limit columns exist only in `tenants`, so they need no qualifier.
        let row = sqlx::query(&format!(
            "SELECT k.key_sha256, k.tenant, k.admin, {LIMIT_COLUMNS} \
             FROM api_keys k JOIN tenants t ON t.name = k.tenant \
             WHERE k.id = $1 AND k.revoked_at IS NULL"
        ))
        .bind(key.id())
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let stored: String = r.try_get("key_sha256")?;
        if !hashes_match(&stored, &key.sha256()) {
            return Ok(None);
        }
        Ok(Some(KeyOwner {
            tenant: r.try_get("tenant")?,
            admin: r.try_get("admin")?,
            limits: limits(&r)?,
        }))
    }
}
