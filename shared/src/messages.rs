//! Messages between the coordinator and the workers (JSON bodies of AMQP messages).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{JobSpec, Priority, TaskKind};

/// One unit of work: a chunk of denoising steps or the vocoding stage of a job.
/// `(job_id, chunk, attempt)` identifies it; results carry the same triple for fencing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub job_id: Uuid,
    pub tenant: String,
    /// 0-based: denoise chunks first, the vocode task last.
    pub chunk: u32,
    pub attempt: u32,
    pub kind: TaskKind,
    pub from_step: u32,
    pub to_step: u32,
    pub spec: JobSpec,
    /// The job's class: workers run interactive chunks first (messages from before the field
    /// read as standard).
    #[serde(default)]
    pub priority: Priority,
}

/// One finished audio file, as uploaded by a vocode task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputInfo {
    pub index: u32,
    pub key: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub duration_s: f32,
    pub sample_rate: u32,
    /// Messages from workers before the field were all mono.
    #[serde(default = "mono")]
    pub channels: u16,
    /// Integrated loudness (LUFS) and true peak (dBTP) the gain stage left; `None` for
    /// silence, and in messages from workers before the fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loudness_lufs: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_peak_dbtp: Option<f32>,
}

fn mono() -> u16 {
    1
}

/// Why an attempt failed: a closed set, so that job errors, retries and dashboards name causes
/// the same way everywhere. On the wire and in the job store as `SCREAMING_SNAKE_CASE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The worker has no pack of the job's model.
    ModelNotInstalled,
    /// The model refused the job's input.
    InvalidInput,
    /// The model runtime failed (libtorch, a tensor, a step).
    ModelError,
    /// The worker's model packs could not be read.
    ModelPacks,
    /// The worker is shutting down.
    WorkerStopping,
    /// The chunk's latent was not held where it was routed; it runs from the checkpoint.
    NotHeld,
    CheckpointMissing,
    CheckpointRead,
    CheckpointWrite,
    /// Encoding the audio (WAV/FLAC) failed.
    Encode,
    OutputWrite,
    /// A dispatched task gave no sign of life within its lease.
    LeaseExpired,
    /// The task's worker stopped sending heartbeats.
    WorkerLost,
    /// A worker stopped a task of a job that is not cancelled.
    CancelledByWorker,
    /// The job's deadline passed before it finished: cancelled at a chunk boundary.
    DeadlineExceeded,
    /// A code this build does not know (from a newer worker).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::ModelNotInstalled,
        ErrorCode::InvalidInput,
        ErrorCode::ModelError,
        ErrorCode::ModelPacks,
        ErrorCode::WorkerStopping,
        ErrorCode::NotHeld,
        ErrorCode::CheckpointMissing,
        ErrorCode::CheckpointRead,
        ErrorCode::CheckpointWrite,
        ErrorCode::Encode,
        ErrorCode::OutputWrite,
        ErrorCode::LeaseExpired,
        ErrorCode::WorkerLost,
        ErrorCode::CancelledByWorker,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ModelNotInstalled => "MODEL_NOT_INSTALLED",
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::ModelError => "MODEL_ERROR",
            ErrorCode::ModelPacks => "MODEL_PACKS",
            ErrorCode::WorkerStopping => "WORKER_STOPPING",
            ErrorCode::NotHeld => "NOT_HELD",
            ErrorCode::CheckpointMissing => "CHECKPOINT_MISSING",
            ErrorCode::CheckpointRead => "CHECKPOINT_READ",
            ErrorCode::CheckpointWrite => "CHECKPOINT_WRITE",
            ErrorCode::Encode => "ENCODE",
            ErrorCode::OutputWrite => "OUTPUT_WRITE",
            ErrorCode::LeaseExpired => "LEASE_EXPIRED",
            ErrorCode::WorkerLost => "WORKER_LOST",
            ErrorCode::CancelledByWorker => "CANCELLED_BY_WORKER",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task ended on a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Done {
        millis: u64,
        #[serde(default)]
        outputs: Vec<OutputInfo>,
        /// A denoise chunk whose latent the worker keeps in memory for the job's next chunk:
        /// the coordinator routes that chunk there at once, not after the next heartbeat.
        #[serde(default)]
        held: bool,
    },
    Failed {
        code: ErrorCode,
        message: String,
        /// False for errors that a retry cannot fix (e.g. a model pack the worker lacks).
        retryable: bool,
    },
    /// The worker saw a cancellation for the job and stopped.
    Cancelled,
}

