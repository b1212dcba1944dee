//! One conformance suite for the job store, run against Postgres (a fresh database on the
//! local server, `TUTTI_TEST_PG`) and SQLite (a temp file), so the two cannot drift.

use std::collections::BTreeMap;
use std::time::Duration;

use tutti_proto::v1 as pb;
use tutti_shared::job::{AudioFormat, JobSpec, ModelRef, Priority, SamplerName, TaskKind};
use tutti_shared::messages::{Outcome, OutputInfo, TaskMessage};
use tutti_shared::prompt::Controls;
use tutti_shared::taskqueue::{MemoryQueue, QueueName, TaskQueue};
use uuid::Uuid;

use super::{JobStore, PgStore, RetryPolicy, SqliteStore, TaskRef};
use crate::error::Error;
use crate::validate::NewJob;

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
            sampler: SamplerName::FlowEuler,
            variations: 1,
            format: AudioFormat::Wav,
            trace_context: Default::default(),
        },
        priority: Priority::Interactive,
        labels: BTreeMap::from([("team".to_string(), "a".to_string())]),
        idempotency_key: key.map(str::to_string),
        request_hash: format!("hash-{steps}"),
        accepted: pb::SubmitGenerationRequest::default(),
        chunk_steps,
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
    let j = s.get_job(T, id).await.expect("get").expect("job").job;
    (j.state, j.stage, j.steps_done)
}

pub(super) async fn stores_jobs_with_idempotency_and_tenants(s: &dyn JobStore) {
    let (a, created) = s
        .insert_job(T, &new_job(8, 4, Some("k1")))
        .await
        .expect("insert");
    assert!(created);
    assert_eq!((a.job.state.as_str(), a.job.steps_total), ("queued", 8));
    let (again, created) = s
        .insert_job(T, &new_job(8, 4, Some("k1")))
        .await
        .expect("insert");
    assert!(!created);
    assert_eq!(again.job.id, a.job.id);
    let conflict = s.insert_job(T, &new_job(9, 4, Some("k1"))).await;
    assert!(
        matches!(conflict, Err(Error::AlreadyExists(_))),
        "{conflict:?}"
    );
    assert!(s
        .get_job("tenant-b", a.job.id)
        .await
        .expect("get")
        .is_none());
    assert!(s
        .cancel_job("tenant-b", a.job.id)
        .await
        .expect("cancel")
        .is_none());
    let got = s.get_job(T, a.job.id).await.expect("get").expect("job");
    assert_eq!(got.job.spec.0, new_job(8, 4, None).spec);
    assert_eq!(got.job.labels.0.get("team").map(String::as_str), Some("a"));
}

