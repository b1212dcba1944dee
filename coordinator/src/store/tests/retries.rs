//! The job store suite: retries after the fact, of a failed or cancelled job and of a batch's
//! items.

use tutti_shared::job::{JobState, Priority};

use super::*;
use crate::store::batches::NewItem;
use crate::store::Retried;

fn broken() -> Outcome {
    Outcome::Failed {
        code: ErrorCode::ModelError,
        message: "it broke".into(),
        retryable: false,
    }
}

async fn retry(s: &dyn JobStore, scope: Scope<'_>, id: Uuid) -> Option<Retried> {
    s.retry_job(scope, id).await.expect("retry").map(|(_, r)| r)
}

pub(super) async fn a_failed_job_resumes_from_its_last_checkpoint(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let id = job.job.id;
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t0 = drain(&q).await.pop().expect("chunk 0");
    s.record_result(at(&t0), &done(10), POLICY)
        .await
        .expect("done");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t1 = drain(&q).await.pop().expect("chunk 1");
    s.record_result(at(&t1), &broken(), POLICY)
        .await
        .expect("fail");
    assert_eq!(state(s, id).await.0, "failed");

    // Another tenant's job is not there for it.
    assert_eq!(retry(s, Scope::Tenant("tenant-b"), id).await, None);
    let (rec, retried) = s
        .retry_job(T.into(), id)
        .await
        .expect("retry")
        .expect("job");
    assert_eq!(
        retried,
        Retried::Requeued {
            chunk: 1,
            rewound: false,
            was_cancelled: false
        }
    );
    assert_eq!(rec.job.state, JobState::Queued);
    assert_eq!((rec.job.error_code, rec.job.finished_at), (None, None));
    // The request (and so its seed) is the one stored; only the state moved.
    assert_eq!(rec.job.request, job.job.request);
    assert_eq!(rec.job.spec.0.seed, job.job.spec.0.seed);
    // Asked again before it ends: the same retry, nothing changed.
    assert_eq!(retry(s, T.into(), id).await, Some(Retried::AlreadyRequeued));

    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let again = drain(&q).await;
    assert_eq!(again.len(), 1, "retried once: {again:?}");
    let t1b = &again[0];
    // Resumes at chunk 1 from the checkpoint of chunk 0, as the next attempt.
    assert_eq!(
        (t1b.chunk, t1b.from_step, t1b.attempt),
        (1, 4, t1.attempt + 1)
    );
    assert_eq!(state(s, id).await.2, 4, "chunk 0's steps are kept");
    // The retry has a fresh set of attempts: a lost worker sends it back once more.
    let lost = Outcome::Failed {
        code: ErrorCode::ModelError,
        message: "flaky".into(),
        retryable: true,
    };
    s.record_result(at(t1b), &lost, POLICY)
        .await
        .expect("retry");
    assert_eq!(state(s, id).await.0, "running");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t1b = &drain(&q).await.pop().expect("chunk 1 once more");
    assert_eq!(t1b.attempt, t1.attempt + 2);
    // The failed attempt's late result is stale.
    s.record_result(at(&t1), &done(1), POLICY)
        .await
        .expect("stale");
    s.record_result(at(t1b), &done(10), POLICY)
        .await
        .expect("done");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let v = drain(&q).await.pop().expect("vocode");
    s.record_result(at(&v), &done(1), POLICY)
        .await
        .expect("done");
    assert_eq!(state(s, id).await.0, "succeeded");
    assert_eq!(
        retry(s, T.into(), id).await,
        Some(Retried::Refused(JobState::Succeeded))
    );
    let events = s.history(id).await.expect("history");
    let kinds = kinds_of(&events);
    let at_retry = kinds.iter().position(|k| *k == "retried").expect("retried");
    assert_eq!(kinds[at_retry - 1], "failed");
    let e = &events[at_retry];
    assert_eq!((e.chunk, e.attempt), (Some(1), Some(t1.attempt as i32 + 1)));
    assert_eq!(e.detail["from"], "failed");
}

pub(super) async fn only_ended_jobs_are_retried(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let id = job.job.id;
    assert_eq!(
        retry(s, T.into(), id).await,
        Some(Retried::Refused(JobState::Queued))
    );
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    assert_eq!(
        retry(s, T.into(), id).await,
        Some(Retried::Refused(JobState::Running))
    );
    assert_eq!(retry(s, T.into(), Uuid::new_v4()).await, None);
    // An admin's scope reaches every tenant's job.
    assert_eq!(
        retry(s, Scope::All, id).await,
        Some(Retried::Refused(JobState::Running))
    );
}

