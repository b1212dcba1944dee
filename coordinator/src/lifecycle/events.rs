//! The job-event vocabulary: every line of a job's history is a `JobEvent`, and this file is
//! the only place its names are spelled. From one event follow its history row (`kind`,
//! `detail`), the metric it feeds (`observe`) and the change notice it sends (`notice`); the
//! notice in turn gives the `WatchJob` event. Nothing is parsed back from stored text.
//!
//! The metrics are recorded by the replica that writes the event, so summing over replicas
//! counts each once. Counted when written: a transaction that rolls back afterwards (a database
//! error) over-counts.

use std::time::Duration;

use tutti_shared::job::{JobState, TaskKind, TaskState};
use tutti_shared::messages::{ErrorCode, Outcome};
use tutti_shared::metrics::names;
use uuid::Uuid;

use crate::notify::Change;
use crate::sched::PendingTask;
use crate::webhooks::WebhookEvent;

/// The name of a job event as stored in `job_events.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Queued,
    Dispatched,
    Preempted,
    ChunkDone,
    StaleResult,
    Retry,
    Failed,
    Succeeded,
    Cancelled,
    Retried,
    Requeued,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Dispatched => "dispatched",
            EventKind::Preempted => "preempted",
            EventKind::ChunkDone => "chunk_done",
            EventKind::StaleResult => "stale_result",
            EventKind::Retry => "retry",
            EventKind::Failed => "failed",
            EventKind::Succeeded => "succeeded",
            EventKind::Cancelled => "cancelled",
            EventKind::Retried => "retried",
            EventKind::Requeued => "requeued",
            EventKind::Deleted => "deleted",
        }
    }
}

/// One line of a job's history, with what its metric and notice need.
#[derive(Debug, Clone)]
pub enum JobEvent<'a> {
    /// Accepted (alone, or as an item of `batch`).
    Queued {
        batch: Option<Uuid>,
    },
    /// A task went out, `waited` seconds after it came due.
    Dispatched {
        task: &'a PendingTask,
        routed_to: Option<&'a str>,
        waited: f64,
    },
    /// A dispatched task taken back at its chunk boundary for more urgent work.
    Preempted {
        stage: TaskKind,
    },
    /// An attempt finished; `next` is the task it queued (none after the last stage).
    ChunkDone {
        stage: TaskKind,
        worker: &'a str,
        millis: u64,
        to_step: u32,
        next: Option<TaskKind>,
    },
    /// A result for an attempt that is no longer the live one.
    StaleResult {
        stage: TaskKind,
        outcome: &'a Outcome,
        worker: &'a str,
        task_state: TaskState,
        current_attempt: u32,
    },
    /// A failed attempt that will run again after `delay`.
    Retry {
        stage: TaskKind,
        code: ErrorCode,
        message: &'a str,
        delay: Duration,
    },
    /// A failed attempt that failed its job.
    Failed {
        stage: TaskKind,
        code: ErrorCode,
        message: &'a str,
    },
    Succeeded,
    /// Cancelled (with its batch, when the batch was cancelled; `deadline` when its deadline
    /// passed).
    Cancelled {
        batch: Option<Uuid>,
        deadline: bool,
    },
    /// A retry after the fact: back to queued from `from_chunk`.
    Retried {
        from: JobState,
        from_chunk: u32,
        rewound: bool,
    },
    /// A dispatched task back to pending because the coordinator restarted.
    RequeuedOnRestart,
    /// Deleted by its tenant: `objects` blob objects removed, `cancelled` when it had not
    /// ended.
    Deleted {
        objects: usize,
        cancelled: bool,
    },
}

