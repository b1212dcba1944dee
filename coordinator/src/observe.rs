//! Gauges read from the job store every few seconds: jobs by state and class, the backlog per
//! class and queue, tasks in flight. Jobs that ended are exported as counters set to the
//! store's own count, which only grows, so every replica reports the same value.
//!
//! Counters and histograms of the scheduler's own doings (dispatches and their queue latency,
//! failed attempts, stale results) are recorded by the replica that writes the job event for
//! them (`TaskEvent`), so summing over replicas counts each once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tutti_shared::metrics::names;

use crate::error::Error;
use crate::store::JobStore;

/// A job event that a metric follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskEvent {
    Dispatched,
    /// A failed attempt (retried, or failing its job), with its error code.
    Failed {
        code: String,
    },
    StaleResult,
}

impl TaskEvent {
    /// The metric event behind a job event (`kind` and `detail` as stored), if any.
    pub(crate) fn of(kind: &str, detail: &serde_json::Value) -> Option<TaskEvent> {
        match kind {
            "dispatched" => Some(TaskEvent::Dispatched),
            "stale_result" => Some(TaskEvent::StaleResult),
            "retry" | "failed" => Some(TaskEvent::Failed {
                code: detail.get("code")?.as_str()?.to_string(),
            }),
            _ => None,
        }
    }
}

/// Records `event` of a task of kind `stage` and priority `rank` that came due `waited` seconds
/// ago.
pub(crate) fn task_event(event: Option<TaskEvent>, stage: &str, rank: i16, waited: f64) {
    let stage = stage.to_string();
    match event {
        Some(TaskEvent::Dispatched) => {
            let labels = [("queue", stage), ("class", class(rank).to_string())];
            metrics::counter!(names::DISPATCHED, &labels).increment(1);
            metrics::histogram!(names::QUEUE_LATENCY, &labels).record(waited.max(0.0));
        }
        Some(TaskEvent::Failed { code }) => {
            metrics::counter!(names::TASK_RETRIES, "stage" => stage, "code" => code).increment(1);
        }
        Some(TaskEvent::StaleResult) => {
            metrics::counter!(names::STALE_RESULTS, "stage" => stage).increment(1);
        }
        None => {}
    }
}

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

pub(crate) fn class(rank: i16) -> &'static str {
    match rank {
        0 => "interactive",
        1 => "standard",
        _ => "batch",
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
            for rank in 0..3 {
                let n = stats
                    .jobs
                    .iter()
                    .filter(|(s, r, _)| s == state && *r == rank)
                    .map(|(_, _, n)| *n)
                    .sum::<i64>();
                let labels = [("state", state), ("class", class(rank))];
                metrics::gauge!(names::JOBS, &labels).set(n as f64);
                if matches!(state, "succeeded" | "failed" | "cancelled") {
                    metrics::counter!(names::JOBS_FINISHED, &labels).absolute(n.max(0) as u64);
                }
            }
        }
        for kind in ["denoise", "vocode"] {
            for rank in 0..3 {
                let n = stats
                    .backlog
                    .iter()
                    .filter(|(r, k, _)| k == kind && *r == rank)
                    .map(|(_, _, n)| *n)
                    .sum::<i64>();
                metrics::gauge!(names::BACKLOG, "class" => class(rank), "queue" => kind)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_events_map_to_the_metrics_that_follow_them() {
        let none = serde_json::json!({});
        assert_eq!(
            TaskEvent::of("dispatched", &none),
            Some(TaskEvent::Dispatched)
        );
        assert_eq!(
            TaskEvent::of("stale_result", &none),
            Some(TaskEvent::StaleResult)
        );
        let failed = serde_json::json!({ "code": "OUTPUT_WRITE", "message": "s3 down" });
        for kind in ["retry", "failed"] {
            assert_eq!(
                TaskEvent::of(kind, &failed),
                Some(TaskEvent::Failed {
                    code: "OUTPUT_WRITE".into()
                })
            );
        }
        // A job that failed without a task's error code, and events no metric follows.
        assert_eq!(TaskEvent::of("failed", &none), None);
        assert_eq!(TaskEvent::of("chunk_done", &failed), None);
    }
}