/// What workers send back on the results queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Step progress inside a chunk (best effort, not confirmed).
    Progress {
        job_id: Uuid,
        chunk: u32,
        attempt: u32,
        worker: String,
        steps_done: u32,
        /// The job's class: the coordinator applies interactive jobs' events in a lane of
        /// their own, ahead of a backfill's.
        #[serde(default)]
        priority: Priority,
    },
    /// The end of a task (published with a confirm before the task is acked).
    Result {
        job_id: Uuid,
        chunk: u32,
        attempt: u32,
        worker: String,
        outcome: Outcome,
        /// The job's class (see `Progress`).
        #[serde(default)]
        priority: Priority,
    },
    /// A worker's sign of life, every couple of seconds: what it serves and how much. The
    /// coordinator bounds dispatched work by the capacity of live workers and routes a job's
    /// next chunk to the worker that holds its latent (chunk affinity).
    Heartbeat {
        worker: String,
        /// Denoise chunks it runs at once (its step-batch capacity); 0 when it serves none.
        denoise_slots: u32,
        /// Vocode tasks it runs at once; 0 when it serves none.
        vocode_slots: u32,
        /// Jobs whose latest latent it still holds in memory.
        #[serde(default)]
        holds: Vec<Uuid>,
        /// True once it takes no new work (draining on SIGTERM).
        #[serde(default)]
        draining: bool,
        /// Interactive tasks of each kind it serves that it takes beyond its slots (its express
        /// lane), so an interactive job never waits for a slot behind batch work.
        #[serde(default)]
        express_slots: u32,
        /// Where its model runs (`cpu`, `cuda:0`); empty from a worker of an older release.
        #[serde(default)]
        device: String,
        /// Denoise chunks per denoiser forward over its last minute (how well continuous step
        /// batching fills its forwards); 0 when it ran none.
        #[serde(default)]
        chunks_per_forward: f32,
        /// The model packs it serves (`name@version`), for the model catalogue; empty from a
        /// worker of an older release.
        #[serde(default)]
        models: Vec<String>,
    },
    /// A worker refused a message it could not parse and dead-lettered it: why, for operators
    /// (best effort, like a heartbeat; the message itself waits in the dead-letter queue).
    DeadLetter {
        worker: String,
        /// The stage queue it came from (`denoise`, `vocode`).
        queue: String,
        /// What was wrong with it (the parse error).
        error: String,
        size_bytes: u64,
    },
}

/// Broadcast on the control fanout exchange to every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    Cancel {
        job_id: Uuid,
    },
    /// A cancelled job was retried: workers forget its cancel.
    Retry {
        job_id: Uuid,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_keep_their_wire_shape() {
        let job_id = Uuid::nil();
        for (msg, kind) in [
            (ControlMessage::Cancel { job_id }, "cancel"),
            (ControlMessage::Retry { job_id }, "retry"),
        ] {
            let json = serde_json::to_value(&msg).expect("encode");
            assert_eq!(json, serde_json::json!({ "type": kind, "job_id": job_id }));
            assert_eq!(
                serde_json::from_value::<ControlMessage>(json).expect("decode"),
                msg
            );
        }
    }

    #[test]
    fn error_codes_keep_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).expect("encode");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&json).expect("decode"),
                *code
            );
        }
        let newer: ErrorCode = serde_json::from_str("\"GPU_ON_FIRE\"").expect("decode");
        assert_eq!(newer, ErrorCode::Unknown);
    }

    #[test]
    fn events_from_workers_without_a_class_read_as_standard() {
        // A worker of the previous release sends no `priority`.
        let job = Uuid::new_v4();
        let old = serde_json::json!({
            "type": "result", "job_id": job, "chunk": 1, "attempt": 2, "worker": "w1",
            "outcome": {"status": "cancelled"},
        });
        match serde_json::from_value::<WorkerEvent>(old) {
            Ok(WorkerEvent::Result { priority, .. }) => assert_eq!(priority, Priority::Standard),
            other => panic!("{other:?}"),
        }
        let new = WorkerEvent::Progress {
            job_id: job,
            chunk: 0,
            attempt: 1,
            worker: "w1".into(),
            steps_done: 3,
            priority: Priority::Interactive,
        };
        let back: WorkerEvent =
            serde_json::from_slice(&serde_json::to_vec(&new).expect("json")).expect("parse");
        assert!(matches!(
            back,
            WorkerEvent::Progress {
                priority: Priority::Interactive,
                ..
            }
        ));
    }
}
