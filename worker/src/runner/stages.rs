//! What each kind of task does on a worker: a denoise chunk (from the held latent or the last
//! checkpoint, through the engine, to its checkpoint) and a vocode (render, encode, upload).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tutti_shared::job::{checkpoint_key, output_key};
use tutti_shared::messages::{ErrorCode, OutputInfo, TaskMessage, WorkerEvent};
use tutti_shared::taskqueue::QueueName;
use tutti_shared::{audio, encode, loudness};

use super::patience::patiently;
use super::Worker;
use crate::engine::{DenoiseOutcome, DenoiseRequest, EngineError, Start};

impl Worker {
    /// Returns `Ok(None)` when cancelled.
    pub(super) async fn denoise(
        &self,
        task: &TaskMessage,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Option<Vec<OutputInfo>>, TaskError> {
        // Progress goes out best effort (no confirm wait), every 200 ms of a running chunk: it
        // is for watchers and the task's lease. The chunk's result carries its last step, so a
        // short chunk sends none: each progress event is a transaction in the coordinator's
        // result path, ahead of the results behind it.
        let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
        let queue = Arc::clone(&self.queue);
        let (job_id, chunk, attempt, to_step, priority) = (
            task.job_id,
            task.chunk,
            task.attempt,
            task.to_step,
            task.priority,
        );
        let worker = self.name.clone();
        let progress = tokio::spawn(async move {
            let mut last = Instant::now();
            while let Some(done) = rx.recv().await {
                if last.elapsed() < Duration::from_millis(200) || done as u32 == to_step {
                    continue;
                }
                last = Instant::now();
                let ev = WorkerEvent::Progress {
                    job_id,
                    chunk,
                    attempt,
                    worker: worker.clone(),
                    steps_done: done as u32,
                    priority,
                };
                if let Ok(body) = serde_json::to_vec(&ev) {
                    let _ = queue.publish_best_effort(QueueName::Results, &body).await;
                }
            }
        });
        let begun = Instant::now();
        let out = self.denoise_in_engine(task, cancel, tx).await;
        let _ = progress.await;
        match out? {
            DenoiseOutcome::Cancelled => Ok(None),
            DenoiseOutcome::Done(bytes) => {
                // The engine goes on stepping the other chunks while this one uploads; the
                // result (and so the ack) waits for the upload.
                let computed = begun.elapsed();
                let key = checkpoint_key(task.job_id, task.chunk);
                let bytes = Bytes::from(bytes);
                patiently(self.outage_budget, "checkpoint put", || {
                    self.blobs
                        .put(&key, bytes.clone(), "application/octet-stream")
                })
                .await
                .map_err(|e| TaskError::retry(ErrorCode::CheckpointWrite, e.to_string()))?;
                tracing::debug!(
                    engine_ms = computed.as_millis() as u64,
                    upload_ms = (begun.elapsed() - computed).as_millis() as u64,
                    "chunk stored"
                );
                Ok(Some(Vec::new()))
            }
        }
    }

    /// Where a task starts: fresh, the state this worker holds, or the S3 checkpoint.
    pub(super) async fn start(&self, task: &TaskMessage, step: usize) -> Result<Start, TaskError> {
        if step == 0 {
            match &task.spec.init_audio {
                None => Ok(Start::Fresh),
                Some(init) => Ok(Start::FreshFrom(self.init_clip(&init.key).await?)),
            }
        } else if self.engine.holds().step(task.job_id) == Some(step) {
            Ok(Start::Held)
        } else {
            Ok(Start::Checkpoint(self.checkpoint(task).await?))
        }
    }

    pub(super) async fn denoise_in_engine(
        &self,
        task: &TaskMessage,
        cancel: &Arc<AtomicBool>,
        progress: mpsc::UnboundedSender<usize>,
    ) -> Result<DenoiseOutcome, TaskError> {
        let from_step = task.from_step as usize;
        let request = |start| DenoiseRequest {
            job: task.job_id,
            spec: task.spec.clone(),
            from_step,
            to_step: task.to_step as usize,
            start,
            cancel: Arc::clone(cancel),
            progress: progress.clone(),
            priority: task.priority,
        };
        let start = self.start(task, from_step).await?;
        match self.engine.denoise(request(start)).await {
            // Evicted between the look and the take: the checkpoint is the fallback.
            Err(EngineError::NotHeld) => {
                let start = Start::Checkpoint(self.checkpoint(task).await?);
                self.engine
                    .denoise(request(start))
                    .await
                    .map_err(TaskError::engine)
            }
            r => r.map_err(TaskError::engine),
        }
    }

    /// An audio-to-audio job's init clip, stored at submit (the coordinator checked it).
    async fn init_clip(&self, key: &str) -> Result<audio::Pcm, TaskError> {
        let bytes =
            match patiently(self.outage_budget, "init audio get", || self.blobs.get(key)).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(TaskError::fatal(
                        ErrorCode::InvalidInput,
                        format!("init audio {key} not found"),
                    ))
                }
                Err(e) => return Err(TaskError::retry(ErrorCode::CheckpointRead, e.to_string())),
            };
        audio::decode_wav(&bytes).map_err(|e| {
            TaskError::fatal(ErrorCode::InvalidInput, format!("init audio {key}: {e}"))
        })
    }

    pub(super) async fn checkpoint(&self, task: &TaskMessage) -> Result<Vec<u8>, TaskError> {
        let key = checkpoint_key(task.job_id, task.chunk.saturating_sub(1));
        match patiently(self.outage_budget, "checkpoint get", || {
            self.blobs.get(&key)
        })
        .await
        {
            Ok(Some(b)) => Ok(b.to_vec()),
            Ok(None) => Err(TaskError::retry(
                ErrorCode::CheckpointMissing,
                format!("checkpoint {key} not found"),
            )),
            Err(e) => Err(TaskError::retry(ErrorCode::CheckpointRead, e.to_string())),
        }
    }

    pub(super) async fn vocode(
        &self,
        task: &TaskMessage,
    ) -> Result<Option<Vec<OutputInfo>>, TaskError> {
        let steps = task.spec.steps as usize;
        let rendered = match self
            .engine
            .vocode(
                task.job_id,
                task.spec.clone(),
                self.start(task, steps).await?,
                task.priority,
            )
            .await
        {
            Err(EngineError::NotHeld) => {
                let start = Start::Checkpoint(self.checkpoint(task).await?);
                self.engine
                    .vocode(task.job_id, task.spec.clone(), start, task.priority)
                    .await
            }
            r => r,
        }
        .map_err(TaskError::engine)?;
        let mut outputs = Vec::new();
        let (channels, rate) = (rendered.channels, rendered.sample_rate);
        let (format, delivery) = (task.spec.format, task.spec.delivery);
        for (i, wave) in rendered.waveforms.into_iter().enumerate() {
            let duration_s = wave.len() as f32 / f32::from(channels.max(1)) / rate as f32;
            // The one gain stage (the model hands over its raw waveform), then the encoder: CPU
            // work of up to a second or two for a long clip, off the runtime's threads.
            let (level, encoded) = tokio::task::spawn_blocking(move || {
                let mut wave = wave;
                let level = loudness::normalize(&mut wave, channels, rate, delivery.loudness_lufs)?;
                let encoded = encode::encode(format, &wave, channels, rate, delivery.bitrate_kbps)?;
                Ok::<_, audio::AudioError>((level, encoded))
            })
            .await
            .map_err(|e| TaskError::fatal(ErrorCode::Encode, e.to_string()))?
            .map_err(|e| TaskError::fatal(ErrorCode::Encode, e.to_string()))?;
            let encode::Encoded {
                bytes: encoded,
                sample_rate,
            } = encoded;
            let key = output_key(&task.tenant, task.job_id, i as u32, format);
            let info = OutputInfo {
                index: i as u32,
                key: key.clone(),
                sha256: audio::sha256_hex(&encoded),
                size_bytes: encoded.len() as u64,
                duration_s,
                sample_rate,
                channels,
                loudness_lufs: level.integrated_lufs,
                true_peak_dbtp: level.true_peak_dbtp,
            };
            let encoded = Bytes::from(encoded);
            patiently(self.outage_budget, "output put", || {
                self.blobs
                    .put(&key, encoded.clone(), task.spec.format.content_type())
            })
            .await
            .map_err(|e| TaskError::retry(ErrorCode::OutputWrite, e.to_string()))?;
            outputs.push(info);
        }
        Ok(Some(outputs))
    }
}

pub(super) struct TaskError {
    pub(super) code: ErrorCode,
    pub(super) message: String,
    pub(super) retryable: bool,
}

impl TaskError {
    pub(super) fn retry(code: ErrorCode, message: String) -> Self {
        Self {
            code,
            message,
            retryable: true,
        }
    }
    pub(super) fn fatal(code: ErrorCode, message: String) -> Self {
        Self {
            code,
            message,
            retryable: false,
        }
    }
    pub(super) fn engine(e: EngineError) -> Self {
        Self {
            code: e.code(),
            retryable: e.retryable(),
            message: e.to_string(),
        }
    }
}
