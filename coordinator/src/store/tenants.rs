//! Tenants, their limits and their API keys, in the same database as the jobs (Postgres for
//! the farm, SQLite embedded). The `TenantStore` trait is a supertrait of `JobStore`, so every
//! job store carries it and the conformance suite runs it on both dialects.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::tenancy::key::ApiKey;
use crate::tenancy::limits::{priorities_from_text, priorities_to_text, Limits};
use crate::tenancy::Budgets;

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub limits: Limits,
    pub created_at: DateTime<Utc>,
}

/// An API key as stored: never the key itself.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    /// The non-secret id (`tt_<id>` is the key's prefix).
    pub id: String,
    pub tenant: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Who a live key speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOwner {
    pub tenant: String,
    pub admin: bool,
    pub limits: Limits,
}

#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Adds a tenant; ALREADY_EXISTS when the name is taken.
    async fn create_tenant(&self, name: &str, limits: &Limits) -> Result<()>;
    /// Replaces a tenant's limits; NOT_FOUND for an unknown tenant.
    async fn set_limits(&self, name: &str, limits: &Limits) -> Result<()>;
    async fn tenant(&self, name: &str) -> Result<Option<Tenant>>;
    /// All tenants, by name.
    async fn tenants(&self) -> Result<Vec<Tenant>>;
    /// Stores a key's hash for a tenant; NOT_FOUND for an unknown tenant.
    async fn insert_key(&self, tenant: &str, key: &ApiKey, admin: bool) -> Result<()>;
    /// Revokes a key by id: true when this call revoked it, false when it already was;
    /// NOT_FOUND for an unknown id.
    async fn revoke_key(&self, id: &str) -> Result<bool>;
    /// Every key (live and revoked), by tenant then age.
    async fn keys(&self) -> Result<Vec<KeyInfo>>;
    /// The owner of a presented key when it is stored, matches and is not revoked. Read from
    /// the database on every call: a revoked key stops working at once, on every replica.
    async fn key_owner(&self, key: &ApiKey) -> Result<Option<KeyOwner>>;
}

/// The limit columns, in the order `LimitCols` binds and reads them.
pub(super) const LIMIT_COLUMNS: &str = "max_jobs_in_flight, submits_per_second, submit_burst, \
     max_batch_items, priorities, max_duration_s, max_steps, audio_seconds_per_day, \
     audio_seconds_per_month, device_seconds_per_day, device_seconds_per_month, retain_outputs_days, \
     retain_inputs_days, retain_manifests_days";

/// Limits as the two dialects store them (integers widened, classes as text).
pub(super) struct LimitCols {
    pub max_jobs_in_flight: Option<i64>,
    pub submits_per_second: Option<f64>,
    pub submit_burst: Option<i64>,
    pub max_batch_items: Option<i64>,
    pub priorities: Option<String>,
    pub max_duration_s: Option<f64>,
    pub max_steps: Option<i64>,
    pub budgets: Budgets,
    pub retain_outputs_days: Option<i64>,
    pub retain_inputs_days: Option<i64>,
    pub retain_manifests_days: Option<i64>,
}

impl From<&Limits> for LimitCols {
    fn from(l: &Limits) -> Self {
        Self {
            max_jobs_in_flight: l.max_jobs_in_flight.map(i64::from),
            submits_per_second: l.submits_per_second,
            submit_burst: l.submit_burst.map(i64::from),
            max_batch_items: l.max_batch_items.map(i64::from),
            priorities: l.priorities.as_deref().map(priorities_to_text),
            max_duration_s: l.max_duration_s.map(f64::from),
            max_steps: l.max_steps.map(i64::from),
            budgets: l.budgets,
            retain_outputs_days: l.retain_outputs_days.map(i64::from),
            retain_inputs_days: l.retain_inputs_days.map(i64::from),
            retain_manifests_days: l.retain_manifests_days.map(i64::from),
        }
    }
}

impl LimitCols {
    pub(super) fn into_limits(self) -> Result<Limits> {
        let count = |v: Option<i64>| v.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32);
        Ok(Limits {
            max_jobs_in_flight: count(self.max_jobs_in_flight),
            submits_per_second: self.submits_per_second,
            submit_burst: count(self.submit_burst),
            max_batch_items: count(self.max_batch_items),
            priorities: self
                .priorities
                .as_deref()
                .map(priorities_from_text)
                .transpose()
                .map_err(|e| Error::Internal(format!("stored priorities: {e}")))?,
            max_duration_s: self.max_duration_s.map(|d| d as f32),
            max_steps: count(self.max_steps),
            budgets: self.budgets,
            retain_outputs_days: count(self.retain_outputs_days),
            retain_inputs_days: count(self.retain_inputs_days),
            retain_manifests_days: count(self.retain_manifests_days),
        })
    }
}

pub(super) fn unknown_tenant(name: &str) -> Error {
    Error::NotFound(format!("tenant {name:?} not found"))
}

pub(super) fn unknown_key(id: &str) -> Error {
    Error::NotFound(format!("API key tt_{id} not found"))
}
