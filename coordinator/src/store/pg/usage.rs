//! Usage records on Postgres: written inside the transaction that ends a job, summed for
//! `GetUsage` and for the budgets checked at submit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use tutti_shared::job::{JobSpec, JobState};
use uuid::Uuid;

use super::PgStore;
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
        UsageGroup::Day => "to_char(u.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        UsageGroup::Batch => "COALESCE(u.batch_id::text, '')",
    }
}

/// Writes (or rewrites) the usage record of `job` if it has ended; a no-op otherwise.
pub(super) async fn record_usage(tx: &mut Transaction<'_, Postgres>, job: Uuid) -> Result<()> {
    type Head = (
        String,
        Option<String>,
        Json<JobSpec>,
        String,
        i32,
        Option<DateTime<Utc>>,
    );
    let head: Option<Head> = sqlx::query_as(
        "SELECT tenant, api_key_id, spec, state, steps_done, finished_at FROM jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((tenant, api_key_id, spec, state, steps_done, finished_at)) = head else {
        return Ok(());
    };
    let state: JobState = state
        .parse()
        .map_err(|e| Error::Internal(format!("job state: {e}")))?;
    let (audio_seconds,): (f64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(duration_s), 0)::float8 FROM outputs WHERE job_id = $1",
    )
    .bind(job)
    .fetch_one(&mut **tx)
    .await?;
    let stage_millis: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT t.kind, COALESCE(w.device, ''), SUM(t.millis)::bigint \
         FROM tasks t LEFT JOIN workers w ON w.worker = t.worker \
         WHERE t.job_id = $1 AND t.state = 'done' AND t.millis IS NOT NULL GROUP BY 1, 2",
    )
    .bind(job)
    .fetch_all(&mut **tx)
    .await?;
    let batch_id: Option<Uuid> =
        sqlx::query_scalar("SELECT batch_id FROM batch_items WHERE job_id = $1 LIMIT 1")
            .bind(job)
            .fetch_optional(&mut **tx)
            .await?;
    let facts = UsageFacts {
        job,
        tenant,
        api_key_id,
        spec: spec.0,
        state,
        steps_done: i64::from(steps_done),
        ended_at: finished_at.unwrap_or_else(Utc::now),
        audio_seconds,
        stage_millis,
        batch_id,
    };
    let Some(r) = UsageRecord::of(facts) else {
        return Ok(());
    };
    sqlx::query("DELETE FROM usage_records WHERE job_id = $1")
        .bind(job)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO usage_records (job_id, tenant, api_key_id, model, model_version, batch_id, \
           outcome, steps, audio_seconds, device_seconds, ended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(r.job)
    .bind(&r.tenant)
    .bind(&r.api_key_id)
    .bind(&r.model)
    .bind(&r.model_version)
    .bind(r.batch_id)
    .bind(r.outcome)
    .bind(r.steps.min(i64::from(i32::MAX)) as i32)
    .bind(r.audio_seconds)
    .bind(r.device_seconds)
    .bind(r.ended_at)
    .execute(&mut **tx)
    .await?;
    for ((stage, device), seconds) in &r.stages {
        sqlx::query(
            "INSERT INTO usage_stages (job_id, stage, device, seconds) VALUES ($1, $2, $3, $4)",
        )
        .bind(r.job)
        .bind(stage)
        .bind(device)
        .bind(seconds)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// What a tenant's records since `since` spent, and the audio its jobs in flight will deliver
/// (their requested duration times variations).
pub(super) async fn spent_since(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    since: DateTime<Utc>,
) -> Result<(Spent, f64)> {
    let (audio_seconds, device_seconds): (f64, f64) = sqlx::query_as(
        "SELECT COALESCE(SUM(audio_seconds), 0)::float8, COALESCE(SUM(device_seconds), 0)::float8 \
         FROM usage_records WHERE tenant = $1 AND ended_at >= $2",
    )
    .bind(tenant)
    .bind(since)
    .fetch_one(&mut **tx)
    .await?;
    let (in_flight,): (f64,) = sqlx::query_as(
        "SELECT COALESCE(SUM((spec->>'duration_s')::float8 * (spec->>'variations')::float8), 0)::float8 \
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
pub(super) async fn check_budgets(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    b: &Budgets,
) -> Result<()> {
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
impl UsageStore for PgStore {
    async fn usage_record(&self, scope: Scope<'_>, job: Uuid) -> Result<Option<UsageRecord>> {
        type Row = (
            String,
            Option<String>,
            String,
            String,
            Option<Uuid>,
            String,
            i32,
            f64,
            f64,
            DateTime<Utc>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT tenant, api_key_id, model, model_version, batch_id, outcome, steps, \
                    audio_seconds, device_seconds, ended_at \
             FROM usage_records WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(job)
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
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(UsageRecord {
            job,
            tenant,
            api_key_id: key,
            model,
            model_version: version,
            batch_id: batch,
            outcome: outcome_name(&outcome)?,
            steps: i64::from(steps),
            audio_seconds: audio,
            device_seconds: device,
            ended_at: ended,
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
                    COUNT(*) FILTER (WHERE u.outcome = 'succeeded'), \
                    COUNT(*) FILTER (WHERE u.outcome = 'failed'), \
                    COUNT(*) FILTER (WHERE u.outcome = 'cancelled'), \
                    COALESCE(SUM(u.steps), 0)::bigint, \
                    COALESCE(SUM(u.audio_seconds), 0)::float8, \
                    COALESCE(SUM(u.device_seconds), 0)::float8 \
             FROM usage_records u \
             WHERE ($1::text IS NULL OR u.tenant = $1) AND u.ended_at >= $2 AND u.ended_at < $3 \
             GROUP BY 1, 2"
        ))
        .bind(q.scope.tenant())
        .bind(q.from)
        .bind(q.to)
        .fetch_all(&self.pool)
        .await?;
        let devices: Vec<(String, String, String, String, f64)> = sqlx::query_as(&format!(
            "SELECT u.tenant, {group} AS grp, s.stage, s.device, SUM(s.seconds)::float8 \
             FROM usage_records u JOIN usage_stages s ON s.job_id = u.job_id \
             WHERE ($1::text IS NULL OR u.tenant = $1) AND u.ended_at >= $2 AND u.ended_at < $3 \
             GROUP BY 1, 2, 3, 4"
        ))
        .bind(q.scope.tenant())
        .bind(q.from)
        .bind(q.to)
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
