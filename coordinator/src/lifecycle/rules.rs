//! The rules of a job after dispatch, as pure functions of what the rows say: whether a result
//! counts (the fence), what comes after a finished chunk, and whether a failed attempt is
//! retried or fails its job.

use std::time::Duration;

use tutti_shared::job::{chunk_ranges, TaskKind, TaskState};

use super::{RetryPolicy, TaskRow};

/// Whether a worker's result is the one the task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The task is dispatched and this is its current attempt.
    Live,
    /// An older attempt, a duplicate, or a task that already ended: recorded and dropped.
    Stale,
}

/// Results are fenced by (job, chunk, attempt): only the current attempt of a dispatched task
/// moves the job.
pub fn fence(task: &TaskRow, attempt: u32) -> Fence {
    if task.state == TaskState::Dispatched && task.attempt == attempt {
        Fence::Live
    } else {
        Fence::Stale
    }
}

/// The task that follows a finished denoise chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextTask {
    pub chunk: u32,
    pub kind: TaskKind,
    pub from_step: u32,
    pub to_step: u32,
}

/// After denoise chunk `chunk` of a job of `steps_total` steps in chunks of `chunk_steps`: the
/// next chunk, or the vocode once the last one is done.
pub fn after_denoise(chunk: u32, steps_total: u32, chunk_steps: u32) -> NextTask {
    let next = chunk + 1;
    match chunk_ranges(steps_total, chunk_steps).get(next as usize) {
        Some(&(from_step, to_step)) => NextTask {
            chunk: next,
            kind: TaskKind::Denoise,
            from_step,
            to_step,
        },
        None => NextTask {
            chunk: next,
            kind: TaskKind::Vocode,
            from_step: steps_total,
            to_step: steps_total,
        },
    }
}

/// What becomes of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to the backlog as the next attempt, due after `delay`.
    Retry { delay: Duration },
    /// The task fails, and its job with the task's error.
    Fail,
}

/// A failed attempt `attempt` is retried with exponential backoff while attempts remain and
/// a retry can fix the error; otherwise the job fails with the cause.
pub fn after_failure(attempt: u32, retryable: bool, policy: RetryPolicy) -> AfterFailure {
    if retryable && attempt < policy.max_attempts {
        AfterFailure::Retry {
            delay: policy.delay(attempt),
        }
    } else {
        AfterFailure::Fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState, attempt: u32) -> TaskRow {
        TaskRow {
            kind: TaskKind::Denoise,
            state,
            attempt,
            to_step: 10,
        }
    }

    #[test]
    fn only_the_current_attempt_of_a_dispatched_task_counts() {
        assert_eq!(fence(&task(TaskState::Dispatched, 2), 2), Fence::Live);
        assert_eq!(fence(&task(TaskState::Dispatched, 2), 1), Fence::Stale);
        assert_eq!(fence(&task(TaskState::Done, 2), 2), Fence::Stale);
        assert_eq!(fence(&task(TaskState::Pending, 3), 3), Fence::Stale);
        assert_eq!(fence(&task(TaskState::Cancelled, 1), 1), Fence::Stale);
    }

    #[test]
    fn chunks_advance_to_the_vocode() {
        let next = after_denoise(0, 25, 10);
        assert_eq!(
            (next.chunk, next.kind, next.from_step, next.to_step),
            (1, TaskKind::Denoise, 10, 20)
        );
        let next = after_denoise(1, 25, 10);
        assert_eq!(
            (next.kind, next.from_step, next.to_step),
            (TaskKind::Denoise, 20, 25)
        );
        let next = after_denoise(2, 25, 10);
        assert_eq!(
            (next.chunk, next.kind, next.from_step, next.to_step),
            (3, TaskKind::Vocode, 25, 25)
        );
    }

    #[test]
    fn failures_retry_with_backoff_up_to_the_bound() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(100),
        };
        assert_eq!(
            after_failure(1, true, policy),
            AfterFailure::Retry {
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(
            after_failure(2, true, policy),
            AfterFailure::Retry {
                delay: Duration::from_millis(200)
            }
        );
        assert_eq!(after_failure(3, true, policy), AfterFailure::Fail);
        assert_eq!(after_failure(1, false, policy), AfterFailure::Fail);
    }
}
