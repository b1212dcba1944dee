//! The worker's task loop (over any `TaskQueue`): consume stage tasks, run them on the engine, store checkpoints and
//! outputs, publish the result with a confirm, and only then ack. A message that cannot be
//! parsed is rejected to the dead-letter queue. SIGTERM (the `shutdown` watch) stops the intake;
//! the tasks in hand finish and are acked before the worker exits.
//!
//! Each task runs in its own tokio task, so the engine holds as many denoise chunks as the
//! worker has batch slots (continuous step batching) while finished chunks upload their
//! checkpoints and publish their results beside the step loop. Each kind is consumed from its
//! shared queue and this worker's own queue (chunk affinity), with prefetch = its slots. A
//! heartbeat every two seconds tells the coordinator the slots, the held jobs and draining.

mod lanes;
mod patience;
mod stages;
mod window;

pub use patience::DEFAULT_OUTAGE_BUDGET;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;
use tutti_shared::blob::BlobStore;
use tutti_shared::job::{Priority, TaskKind};
use tutti_shared::messages::{ControlMessage, Outcome, TaskMessage, WorkerEvent};
use tutti_shared::metrics::names;
use tutti_shared::taskqueue::{Consumer, Delivery, QueueError, QueueName, TaskQueue};
use uuid::Uuid;

use self::lanes::Lanes;
use self::stages::TaskError;
use crate::engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Closed(&'static str),
}

/// Jobs cancelled while this worker runs, with the flags of the tasks in hand.
#[derive(Default)]
struct Cancellations {
    cancelled: std::collections::HashSet<Uuid>,
    /// Usually one task per job; a redelivered duplicate may run beside the original.
    running: HashMap<Uuid, Vec<Arc<AtomicBool>>>,
}

pub struct Worker {
    pub name: String,
    /// RabbitMQ for the farm, the in-process queue in embedded mode.
    pub queue: Arc<dyn TaskQueue>,
    pub stages: Vec<TaskKind>,
    /// Vocode tasks held at once (denoise chunks held at once: the engine's `max_batch`).
    pub prefetch: u16,
    pub engine: Engine,
    pub blobs: Arc<dyn BlobStore>,
    /// How long a task in hand waits out an unreachable blob store before it fails.
    pub outage_budget: Duration,
}

/// How often a worker says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// How long a finished task's result waits for the broker to come back before the worker gives
/// up on it (the task is then redone: redelivered, or dispatched again when its lease runs out).
pub const RESULT_PATIENCE: Duration = Duration::from_secs(60);

