//! One dispatch round over a store's transaction: read the fleet, the load and the backlog,
//! plan, then mark each picked task dispatched. The store supplies the SQL (`RoundTx`); the
//! decisions are the same for every store. Publishing is the dispatcher's: it sends the
//! round's messages and commits the transaction only once the broker has confirmed them all.

use std::time::Duration;

use async_trait::async_trait;
use tutti_shared::job::{JobSpec, Priority, TaskKind};
use tutti_shared::messages::TaskMessage;
use uuid::Uuid;

use super::fair::{FairClocks, ShareRow};
use super::fleet::{Busy, Fleet, WorkerState};
use super::plan::{plan, Candidate};
use super::Policy;
use crate::error::{Error, Result};

/// A pending, due task of an active job, with what dispatch needs to send it.
#[derive(Debug, Clone)]
pub struct PendingTask {
    pub job_id: Uuid,
    pub chunk: u32,
    pub kind: TaskKind,
    pub class: Priority,
    pub from_step: u32,
    pub to_step: u32,
    pub attempt: u32,
    pub tenant: String,
    pub spec: JobSpec,
    /// The worker that finished the job's previous chunk (chunk affinity).
    pub previous_worker: Option<String>,
}

impl PendingTask {
    fn message(&self) -> TaskMessage {
        TaskMessage {
            job_id: self.job_id,
            tenant: self.tenant.clone(),
            chunk: self.chunk,
            attempt: self.attempt,
            kind: self.kind,
            from_step: self.from_step,
            to_step: self.to_step,
            spec: self.spec.clone(),
            priority: self.class,
        }
    }
}

/// The reads and writes of a round, inside one store transaction.
#[async_trait]
pub trait RoundTx: Send {
    /// Every worker that ever sent a heartbeat; live when heard from within `timeout`.
    async fn workers(&mut self, timeout: Duration) -> Result<Vec<WorkerState>>;
    /// Dispatched tasks by worker, kind and class.
    async fn busy(&mut self) -> Result<Vec<Busy>>;
    /// Pending, due tasks of active jobs: at most `per_group` per (kind, class, tenant), each
    /// group oldest job first.
    async fn candidates(&mut self, per_group: u32) -> Result<Vec<PendingTask>>;
    async fn clocks(&mut self) -> Result<Vec<ShareRow>>;
    async fn save_clocks(&mut self, rows: &[ShareRow]) -> Result<()>;
    /// Marks the task dispatched (routed to a worker or not), starts its job and records the
    /// dispatch in its history; false when it is no longer pending (e.g. cancelled meanwhile).
    async fn mark_dispatched(
        &mut self,
        task: &PendingTask,
        routed_to: Option<&str>,
    ) -> Result<bool>;
    /// Records a `preempted` event, once per chunk.
    async fn mark_preempted(&mut self, task: &PendingTask) -> Result<()>;
    /// Commits the round (and then sends the change notices it collected).
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A task the round marked dispatched, to be published before the round commits.
#[derive(Debug)]
pub struct Outgoing {
    pub message: TaskMessage,
    /// `message` encoded.
    pub body: Vec<u8>,
    /// The worker that holds the job's latent, when the task is routed to it.
    pub routed_to: Option<String>,
}

/// Plans one round inside `tx`: marks the picked tasks dispatched and the preempted ones
/// preempted, saves the fair-share clocks, and returns the messages to publish.
pub async fn plan_round(tx: &mut dyn RoundTx, policy: &Policy) -> Result<Vec<Outgoing>> {
    let workers = tx.workers(policy.worker_timeout).await?;
    let busy = tx.busy().await?;
    let mut fleet = Fleet::new(workers, &busy, policy.max_in_flight);
    // Enough per group to fill any room; one at least, to see who waits (preemption).
    let per_group = TaskKind::ALL
        .iter()
        .map(|k| fleet.load(*k).room())
        .max()
        .unwrap_or(0)
        .max(1);
    let tasks = tx.candidates(per_group).await?;
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let candidates: Vec<Candidate> = tasks
        .iter()
        .map(|t| Candidate {
            kind: t.kind,
            class: t.class,
            tenant: t.tenant.clone(),
            resumes: t.chunk > 0,
        })
        .collect();
    let mut clocks = FairClocks::from_rows(tx.clocks().await?);
    let plan = plan(
        &candidates,
        |k| fleet.load(k),
        &mut clocks,
        &policy.weights,
        policy.batch_share,
    );
    for i in &plan.preempted {
        tx.mark_preempted(&tasks[*i]).await?;
    }
    let mut outgoing = Vec::with_capacity(plan.picks.len());
    for i in plan.picks {
        let task = &tasks[i];
        let routed = fleet.route(
            task.job_id,
            task.kind,
            task.class,
            task.previous_worker.as_deref(),
        );
        if !tx.mark_dispatched(task, routed.as_deref()).await? {
            continue;
        }
        let message = task.message();
        let body = serde_json::to_vec(&message)
            .map_err(|e| Error::Internal(format!("encoding a task: {e}")))?;
        outgoing.push(Outgoing {
            message,
            body,
            routed_to: routed,
        });
    }
    tx.save_clocks(&clocks.changed_rows()).await?;
    Ok(outgoing)
}
