//! `WebhookStore` on SQLite (embedded mode): one process, one writer at a time, so a claim
//! is one `UPDATE ... RETURNING` under the write lock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::rows::{now_us, uuid};
use super::{time, SqliteStore};
use crate::error::Result;
use crate::store::webhooks::{
    Attempted, Claimed, DeliveryRow, SecretRow, WebhookStore, DELIVERY_COLUMNS,
};
use crate::webhooks::{sign, Subscription};

fn delivery(r: &SqliteRow) -> Result<DeliveryRow> {
    let opt_uuid = |c: &str| -> Result<Option<Uuid>> {
        r.try_get::<Option<String>, _>(c)?
            .as_deref()
            .map(uuid)
            .transpose()
    };
    Ok(DeliveryRow {
        id: uuid(r.try_get("id")?)?,
        event: r.try_get("event")?,
        job_id: opt_uuid("job_id")?,
        batch_id: opt_uuid("batch_id")?,
        url: r.try_get("url")?,
        state: r.try_get("state")?,
        attempts: r.try_get::<i64, _>("attempts")?.max(0) as u32,
        last_status: r
            .try_get::<Option<i64>, _>("last_status")?
            .map(|s| s.clamp(0, 999) as u16),
        last_error: r.try_get("last_error")?,
        created_at: time(r.try_get("created_at")?)?,
        next_at: time(r.try_get("next_at")?)?,
        finished_at: r
            .try_get::<Option<i64>, _>("finished_at")?
            .map(time)
            .transpose()?,
        payload: r.try_get("payload")?,
    })
}

fn secrets(rows: Vec<(String, i64, Option<i64>)>) -> Result<Vec<SecretRow>> {
    rows.into_iter()
        .map(|(secret, created_at, expires_at)| {
            Ok(SecretRow {
                secret,
                created_at: time(created_at)?,
                expires_at: expires_at.map(time).transpose()?,
            })
        })
        .collect()
}

const ACTIVE_SECRETS: &str = "SELECT secret, created_at, expires_at FROM webhook_secrets \
     WHERE tenant = $1 AND (expires_at IS NULL OR expires_at > $2) ORDER BY id";

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn set_endpoint(&self, tenant: &str, sub: Option<&Subscription>) -> Result<()> {
        let (_w, mut tx) = self.begin_write().await?;
        match sub {
            Some(s) => {
                sqlx::query(
                    "INSERT INTO tenant_webhooks (tenant, url, events, updated_at) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (tenant) DO UPDATE SET url = excluded.url, \
                       events = excluded.events, updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(&s.url)
                .bind(&s.events)
                .bind(now_us())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM tenant_webhooks WHERE tenant = $1")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn endpoint(&self, tenant: &str) -> Result<Option<Subscription>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT url, events FROM tenant_webhooks WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(url, events)| Subscription { url, events }))
    }

    async fn webhook_secrets(&self, tenant: &str) -> Result<Vec<SecretRow>> {
        let (_w, mut tx) = self.begin_write().await?;
        let now = now_us();
        let mut rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(ACTIVE_SECRETS)
            .bind(tenant)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            sqlx::query(
                "INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES ($1, $2, $3)",
            )
            .bind(tenant)
            .bind(sign::new_secret())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            rows = sqlx::query_as(ACTIVE_SECRETS)
                .bind(tenant)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        secrets(rows)
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: &str,
        overlap: Duration,
    ) -> Result<Vec<SecretRow>> {
        let (_w, mut tx) = self.begin_write().await?;
        let now = now_us();
        let until = now.saturating_add(micros(overlap));
        sqlx::query(
            "UPDATE webhook_secrets SET expires_at = $2 \
             WHERE tenant = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(tenant)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES ($1, $2, $3)")
            .bind(tenant)
            .bind(sign::new_secret())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query_as(ACTIVE_SECRETS)
            .bind(tenant)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        secrets(rows)
    }

    async fn claim_deliveries(&self, limit: i64, lease: Duration) -> Result<Vec<Claimed>> {
        let (_w, mut tx) = self.begin_write().await?;
        let now = now_us();
        let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, lease_until = $3 \
             WHERE id IN (SELECT id FROM webhook_deliveries \
                          WHERE state = 'pending' AND next_at <= $2 \
                            AND (lease_until IS NULL OR lease_until < $2) \
                          ORDER BY next_at LIMIT $1) \
             RETURNING id, tenant, url, payload, attempts, window_start",
        )
        .bind(limit)
        .bind(now)
        .bind(now.saturating_add(micros(lease)))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(id, tenant, url, payload, attempt, window_start)| {
                Ok(Claimed {
                    id: uuid(&id)?,
                    tenant,
                    url,
                    payload,
                    attempt: attempt.max(0) as u32,
                    window_start: time(window_start)?,
                })
            })
            .collect()
    }

    async fn finish_delivery(&self, id: Uuid, attempt: u32, outcome: &Attempted) -> Result<bool> {
        let (_w, mut tx) = self.begin_write().await?;
        // The claim's attempt, still leased: a lost lease or a redelivery by hand voids it.
        let fenced =
            "WHERE id = $1 AND attempts = $2 AND state = 'pending' AND lease_until IS NOT NULL";
        let now = now_us();
        let done = match outcome {
            Attempted::Delivered { status } => {
                sqlx::query(&format!(
                    "UPDATE webhook_deliveries SET state = 'delivered', finished_at = $4, \
                       lease_until = NULL, last_status = $3, last_error = NULL {fenced}"
                ))
                .bind(id.to_string())
                .bind(i64::from(attempt))
                .bind(i64::from(*status))
                .bind(now)
                .execute(&mut *tx)
                .await?
            }
            Attempted::Retry { at, status, error } => {
                sqlx::query(&format!(
                    "UPDATE webhook_deliveries SET next_at = $5, lease_until = NULL, \
                       last_status = $3, last_error = $4 {fenced}"
                ))
                .bind(id.to_string())
                .bind(i64::from(attempt))
                .bind(status.map(i64::from))
                .bind(error)
                .bind(at.timestamp_micros())
                .execute(&mut *tx)
                .await?
            }
            Attempted::Failed { status, error } => {
                sqlx::query(&format!(
                    "UPDATE webhook_deliveries SET state = 'failed', finished_at = $5, \
                       lease_until = NULL, last_status = $3, last_error = $4 {fenced}"
                ))
                .bind(id.to_string())
                .bind(i64::from(attempt))
                .bind(status.map(i64::from))
                .bind(error)
                .bind(now)
                .execute(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_deliveries(
        &self,
        tenant: &str,
        state: Option<&str>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE tenant = $1 AND ($2 IS NULL OR state = $2) \
               AND ($3 IS NULL OR created_at < $3 OR (created_at = $3 AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(tenant)
        .bind(state)
        .bind(after.map(|a| a.0.timestamp_micros()))
        .bind(after.map(|a| a.1.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery).collect()
    }

    async fn redeliver(&self, tenant: &str, id: Uuid) -> Result<Option<DeliveryRow>> {
        let (_w, mut tx) = self.begin_write().await?;
        let now = now_us();
        let row = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET state = 'pending', next_at = $3, window_start = $3, \
               lease_until = NULL, finished_at = NULL \
             WHERE id = $1 AND tenant = $2 RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(tenant)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(delivery).transpose()
    }
}
