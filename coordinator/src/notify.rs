//! Change notices fanned out in process: job changes for WatchJob streams, a wake-up for the
//! dispatcher. Postgres feeds it from `LISTEN` (so every replica hears every commit); SQLite
//! feeds it right after its own commits (one process holds the database).

use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

/// What changed about a job, as watchers hear it (derived from its `JobEvent`, or a step of
/// progress). The text is the Postgres `NOTIFY` payload's second word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Queued,
    Started,
    Step,
    Stage,
    Retry,
    Succeeded,
    Failed,
    Cancelled,
}

impl Change {
    const ALL: [Change; 8] = [
        Change::Queued,
        Change::Started,
        Change::Step,
        Change::Stage,
        Change::Retry,
        Change::Succeeded,
        Change::Failed,
        Change::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Queued => "queued",
            Change::Started => "started",
            Change::Step => "step",
            Change::Stage => "stage",
            Change::Retry => "retry",
            Change::Succeeded => "succeeded",
            Change::Failed => "failed",
            Change::Cancelled => "cancelled",
        }
    }

    /// The change a `NOTIFY` payload names (the inverse of `as_str`, for the wire only).
    pub fn from_wire(s: &str) -> Option<Change> {
        Change::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One change: the job and what happened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobChange {
    pub job: Uuid,
    pub what: Change,
}

pub struct Notifier {
    jobs: broadcast::Sender<JobChange>,
    tasks: Notify,
}

impl Default for Notifier {
    fn default() -> Self {
        Self {
            jobs: broadcast::channel(4096).0,
            tasks: Notify::new(),
        }
    }
}

impl Notifier {
    pub fn subscribe(&self) -> broadcast::Receiver<JobChange> {
        self.jobs.subscribe()
    }

    pub fn job_changed(&self, job: Uuid, what: Change) {
        let _ = self.jobs.send(JobChange { job, what });
    }

    pub fn tasks_changed(&self) {
        // A stored permit wakes the next wait even when nobody waits right now.
        self.tasks.notify_one();
    }

    /// Waits for a task change or `timeout`, whichever comes first.
    pub async fn wait_for_tasks(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.tasks.notified()).await;
    }
}

/// Notices gathered inside a transaction and sent once it commits.
#[derive(Default)]
pub struct Pending {
    jobs: Vec<(Uuid, Change)>,
    tasks: bool,
}

impl Pending {
    pub fn job(&mut self, job: Uuid, what: Change) {
        self.jobs.push((job, what));
    }
    pub fn tasks(&mut self) {
        self.tasks = true;
    }
    /// The job changes and whether tasks changed, for a store that sends them itself.
    pub fn into_parts(self) -> (Vec<(Uuid, Change)>, bool) {
        (self.jobs, self.tasks)
    }
    pub fn send(self, n: &Notifier) {
        for (job, what) in self.jobs {
            n.job_changed(job, what);
        }
        if self.tasks {
            n.tasks_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_cross_the_wire_and_back() {
        for c in Change::ALL {
            assert_eq!(Change::from_wire(c.as_str()), Some(c));
        }
        assert_eq!(Change::from_wire("poll"), None);
    }
}
