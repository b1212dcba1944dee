//! Usage records on SQLite: the same rows as Postgres (`pg/usage.rs`), times in microseconds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tutti_shared::job::{JobSpec, JobState};
use uuid::Uuid;

use super::rows::{uuid, Tx};
use super::{json, time, SqliteStore};
use crate::error::{Error, Result};
use crate::store::usage::{day_of, month_of};
use crate::store::usage::{
    merge, outcome_name, total, DeviceTime, Spent, TotalRow, UsageFacts, UsageGroup, UsageQuery,
    UsageRecord, UsageStore, UsageTotal,
};
use crate::store::Scope;
use crate::tenancy::budgets::{Budgets, Spending};

fn group_sql(g: UsageGroup) -> &'static str {
    match g {
        UsageGroup::Total => "''",
        UsageGroup::Model => "u.model || '@' || u.model_version",
        UsageGroup::Key => "COALESCE(u.api_key_id, '')",
        UsageGroup::Day => "strftime('%Y-%m-%d', u.ended_at / 1000000, 'unixepoch')",
        UsageGroup::Batch => "COALESCE(u.batch_id, '')",
    }
}

/// Writes (or rewrites) the usage record of `job` if it has ended; a no-op otherwise.
pub(super) async fn record_usage(tx: &mut Tx<'_>, job: Uuid) -> Result<()> {
    type Head = (String, Option<String>, String, String, i64, Option<i64>);
    let head: Option<Head> = sqlx::query_as(
        "SELECT tenant, api_key_id, spec, state, steps_done, finished_at FROM jobs WHERE id = $1",
    )
    .bind(job.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    let Some((tenant, api_key_id, spec, state, steps_done, finished_at)) = head else {
        return Ok(());
    };
    let spec: JobSpec = json(&spec)?;
    let state: JobState = state
        .parse()
        .map_err(|e| Error::Internal(format!("job state: {e}")))?;
    let (audio_seconds,): (f64,) =
        sqlx::query_as("SELECT COALESCE(SUM(duration_s), 0.0) FROM outputs WHERE job_id = $1")
            .bind(job.to_string())
            .fetch_one(&mut **tx)
            .await?;
    let stage_millis: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT t.kind, COALESCE(w.device, ''), SUM(t.millis) \
         FROM tasks t LEFT JOIN workers w ON w.worker = t.worker \
         WHERE t.job_id = $1 AND t.state = 'done' AND t.millis IS NOT NULL GROUP BY 1, 2",
    )
    .bind(job.to_string())
    .fetch_all(&mut **tx)
    .await?;
    let batch_id: Option<String> =
        sqlx::query_scalar("SELECT batch_id FROM batch_items WHERE job_id = $1 LIMIT 1")
            .bind(job.to_string())
            .fetch_optional(&mut **tx)
            .await?;
    let facts = UsageFacts {
        job,
        tenant,
        api_key_id,
        spec,
        state,
        steps_done,
        ended_at: finished_at.map(time).transpose()?.unwrap_or_else(Utc::now),
        audio_seconds,
        stage_millis,
        batch_id: batch_id.as_deref().map(uuid).transpose()?,
    };
    let Some(r) = UsageRecord::of(facts) else {
        return Ok(());
    };
    sqlx::query("DELETE FROM usage_records WHERE job_id = $1")
        .bind(job.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO usage_records (job_id, tenant, api_key_id, model, model_version, batch_id, \
           outcome, steps, audio_seconds, device_seconds, ended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(r.job.to_string())
    .bind(&r.tenant)
    .bind(&r.api_key_id)
    .bind(&r.model)
    .bind(&r.model_version)
    .bind(r.batch_id.map(|b| b.to_string()))
    .bind(r.outcome)
    .bind(r.steps)
    .bind(r.audio_seconds)
    .bind(r.device_seconds)
    .bind(r.ended_at.timestamp_micros())
    .execute(&mut **tx)
    .await?;
    for ((stage, device), seconds) in &r.stages {
        sqlx::query(
            "INSERT INTO usage_stages (job_id, stage, device, seconds) VALUES ($1, $2, $3, $4)",
        )
        .bind(r.job.to_string())
        .bind(stage)
        .bind(device)
        .bind(seconds)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// What a tenant's records since `since` spent, and the audio its jobs in flight will deliver.
pub(super) async fn spent_since(
    tx: &mut Tx<'_>,
    tenant: &str,
    since: DateTime<Utc>,
) -> Result<(Spent, f64)> {
    let (audio_seconds, device_seconds): (f64, f64) = sqlx::query_as(
        "SELECT COALESCE(SUM(audio_seconds), 0.0), COALESCE(SUM(device_seconds), 0.0) \
         FROM usage_records WHERE tenant = $1 AND ended_at >= $2",
    )
    .bind(tenant)
    .bind(since.timestamp_micros())
    .fetch_one(&mut **tx)
    .await?;
    let (in_flight,): (f64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(CAST(json_extract(spec, '$.duration_s') AS REAL) \
                             * json_extract(spec, '$.variations')), 0.0) \
         FROM jobs WHERE tenant = $1 AND state IN ('queued', 'running')",
    )
    .bind(tenant)
    .fetch_one(&mut **tx)
    .await?;
    Ok((
        Spent {
            audio_seconds,
            device_seconds,
        },
        in_flight,
    ))
}

/// Refuses (and so rolls back) a submit that a budget of the tenant does not allow; run in
/// the insert's transaction after the job's row is written.
pub(super) async fn check_budgets(tx: &mut Tx<'_>, tenant: &str, b: &Budgets) -> Result<()> {
    let now = Utc::now();
    let (today, in_flight_audio) = spent_since(tx, tenant, day_of(now).0).await?;
    let this_month = if b.has_monthly() {
        spent_since(tx, tenant, month_of(now).0).await?.0
    } else {
        today
    };
    let spending = Spending {
        today,
        this_month,
        in_flight_audio,
    };
    b.check(tenant, now, &spending)
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn usage_record(&self, scope: Scope<'_>, job: Uuid) -> Result<Option<UsageRecord>> {
        type Row = (
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            String,
            i64,
            f64,
            f64,
            i64,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT tenant, api_key_id, model, model_version, batch_id, outcome, steps, \
                    audio_seconds, device_seconds, ended_at \
             FROM usage_records WHERE job_id = $1 AND ($2 IS NULL OR tenant = $2)",
        )
        .bind(job.to_string())
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        let Some((tenant, key, model, version, batch, outcome, steps, audio, device, ended)) = row
        else {
            return Ok(None);
        };
        let stages: Vec<(String, String, f64)> = sqlx::query_as(
            "SELECT stage, device, seconds FROM usage_stages WHERE job_id = $1 ORDER BY 1, 2",
        )
        .bind(job.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(UsageRecord {
            job,
            tenant,
            api_key_id: key,
            model,
            model_version: version,
            batch_id: batch.as_deref().map(uuid).transpose()?,
            outcome: outcome_name(&outcome)?,
            steps,
            audio_seconds: audio,
            device_seconds: device,
            ended_at: time(ended)?,
            stages: stages
                .into_iter()
                .map(|(s, d, secs)| ((s, d), secs))
                .collect(),
        }))
    }

    async fn usage(&self, q: &UsageQuery<'_>) -> Result<Vec<UsageTotal>> {
        let group = group_sql(q.group);
        let rows: Vec<TotalRow> = sqlx::query_as(&format!(
            "SELECT u.tenant, {group} AS grp, COUNT(*), \
                    SUM(u.outcome = 'succeeded'), SUM(u.outcome = 'failed'), \
                    SUM(u.outcome = 'cancelled'), COALESCE(SUM(u.steps), 0), \
                    COALESCE(SUM(u.audio_seconds), 0.0), COALESCE(SUM(u.device_seconds), 0.0) \
             FROM usage_records u \
             WHERE ($1 IS NULL OR u.tenant = $1) AND u.ended_at >= $2 AND u.ended_at < $3 \
             GROUP BY 1, 2"
        ))
        .bind(q.scope.tenant())
        .bind(q.from.timestamp_micros())
        .bind(q.to.timestamp_micros())
        .fetch_all(&self.pool)
        .await?;
        let devices: Vec<(String, String, String, String, f64)> = sqlx::query_as(&format!(
            "SELECT u.tenant, {group} AS grp, s.stage, s.device, SUM(s.seconds) \
             FROM usage_records u JOIN usage_stages s ON s.job_id = u.job_id \
             WHERE ($1 IS NULL OR u.tenant = $1) AND u.ended_at >= $2 AND u.ended_at < $3 \
             GROUP BY 1, 2, 3, 4"
        ))
        .bind(q.scope.tenant())
        .bind(q.from.timestamp_micros())
        .bind(q.to.timestamp_micros())
        .fetch_all(&self.pool)
        .await?;
        Ok(merge(
            rows.into_iter().map(total).collect(),
            devices
                .into_iter()
                .map(|(tenant, group, stage, device, seconds)| {
                    (
                        tenant,
                        group,
                        DeviceTime {
                            stage,
                            device,
                            seconds,
                        },
                    )
                })
                .collect(),
        ))
    }
}
