//! The worker's task loop (over any `TaskQueue`): consume stage tasks, run them on the engine, store checkpoints and
//! outputs, publish the result with a confirm, and only then ack. A message that cannot be
//! parsed is rejected to the dead-letter queue. SIGTERM (the `shutdown` watch) stops the intake;
//! the task in hand finishes and is acked before the worker exits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use tutti_shared::audio;
use tutti_shared::blob::BlobStore;
use tutti_shared::job::{checkpoint_key, output_key, AudioFormat, TaskKind};
use tutti_shared::messages::{ControlMessage, Outcome, OutputInfo, TaskMessage, WorkerEvent};
use tutti_shared::metrics::names;
use tutti_shared::taskqueue::{QueueError, QueueName, TaskQueue};
use uuid::Uuid;

use crate::engine::{DenoiseOutcome, Engine, EngineError};

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
    running: HashMap<Uuid, Arc<AtomicBool>>,
}

pub struct Worker {
    pub name: String,
    /// RabbitMQ for the farm, the in-process queue in embedded mode.
    pub queue: Arc<dyn TaskQueue>,
    pub stages: Vec<TaskKind>,
    pub prefetch: u16,
    pub engine: Engine,
    pub blobs: Arc<dyn BlobStore>,
}

impl Worker {
    /// Runs until `shutdown` flips to true, reconnecting with backoff when the broker goes away.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let cancels = Arc::new(Mutex::new(Cancellations::default()));
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            match self.session(&mut shutdown, &cancels).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, worker = %self.name, "broker connection lost, reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(worker = %self.name, "worker stopped");
    }

    /// One broker connection's worth of work. Returns Ok on shutdown.
    async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        cancels: &Arc<Mutex<Cancellations>>,
    ) -> Result<(), WorkerError> {
        let mut control = self.queue.control().await?;
        let cancels_ctl = Arc::clone(cancels);
        let mut control_task = tokio::spawn(async move {
            while let Some(ControlMessage::Cancel { job_id }) = control.next().await {
                if let Ok(mut c) = cancels_ctl.lock() {
                    c.cancelled.insert(job_id);
                    if let Some(flag) = c.running.get(&job_id) {
                        flag.store(true, Ordering::Relaxed);
                        tracing::info!(job_id = %job_id, "cancel received for a running task");
                    }
                }
            }
        });
        let queues: Vec<QueueName> = self.stages.iter().map(|k| QueueName::Task(*k)).collect();
        let mut deliveries = self
            .queue
            .consume(&queues, self.prefetch, &self.name)
            .await?;
        tracing::info!(worker = %self.name, stages = ?self.stages, "worker consuming");

        let outcome = loop {
            let next = tokio::select! {
                d = deliveries.next() => d,
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break Ok(()); } else { continue; }
                }
                // Without control messages cancels would go unheard: start a new session.
                _ = &mut control_task => break Err(WorkerError::Closed("control stream ended")),
            };
            let Some(delivery) = next else {
                break Err(WorkerError::Closed("task consumer closed"));
            };
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => break Err(e.into()),
            };
            let task: TaskMessage = match serde_json::from_slice(&delivery.data) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, bytes = delivery.data.len(), "unparseable task, dead-lettering");
                    metrics::counter!(names::DEAD_LETTERS, "by" => "worker").increment(1);
                    delivery.nack(false).await?;
                    continue;
                }
            };
            let span = crate::trace::task_span(&task, &delivery.headers);
            let event = self.execute(&task, cancels).instrument(span.clone()).await;
            // Confirmed result first, ack second: a crash between the two redoes the task,
            // and the coordinator drops the duplicate result.
            let body = serde_json::to_vec(&event).map_err(QueueError::from)?;
            self.queue
                .publish(QueueName::Results, &body)
                .instrument(span)
                .await?;
            delivery.ack().await?;
        };
        control_task.abort();
        // Closing returns prefetched, unacked tasks to their queues.
        deliveries.close().await;
        outcome
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
            c.running.insert(task.job_id, Arc::clone(&flag));
        }
        let result = match task.kind {
            TaskKind::Denoise => self.denoise(task, &flag).await,
            TaskKind::Vocode => self.vocode(task).await,
        };
        if let Ok(mut c) = cancels.lock() {
            c.running.remove(&task.job_id);
        }
        let outcome = match result {
            Ok(Some(outputs)) => Outcome::Done {
                millis: started.elapsed().as_millis() as u64,
                outputs,
            },
            Ok(None) => Outcome::Cancelled,
            Err(TaskError {
                code,
                message,
                retryable,
            }) => {
                tracing::warn!(code, message = %message, "task failed");
                Outcome::Failed {
                    code: code.to_string(),
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
        if task.kind == TaskKind::Denoise && outcome_name == "done" {
            metrics::counter!(names::STEPS).increment(u64::from(task.to_step - task.from_step));
        }
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
        }
    }

    /// Returns `Ok(None)` when cancelled.
    async fn denoise(
        &self,
        task: &TaskMessage,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Option<Vec<OutputInfo>>, TaskError> {
        let checkpoint = if task.from_step == 0 {
            None
        } else {
            Some(self.checkpoint(task).await?)
        };
        // Progress goes out best effort (no confirm wait), at most every 200 ms and at the end.
        let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
        let queue = Arc::clone(&self.queue);
        let (job_id, chunk, attempt, to_step) =
            (task.job_id, task.chunk, task.attempt, task.to_step);
        let worker = self.name.clone();
        let progress = tokio::spawn(async move {
            let mut last = Instant::now() - Duration::from_secs(1);
            while let Some(done) = rx.recv().await {
                if last.elapsed() < Duration::from_millis(200) && done as u32 != to_step {
                    continue;
                }
                last = Instant::now();
                let ev = WorkerEvent::Progress {
                    job_id,
                    chunk,
                    attempt,
                    worker: worker.clone(),
                    steps_done: done as u32,
                };
                if let Ok(body) = serde_json::to_vec(&ev) {
                    let _ = queue.publish_best_effort(QueueName::Results, &body).await;
                }
            }
        });
        let out = self
            .engine
            .denoise(
                task.spec.clone(),
                task.from_step as usize,
                task.to_step as usize,
                checkpoint,
                Arc::clone(cancel),
                tx,
            )
            .await;
        let _ = progress.await;
        match out.map_err(TaskError::engine)? {
            DenoiseOutcome::Cancelled => Ok(None),
            DenoiseOutcome::Done(bytes) => {
                let key = checkpoint_key(task.job_id, task.chunk);
                self.blobs
                    .put(&key, Bytes::from(bytes), "application/octet-stream")
                    .await
                    .map_err(|e| TaskError::retry("CHECKPOINT_WRITE", e.to_string()))?;
                Ok(Some(Vec::new()))
            }
        }
    }

    async fn checkpoint(&self, task: &TaskMessage) -> Result<Vec<u8>, TaskError> {
        let key = checkpoint_key(task.job_id, task.chunk.saturating_sub(1));
        match self.blobs.get(&key).await {
            Ok(Some(b)) => Ok(b.to_vec()),
            Ok(None) => Err(TaskError::retry(
                "CHECKPOINT_MISSING",
                format!("checkpoint {key} not found"),
            )),
            Err(e) => Err(TaskError::retry("CHECKPOINT_READ", e.to_string())),
        }
    }

    async fn vocode(&self, task: &TaskMessage) -> Result<Option<Vec<OutputInfo>>, TaskError> {
        let checkpoint = self.checkpoint(task).await?;
        let rendered = self
            .engine
            .vocode(task.spec.clone(), checkpoint)
            .await
            .map_err(TaskError::engine)?;
        let mut outputs = Vec::new();
        for (i, mut wave) in rendered.waveforms.into_iter().enumerate() {
            audio::normalize_loudness(&mut wave);
            let encoded = match task.spec.format {
                AudioFormat::Wav => audio::encode_wav(&wave, rendered.sample_rate),
                AudioFormat::Flac => audio::encode_flac(&wave, rendered.sample_rate),
            }
            .map_err(|e| TaskError::fatal("ENCODE", e.to_string()))?;
            let key = output_key(&task.tenant, task.job_id, i as u32, task.spec.format);
            let info = OutputInfo {
                index: i as u32,
                key: key.clone(),
                sha256: audio::sha256_hex(&encoded),
                size_bytes: encoded.len() as u64,
                duration_s: wave.len() as f32 / rendered.sample_rate as f32,
                sample_rate: rendered.sample_rate,
            };
            self.blobs
                .put(&key, Bytes::from(encoded), task.spec.format.content_type())
                .await
                .map_err(|e| TaskError::retry("OUTPUT_WRITE", e.to_string()))?;
            outputs.push(info);
        }
        Ok(Some(outputs))
    }
}

struct TaskError {
    code: &'static str,
    message: String,
    retryable: bool,
}

impl TaskError {
    fn retry(code: &'static str, message: String) -> Self {
        Self {
            code,
            message,
            retryable: true,
        }
    }
    fn fatal(code: &'static str, message: String) -> Self {
        Self {
            code,
            message,
            retryable: false,
        }
    }
    fn engine(e: EngineError) -> Self {
        Self {
            code: e.code(),
            retryable: e.retryable(),
            message: e.to_string(),
        }
    }
}
