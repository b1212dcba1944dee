//! The webhook outbox and a tenant's endpoint and secrets, in the job store's database.
//! Deliveries are inserted by the transaction of the change they report (`enqueue_sql`, run
//! by each dialect's history writer); senders claim due ones with a lease (`FOR UPDATE SKIP
//! LOCKED` on Postgres, the single writer on SQLite) and finish them fenced by the attempt
//! they claimed, so a delivery goes out once per attempt whichever replicas run.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::webhooks::Subscription;

/// A delivery claimed for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: Uuid,
    pub tenant: String,
    pub url: String,
    pub payload: String,
    /// The attempt this claim is (fences its finish).
    pub attempt: u32,
    /// Retries stop `retry_for` after this.
    pub window_start: DateTime<Utc>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempted {
    Delivered {
        status: u16,
    },
    /// Try again at `at`.
    Retry {
        at: DateTime<Utc>,
        status: Option<u16>,
        error: String,
    },
    /// Out of time: failed, listed to the tenant, redeliverable by hand.
    Failed {
        status: Option<u16>,
        error: String,
    },
}

/// A delivery as listed to its tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub event: String,
    pub job_id: Option<Uuid>,
    pub batch_id: Option<Uuid>,
    pub url: String,
    pub state: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub payload: String,
}

/// A signing secret.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretRow {
    pub secret: String,
    pub created_at: DateTime<Utc>,
    /// `None`: the current one.
    pub expires_at: Option<DateTime<Utc>>,
}

pub const DELIVERY_COLUMNS: &str = "id, event, job_id, batch_id, url, state, attempts, \
     last_status, last_error, created_at, next_at, finished_at, payload";

/// The outbox insert of one job webhook, the same text in both dialects: `$1` the delivery
/// id, `$2` the event name, `$3` the body, `$4` the job, `$5` now. The job's own callback wins,
/// then its batch's (a batch item's), then its tenant's endpoint (not for batch items).
pub(crate) const ENQUEUE_JOB: &str = "INSERT INTO webhook_deliveries \
       (id, tenant, job_id, event, url, payload, next_at, window_start, created_at) \
     SELECT $1, j.tenant, j.id, $2, COALESCE(w.url, bw.url, t.url), $3, $5, $5, $5 \
     FROM jobs j \
     LEFT JOIN job_webhooks w ON w.job_id = j.id \
     LEFT JOIN batch_items bi ON bi.job_id = j.id \
     LEFT JOIN batch_webhooks bw ON bw.batch_id = bi.batch_id \
     LEFT JOIN tenant_webhooks t ON t.tenant = j.tenant AND w.job_id IS NULL \
       AND bi.job_id IS NULL \
     WHERE j.id = $4 \
       AND (' ' || COALESCE(w.events, bw.events, t.events) || ' ') LIKE ('% ' || $2 || ' %')";

/// The outbox insert of a batch's webhook (its own, else its tenant's endpoint): `$1` id,
/// `$2` event, `$3` body, `$4` batch, `$5` now.
pub(crate) const ENQUEUE_BATCH: &str = "INSERT INTO webhook_deliveries \
       (id, tenant, batch_id, event, url, payload, next_at, window_start, created_at) \
     SELECT $1, b.tenant, b.id, $2, COALESCE(bw.url, t.url), $3, $5, $5, $5 FROM batches b \
     LEFT JOIN batch_webhooks bw ON bw.batch_id = b.id \
     LEFT JOIN tenant_webhooks t ON t.tenant = b.tenant AND bw.batch_id IS NULL \
     WHERE b.id = $4 \
       AND (' ' || COALESCE(bw.events, t.events) || ' ') LIKE ('% ' || $2 || ' %')";

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Sets (or with `None` removes) a tenant's default endpoint.
    async fn set_endpoint(&self, tenant: &str, sub: Option<&Subscription>) -> Result<()>;
    async fn endpoint(&self, tenant: &str) -> Result<Option<Subscription>>;
    /// The tenant's active secrets, oldest first; one is made when it has none.
    async fn webhook_secrets(&self, tenant: &str) -> Result<Vec<SecretRow>>;
    /// A new current secret; the others expire after `overlap` (or sooner, as they were).
    async fn rotate_webhook_secret(
        &self,
        tenant: &str,
        overlap: Duration,
    ) -> Result<Vec<SecretRow>>;
    /// Claims up to `limit` due deliveries for `lease`, as their next attempt.
    async fn claim_deliveries(&self, limit: i64, lease: Duration) -> Result<Vec<Claimed>>;
    /// Records how a claimed attempt ended; false when the claim was lost (the lease ran out
    /// and another sender took it, or a redelivery reset it).
    async fn finish_delivery(&self, id: Uuid, attempt: u32, outcome: &Attempted) -> Result<bool>;
    /// A tenant's deliveries, newest first, after the cursor `(created_at, id)`.
    async fn list_deliveries(
        &self,
        tenant: &str,
        state: Option<&str>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>>;
    /// Makes a tenant's delivery due now with a fresh retry window; `None` for an unknown id
    /// or another tenant's.
    async fn redeliver(&self, tenant: &str, id: Uuid) -> Result<Option<DeliveryRow>>;
}
