//! Change notices fanned out in process: job changes for WatchJob streams, a wake-up for the
//! dispatcher. Postgres feeds it from `LISTEN` (so every replica hears every commit); SQLite
//! feeds it right after its own commits (one process holds the database).

use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

/// One change: the job and what happened (`queued`, `started`, `step`, `stage`, `retry`,
/// `succeeded`, `failed`, `cancelled`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobChange {
    pub job: Uuid,
    pub what: String,
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

    pub fn job_changed(&self, job: Uuid, what: &str) {
        let _ = self.jobs.send(JobChange {
            job,
            what: what.to_string(),
        });
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
    jobs: Vec<(Uuid, &'static str)>,
    tasks: bool,
}

impl Pending {
    pub fn job(&mut self, job: Uuid, what: &'static str) {
        self.jobs.push((job, what));
    }
    pub fn tasks(&mut self) {
        self.tasks = true;
    }
    /// The job changes and whether tasks changed, for a store that sends them itself.
    pub fn into_parts(self) -> (Vec<(Uuid, &'static str)>, bool) {
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