pub(super) async fn lists_newest_first_by_label_and_page(s: &dyn JobStore) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            s.insert_job(T, &new_job(4, 4, None))
                .await
                .expect("insert")
                .0
                .job
                .id,
        );
    }
    let mut other = new_job(4, 4, None);
    other.labels = BTreeMap::from([("team".to_string(), "b".to_string())]);
    s.insert_job(T, &other).await.expect("insert");
    let team_a = BTreeMap::from([("team".to_string(), "a".to_string())]);
    let page = s.list_jobs(T, None, &team_a, None, 2).await.expect("list");
    let got: Vec<Uuid> = page.iter().map(|r| r.job.id).collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    let last = &page[1].job;
    let rest = s
        .list_jobs(T, None, &team_a, Some((last.created_at, last.id)), 10)
        .await
        .expect("list");
    assert_eq!(
        rest.iter().map(|r| r.job.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let all = s
        .list_jobs(T, None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(all.len(), 4);
    let none = s
        .list_jobs(
            T,
            Some(tutti_shared::job::JobState::Running),
            &BTreeMap::new(),
            None,
            10,
        )
        .await
        .expect("list");
    assert!(none.is_empty());
}

pub(super) async fn runs_a_job_chunk_by_chunk_to_its_outputs(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let mut changes = s.notifier().subscribe();
    let (job, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let id = job.job.id;
    assert_eq!(s.dispatch_due(&q, 8).await.expect("dispatch"), 1);
    assert_eq!(
        s.dispatch_due(&q, 8).await.expect("dispatch"),
        0,
        "dispatched twice"
    );
    let tasks = drain(&q).await;
    assert_eq!(tasks.len(), 1);
    let t0 = &tasks[0];
    assert_eq!(
        (t0.chunk, t0.attempt, t0.from_step, t0.to_step),
        (0, 1, 0, 4)
    );
    assert_eq!(state(s, id).await.0, "running");
    s.record_progress(at(t0), 2).await.expect("progress");
    assert_eq!(state(s, id).await.2, 2);
    s.record_result(at(t0), &done(10), POLICY)
        .await
        .expect("result");
    // A duplicate of the same result is fenced off.
    s.record_result(at(t0), &done(10), POLICY)
        .await
        .expect("dup");
    s.dispatch_due(&q, 8).await.expect("dispatch");
    let t1 = drain(&q).await.pop().expect("chunk 1");
    assert_eq!((t1.chunk, t1.from_step, t1.to_step), (1, 4, 8));
    s.record_result(at(&t1), &done(20), POLICY)
        .await
        .expect("result");
    assert_eq!(state(s, id).await, ("running".into(), "vocode".into(), 8));
    s.dispatch_due(&q, 8).await.expect("dispatch");
    let v = drain(&q).await.pop().expect("vocode");
    assert_eq!((v.kind, v.chunk), (TaskKind::Vocode, 2));
    let out = OutputInfo {
        index: 0,
        key: format!("outputs/{T}/{id}/0.wav"),
        sha256: "ab".into(),
        size_bytes: 10,
        duration_s: 2.0,
        sample_rate: 16000,
    };
    let outcome = Outcome::Done {
        millis: 5,
        outputs: vec![out.clone()],
    };
    s.record_result(at(&v), &outcome, POLICY)
        .await
        .expect("result");
    let rec = s.get_job(T, id).await.expect("get").expect("job");
    assert_eq!(
        (rec.job.state.as_str(), rec.job.stage.as_str()),
        ("succeeded", "done")
    );
    assert_eq!(rec.job.timings.0.get("denoise"), Some(&30));
    assert_eq!(rec.job.timings.0.get("vocode"), Some(&5));
    assert_eq!(rec.outputs.len(), 1);
    assert_eq!(
        (rec.outputs[0].key.as_str(), rec.outputs[0].sample_rate),
        (out.key.as_str(), 16000)
    );
    let kinds: Vec<String> = s
        .history(id)
        .await
        .expect("history")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "queued",
            "dispatched",
            "chunk_done",
            "stale_result",
            "dispatched",
            "chunk_done",
            "dispatched",
            "chunk_done",
            "succeeded"
        ]
    );
    let mut heard = Vec::new();
    while let Ok(c) = changes.try_recv() {
        heard.push(c.what);
    }
    // Postgres notices arrive through LISTEN, a moment after the commit.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !heard.iter().any(|w| w == "succeeded") && std::time::Instant::now() < deadline {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await {
            heard.push(c.what);
        }
    }
    for w in ["queued", "started", "step", "stage", "succeeded"] {
        assert!(heard.iter().any(|h| h == w), "no {w} notice in {heard:?}");
    }
}

