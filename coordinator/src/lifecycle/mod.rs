//! The life of a job after it is accepted, written once for every store: results fenced by
//! (job, chunk, attempt), the advance from one task to the next, retries with backoff or
//! failure, lease expiry, lost workers and cancels. The decisions are pure functions of rows
//! (`rules`); `apply` runs them inside one transaction of a store, through the reads and writes
//! that each SQL dialect implements (`LifecycleTx`), the way `sched::plan_round` runs dispatch
//! over a `RoundTx`.

mod apply;
pub mod deleted;
pub mod events;
pub mod rules;
mod tx;

use std::time::Duration;

use tutti_shared::messages::ErrorCode;
use uuid::Uuid;

pub use apply::{
    cancel, delete, delete_batch, expire_deadlines, expire_leases, reclaim_lost, record_progress,
    record_result, retry, retry_batch, Recorded, Retried,
};
pub use tx::{JobHead, LifecycleTx, LostTask, TaskRow};

use crate::error::{Error, Result};

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per task before its job fails.
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(10))
    }

    /// The same bound with no backoff (a task whose worker went away, not one that failed).
    pub fn at_once(self) -> Self {
        Self {
            backoff: Duration::ZERO,
            ..self
        }
    }
}

/// A worker's result for one attempt of one task.
#[derive(Debug, Clone, Copy)]
pub struct TaskRef<'a> {
    pub job: Uuid,
    pub chunk: u32,
    pub attempt: u32,
    pub worker: &'a str,
}

/// Why an attempt ended without a result.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub code: ErrorCode,
    pub message: &'a str,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

/// Output keys are derived from the tenant and job; anything else is a worker bug.
pub(crate) fn check_output_key(key: &str, tenant: &str, job: Uuid) -> Result<()> {
    if key.starts_with(&format!("outputs/{tenant}/{job}/")) {
        Ok(())
    } else {
        Err(Error::Internal(format!("output key {key} outside the job")))
    }
}
