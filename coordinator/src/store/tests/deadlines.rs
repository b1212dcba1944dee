//! The job store suite: deadlines (a job past its deadline stops at its next chunk boundary,
//! cancelled with that reason) and a queued job's place in the queue.

use std::time::Duration;

use chrono::Utc;
use tutti_proto::v1 as pb;
use tutti_shared::job::Priority;
use tutti_shared::taskqueue::MemoryQueue;
use uuid::Uuid;

use super::{at, bound, done, drain, new_job, POLICY, T};
use crate::dispatcher::dispatch_once;
use crate::sched::TenantWeights;
use crate::store::{JobStore, Retried};
use crate::validate::NewJob;

const TIMEOUT: Duration = Duration::from_secs(10);

fn with_deadline(in_ms: i64) -> NewJob {
    let mut job = new_job(8, 4, None);
    job.accepted.deadline = Some(crate::api::ts(
        Utc::now() + chrono::Duration::milliseconds(in_ms),
    ));
    job.accepted.webhook = Some(pb::Webhook {
        url: "http://127.0.0.1:9/hook".into(),
        events: vec![pb::WebhookEvent::Cancelled as i32],
    });
    job
}

async fn job_state(s: &dyn JobStore, id: Uuid) -> (String, Option<String>, i32) {
    let j = s
        .get_job(T.into(), id)
        .await
        .expect("get")
        .expect("job")
        .job;
    (j.state.to_string(), j.error_code, j.steps_done)
}

pub(super) async fn a_running_job_past_its_deadline_stops_at_its_next_chunk(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &with_deadline(300)).await.expect("insert");
    let id = job.job.id;
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("chunk 0");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Its chunk is running: the sweep leaves it to the chunk's end.
    assert_eq!(s.expire_deadlines().await.expect("sweep"), 0);
    s.record_result(at(&t), &done(5), POLICY)
        .await
        .expect("result");
    assert_eq!(
        job_state(s, id).await,
        ("cancelled".into(), Some("DEADLINE_EXCEEDED".into()), 4)
    );
    assert_eq!(dispatch_once(s, &q, &bound(8)).await.expect("dispatch"), 0);
    let history = s.history(id).await.expect("history");
    let last = history.last().expect("events");
    assert_eq!(last.kind, "cancelled");
    assert_eq!(last.detail["reason"], "DEADLINE_EXCEEDED");
    // Its webhook says why.
    let d = s.list_deliveries(T, None, None, 10).await.expect("list");
    assert_eq!(d.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&d[0].payload).expect("json");
    assert_eq!(
        (body["type"].as_str(), body["data"]["reason"].as_str()),
        (Some("job.cancelled"), Some("DEADLINE_EXCEEDED"))
    );
}

pub(super) async fn a_queued_job_past_its_deadline_is_cancelled_once(s: &dyn JobStore) {
    let (late, _) = s.insert_job(T, &with_deadline(100)).await.expect("insert");
    let (other, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (later, _) = s
        .insert_job(T, &with_deadline(60_000))
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.expire_deadlines().await.expect("sweep"), 1);
    assert_eq!(s.expire_deadlines().await.expect("again"), 0);
    assert_eq!(job_state(s, late.job.id).await.0, "cancelled");
    assert_eq!(job_state(s, other.job.id).await.0, "queued");
    assert_eq!(job_state(s, later.job.id).await.0, "queued");
    // A retry runs it again without the deadline that passed.
    let (_, retried) = s
        .retry_job(T.into(), late.job.id)
        .await
        .expect("retry")
        .expect("found");
    assert!(matches!(retried, Retried::Requeued { .. }), "{retried:?}");
    assert_eq!(s.expire_deadlines().await.expect("sweep"), 0);
    assert_eq!(job_state(s, late.job.id).await, ("queued".into(), None, 0));
}

fn interactive() -> NewJob {
    NewJob {
        priority: Priority::Interactive,
        ..new_job(8, 4, None)
    }
}

pub(super) async fn queued_jobs_know_their_place(s: &dyn JobStore) {
    let weights = TenantWeights::default();
    let w = &weights;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            s.insert_job(T, &interactive())
                .await
                .expect("insert")
                .0
                .job
                .id,
        );
    }
    // Lower classes wait behind it; another tenant's work shares its class.
    let standard = NewJob {
        priority: Priority::Standard,
        ..new_job(8, 4, None)
    };
    let (low, _) = s.insert_job(T, &standard).await.expect("insert");
    let place = |id| async move {
        s.queue_read(T.into(), id, TIMEOUT)
            .await
            .expect("read")
            .map(|r| r.place(w))
    };
    assert_eq!(place(ids[0]).await.map(|p| p.0), Some(0));
    assert_eq!(place(ids[2]).await.map(|p| p.0), Some(2));
    assert_eq!(place(low.job.id).await.map(|p| p.0), Some(3));
    s.insert_job("tenant-b", &interactive())
        .await
        .expect("insert");
    assert_eq!(place(ids[2]).await.map(|p| p.0), Some(3));
    // No recent pace: no estimate.
    assert_eq!(place(ids[2]).await.and_then(|p| p.1), None);
    // Another tenant's job is not in scope.
    assert!(s
        .queue_read("tenant-b".into(), ids[2], TIMEOUT)
        .await
        .expect("read")
        .is_none());

    // The first one goes out: it has no place any more, the others move up; once a chunk
    // has finished, the farm has a pace to estimate from.
    let q = MemoryQueue::new();
    dispatch_once(s, &q, &bound(1)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("task");
    assert_eq!(t.job_id, ids[0]);
    assert!(place(ids[0]).await.is_none());
    assert_eq!(place(ids[2]).await.map(|p| p.0), Some(2));
    s.record_result(at(&t), &done(400), POLICY)
        .await
        .expect("result");
    let (_, times) = place(ids[2]).await.expect("queued");
    let (start, end) = times.expect("a pace");
    assert!(end > start, "{start:?} {end:?}");
}

job_store_suite!(
    a_running_job_past_its_deadline_stops_at_its_next_chunk,
    a_queued_job_past_its_deadline_is_cancelled_once,
    queued_jobs_know_their_place,
);