pub(super) async fn bounds_in_flight_tasks(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    for _ in 0..3 {
        s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    }
    assert_eq!(s.dispatch_due(&q, 2).await.expect("dispatch"), 2);
    assert_eq!(s.dispatch_due(&q, 2).await.expect("dispatch"), 0);
    let tasks = drain(&q).await;
    s.record_result(at(&tasks[0]), &done(1), POLICY)
        .await
        .expect("result");
    // The finished chunk frees a denoise slot for the third job; its vocode task has a
    // queue (and a bound) of its own.
    assert_eq!(s.dispatch_due(&q, 2).await.expect("dispatch"), 2);
    let mut kinds: Vec<TaskKind> = drain(&q).await.into_iter().map(|t| t.kind).collect();
    kinds.sort_by_key(|k| k.as_str());
    assert_eq!(kinds, vec![TaskKind::Denoise, TaskKind::Vocode]);
}

pub(super) async fn retries_with_a_bound_and_fails_with_the_cause(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    let id = job.job.id;
    s.dispatch_due(&q, 8).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("task");
    let fail = Outcome::Failed {
        code: "BOOM".into(),
        message: "it broke".into(),
        retryable: true,
    };
    s.record_result(at(&t), &fail, POLICY)
        .await
        .expect("result");
    s.dispatch_due(&q, 8).await.expect("dispatch");
    let t2 = drain(&q).await.pop().expect("retry");
    assert_eq!((t2.chunk, t2.attempt), (0, 2));
    // The first attempt's late result is stale now.
    s.record_result(at(&t), &done(1), POLICY)
        .await
        .expect("stale");
    assert_eq!(state(s, id).await.0, "running");
    s.record_result(at(&t2), &fail, POLICY)
        .await
        .expect("result");
    let rec = s.get_job(T, id).await.expect("get").expect("job").job;
    assert_eq!(rec.state, "failed");
    assert_eq!(
        (rec.error_code.as_deref(), rec.error_message.as_deref()),
        (Some("BOOM"), Some("it broke"))
    );
    assert_eq!(s.dispatch_due(&q, 8).await.expect("dispatch"), 0);
}

pub(super) async fn expired_leases_come_back_as_a_new_attempt(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    s.dispatch_due(&q, 8).await.expect("dispatch");
    drain(&q).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.expire_leases(Duration::from_millis(1), POLICY)
        .await
        .expect("expire");
    s.dispatch_due(&q, 8).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("redispatched");
    assert_eq!((t.job_id, t.attempt), (job.job.id, 2));
}

pub(super) async fn a_cancelled_job_never_comes_back(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let id = job.job.id;
    s.dispatch_due(&q, 8).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("task");
    let (rec, changed) = s.cancel_job(T, id).await.expect("cancel").expect("job");
    assert!(changed);
    assert_eq!(rec.job.state, "cancelled");
    s.record_result(at(&t), &Outcome::Cancelled, POLICY)
        .await
        .expect("result");
    s.record_result(at(&t), &done(1), POLICY)
        .await
        .expect("result");
    assert_eq!(s.dispatch_due(&q, 8).await.expect("dispatch"), 0);
    assert_eq!(state(s, id).await.0, "cancelled");
    let (_, changed) = s.cancel_job(T, id).await.expect("cancel").expect("job");
    assert!(!changed);
    let stale = s
        .history(id)
        .await
        .expect("history")
        .into_iter()
        .filter(|e| e.kind == "stale_result")
        .count();
    assert_eq!(stale, 2);
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

macro_rules! job_store_suite {
    ($($name:ident),+ $(,)?) => {
        mod postgres_suite {
            $(#[tokio::test] async fn $name() { super::$name(&super::pg().await).await; })+
        }
        mod sqlite_suite {
            $(#[tokio::test] async fn $name() {
                let (s, _dir) = super::sqlite().await;
                super::$name(&s).await;
            })+
        }
    };
}

job_store_suite!(
    stores_jobs_with_idempotency_and_tenants,
    lists_newest_first_by_label_and_page,
    runs_a_job_chunk_by_chunk_to_its_outputs,
    bounds_in_flight_tasks,
    retries_with_a_bound_and_fails_with_the_cause,
    expired_leases_come_back_as_a_new_attempt,
    a_cancelled_job_never_comes_back,
);
