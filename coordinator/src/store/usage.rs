//! Usage records: one per job, written by the store in the transaction that ends the job
//! (succeeded, failed, cancelled; rewritten when a retried job ends again) and kept when the job
//! is deleted. `UsageStore` sums them for `GetUsage` and for the budgets checked at submit.
//! Both dialects read the same facts (`UsageFacts`) and write the same record (`UsageRecord`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tutti_shared::job::{JobSpec, JobState};
use uuid::Uuid;

use super::Scope;
use crate::error::{Error, Result};

/// What the store reads of an ended job to bill it.
#[derive(Debug, Clone)]
pub struct UsageFacts {
    pub job: Uuid,
    pub tenant: String,
    pub api_key_id: Option<String>,
    pub spec: JobSpec,
    pub state: JobState,
    pub steps_done: i64,
    pub ended_at: DateTime<Utc>,
    /// The summed duration of its outputs (every variation).
    pub audio_seconds: f64,
    /// Milliseconds of finished chunks by (stage, the worker's device as it reported it).
    pub stage_millis: Vec<(String, String, i64)>,
    pub batch_id: Option<Uuid>,
}

/// A job's usage record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub job: Uuid,
    pub tenant: String,
    pub api_key_id: Option<String>,
    pub model: String,
    pub model_version: String,
    pub batch_id: Option<Uuid>,
    /// `succeeded`, `failed` or `cancelled`.
    pub outcome: &'static str,
    pub steps: i64,
    pub audio_seconds: f64,
    pub device_seconds: f64,
    pub ended_at: DateTime<Utc>,
    /// Seconds by (stage, device kind).
    pub stages: BTreeMap<(String, String), f64>,
}

/// The kind of a worker's device (`cuda:1` is `cuda`); `unknown` when no worker row says.
pub fn device_kind(device: &str) -> String {
    let kind = device.split(':').next().unwrap_or("").trim();
    if kind.is_empty() {
        "unknown".to_string()
    } else {
        kind.to_ascii_lowercase()
    }
}

impl UsageRecord {
    /// The record of an ended job; `None` for a job that has not ended.
    pub fn of(f: UsageFacts) -> Option<UsageRecord> {
        let outcome = match f.state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Queued | JobState::Running => return None,
        };
        let mut stages = BTreeMap::new();
        for (stage, device, millis) in f.stage_millis {
            *stages.entry((stage, device_kind(&device))).or_insert(0.0) +=
                millis.max(0) as f64 / 1000.0;
        }
        Some(UsageRecord {
            job: f.job,
            tenant: f.tenant,
            api_key_id: f.api_key_id,
            model: f.spec.model.name,
            model_version: f.spec.model.version,
            batch_id: f.batch_id,
            outcome,
            steps: f.steps_done.max(0),
            // Only a succeeded job delivered its audio.
            audio_seconds: if outcome == "succeeded" {
                f.audio_seconds.max(0.0)
            } else {
                0.0
            },
            device_seconds: stages.values().sum(),
            ended_at: f.ended_at,
            stages,
        })
    }
}

/// How `GetUsage` groups the records of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    /// One total per tenant.
    Total,
    /// `name@version`.
    Model,
    /// The API key id (empty: submitted with auth off or by a batch).
    Key,
    /// The UTC day the job ended, `YYYY-MM-DD`.
    Day,
    /// The batch id (empty: not a batch item).
    Batch,
}

/// A question to the usage records: a tenant's (or, for admins, every tenant's) records that
/// ended in `[from, to)`.
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery<'a> {
    pub scope: Scope<'a>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group: UsageGroup,
}

/// Device seconds of one stage on one device kind.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTime {
    pub stage: String,
    pub device: String,
    pub seconds: f64,
}

/// Totals of one tenant's group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageTotal {
    pub tenant: String,
    /// The group's value (see `UsageGroup`); empty for `Total`.
    pub group: String,
    pub jobs: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub steps: i64,
    pub audio_seconds: f64,
    pub device_seconds: f64,
    pub devices: Vec<DeviceTime>,
}

pub use crate::tenancy::budgets::{day_of, month_of, Spent};

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// A job's usage record; `None` while it has not ended (or for a job not in scope).
    async fn usage_record(&self, scope: Scope<'_>, job: Uuid) -> Result<Option<UsageRecord>>;
    /// Totals of the records in the query's scope and period, by tenant then group.
    async fn usage(&self, q: &UsageQuery<'_>) -> Result<Vec<UsageTotal>>;
}

/// Joins the per-group totals with their (group, stage, device) seconds, in order.
pub(super) fn merge(
    mut totals: Vec<UsageTotal>,
    devices: Vec<(String, String, DeviceTime)>,
) -> Vec<UsageTotal> {
    let mut by: BTreeMap<(String, String), Vec<DeviceTime>> = BTreeMap::new();
    for (tenant, group, d) in devices {
        by.entry((tenant, group)).or_default().push(d);
    }
    for t in &mut totals {
        if let Some(mut d) = by.remove(&(t.tenant.clone(), t.group.clone())) {
            d.sort_by(|a, b| (&a.stage, &a.device).cmp(&(&b.stage, &b.device)));
            t.devices = d;
        }
    }
    totals.sort_by(|a, b| (&a.tenant, &a.group).cmp(&(&b.tenant, &b.group)));
    totals
}

/// A row of the totals query: tenant, group, jobs, succeeded, failed, cancelled, steps, audio
/// and device seconds.
pub(super) type TotalRow = (String, String, i64, i64, i64, i64, i64, f64, f64);

pub(super) fn outcome_name(s: &str) -> Result<&'static str> {
    match s {
        "succeeded" => Ok("succeeded"),
        "failed" => Ok("failed"),
        "cancelled" => Ok("cancelled"),
        other => Err(Error::Internal(format!("stored usage outcome {other:?}"))),
    }
}

pub(super) fn total(
    (tenant, group, jobs, succeeded, failed, cancelled, steps, audio, device): TotalRow,
) -> UsageTotal {
    UsageTotal {
        tenant,
        group,
        jobs,
        succeeded,
        failed,
        cancelled,
        steps,
        audio_seconds: audio,
        device_seconds: device,
        devices: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn device_kinds_drop_the_index() {
        assert_eq!(device_kind("cuda:1"), "cuda");
        assert_eq!(device_kind("cpu"), "cpu");
        assert_eq!(device_kind(""), "unknown");
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        let (d0, d1) = day_of(t);
        assert_eq!(d0, Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap());
        assert_eq!(d1, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let (m0, m1) = month_of(t);
        assert_eq!(m0, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(m1, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let (_, m1) = month_of(Utc.with_ymd_and_hms(2026, 2, 3, 4, 5, 6).unwrap());
        assert_eq!(m1, Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap());
    }
}
