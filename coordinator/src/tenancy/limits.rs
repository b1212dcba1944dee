//! Per-tenant limits, stored with the tenant. Every check answers RESOURCE_EXHAUSTED naming
//! the limit, before anything is stored; jobs in flight are counted by the store inside the
//! insert's transaction (so two coordinators cannot both admit the last slot).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tutti_shared::job::Priority;

use crate::error::{Error, Result};
use crate::validate::NewJob;

/// Limit names as they appear in errors, flags and columns.
pub mod names {
    pub const MAX_JOBS_IN_FLIGHT: &str = "max_jobs_in_flight";
    pub const SUBMITS_PER_SECOND: &str = "submits_per_second";
    pub const MAX_BATCH_ITEMS: &str = "max_batch_items";
    pub const PRIORITIES: &str = "priorities";
    pub const MAX_DURATION_S: &str = "max_duration_s";
    pub const MAX_STEPS: &str = "max_steps";
}

/// The retry delay a refusal for jobs in flight suggests: no one knows when a job of the
/// tenant's ends, and a few seconds is a fair share of a typical job.
pub const IN_FLIGHT_RETRY: Duration = Duration::from_secs(5);

/// A tenant's limits; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Jobs queued or running at once.
    pub max_jobs_in_flight: Option<u32>,
    /// Sustained SubmitGeneration rate (token bucket, per coordinator process).
    pub submits_per_second: Option<f64>,
    /// Submits allowed in a burst (bucket size; default: the rate rounded up, at least 1).
    pub submit_burst: Option<u32>,
    /// Items in one batch (checked by the Batches service through `check_batch_items`).
    pub max_batch_items: Option<u32>,
    /// Priority classes the tenant may use.
    pub priorities: Option<Vec<Priority>>,
    /// Seconds of audio per job.
    pub max_duration_s: Option<f32>,
    /// Denoising steps per job.
    pub max_steps: Option<u32>,
    /// Audio and device seconds per day and per month (checked by the store at insert).
    pub budgets: crate::tenancy::Budgets,
    /// Days an output is kept before the janitor deletes it (`None`: until the job is deleted).
    pub retain_outputs_days: Option<u32>,
    /// Days a job's own inputs (its init clip) are kept after it ends (`None`: until deleted).
    pub retain_inputs_days: Option<u32>,
    /// Days a batch's manifests (results, and an uploaded one) are kept after it finished.
    pub retain_manifests_days: Option<u32>,
}

impl Limits {
    /// The rules that depend on the request alone: class, duration and steps.
    pub fn check_job(&self, job: &NewJob) -> Result<()> {
        if let Some(allowed) = &self.priorities {
            if !allowed.contains(&job.priority) {
                return Err(Error::exhausted(
                    names::PRIORITIES,
                    format!(
                        "priority {} is not allowed for this tenant (allowed: {})",
                        job.priority,
                        priorities_to_text(allowed)
                    ),
                ));
            }
        }
        if let Some(max) = self.max_duration_s {
            if job.spec.duration_s > max {
                return Err(Error::exhausted(
                    names::MAX_DURATION_S,
                    format!(
                        "duration {} s is over the tenant's limit of {max} s",
                        job.spec.duration_s
                    ),
                ));
            }
        }
        if let Some(max) = self.max_steps {
            if job.spec.steps > max {
                return Err(Error::exhausted(
                    names::MAX_STEPS,
                    format!(
                        "{} steps is over the tenant's limit of {max}",
                        job.spec.steps
                    ),
                ));
            }
        }
        Ok(())
    }

    /// For the Batches service: refuses a batch of more than `max_batch_items` items.
    pub fn check_batch_items(&self, items: usize) -> Result<()> {
        match self.max_batch_items {
            Some(max) if items > max as usize => Err(Error::exhausted(
                names::MAX_BATCH_ITEMS,
                format!("{items} items is over the tenant's limit of {max} per batch"),
            )),
            _ => Ok(()),
        }
    }

