//! `WebhookStore` on Postgres: claims take due rows `FOR UPDATE SKIP LOCKED` and lease them,
//! so replicas never send the same attempt twice.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::PgStore;
use crate::error::Result;
use crate::store::webhooks::{
    Attempted, Claimed, DeliveryRow, SecretRow, WebhookStore, DELIVERY_COLUMNS,
};
use crate::webhooks::{sign, Subscription};

fn delivery(r: &PgRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.try_get("id")?,
        event: r.try_get("event")?,
        job_id: r.try_get("job_id")?,
        batch_id: r.try_get("batch_id")?,
        url: r.try_get("url")?,
        state: r.try_get("state")?,
        attempts: r.try_get::<i32, _>("attempts")?.max(0) as u32,
        last_status: r
            .try_get::<Option<i32>, _>("last_status")?
            .map(|s| s.clamp(0, 999) as u16),
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        next_at: r.try_get("next_at")?,
        finished_at: r.try_get("finished_at")?,
        payload: r.try_get("payload")?,
    })
}

type SecretTuple = (String, DateTime<Utc>, Option<DateTime<Utc>>);

fn secrets(rows: Vec<SecretTuple>) -> Vec<SecretRow> {
    rows.into_iter()
        .map(|(secret, created_at, expires_at)| SecretRow {
            secret,
            created_at,
            expires_at,
        })
        .collect()
}

const ACTIVE_SECRETS: &str = "SELECT secret, created_at, expires_at FROM webhook_secrets \
     WHERE tenant = $1 AND (expires_at IS NULL OR expires_at > now()) ORDER BY id";

#[async_trait]
impl WebhookStore for PgStore {
    async fn set_endpoint(&self, tenant: &str, sub: Option<&Subscription>) -> Result<()> {
        match sub {
            Some(s) => {
                sqlx::query(
                    "INSERT INTO tenant_webhooks (tenant, url, events) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant) DO UPDATE SET url = EXCLUDED.url, \
                       events = EXCLUDED.events, updated_at = now()",
                )
                .bind(tenant)
                .bind(&s.url)
                .bind(&s.events)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM tenant_webhooks WHERE tenant = $1")
                    .bind(tenant)
                    .execute(&self.pool)
                    .await?;
            }
        }
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
        let mut tx = self.pool.begin().await?;
        // One secret per tenant is made however many replicas ask at once.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tutti_webhook_secret:' || $1))")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        let mut rows: Vec<SecretTuple> = sqlx::query_as(ACTIVE_SECRETS)
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            sqlx::query("INSERT INTO webhook_secrets (tenant, secret) VALUES ($1, $2)")
                .bind(tenant)
                .bind(sign::new_secret())
                .execute(&mut *tx)
                .await?;
            rows = sqlx::query_as(ACTIVE_SECRETS)
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(secrets(rows))
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: &str,
        overlap: Duration,
    ) -> Result<Vec<SecretRow>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tutti_webhook_secret:' || $1))")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2) \
             WHERE tenant = $1 AND (expires_at IS NULL OR expires_at > now() + make_interval(secs => $2))",
        )
        .bind(tenant)
        .bind(overlap.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO webhook_secrets (tenant, secret) VALUES ($1, $2)")
            .bind(tenant)
            .bind(sign::new_secret())
            .execute(&mut *tx)
            .await?;
        let rows: Vec<SecretTuple> = sqlx::query_as(ACTIVE_SECRETS)
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(secrets(rows))
    }

    async fn claim_deliveries(&self, limit: i64, lease: Duration) -> Result<Vec<Claimed>> {
        let rows: Vec<(Uuid, String, String, String, i32, DateTime<Utc>)> = sqlx::query_as(
            "UPDATE webhook_deliveries d \
             SET attempts = d.attempts + 1, lease_until = now() + make_interval(secs => $2) \
             WHERE d.id IN (SELECT id FROM webhook_deliveries \
                            WHERE state = 'pending' AND next_at <= now() \
                              AND (lease_until IS NULL OR lease_until < now()) \
                            ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING d.id, d.tenant, d.url, d.payload, d.attempts, d.window_start",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, tenant, url, payload, attempt, window_start)| Claimed {
                    id,
                    tenant,
                    url,
                    payload,
                    attempt: attempt.max(0) as u32,
                    window_start,
                },
            )
            .collect())
    }

    async fn finish_delivery(&self, id: Uuid, attempt: u32, outcome: &Attempted) -> Result<bool> {
        // The claim's attempt, still leased: a lost lease or a redelivery by hand voids it.
        let fenced =
            "WHERE id = $1 AND attempts = $2 AND state = 'pending' AND lease_until IS NOT NULL";
        let done = match outcome {
            Attempted::Delivered { status } => {
                sqlx::query(&format!(
                    "UPDATE webhook_deliveries SET state = 'delivered', finished_at = now(), \
                       lease_until = NULL, last_status = $3, last_error = NULL {fenced}"
                ))
                .bind(id)
                .bind(attempt as i32)
                .bind(i32::from(*status))
                .execute(&self.pool)
                .await?
            }
            Attempted::Retry { at, status, error } => {
                sqlx::query(&format!(
                    "UPDATE webhook_deliveries SET next_at = $5, lease_until = NULL, \
                       last_status = $3, last_error = $4 {fenced}"
                ))
                .bind(id)
                .bind(attempt as i32)
                .bind(status.map(i32::from))
                .bind(error)
                .bind(at)
                .execute(&self.pool)
                .await?
            }
            Attempted::Failed { status, error } => {
                sqlx::query(&format!(
                    "UPDATE webhook_deliveries SET state = 'failed', finished_at = now(), \
                       lease_until = NULL, last_status = $3, last_error = $4 {fenced}"
                ))
                .bind(id)
                .bind(attempt as i32)
                .bind(status.map(i32::from))
                .bind(error)
                .execute(&self.pool)
                .await?
            }
        };
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
             WHERE tenant = $1 AND ($2::text IS NULL OR state = $2) \
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(tenant)
        .bind(state)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery).collect()
    }

    async fn redeliver(&self, tenant: &str, id: Uuid) -> Result<Option<DeliveryRow>> {
        let row = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET state = 'pending', next_at = now(), \
               window_start = now(), lease_until = NULL, finished_at = NULL \
             WHERE id = $1 AND tenant = $2 RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(delivery).transpose()
    }
}
