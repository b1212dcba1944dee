//! `Generation.GetUsage`: totals of the usage records (`store::usage`) for a period, grouped
//! by model, key, day or batch. A tenant sees its own; an admin key sees every tenant or one.

use chrono::{DateTime, Duration, Utc};
use tonic::{Request, Response, Status};
use tutti_proto::v1 as pb;

use crate::api::{ts, GenerationService};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::usage::{UsageGroup, UsageQuery, UsageTotal};
use crate::store::Scope;

/// The period when a request names no start: the 30 days before its end.
pub const DEFAULT_PERIOD_DAYS: i64 = 30;
/// The longest period one request may sum.
pub const MAX_PERIOD_DAYS: i64 = 400;

fn group_of(g: i32) -> Result<UsageGroup> {
    match pb::UsageGrouping::try_from(g) {
        Ok(pb::UsageGrouping::Unspecified) => Ok(UsageGroup::Total),
        Ok(pb::UsageGrouping::Model) => Ok(UsageGroup::Model),
        Ok(pb::UsageGrouping::Key) => Ok(UsageGroup::Key),
        Ok(pb::UsageGrouping::Day) => Ok(UsageGroup::Day),
        Ok(pb::UsageGrouping::Batch) => Ok(UsageGroup::Batch),
        Err(_) => Err(Error::invalid(
            "group_by",
            "must be one of model, key, day, batch (or unset)",
        )),
    }
}

fn time(field: &str, t: &tutti_proto::wkt::Timestamp) -> Result<DateTime<Utc>> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .ok_or_else(|| Error::invalid(field, "must be a valid timestamp"))
}

/// Whose records the caller may sum: its own tenant's, or an admin's choice.
fn scope<'a>(caller: &'a Caller, tenant: &'a str) -> Result<Scope<'a>> {
    match (caller.admin, tenant) {
        (true, "") => Ok(Scope::All),
        (true, t) => Ok(Scope::Tenant(t)),
        (false, "") => Ok(Scope::Tenant(&caller.tenant)),
        (false, t) if t == caller.tenant => Ok(Scope::Tenant(&caller.tenant)),
        // Another tenant's usage is as unknown as its jobs.
        (false, t) => Err(Error::NotFound(format!("tenant {t:?} not found"))),
    }
}

/// The period `[from, to)` of a request, checked.
pub fn period(
    req: &pb::GetUsageRequest,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let to = req
        .to
        .as_ref()
        .map(|t| time("to", t))
        .transpose()?
        .unwrap_or(now);
    let from = match &req.from {
        Some(t) => time("from", t)?,
        None => to - Duration::days(DEFAULT_PERIOD_DAYS),
    };
    if from >= to {
        return Err(Error::invalid("from", "must be before to"));
    }
    if to - from > Duration::days(MAX_PERIOD_DAYS) {
        return Err(Error::invalid(
            "from",
            format!("the period must be at most {MAX_PERIOD_DAYS} days"),
        ));
    }
    Ok((from, to))
}

fn total_pb(t: UsageTotal) -> pb::UsageTotal {
    let count = |n: i64| n.max(0) as u64;
    pb::UsageTotal {
        tenant: t.tenant,
        group: t.group,
        jobs: count(t.jobs),
        succeeded: count(t.succeeded),
        failed: count(t.failed),
        cancelled: count(t.cancelled),
        steps: count(t.steps),
        audio_seconds: t.audio_seconds,
        device_seconds: t.device_seconds,
        devices: t
            .devices
            .into_iter()
            .map(|d| pb::DeviceUsage {
                stage: d.stage,
                device: d.device,
                seconds: d.seconds,
            })
            .collect(),
    }
}

impl GenerationService {
    pub(crate) async fn usage(
        &self,
        caller: &Caller,
        req: &pb::GetUsageRequest,
    ) -> Result<pb::GetUsageResponse> {
        let group = group_of(req.group_by)?;
        let (from, to) = period(req, Utc::now())?;
        let tenant = req.tenant.trim();
        if !tenant.is_empty() {
            crate::auth::check_tenant_name(tenant)?;
        }
        let scope = scope(caller, tenant)?;
        let totals = self
            .store
            .usage(&UsageQuery {
                scope,
                from,
                to,
                group,
            })
            .await?;
        Ok(pb::GetUsageResponse {
            from: Some(ts(from)),
            to: Some(ts(to)),
            group_by: req.group_by,
            totals: totals.into_iter().map(total_pb).collect(),
        })
    }

    pub(crate) async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.usage(&caller, request.get_ref()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(tenant: &str, admin: bool) -> Caller {
        Caller {
            tenant: tenant.into(),
            admin,
            key: Some("tt_0".into()),
            limits: Default::default(),
        }
    }

    #[test]
    fn tenants_see_their_own_and_admins_choose() {
        let a = caller("a", false);
        assert_eq!(scope(&a, "").ok(), Some(Scope::Tenant("a")));
        assert_eq!(scope(&a, "a").ok(), Some(Scope::Tenant("a")));
        let err = scope(&a, "b").expect_err("another tenant");
        assert_eq!(err.grpc_code(), tonic::Code::NotFound);
        let admin = caller("ops", true);
        assert_eq!(scope(&admin, "").ok(), Some(Scope::All));
        assert_eq!(scope(&admin, "b").ok(), Some(Scope::Tenant("b")));
    }

    #[test]
    fn periods_default_to_30_days_and_are_checked() {
        let now = Utc::now();
        let (from, to) = period(&pb::GetUsageRequest::default(), now).expect("default");
        assert_eq!(to, now);
        assert_eq!(to - from, Duration::days(30));
        let backwards = pb::GetUsageRequest {
            from: Some(ts(now)),
            to: Some(ts(now - Duration::hours(1))),
            ..Default::default()
        };
        let err = period(&backwards, now).expect_err("from after to");
        assert_eq!(err.to_string(), "from: must be before to");
        let long = pb::GetUsageRequest {
            from: Some(ts(now - Duration::days(401))),
            ..Default::default()
        };
        assert!(period(&long, now).is_err());
        assert!(group_of(99).is_err());
    }
}
