//! `TenantStore` on Postgres, and the jobs-in-flight check that `PgStore::insert_job` runs
//! inside its transaction.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::PgStore;
use crate::error::{Error, Result};
use crate::store::tenants::{
    unknown_key, unknown_tenant, KeyInfo, KeyOwner, LimitCols, Tenant, TenantStore, LIMIT_COLUMNS,
};
use crate::tenancy::key::{hashes_match, ApiKey};
use crate::tenancy::limits::Limits;
use crate::tenancy::Budgets;

/// The budget columns of a tenant row.
fn budgets(r: &PgRow) -> Result<Budgets> {
    Ok(Budgets {
        audio_seconds_per_day: r.try_get("audio_seconds_per_day")?,
        audio_seconds_per_month: r.try_get("audio_seconds_per_month")?,
        device_seconds_per_day: r.try_get("device_seconds_per_day")?,
        device_seconds_per_month: r.try_get("device_seconds_per_month")?,
    })
}

fn limits(r: &PgRow) -> Result<Limits> {
    LimitCols {
        max_jobs_in_flight: r
            .try_get::<Option<i32>, _>("max_jobs_in_flight")?
            .map(i64::from),
        submits_per_second: r.try_get("submits_per_second")?,
        submit_burst: r.try_get::<Option<i32>, _>("submit_burst")?.map(i64::from),
        max_batch_items: r
            .try_get::<Option<i32>, _>("max_batch_items")?
            .map(i64::from),
        priorities: r.try_get("priorities")?,
        max_duration_s: r
            .try_get::<Option<f32>, _>("max_duration_s")?
            .map(f64::from),
        budgets: budgets(r)?,
        retain_outputs_days: r
            .try_get::<Option<i32>, _>("retain_outputs_days")?
            .map(i64::from),
        retain_inputs_days: r
            .try_get::<Option<i32>, _>("retain_inputs_days")?
            .map(i64::from),
        retain_manifests_days: r
            .try_get::<Option<i32>, _>("retain_manifests_days")?
            .map(i64::from),
        max_steps: r.try_get::<Option<i32>, _>("max_steps")?.map(i64::from),
    }
    .into_limits()
}

fn tenant(r: &PgRow) -> Result<Tenant> {
    Ok(Tenant {
        name: r.try_get("name")?,
        limits: limits(r)?,
        created_at: r.try_get("created_at")?,
    })
}

fn to_i32(v: Option<i64>) -> Option<i32> {
    v.map(|n| n.clamp(0, i64::from(i32::MAX)) as i32)
}

const ADMISSION_SQL: &str = "SELECT max_jobs_in_flight, audio_seconds_per_day, \
     audio_seconds_per_month, device_seconds_per_day, device_seconds_per_month \
     FROM tenants WHERE name = $1";

fn admission_row(r: &PgRow) -> Result<(Option<u32>, Budgets)> {
    let max = r
        .try_get::<Option<i32>, _>("max_jobs_in_flight")?
        .map(|m| m.max(0) as u32);
    Ok((max, budgets(r)?))
}

/// The tenant's `max_jobs_in_flight` and budgets, with its row locked when it has any, so
/// concurrent submits of the tenant (on any replica) count one after the other.
pub(super) async fn admission(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
) -> Result<(Option<u32>, Budgets)> {
    let peek = sqlx::query(ADMISSION_SQL)
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((max, budgets)) = peek.as_ref().map(admission_row).transpose()? else {
        return Ok((None, Budgets::default()));
    };
    if max.is_none() && budgets.is_empty() {
        // No limit: no lock, so unlimited tenants' submits never wait on each other.
        return Ok((None, budgets));
    }
    let locked = sqlx::query(&format!("{ADMISSION_SQL} FOR UPDATE"))
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(locked
        .as_ref()
        .map(admission_row)
        .transpose()?
        .unwrap_or_default())
}

/// Fails (and so rolls back the insert) when the tenant now has more than `max` jobs queued
/// or running, the one just inserted included.
pub(super) async fn check_in_flight(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    max: u32,
) -> Result<()> {
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
impl TenantStore for PgStore {
    async fn create_tenant(&self, name: &str, limits: &Limits) -> Result<()> {
        let c = LimitCols::from(limits);
        let inserted = sqlx::query(&format!(
            "INSERT INTO tenants (name, {LIMIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (name) DO NOTHING"
        ))
        .bind(name)
        .bind(to_i32(c.max_jobs_in_flight))
        .bind(c.submits_per_second)
        .bind(to_i32(c.submit_burst))
        .bind(to_i32(c.max_batch_items))
        .bind(c.priorities)
        .bind(c.max_duration_s.map(|d| d as f32))
        .bind(to_i32(c.max_steps))
        .bind(c.budgets.audio_seconds_per_day)
        .bind(c.budgets.audio_seconds_per_month)
        .bind(c.budgets.device_seconds_per_day)
        .bind(c.budgets.device_seconds_per_month)
        .bind(to_i32(c.retain_outputs_days))
        .bind(to_i32(c.retain_inputs_days))
        .bind(to_i32(c.retain_manifests_days))
        .execute(self.pool())
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::AlreadyExists(format!(
                "tenant {name:?} already exists"
            )));
        }
        Ok(())
    }

    async fn set_limits(&self, name: &str, limits: &Limits) -> Result<()> {
        let c = LimitCols::from(limits);
        let updated = sqlx::query(
            "UPDATE tenants SET max_jobs_in_flight = $2, submits_per_second = $3, \
             submit_burst = $4, max_batch_items = $5, priorities = $6, max_duration_s = $7, \
             max_steps = $8, audio_seconds_per_day = $9, audio_seconds_per_month = $10, \
             device_seconds_per_day = $11, device_seconds_per_month = $12, \
             retain_outputs_days = $13, retain_inputs_days = $14, \
             retain_manifests_days = $15 WHERE name = $1",
        )
        .bind(name)
        .bind(to_i32(c.max_jobs_in_flight))
        .bind(c.submits_per_second)
        .bind(to_i32(c.submit_burst))
        .bind(to_i32(c.max_batch_items))
        .bind(c.priorities)
        .bind(c.max_duration_s.map(|d| d as f32))
        .bind(to_i32(c.max_steps))
        .bind(c.budgets.audio_seconds_per_day)
        .bind(c.budgets.audio_seconds_per_month)
        .bind(c.budgets.device_seconds_per_day)
        .bind(c.budgets.device_seconds_per_month)
        .bind(to_i32(c.retain_outputs_days))
        .bind(to_i32(c.retain_inputs_days))
        .bind(to_i32(c.retain_manifests_days))
        .execute(self.pool())
        .await?
        .rows_affected();
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
        let mut tx = self.pool().begin().await?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(unknown_tenant(tenant));
        }
        sqlx::query("INSERT INTO api_keys (id, tenant, admin, key_sha256) VALUES ($1, $2, $3, $4)")
            .bind(key.id())
            .bind(tenant)
            .bind(admin)
            .bind(key.sha256())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_key(&self, id: &str) -> Result<bool> {
        let revoked = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(self.pool())
        .await?
        .rows_affected();
        if revoked == 1 {
            return Ok(true);
        }
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        exists.map(|_| false).ok_or_else(|| unknown_key(id))
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
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
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