    /// The error the store returns when a submit would pass `max_jobs_in_flight`.
    pub fn in_flight_exhausted(tenant: &str, max: u32) -> Error {
        Error::exhausted_for(
            names::MAX_JOBS_IN_FLIGHT,
            format!("tenant {tenant:?} already has {max} jobs queued or running"),
            IN_FLIGHT_RETRY,
        )
    }
}

/// `interactive,batch` <-> the classes; the stored form of `Limits::priorities`.
pub fn priorities_to_text(p: &[Priority]) -> String {
    p.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
}

pub fn priorities_from_text(s: &str) -> Result<Vec<Priority>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<Priority>().map_err(|e| e.to_string()))
        .collect()
}

/// Token buckets for SubmitGeneration, one per tenant. They live in this coordinator process:
/// with N replicas behind a balancer a tenant gets up to N times its rate, which is the usual
/// trade for keeping the submit path free of a shared counter.
#[derive(Default)]
pub struct SubmitRate {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl SubmitRate {
    /// Takes one token from the tenant's bucket, or says which limit was hit.
    pub fn admit(&self, tenant: &str, limits: &Limits) -> Result<()> {
        let Some(rate) = limits.submits_per_second else {
            return Ok(());
        };
        let burst = f64::from(
            limits
                .submit_burst
                .unwrap_or_else(|| rate.ceil().max(1.0) as u32)
                .max(1),
        );
        let now = Instant::now();
        // A poisoned lock only means another submit panicked mid-update; the counts are
        // still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            // When the bucket next holds a whole token.
            let wait = Duration::from_secs_f64(((1.0 - b.tokens) / rate).clamp(0.001, 86_400.0));
            Err(Error::exhausted_for(
                names::SUBMITS_PER_SECOND,
                format!(
                    "over the tenant's rate of {rate} submits per second (burst {burst}); retry in {:.1} s",
                    wait.as_secs_f64()
                ),
                wait,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_refuses() {
        let limits = Limits {
            submits_per_second: Some(0.001),
            submit_burst: Some(2),
            ..Default::default()
        };
        let rate = SubmitRate::default();
        assert!(rate.admit("a", &limits).is_ok());
        assert!(rate.admit("a", &limits).is_ok());
        let err = rate.admit("a", &limits).expect_err("third submit");
        assert_eq!(err.grpc_code(), tonic::Code::ResourceExhausted);
        assert!(err.to_string().contains("submits_per_second"), "{err}");
        // A token comes back after 1000 s at this rate: the refusal says so.
        match &err {
            Error::ResourceExhausted {
                retry_after: Some(d),
                ..
            } => assert!((999.0..=1000.0).contains(&d.as_secs_f64()), "{d:?}"),
            other => panic!("no retry delay: {other:?}"),
        }
        let status = tonic::Status::from(err);
        assert!(crate::error::retry_delay(&status).is_some_and(|d| d.as_secs() >= 999));
        // Buckets are per tenant.
        assert!(rate.admit("b", &limits).is_ok());
        // No rate, no bucket.
        assert!(rate.admit("a", &Limits::default()).is_ok());
    }

    #[test]
    fn batch_items_and_priorities_parse_and_check() {
        let limits = Limits {
            max_batch_items: Some(10),
            ..Default::default()
        };
        assert!(limits.check_batch_items(10).is_ok());
        let err = limits.check_batch_items(11).expect_err("11 items");
        assert!(err.to_string().starts_with("max_batch_items: "), "{err}");
        assert_eq!(
            priorities_from_text("interactive, batch"),
            Ok(vec![Priority::Interactive, Priority::Batch])
        );
        assert!(priorities_from_text("urgent").is_err());
        assert_eq!(
            priorities_to_text(&[Priority::Standard, Priority::Batch]),
            "standard,batch"
        );
    }
}
