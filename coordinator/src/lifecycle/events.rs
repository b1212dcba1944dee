//! The metrics that follow the job history: counters and histograms of the scheduler's own
//! doings (dispatches and their queue latency, failed attempts, stale results) are recorded by
//! the replica that writes the job event for them, so summing over replicas counts each once.

use tutti_shared::messages::Outcome;
use tutti_shared::metrics::names;

/// The name of an outcome in the history.
pub(crate) fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Done { .. } => "done",
        Outcome::Failed { .. } => "failed",
        Outcome::Cancelled => "cancelled",
    }
}

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

pub(crate) fn class(rank: i16) -> &'static str {
    match rank {
        0 => "interactive",
        1 => "standard",
        _ => "batch",
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
