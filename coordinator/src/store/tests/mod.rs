//! One conformance suite for the job store, run against Postgres (a fresh database on the
//! local server, `TUTTI_TEST_PG`) and SQLite (a temp file), so the two cannot drift.

use std::collections::BTreeMap;
use std::time::Duration;

use tutti_proto::v1 as pb;
use tutti_shared::job::{AudioFormat, JobSpec, ModelRef, Priority, SamplerKind, TaskKind};
use tutti_shared::messages::{ErrorCode, Outcome, OutputInfo, TaskMessage};
use tutti_shared::prompt::Controls;
use tutti_shared::taskqueue::{MemoryQueue, QueueName, TaskQueue};
use uuid::Uuid;

use super::{Heartbeat, JobStore, PgStore, RetryPolicy, Scope, SqliteStore, TaskRef};
use crate::dispatcher::dispatch_once;
use crate::error::Error;
use crate::sched::Policy;
use crate::tenancy::{ApiKey, Limits};
use crate::validate::NewJob;

/// The static bound of `n` in flight per kind (no worker heartbeats), nothing kept for batch.
pub(super) fn bound(n: u32) -> Policy {
    Policy {
        max_in_flight: n,
        batch_share: 0.0,
        ..Policy::default()
    }
}

pub(super) const T: &str = "tenant-a";
pub(super) const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 2,
    backoff: Duration::ZERO,
};

pub(super) fn new_job(steps: u32, chunk_steps: u32, key: Option<&str>) -> NewJob {
    NewJob {
        spec: JobSpec {
            model: ModelRef {
                name: "tiny".into(),
                version: "1".into(),
            },
            prompt: "a prompt".into(),
            negative_prompt: String::new(),
            controls: Controls {
                duration_s: 2.0,
                bpm: None,
                key: None,
                mode: None,
            },
            duration_s: 2.0,
            seed: 1,
            steps,
            guidance_scale: 3.0,
            sampler: SamplerKind::FlowEuler,
            variations: 1,
            format: AudioFormat::Wav,
            delivery: Default::default(),
            trace_context: Default::default(),
            init_audio: None,
            song: None,
        },
        priority: Priority::Interactive,
        labels: BTreeMap::from([("team".to_string(), "a".to_string())]),
        idempotency_key: key.map(str::to_string),
        request_hash: format!("hash-{steps}"),
        accepted: pb::SubmitGenerationRequest::default(),
        chunk_steps,
        init_clip: None,
        api_key: None,
    }
}

/// Takes every task the queue holds right now.
pub(super) async fn drain(q: &MemoryQueue) -> Vec<TaskMessage> {
    let mut out = Vec::new();
    let queues = [
        QueueName::Task(TaskKind::Denoise),
        QueueName::Task(TaskKind::Vocode),
    ];
    let mut c = q.consume(&queues, 1000, "t").await.expect("consume");
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(50), c.next()).await {
        out.push(serde_json::from_slice(&d.data).expect("task"));
        d.ack().await.expect("ack");
    }
    out
}

pub(super) fn done(millis: u64) -> Outcome {
    Outcome::Done {
        millis,
        outputs: Vec::new(),
        held: false,
    }
}

pub(super) fn at(t: &TaskMessage) -> TaskRef<'static> {
    TaskRef {
        job: t.job_id,
        chunk: t.chunk,
        attempt: t.attempt,
        worker: "w0",
    }
}

async fn state(s: &dyn JobStore, id: Uuid) -> (String, String, i32) {
    let j = s
        .get_job(T.into(), id)
        .await
        .expect("get")
        .expect("job")
        .job;
    (j.state.to_string(), j.stage.to_string(), j.steps_done)
}

fn job_of(priority: Priority, steps: u32) -> NewJob {
    NewJob {
        priority,
        ..new_job(steps, 4, None)
    }
}

fn heartbeat<'a>(
    worker: &'a str,
    denoise: u32,
    holds: &'a [Uuid],
    draining: bool,
) -> Heartbeat<'a> {
    Heartbeat {
        worker,
        denoise_slots: denoise,
        vocode_slots: 1,
        express_slots: 0,
        holds,
        draining,
        device: "cpu",
        chunks_per_forward: 1.5,
        models: &[],
    }
}

fn by(t: &TaskMessage, worker: &'static str) -> TaskRef<'static> {
    TaskRef { worker, ..at(t) }
}

fn kinds_of(events: &[super::HistoryEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

pub(super) async fn pg() -> PgStore {
    let base = std::env::var("TUTTI_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("tutti_store_{}", &Uuid::new_v4().simple().to_string()[..12]);
    PgStore::connect(&format!("{base}/{db}"))
        .await
        .expect("postgres")
}

pub(super) async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("jobs.db"))
        .await
        .expect("sqlite");
    (s, dir)
}

/// Runs each `async fn NAME(&dyn JobStore)` of the module it is used in against Postgres and
/// SQLite, as `postgres_suite::NAME` and `sqlite_suite::NAME`.
macro_rules! job_store_suite {
    ($($name:ident),+ $(,)?) => {
        mod postgres_suite {
            $(#[tokio::test] async fn $name() {
                super::$name(&$crate::store::tests::pg().await).await;
            })+
        }
        mod sqlite_suite {
            $(#[tokio::test] async fn $name() {
                let (s, _dir) = $crate::store::tests::sqlite().await;
                super::$name(&s).await;
            })+
        }
    };
}

mod batches;
mod deadlines;
mod deletion;
mod hostile;
mod jobs;
mod lifecycle;
mod retries;
mod round;
mod tenants;
mod unknown;
mod usage;
mod webhooks;