impl JobEvent<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            JobEvent::Queued { .. } => EventKind::Queued,
            JobEvent::Dispatched { .. } => EventKind::Dispatched,
            JobEvent::Preempted { .. } => EventKind::Preempted,
            JobEvent::ChunkDone { .. } => EventKind::ChunkDone,
            JobEvent::StaleResult { .. } => EventKind::StaleResult,
            JobEvent::Retry { .. } => EventKind::Retry,
            JobEvent::Failed { .. } => EventKind::Failed,
            JobEvent::Succeeded => EventKind::Succeeded,
            JobEvent::Cancelled { .. } => EventKind::Cancelled,
            JobEvent::Retried { .. } => EventKind::Retried,
            JobEvent::RequeuedOnRestart => EventKind::Requeued,
            JobEvent::Deleted { .. } => EventKind::Deleted,
        }
    }

    /// The history's detail column.
    pub fn detail(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            JobEvent::Queued { batch: Some(b) }
            | JobEvent::Cancelled {
                batch: Some(b),
                deadline: false,
            } => {
                json!({ "batch": b.to_string() })
            }
            JobEvent::Cancelled { deadline: true, .. } => {
                json!({ "reason": ErrorCode::DeadlineExceeded.as_str() })
            }
            JobEvent::Queued { batch: None }
            | JobEvent::Cancelled {
                batch: None,
                deadline: false,
            }
            | JobEvent::Succeeded => json!({}),
            JobEvent::Dispatched {
                task, routed_to, ..
            } => {
                let mut detail = json!({
                    "kind": task.kind.as_str(),
                    "from_step": task.from_step,
                    "to_step": task.to_step,
                    "class": task.class.as_str(),
                });
                if let Some(w) = routed_to {
                    detail["routed_to"] = serde_json::Value::from(*w);
                }
                detail
            }
            JobEvent::Preempted { stage } => json!({ "kind": stage.as_str() }),
            JobEvent::ChunkDone {
                stage,
                worker,
                millis,
                to_step,
                ..
            } => json!({
                "kind": stage.as_str(),
                "worker": worker,
                "millis": millis,
                "to_step": to_step,
            }),
            JobEvent::StaleResult {
                outcome,
                worker,
                task_state,
                current_attempt,
                ..
            } => json!({
                "outcome": outcome_name(outcome),
                "worker": worker,
                "task_state": task_state.as_str(),
                "current_attempt": current_attempt,
            }),
            JobEvent::Retry {
                code,
                message,
                delay,
                ..
            } => json!({
                "code": code.as_str(),
                "message": message,
                "delay_ms": delay.as_millis() as u64,
            }),
            JobEvent::Failed { code, message, .. } => {
                json!({ "code": code.as_str(), "message": message })
            }
            JobEvent::Retried {
                from,
                from_chunk,
                rewound,
            } => json!({
                "from": from.as_str(),
                "from_chunk": from_chunk,
                "rewound": rewound,
            }),
            JobEvent::RequeuedOnRestart => json!({ "reason": "restart" }),
            JobEvent::Deleted { objects, cancelled } => {
                json!({ "objects": objects, "cancelled": cancelled })
            }
        }
    }

    /// The change notice this event sends to watchers (and webhooks), if any.
    pub fn notice(&self) -> Option<Change> {
        match self {
            JobEvent::Queued { .. } | JobEvent::Retried { .. } => Some(Change::Queued),
            JobEvent::Dispatched { task, .. } if task.chunk == 0 && task.attempt == 1 => {
                Some(Change::Started)
            }
            JobEvent::Dispatched { .. } => Some(Change::Stage),
            JobEvent::ChunkDone { next, .. } => match next {
                Some(TaskKind::Denoise) => Some(Change::Step),
                Some(TaskKind::Vocode) => Some(Change::Stage),
                None => None,
            },
            JobEvent::Retry { .. } => Some(Change::Retry),
            JobEvent::Failed { .. } => Some(Change::Failed),
            JobEvent::Succeeded => Some(Change::Succeeded),
            JobEvent::Cancelled { .. } => Some(Change::Cancelled),
            JobEvent::Preempted { .. } | JobEvent::StaleResult { .. } => None,
            JobEvent::RequeuedOnRestart | JobEvent::Deleted { .. } => None,
        }
    }

    /// The webhooks this event sends (through its notice), with what their `data` adds to
    /// the job's id: a failure's error, a deadline's cancel reason.
    pub fn webhooks(&self) -> (&'static [WebhookEvent], Option<serde_json::Value>) {
        let hooks = match self {
            // A batch's items report neither their queueing nor the batch's cancel one by one
            // (the batch reports its end).
            JobEvent::Queued { batch: Some(_) } | JobEvent::Cancelled { batch: Some(_), .. } => {
                &[][..]
            }
            _ => self.notice().map_or(&[][..], WebhookEvent::of_change),
        };
        let data = match self {
            JobEvent::Failed { code, message, .. } => Some(serde_json::json!({
                "error": { "code": code.as_str(), "message": message }
            })),
            JobEvent::Cancelled { deadline: true, .. } => Some(self.detail()),
            _ => None,
        };
        (hooks, data)
    }

    /// Records the metric that follows this event: dispatches (with their wait in the backlog,
    /// from the task coming due), failed attempts and stale results.
    pub fn observe(&self) {
        match self {
            JobEvent::Dispatched { task, waited, .. } => {
                let labels = [
                    ("queue", task.kind.as_str()),
                    ("class", task.class.as_str()),
                ];
                metrics::counter!(names::DISPATCHED, &labels).increment(1);
                metrics::histogram!(names::QUEUE_LATENCY, &labels).record(waited.max(0.0));
            }
            JobEvent::Retry { stage, code, .. } | JobEvent::Failed { stage, code, .. } => {
                metrics::counter!(names::TASK_RETRIES, "stage" => stage.as_str(), "code" => code.as_str())
                    .increment(1);
            }
            JobEvent::StaleResult { stage, .. } => {
                metrics::counter!(names::STALE_RESULTS, "stage" => stage.as_str()).increment(1);
            }
            _ => {}
        }
    }
}

/// The name of an outcome in the history.
fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Done { .. } => "done",
        Outcome::Failed { .. } => "failed",
        Outcome::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_rows_and_notices() {
        let failed = JobEvent::Failed {
            stage: TaskKind::Vocode,
            code: ErrorCode::OutputWrite,
            message: "s3 down",
        };
        assert_eq!(failed.kind().as_str(), "failed");
        assert_eq!(
            failed.detail(),
            serde_json::json!({ "code": "OUTPUT_WRITE", "message": "s3 down" })
        );
        assert_eq!(failed.notice(), Some(Change::Failed));
        let done = |next| JobEvent::ChunkDone {
            stage: TaskKind::Denoise,
            worker: "w",
            millis: 5,
            to_step: 4,
            next,
        };
        assert_eq!(done(Some(TaskKind::Denoise)).notice(), Some(Change::Step));
        assert_eq!(done(Some(TaskKind::Vocode)).notice(), Some(Change::Stage));
        assert_eq!(done(None).notice(), None);
        let batch = Uuid::nil();
        assert_eq!(
            JobEvent::Queued { batch: Some(batch) }.detail(),
            serde_json::json!({ "batch": batch.to_string() })
        );
        assert_eq!(JobEvent::RequeuedOnRestart.notice(), None);
    }
}
