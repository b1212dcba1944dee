//! The job store suite: A job after dispatch: chunks to outputs, retries, leases, cancels, lost workers, checkpoints.

use super::*;
use crate::notify::Change;

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
        channels: 2,
        loudness_lufs: Some(-14.02),
        true_peak_dbtp: Some(-1.5),
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
        (
            rec.outputs[0].key.as_str(),
            rec.outputs[0].sample_rate,
            rec.outputs[0].channels
        ),
        (out.key.as_str(), 16000, 2)
    );
    assert_eq!(
        (rec.outputs[0].loudness_lufs, rec.outputs[0].true_peak_dbtp),
        (Some(-14.02), Some(-1.5))
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
    while !heard.contains(&Change::Succeeded) && std::time::Instant::now() < deadline {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await {
            heard.push(c.what);
        }
    }
    for w in [
        Change::Queued,
        Change::Started,
        Change::Step,
        Change::Stage,
        Change::Succeeded,
    ] {
        assert!(heard.contains(&w), "no {w:?} notice in {heard:?}");
    }
}

pub(super) async fn retries_with_a_bound_and_fails_with_the_cause(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (job, _) = s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    let id = job.job.id;
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("task");
    let fail = Outcome::Failed {
        code: ErrorCode::ModelError,
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
        (Some("MODEL_ERROR"), Some("it broke"))
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

job_store_suite!(
    runs_a_job_chunk_by_chunk_to_its_outputs,
    retries_with_a_bound_and_fails_with_the_cause,
    expired_leases_come_back_as_a_new_attempt,
    a_cancelled_job_never_comes_back,
    tasks_of_a_silent_worker_go_back_at_once,
    the_checkpoints_of_ended_jobs_are_deleted_once,
);