pub(super) async fn a_cancelled_job_without_checkpoints_starts_over(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let id = job.job.id;
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t0 = drain(&q).await.pop().expect("chunk 0");
    s.record_result(at(&t0), &done(10), POLICY)
        .await
        .expect("done");
    s.cancel_job(T.into(), id).await.expect("cancel");
    // The janitor cleared its checkpoints: nothing to resume from.
    s.checkpoints_cleared(&[id]).await.expect("cleared");
    assert_eq!(
        retry(s, T.into(), id).await,
        Some(Retried::Requeued {
            chunk: 0,
            rewound: true,
            was_cancelled: true
        })
    );
    assert_eq!(state(s, id).await, ("queued".into(), "denoise".into(), 0));
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("chunk 0 again");
    assert_eq!((t.chunk, t.from_step, t.attempt), (0, 0, t0.attempt + 1));
    // Its new checkpoints are the janitor's again once it ends.
    s.cancel_job(T.into(), id).await.expect("cancel");
    let due = s
        .checkpoints_to_clear(Duration::ZERO, 10)
        .await
        .expect("due");
    assert!(due.iter().any(|(j, _)| *j == id), "{due:?}");
}

fn item(batch: Uuid, id: &str, line: i64) -> NewItem {
    let mut job = new_job(4, 4, None);
    job.priority = Priority::Batch;
    NewItem {
        item_id: id.to_string(),
        line,
        job_id: crate::batches::item_job_id(batch, id),
        job: Ok(job),
    }
}

pub(super) async fn a_batch_retries_its_failed_items_and_finishes_again(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let b = s.batches();
    let id = crate::batches::batch_id(T, "retry.jsonl");
    b.open_batch(T, id, "retry.jsonl", None, None)
        .await
        .expect("open");
    let items = [item(id, "a", 1), item(id, "b", 2), item(id, "c", 3)];
    b.add_items(T, id, &items).await.expect("add");
    b.seal_batch(T, id).await.expect("seal");
    let job = |i: &str| crate::batches::item_job_id(id, i);
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    for t in drain(&q).await {
        let outcome = if t.job_id == job("a") {
            broken()
        } else {
            done(1)
        };
        s.record_result(at(&t), &outcome, POLICY)
            .await
            .expect("result");
    }
    s.cancel_job(T.into(), job("b")).await.expect("cancel b");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    for t in drain(&q).await {
        s.record_result(at(&t), &done(1), POLICY)
            .await
            .expect("vocode");
    }
    assert_eq!(state(s, job("c")).await.0, "succeeded");
    assert_eq!(
        b.batches_to_finish().await.expect("due"),
        vec![(T.to_string(), id)]
    );
    b.set_results(id, "results/x.jsonl").await.expect("results");

    assert!(s
        .retry_batch_items("tenant-b", id, true)
        .await
        .expect("retry")
        .is_none());
    let retried = s
        .retry_batch_items(T, id, false)
        .await
        .expect("retry")
        .expect("batch");
    assert_eq!(retried, vec![(job("a"), false)]);
    assert_eq!(state(s, job("b")).await.0, "cancelled");
    let (row, counts) = b.get_batch(T, id).await.expect("get").expect("batch");
    assert_eq!((row.results_key, row.finished_at), (None, None));
    assert_eq!(
        (counts.queued, counts.cancelled, counts.succeeded),
        (1, 1, 1)
    );
    // Not due while an item runs again.
    assert!(b.batches_to_finish().await.expect("due").is_empty());

    let retried = s
        .retry_batch_items(T, id, true)
        .await
        .expect("retry")
        .expect("batch");
    assert_eq!(retried, vec![(job("b"), true)]);
    for _ in 0..2 {
        dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
        for t in drain(&q).await {
            s.record_result(at(&t), &done(1), POLICY)
                .await
                .expect("result");
        }
    }
    let (_, counts) = b.get_batch(T, id).await.expect("get").expect("batch");
    assert_eq!(counts.succeeded, 3);
    // Every item ended again: the results are written again.
    assert_eq!(
        b.batches_to_finish().await.expect("due"),
        vec![(T.to_string(), id)]
    );
    // Nothing left to retry.
    let none = s.retry_batch_items(T, id, true).await.expect("retry");
    assert_eq!(none, Some(vec![]));
}

job_store_suite!(
    a_failed_job_resumes_from_its_last_checkpoint,
    only_ended_jobs_are_retried,
    a_cancelled_job_without_checkpoints_starts_over,
    a_batch_retries_its_failed_items_and_finishes_again,
);
