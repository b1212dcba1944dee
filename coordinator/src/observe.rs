//! Gauges read from the job store every few seconds: jobs by state and class, the backlog per
//! class and queue, tasks in flight. Jobs that ended are exported as counters set to the
//! store's own count, which only grows, so every replica reports the same value.
//!
//! Counters and histograms of the scheduler's own doings follow the job history
//! (`lifecycle::events`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tutti_shared::job::Priority;
use tutti_shared::metrics::names;

use crate::error::Error;
use crate::store::JobStore;

/// Puts the error and anomaly counters on `/metrics` at 0 from the start: `increase()` and
/// `rate()` then see the first one, and dashboards show a quiet farm as 0 rather than no data.
pub(crate) fn register_counters() {
    metrics::counter!(names::POSTGRES_ERRORS).increment(0);
    metrics::counter!(names::DEAD_LETTERS, "by" => "coordinator").increment(0);
    for stage in ["denoise", "vocode"] {
        metrics::counter!(names::STALE_RESULTS, "stage" => stage).increment(0);
    }
    for op in ["get", "put", "presign"] {
        metrics::counter!(names::S3_ERRORS, "op" => op).increment(0);
    }
}

/// Counts an error of the coordinator's loops against its dependency.
pub(crate) fn count_error(e: &Error) {
    if matches!(e, Error::Database(_) | Error::Migrate(_)) {
        metrics::counter!(names::POSTGRES_ERRORS).increment(1);
    }
}

pub(crate) async fn refresh_gauges(store: Arc<dyn JobStore>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => continue,
        }
        let stats = match store.stats().await {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!(names::POSTGRES_ERRORS).increment(1);
                tracing::warn!(error = %e, "reading job counts for metrics");
                continue;
            }
        };
        for state in ["queued", "running", "succeeded", "failed", "cancelled"] {
            for class in Priority::ALL {
                let rank = class.rank();
                let n = stats
                    .jobs
                    .iter()
                    .filter(|(s, r, _)| s == state && *r == rank)
                    .map(|(_, _, n)| *n)
                    .sum::<i64>();
                let labels = [("state", state), ("class", class.as_str())];
                metrics::gauge!(names::JOBS, &labels).set(n as f64);
                if matches!(state, "succeeded" | "failed" | "cancelled") {
                    metrics::counter!(names::JOBS_FINISHED, &labels).absolute(n.max(0) as u64);
                }
            }
        }
        for kind in ["denoise", "vocode"] {
            for class in Priority::ALL {
                let rank = class.rank();
                let n = stats
                    .backlog
                    .iter()
                    .filter(|(r, k, _)| k == kind && *r == rank)
                    .map(|(_, _, n)| *n)
                    .sum::<i64>();
                metrics::gauge!(names::BACKLOG, "class" => class.as_str(), "queue" => kind)
                    .set(n as f64);
            }
            let n = stats
                .in_flight
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, n)| *n)
                .sum::<i64>();
            metrics::gauge!(names::IN_FLIGHT, "queue" => kind).set(n as f64);
        }
    }
}