impl Worker {
    /// Runs until `shutdown` flips to true, reconnecting with backoff when the broker goes away.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let cancels = Arc::new(Mutex::new(Cancellations::default()));
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            match Arc::clone(&this).session(&mut shutdown, &cancels).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, worker = %this.name, "broker connection lost, reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(worker = %this.name, "worker stopped");
    }

    /// Tasks of `kind` this worker runs at once.
    pub fn slots(&self, kind: TaskKind) -> usize {
        if !self.stages.contains(&kind) {
            return 0;
        }
        match kind {
            TaskKind::Denoise => self.engine.options().max_batch,
            TaskKind::Vocode => usize::from(self.prefetch.max(1)),
        }
    }

    /// Interactive tasks of `kind` it takes beyond its slots (its express lane).
    pub fn express(&self, kind: TaskKind) -> usize {
        if self.stages.contains(&kind) {
            self.engine.options().express
        } else {
            0
        }
    }

    fn heartbeat(&self, draining: bool, chunks_per_forward: f32) -> WorkerEvent {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        WorkerEvent::Heartbeat {
            worker: self.name.clone(),
            denoise_slots: count(self.slots(TaskKind::Denoise)),
            vocode_slots: count(self.slots(TaskKind::Vocode)),
            express_slots: count(self.engine.options().express),
            holds: self.engine.holds().jobs(),
            draining,
            device: self.engine.device_name(),
            chunks_per_forward,
            models: self.engine.models().to_vec(),
        }
    }

    /// One broker connection's worth of work. Returns Ok on shutdown.
    async fn session(
        self: Arc<Self>,
        shutdown: &mut watch::Receiver<bool>,
        cancels: &Arc<Mutex<Cancellations>>,
    ) -> Result<(), WorkerError> {
        let mut control = self.queue.control().await?;
        let cancels_ctl = Arc::clone(cancels);
        let mut control_task = tokio::spawn(async move {
            while let Some(msg) = control.next().await {
                let Ok(mut c) = cancels_ctl.lock() else {
                    continue;
                };
                match msg {
                    ControlMessage::Cancel { job_id } => {
                        c.cancelled.insert(job_id);
                        for flag in c.running.get(&job_id).into_iter().flatten() {
                            flag.store(true, Ordering::Relaxed);
                            tracing::info!(job_id = %job_id, "cancel received for a running task");
                        }
                    }
                    ControlMessage::Retry { job_id } => {
                        c.cancelled.remove(&job_id);
                    }
                }
            }
        });
        // Best effort: a lost heartbeat is followed by the next one.
        let beat = Arc::clone(&self);
        let beat_shutdown = shutdown.clone();
        let heartbeat_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            let mut fill = window::ForwardWindow::default();
            loop {
                tick.tick().await;
                let stats = beat.engine.stats();
                let cpf = fill.sample(
                    Instant::now(),
                    stats.forwards.load(Ordering::Relaxed),
                    stats.chunk_steps.load(Ordering::Relaxed),
                );
                let ev = beat.heartbeat(*beat_shutdown.borrow(), cpf);
                if let Ok(body) = serde_json::to_vec(&ev) {
                    let _ = beat
                        .queue
                        .publish_best_effort(QueueName::Results, &body)
                        .await;
                }
            }
        });
        // Stops every intake: on shutdown, or when one of them or the control stream fails.
        let (stop_tx, stop_rx) = watch::channel(*shutdown.borrow());
        let mut intakes = tokio::task::JoinSet::new();
        let mut outcome = Ok(());
        for kind in self.stages.clone() {
            let slots = self.slots(kind);
            let express = self.express(kind);
            let prefetch = u16::try_from(slots + express).unwrap_or(u16::MAX);
            let consumer = match self.queue.consume_worker(kind, prefetch, &self.name).await {
                Ok(c) => c,
                Err(e) => {
                    // Intakes already started drain what they took, then the session ends.
                    let _ = stop_tx.send(true);
                    outcome = Err(e.into());
                    break;
                }
            };
            intakes.spawn(Arc::clone(&self).intake(
                kind,
                consumer,
                Lanes::new(slots, express),
                stop_rx.clone(),
                Arc::clone(cancels),
            ));
        }
        tracing::info!(worker = %self.name, stages = ?self.stages, denoise_slots = self.slots(TaskKind::Denoise), "worker consuming");
        let mut control_open = true;
        loop {
            let failed = tokio::select! {
                r = intakes.join_next() => match r {
                    None => break,
                    Some(Ok(Ok(()))) => None,
                    Some(Ok(Err(e))) => Some(e),
                    Some(Err(_)) => Some(WorkerError::Closed("intake stopped")),
                },
                r = shutdown.changed(), if !*stop_tx.borrow() => {
                    if r.is_err() || *shutdown.borrow() {
                        let _ = stop_tx.send(true);
                    }
                    None
                }
                // Without control messages cancels would go unheard: start a new session.
                _ = &mut control_task, if control_open => {
                    control_open = false;
                    Some(WorkerError::Closed("control stream ended"))
                }
            };
            if let Some(e) = failed {
                // The other intakes stop too and drain; the session ends with the first error.
                let _ = stop_tx.send(true);
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        control_task.abort();
        heartbeat_task.abort();
        outcome
    }

    /// Takes tasks of one kind while a slot is free, each in its own task (interactive tasks
    /// also while an express slot is free); on shutdown or a broken consumer it stops taking,
    /// lets the tasks in hand finish (drain), and closes the consumer, which returns
    /// prefetched, untaken tasks to their queues.
    async fn intake(
        self: Arc<Self>,
        kind: TaskKind,
        mut deliveries: Box<dyn Consumer>,
        lanes: Lanes,
        mut shutdown: watch::Receiver<bool>,
        cancels: Arc<Mutex<Cancellations>>,
    ) -> Result<(), WorkerError> {
        let mut tasks = tokio::task::JoinSet::new();
        let outcome = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            // Read the next task only while some lane has room; its class picks the lane.
            let ready = tokio::select! {
                r = lanes.any_free() => r,
                Some(r) = tasks.join_next() => match r {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Err(WorkerError::Closed("task panicked")),
                },
                r = shutdown.changed() => {
                    if r.is_err() {
                        break Ok(());
                    }
                    continue;
                }
            };
            if ready.is_err() {
                break Err(WorkerError::Closed("slots closed"));
            }
            let next = tokio::select! {
                d = deliveries.next() => d,
                Some(r) = tasks.join_next() => match r {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Err(WorkerError::Closed("task panicked")),
                },
                r = shutdown.changed() => {
                    if r.is_err() {
                        break Ok(());
                    }
                    continue;
                }
            };
            let Some(delivery) = next else {
                break Err(WorkerError::Closed("task consumer closed"));
            };
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => break Err(e.into()),
            };
            // Parsed once: its class picks the lane, `handle` runs it (or dead-letters it).
            let task = serde_json::from_slice::<TaskMessage>(&delivery.data);
            let class = task.as_ref().map_or(Priority::Standard, |t| t.priority);
            let permit = match lanes.take(class).await {
                Ok(p) => p,
                Err(_) => break Err(WorkerError::Closed("slots closed")),
            };
            let this = Arc::clone(&self);
            let cancels = Arc::clone(&cancels);
            tasks.spawn(async move {
                let r = this.handle(kind, delivery, task, &cancels).await;
                drop(permit);
                r
            });
        };
        // Drain: the tasks in hand finish, publish their results and ack.
        let mut outcome = outcome;
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        deliveries.close().await;
        tracing::debug!(kind = kind.as_str(), "intake stopped");
        outcome
    }

    /// Runs one delivered task (parsed by the intake; one that did not parse is dead-lettered):
    /// execute, publish the result (confirmed), ack.
    async fn handle(
        &self,
        kind: TaskKind,
        delivery: Delivery,
        task: Result<TaskMessage, serde_json::Error>,
        cancels: &Arc<Mutex<Cancellations>>,
    ) -> Result<(), WorkerError> {
        let task = match task {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, bytes = delivery.data.len(), "unparseable task, dead-lettering");
                metrics::counter!(names::DEAD_LETTERS, "by" => "worker").increment(1);
                let size_bytes = delivery.data.len() as u64;
                delivery.nack(false).await?;
                // Its cause, for the operator view (best effort: the letter itself is kept).
                let note = WorkerEvent::DeadLetter {
                    worker: self.name.clone(),
                    queue: kind.as_str().to_string(),
                    error: e.to_string(),
                    size_bytes,
                };
                if let Ok(body) = serde_json::to_vec(&note) {
                    let _ = self
                        .queue
                        .publish_best_effort(QueueName::Results, &body)
                        .await;
                }
                return Ok(());
            }
        };
        let span = crate::trace::task_span(&task, &delivery.headers);
        let event = self.execute(&task, cancels).instrument(span.clone()).await;
        // Confirmed result first, ack second: a crash between the two redoes the task,
        // and the coordinator drops the duplicate result.
        let body = serde_json::to_vec(&event).map_err(QueueError::from)?;
        self.publish_result(&body).instrument(span).await?;
        delivery.ack().await?;
        Ok(())
    }

    /// Publishes a finished task's result, retrying while the broker is away (up to
    /// [`RESULT_PATIENCE`]): the work is done and its checkpoint or output stored, and a task
    /// whose result was dropped came back only when its lease ran out.
    async fn publish_result(&self, body: &[u8]) -> Result<(), QueueError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match self.queue.publish(QueueName::Results, body).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() + delay < RESULT_PATIENCE => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "result not published, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn execute(
        &self,
        task: &TaskMessage,
        cancels: &Arc<Mutex<Cancellations>>,
    ) -> WorkerEvent {
        let started = Instant::now();
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = cancels.lock() {
            if c.cancelled.contains(&task.job_id) {
                flag.store(true, Ordering::Relaxed);
            }
            c.running
                .entry(task.job_id)
                .or_default()
                .push(Arc::clone(&flag));
        }
        let result = match task.kind {
            TaskKind::Denoise => self.denoise(task, &flag).await,
            TaskKind::Vocode => self.vocode(task).await,
        };
        if let Ok(mut c) = cancels.lock() {
            if let Some(flags) = c.running.get_mut(&task.job_id) {
                flags.retain(|f| !Arc::ptr_eq(f, &flag));
                if flags.is_empty() {
                    c.running.remove(&task.job_id);
                }
            }
        }
        let outcome = match result {
            Ok(Some(outputs)) => Outcome::Done {
                millis: started.elapsed().as_millis() as u64,
                outputs,
                held: task.kind == TaskKind::Denoise
                    && self.engine.holds().step(task.job_id) == Some(task.to_step as usize),
            },
            Ok(None) => Outcome::Cancelled,
            Err(TaskError {
                code,
                message,
                retryable,
            }) => {
                tracing::warn!(code = code.as_str(), message = %message, "task failed");
                Outcome::Failed {
                    code,
                    message,
                    retryable,
                }
            }
        };
        let outcome_name = match &outcome {
            Outcome::Done { .. } => "done",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
        };
        let stage = task.kind.as_str();
        metrics::histogram!(names::STAGE_DURATION, "stage" => stage)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(names::WORKER_TASKS, "stage" => stage, "outcome" => outcome_name)
            .increment(1);
        tracing::info!(
            millis = started.elapsed().as_millis() as u64,
            outcome = outcome_name,
            "task finished"
        );
        WorkerEvent::Result {
            job_id: task.job_id,
            chunk: task.chunk,
            attempt: task.attempt,
            worker: self.name.clone(),
            outcome,
            priority: task.priority,
        }
    }
}
