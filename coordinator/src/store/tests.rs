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
        .get_job("tenant-b".into(), a.job.id)
        .await
        .expect("get")
        .is_none());
    assert!(s
        .cancel_job("tenant-b".into(), a.job.id)
        .await
        .expect("cancel")
        .is_none());
    let got = s
        .get_job(T.into(), a.job.id)
        .await
        .expect("get")
        .expect("job");
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
    let page = s
        .list_jobs(T.into(), None, &team_a, None, 2)
        .await
        .expect("list");
    let got: Vec<Uuid> = page.iter().map(|r| r.job.id).collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    let last = &page[1].job;
    let rest = s
        .list_jobs(
            T.into(),
            None,
            &team_a,
            Some((last.created_at, last.id)),
            10,
        )
        .await
        .expect("list");
    assert_eq!(
        rest.iter().map(|r| r.job.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let all = s
        .list_jobs(T.into(), None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(all.len(), 4);
    let none = s
        .list_jobs(
            T.into(),
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
    assert_eq!(dispatch_once(s, &q, &bound(8)).await.expect("dispatch"), 1);
    assert_eq!(
        dispatch_once(s, &q, &bound(8)).await.expect("dispatch"),
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
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t1 = drain(&q).await.pop().expect("chunk 1");
    assert_eq!((t1.chunk, t1.from_step, t1.to_step), (1, 4, 8));
    s.record_result(at(&t1), &done(20), POLICY)
        .await
        .expect("result");
    assert_eq!(state(s, id).await, ("running".into(), "vocode".into(), 8));
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
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
        held: false,
    };
    s.record_result(at(&v), &outcome, POLICY)
        .await
        .expect("result");
    let rec = s.get_job(T.into(), id).await.expect("get").expect("job");
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
    assert_eq!(dispatch_once(s, &q, &bound(2)).await.expect("dispatch"), 2);
    assert_eq!(dispatch_once(s, &q, &bound(2)).await.expect("dispatch"), 0);
    let tasks = drain(&q).await;
    s.record_result(at(&tasks[0]), &done(1), POLICY)
        .await
        .expect("result");
    // The finished chunk frees a denoise slot for the third job; its vocode task has a
    // queue (and a bound) of its own.
    assert_eq!(dispatch_once(s, &q, &bound(2)).await.expect("dispatch"), 2);
    let mut kinds: Vec<TaskKind> = drain(&q).await.into_iter().map(|t| t.kind).collect();
    kinds.sort_by_key(|k| k.as_str());
    assert_eq!(kinds, vec![TaskKind::Denoise, TaskKind::Vocode]);
}

pub(super) async fn retries_with_a_bound_and_fails_with_the_cause(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    let id = job.job.id;
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("task");
    let fail = Outcome::Failed {
        code: "BOOM".into(),
        message: "it broke".into(),
        retryable: true,
    };
    s.record_result(at(&t), &fail, POLICY)
        .await
        .expect("result");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
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
    let rec = s
        .get_job(T.into(), id)
        .await
        .expect("get")
        .expect("job")
        .job;
    assert_eq!(rec.state, "failed");
    assert_eq!(
        (rec.error_code.as_deref(), rec.error_message.as_deref()),
        (Some("BOOM"), Some("it broke"))
    );
    assert_eq!(dispatch_once(s, &q, &bound(8)).await.expect("dispatch"), 0);
}

pub(super) async fn expired_leases_come_back_as_a_new_attempt(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    drain(&q).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.expire_leases(Duration::from_millis(1), POLICY)
        .await
        .expect("expire");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("redispatched");
    assert_eq!((t.job_id, t.attempt), (job.job.id, 2));
}

pub(super) async fn a_cancelled_job_never_comes_back(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let id = job.job.id;
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("task");
    let (rec, changed) = s
        .cancel_job(T.into(), id)
        .await
        .expect("cancel")
        .expect("job");
    assert!(changed);
    assert_eq!(rec.job.state, "cancelled");
    s.record_result(at(&t), &Outcome::Cancelled, POLICY)
        .await
        .expect("result");
    s.record_result(at(&t), &done(1), POLICY)
        .await
        .expect("result");
    assert_eq!(dispatch_once(s, &q, &bound(8)).await.expect("dispatch"), 0);
    assert_eq!(state(s, id).await.0, "cancelled");
    let (_, changed) = s
        .cancel_job(T.into(), id)
        .await
        .expect("cancel")
        .expect("job");
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

pub(super) async fn tenants_keys_and_revocation(s: &dyn JobStore) {
    let limits = Limits {
        max_jobs_in_flight: Some(3),
        submits_per_second: Some(2.5),
        submit_burst: Some(5),
        max_batch_items: Some(100),
        priorities: Some(vec![Priority::Standard, Priority::Batch]),
        max_duration_s: Some(12.5),
        max_steps: Some(40),
    };
    s.create_tenant("acme", &limits).await.expect("create");
    s.create_tenant("zeta", &Limits::default())
        .await
        .expect("create");
    let dup = s.create_tenant("acme", &Limits::default()).await;
    assert!(matches!(dup, Err(Error::AlreadyExists(_))), "{dup:?}");
    let acme = s.tenant("acme").await.expect("tenant").expect("acme");
    assert_eq!(acme.limits, limits);
    assert!(s.tenant("nobody").await.expect("tenant").is_none());
    let names: Vec<String> = s
        .tenants()
        .await
        .expect("tenants")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme", "zeta"]);
    s.set_limits(
        "zeta",
        &Limits {
            max_steps: Some(8),
            ..Default::default()
        },
    )
    .await
    .expect("set limits");
    assert_eq!(
        s.tenant("zeta")
            .await
            .expect("tenant")
            .expect("zeta")
            .limits
            .max_steps,
        Some(8)
    );
    assert!(matches!(
        s.set_limits("nobody", &Limits::default()).await,
        Err(Error::NotFound(_))
    ));

    let key = ApiKey::generate();
    let admin = ApiKey::generate();
    s.insert_key("acme", &key, false).await.expect("key");
    s.insert_key("zeta", &admin, true).await.expect("admin key");
    assert!(matches!(
        s.insert_key("nobody", &ApiKey::generate(), false).await,
        Err(Error::NotFound(_))
    ));
    let owner = s.key_owner(&key).await.expect("owner").expect("live key");
    assert_eq!((owner.tenant.as_str(), owner.admin), ("acme", false));
    assert_eq!(owner.limits, limits);
    let owner = s.key_owner(&admin).await.expect("owner").expect("live key");
    assert_eq!((owner.tenant.as_str(), owner.admin), ("zeta", true));
    // Same id, other secret: not the stored key.
    let forged = ApiKey::parse(&format!("tt_{}_{}", key.id(), "0".repeat(64))).expect("parse");
    assert!(s.key_owner(&forged).await.expect("owner").is_none());
    assert!(s
        .key_owner(&ApiKey::generate())
        .await
        .expect("owner")
        .is_none());
    // Nothing stored reveals the key.
    let keys = s.keys().await.expect("keys");
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .all(|k| !k.id.is_empty() && k.revoked_at.is_none()));

    assert!(s.revoke_key(key.id()).await.expect("revoke"));
    assert!(s.key_owner(&key).await.expect("owner").is_none());
    assert!(!s.revoke_key(key.id()).await.expect("revoke again"));
    assert!(matches!(
        s.revoke_key("000000000000").await,
        Err(Error::NotFound(_))
    ));
    let revoked = s.keys().await.expect("keys");
    assert!(revoked
        .iter()
        .any(|k| k.id == key.id() && k.revoked_at.is_some()));
    assert!(s.key_owner(&admin).await.expect("owner").is_some());
}

pub(super) async fn jobs_in_flight_limit_stores_nothing_and_admin_sees_all(s: &dyn JobStore) {
    s.create_tenant(
        T,
        &Limits {
            max_jobs_in_flight: Some(1),
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    let (first, _) = s
        .insert_job(T, &new_job(4, 4, Some("k")))
        .await
        .expect("first");
    let over = s.insert_job(T, &new_job(4, 4, None)).await;
    match over {
        Err(Error::ResourceExhausted { limit, .. }) => assert_eq!(limit, "max_jobs_in_flight"),
        other => panic!("expected max_jobs_in_flight, got {other:?}"),
    }
    // The refused submit stored nothing; a retry of the admitted one still answers.
    let all = s
        .list_jobs(T.into(), None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    let (again, created) = s
        .insert_job(T, &new_job(4, 4, Some("k")))
        .await
        .expect("replay");
    assert!(!created);
    assert_eq!(again.job.id, first.job.id);
    // A tenant without a row has no limits.
    let (other, _) = s
        .insert_job("tenant-b", &new_job(4, 4, None))
        .await
        .expect("b");
    s.insert_job("tenant-b", &new_job(4, 4, None))
        .await
        .expect("b again");
    // Cancelling frees the slot.
    s.cancel_job(T.into(), first.job.id)
        .await
        .expect("cancel")
        .expect("job");
    s.insert_job(T, &new_job(4, 4, None))
        .await
        .expect("after cancel");

    // Scope::All reads and cancels any tenant's job; a tenant scope only its own.
    assert!(s
        .get_job(Scope::All, other.job.id)
        .await
        .expect("get")
        .is_some());
    assert!(s
        .get_job(T.into(), other.job.id)
        .await
        .expect("get")
        .is_none());
    let every = s
        .list_jobs(Scope::All, None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(every.len(), 4);
    let (_, changed) = s
        .cancel_job(Scope::All, other.job.id)
        .await
        .expect("cancel")
        .expect("job");
    assert!(changed);
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
    }
}

fn by(t: &TaskMessage, worker: &'static str) -> TaskRef<'static> {
    TaskRef { worker, ..at(t) }
}

fn kinds_of(events: &[super::HistoryEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

pub(super) async fn capacity_follows_the_heartbeats_of_live_workers(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    for _ in 0..6 {
        s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    }
    let policy = bound(64);
    s.record_heartbeat(&heartbeat("w1", 3, &[], false))
        .await
        .expect("heartbeat");
    // Three slots, not the static bound of 64.
    assert_eq!(dispatch_once(s, &q, &policy).await.expect("dispatch"), 3);
    let tasks = drain(&q).await;
    // A draining worker takes nothing new, even with a slot free.
    s.record_heartbeat(&heartbeat("w1", 3, &[], true))
        .await
        .expect("heartbeat");
    s.record_result(by(&tasks[0], "w1"), &done(1), POLICY)
        .await
        .expect("result");
    let denoise = |q: Vec<TaskMessage>| q.iter().filter(|t| t.kind == TaskKind::Denoise).count();
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    assert_eq!(denoise(drain(&q).await), 0);
    // Another worker joins with 3 slots; 2 of them are taken by w1's tasks in flight.
    s.record_heartbeat(&heartbeat("w2", 3, &[], false))
        .await
        .expect("heartbeat");
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    assert_eq!(denoise(drain(&q).await), 1);
    // Every worker silent past the timeout: no capacity at all (not the static bound).
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.record_result(by(&tasks[1], "w1"), &done(1), POLICY)
        .await
        .expect("result");
    let silent = Policy {
        worker_timeout: Duration::from_millis(10),
        ..bound(64)
    };
    dispatch_once(s, &q, &silent).await.expect("dispatch");
    assert_eq!(denoise(drain(&q).await), 0);
}

pub(super) async fn tasks_of_a_silent_worker_go_back_at_once(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let id = job.job.id;
    s.record_heartbeat(&heartbeat("w1", 1, &[], false))
        .await
        .expect("heartbeat");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("task");
    s.record_progress(by(&t, "w1"), 1).await.expect("progress");
    // Still heard from: nothing happens.
    s.reclaim_lost(Duration::from_secs(60), POLICY)
        .await
        .expect("reclaim");
    assert_eq!(dispatch_once(s, &q, &bound(8)).await.expect("dispatch"), 0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.reclaim_lost(Duration::from_millis(10), POLICY)
        .await
        .expect("reclaim");
    let retry = s
        .history(id)
        .await
        .expect("history")
        .into_iter()
        .find(|e| e.kind == "retry")
        .expect("a retry");
    assert_eq!(retry.detail["code"], "WORKER_LOST");
    s.record_heartbeat(&heartbeat("w2", 1, &[], false))
        .await
        .expect("heartbeat");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let again = drain(&q).await.pop().expect("redispatched");
    assert_eq!((again.chunk, again.attempt), (0, 2));
    // The lost attempt's late result is stale.
    s.record_result(by(&t, "w1"), &done(1), POLICY)
        .await
        .expect("stale");
    assert_eq!(state(s, id).await.2, 1);
}

pub(super) async fn classes_go_in_order_and_batch_keeps_a_share(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let mut class = std::collections::HashMap::new();
    for p in [
        Priority::Batch,
        Priority::Batch,
        Priority::Standard,
        Priority::Standard,
        Priority::Interactive,
        Priority::Interactive,
    ] {
        let (j, _) = s.insert_job(T, &job_of(p, 4)).await.expect("insert");
        class.insert(j.job.id, p);
    }
    // Three slots, one kept for batch while batch work waits.
    let policy = Policy {
        batch_share: 0.1,
        ..bound(3)
    };
    assert_eq!(dispatch_once(s, &q, &policy).await.expect("dispatch"), 3);
    let first = drain(&q).await;
    let classes: Vec<Priority> = first.iter().map(|t| class[&t.job_id]).collect();
    assert_eq!(
        classes,
        [
            Priority::Interactive,
            Priority::Interactive,
            Priority::Batch
        ]
    );
    for t in &first[..2] {
        s.record_result(at(t), &done(1), POLICY)
            .await
            .expect("result");
    }
    // The two free denoise slots go to standard work (batch has its share in flight); the
    // interactive jobs' vocode tasks go out on their own bound.
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let next: Vec<(TaskKind, Priority)> = drain(&q)
        .await
        .iter()
        .map(|t| (t.kind, class[&t.job_id]))
        .collect();
    let denoise: Vec<Priority> = next
        .iter()
        .filter(|t| t.0 == TaskKind::Denoise)
        .map(|t| t.1)
        .collect();
    assert_eq!(denoise, [Priority::Standard, Priority::Standard]);
    assert_eq!(next.iter().filter(|t| t.0 == TaskKind::Vocode).count(), 2);
}

pub(super) async fn tenants_share_a_class_by_weight(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    for _ in 0..40 {
        for tenant in ["light", "heavy"] {
            s.insert_job(tenant, &job_of(Priority::Standard, 4))
                .await
                .expect("insert");
        }
    }
    let policy = Policy {
        weights: "light=1,heavy=3".parse().expect("weights"),
        ..bound(4)
    };
    // Both stay backlogged for 40 tasks: 10 to 30.
    let mut served = std::collections::HashMap::<String, usize>::new();
    let mut total = 0;
    while total < 40 {
        assert!(dispatch_once(s, &q, &policy).await.expect("dispatch") > 0);
        for t in drain(&q).await {
            if t.kind == TaskKind::Denoise {
                *served.entry(t.tenant.clone()).or_default() += 1;
                total += 1;
            }
            s.record_result(at(&t), &done(1), POLICY)
                .await
                .expect("result");
        }
    }
    assert_eq!((served["light"], served["heavy"]), (10, 30), "{served:?}");
}

pub(super) async fn a_batch_chunk_yields_to_interactive_work_and_resumes(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (batch, _) = s
        .insert_job(T, &job_of(Priority::Batch, 8))
        .await
        .expect("insert");
    let batch = batch.job.id;
    let policy = Policy {
        batch_share: 0.1,
        ..bound(1)
    };
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let b0 = drain(&q).await.pop().expect("batch chunk 0");
    let (inter, _) = s
        .insert_job(T, &job_of(Priority::Interactive, 4))
        .await
        .expect("insert");
    s.record_result(at(&b0), &done(1), POLICY)
        .await
        .expect("result");
    // The batch job's next chunk waits in the backlog; the interactive job goes first.
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let i0 = drain(&q).await.pop().expect("interactive chunk");
    assert_eq!(i0.job_id, inter.job.id);
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    assert!(drain(&q).await.is_empty());
    s.record_result(at(&i0), &done(1), POLICY)
        .await
        .expect("result");
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let resumed = drain(&q)
        .await
        .into_iter()
        .find(|t| t.kind == TaskKind::Denoise)
        .expect("batch chunk 1");
    assert_eq!(
        (resumed.job_id, resumed.chunk, resumed.from_step),
        (batch, 1, 4)
    );
    let history = s.history(batch).await.expect("history");
    assert_eq!(
        kinds_of(&history),
        [
            "queued",
            "dispatched",
            "chunk_done",
            "preempted",
            "dispatched"
        ]
    );
    assert_eq!(history[3].chunk, Some(1));
}

pub(super) async fn a_next_chunk_is_routed_to_the_worker_holding_its_latent(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (held, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (other, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (reported, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (held, other, reported) = (held.job.id, other.job.id, reported.job.id);
    s.record_heartbeat(&heartbeat("w1", 4, &[held, other], false))
        .await
        .expect("heartbeat");
    s.record_heartbeat(&heartbeat("w2", 4, &[], false))
        .await
        .expect("heartbeat");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let first = drain(&q).await;
    let t_held = first.iter().find(|t| t.job_id == held).expect("held");
    let t_other = first.iter().find(|t| t.job_id == other).expect("other");
    s.record_result(by(t_held, "w1"), &done(1), POLICY)
        .await
        .expect("result");
    // w2 ran the other job's chunk but does not hold its latent.
    s.record_result(by(t_other, "w2"), &done(1), POLICY)
        .await
        .expect("result");
    // w2 ran this one's chunk and says in its result that it holds the latent: routed at
    // once, before any heartbeat lists the job.
    let t_reported = first
        .iter()
        .find(|t| t.job_id == reported)
        .expect("reported");
    let held_done = Outcome::Done {
        millis: 1,
        outputs: Vec::new(),
        held: true,
    };
    s.record_result(by(t_reported, "w2"), &held_done, POLICY)
        .await
        .expect("result");
    assert_eq!(dispatch_once(s, &q, &bound(8)).await.expect("dispatch"), 3);
    drain(&q).await;
    let routed = |h: Vec<super::HistoryEvent>| {
        h.into_iter()
            .filter(|e| e.kind == "dispatched" && e.chunk == Some(1))
            .map(|e| e.detail.get("routed_to").cloned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        routed(s.history(held).await.expect("history")),
        [Some(serde_json::json!("w1"))]
    );
    assert_eq!(routed(s.history(other).await.expect("history")), [None]);
    assert_eq!(
        routed(s.history(reported).await.expect("history")),
        [Some(serde_json::json!("w2"))]
    );
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

/// An ended job's checkpoints are deleted once, a running job's are kept.
pub(super) async fn the_checkpoints_of_ended_jobs_are_deleted_once(s: &dyn JobStore) {
    use bytes::Bytes;
    use tutti_shared::blob::{BlobStore, LocalStore};
    use tutti_shared::job::checkpoint_key;

    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = LocalStore::new(dir.path());
    let (ended, _) = s
        .insert_job(T, &new_job(12, 4, None))
        .await
        .expect("insert");
    let (running, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (ended, running) = (ended.job.id, running.job.id);
    for (job, chunks) in [(ended, 3), (running, 2)] {
        for c in 0..chunks {
            blobs
                .put(&checkpoint_key(job, c), Bytes::from_static(b"latent"), "x")
                .await
                .expect("put");
        }
    }
    s.cancel_job(T.into(), ended).await.expect("cancel");
    assert!(s
        .checkpoints_to_clear(Duration::from_secs(3600), 10)
        .await
        .expect("due")
        .is_empty());
    assert_eq!(
        s.checkpoints_to_clear(Duration::ZERO, 10)
            .await
            .expect("due"),
        vec![(ended, 3)]
    );
    let cleared = crate::janitor::sweep(s, &blobs, Duration::ZERO)
        .await
        .expect("sweep");
    assert_eq!(cleared, 1);
    for c in 0..3 {
        assert!(blobs
            .get(&checkpoint_key(ended, c))
            .await
            .expect("get")
            .is_none());
    }
    for c in 0..2 {
        assert!(blobs
            .get(&checkpoint_key(running, c))
            .await
            .expect("get")
            .is_some());
    }
    // Marked: the next sweep finds nothing.
    assert!(s
        .checkpoints_to_clear(Duration::ZERO, 10)
        .await
        .expect("due")
        .is_empty());
    assert_eq!(
        crate::janitor::sweep(s, &blobs, Duration::ZERO)
            .await
            .expect("sweep"),
        0
    );
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
    tenants_keys_and_revocation,
    jobs_in_flight_limit_stores_nothing_and_admin_sees_all,
    capacity_follows_the_heartbeats_of_live_workers,
    tasks_of_a_silent_worker_go_back_at_once,
    classes_go_in_order_and_batch_keeps_a_share,
    tenants_share_a_class_by_weight,
    a_batch_chunk_yields_to_interactive_work_and_resumes,
    a_next_chunk_is_routed_to_the_worker_holding_its_latent,
    the_checkpoints_of_ended_jobs_are_deleted_once,
);
