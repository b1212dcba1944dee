//! The job store suite: usage records written when jobs end, their totals by group, and the
//! budgets checked at submit.

use chrono::{Duration as Span, Utc};

use super::*;
use crate::store::usage::{UsageGroup, UsageQuery, UsageTotal};
use crate::tenancy::Budgets;

fn vocoded(job: Uuid, tenant: &str, seconds: f32) -> Outcome {
    Outcome::Done {
        millis: 500,
        outputs: vec![OutputInfo {
            index: 0,
            key: format!("outputs/{tenant}/{job}/0.wav"),
            sha256: "00".into(),
            size_bytes: 10,
            duration_s: seconds,
            sample_rate: 44_100,
            channels: 1,
            loudness_lufs: None,
            true_peak_dbtp: None,
        }],
        held: false,
    }
}

/// Runs a job of 8 steps (two chunks) to success on workers `w-gpu` (denoise, cuda) and `w-cpu`
/// (vocode, cpu), and returns its id.
async fn run_to_success(s: &dyn JobStore, q: &MemoryQueue, new: &NewJob) -> Uuid {
    let (job, _) = s.insert_job(T, new).await.expect("insert");
    let id = job.job.id;
    for (chunk, millis) in [(0, 1500), (1, 2500)] {
        dispatch_once(s, q, &bound(8)).await.expect("dispatch");
        let t = drain(q).await.pop().expect("denoise");
        assert_eq!(t.chunk, chunk);
        s.record_result(by(&t, "w-gpu"), &done(millis), POLICY)
            .await
            .expect("denoised");
    }
    dispatch_once(s, q, &bound(8)).await.expect("dispatch");
    let v = drain(q).await.pop().expect("vocode");
    s.record_result(by(&v, "w-cpu"), &vocoded(id, T, 2.0), POLICY)
        .await
        .expect("vocoded");
    id
}

fn device_heartbeat<'a>(worker: &'a str, device: &'a str) -> Heartbeat<'a> {
    Heartbeat {
        device,
        ..heartbeat(worker, 4, &[], false)
    }
}

async fn totals(s: &dyn JobStore, scope: Scope<'_>, group: UsageGroup) -> Vec<UsageTotal> {
    let now = Utc::now();
    s.usage(&UsageQuery {
        scope,
        from: now - Span::hours(1),
        to: now + Span::hours(1),
        group,
    })
    .await
    .expect("usage")
}

pub(super) async fn ended_jobs_leave_usage_records(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    s.record_heartbeat(&device_heartbeat("w-gpu", "cuda:0"))
        .await
        .expect("hb");
    s.record_heartbeat(&device_heartbeat("w-cpu", "cpu"))
        .await
        .expect("hb");
    let keyed = NewJob {
        api_key: Some("tt_0123456789ab".into()),
        ..new_job(8, 4, None)
    };
    let ok = run_to_success(s, &q, &keyed).await;
    let rec = s
        .usage_record(T.into(), ok)
        .await
        .expect("read")
        .expect("a record once it succeeded");
    assert_eq!(rec.tenant, T);
    assert_eq!(rec.api_key_id.as_deref(), Some("tt_0123456789ab"));
    assert_eq!(
        (rec.model.as_str(), rec.model_version.as_str()),
        ("tiny", "1")
    );
    assert_eq!((rec.outcome, rec.steps), ("succeeded", 8));
    assert!((rec.audio_seconds - 2.0).abs() < 1e-6, "{rec:?}");
    // The workers' own timings, by stage and device kind.
    let cuda = rec.stages[&("denoise".to_string(), "cuda".to_string())];
    let cpu = rec.stages[&("vocode".to_string(), "cpu".to_string())];
    assert!(
        (cuda - 4.0).abs() < 1e-6 && (cpu - 0.5).abs() < 1e-6,
        "{rec:?}"
    );
    assert!((rec.device_seconds - 4.5).abs() < 1e-6, "{rec:?}");
    assert_eq!(rec.batch_id, None);
    // Another tenant does not see it.
    assert_eq!(
        s.usage_record(Scope::Tenant("tenant-b"), ok)
            .await
            .expect("read"),
        None
    );

    // A failed job: its steps and device time, no audio.
    let (failing, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t0 = drain(&q).await.pop().expect("chunk 0");
    s.record_result(by(&t0, "w-gpu"), &done(1000), POLICY)
        .await
        .expect("done");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t1 = drain(&q).await.pop().expect("chunk 1");
    let broken = Outcome::Failed {
        code: ErrorCode::ModelError,
        message: "broke".into(),
        retryable: false,
    };
    s.record_result(by(&t1, "w-gpu"), &broken, POLICY)
        .await
        .expect("failed");
    let failed = s
        .usage_record(T.into(), failing.job.id)
        .await
        .expect("read")
        .expect("record of a failed job");
    assert_eq!((failed.outcome, failed.steps), ("failed", 4));
    assert_eq!(failed.audio_seconds, 0.0);
    assert!((failed.device_seconds - 1.0).abs() < 1e-6);
    // A cancelled job, and one still queued (no record yet).
    let (cancelled, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (queued, _) = s
        .insert_job("tenant-b", &new_job(8, 4, None))
        .await
        .expect("insert");
    s.cancel_job(T.into(), cancelled.job.id)
        .await
        .expect("cancel")
        .expect("job");
    let c = s
        .usage_record(T.into(), cancelled.job.id)
        .await
        .expect("read")
        .expect("record of a cancelled job");
    assert_eq!(
        (c.outcome, c.steps, c.device_seconds),
        ("cancelled", 0, 0.0)
    );
    assert_eq!(
        s.usage_record(Scope::All, queued.job.id)
            .await
            .expect("read"),
        None
    );
    // A retried job that ends again has one record, of its latest end.
    s.retry_job(T.into(), cancelled.job.id)
        .await
        .expect("retry")
        .expect("job");
    s.cancel_job(T.into(), cancelled.job.id)
        .await
        .expect("cancel")
        .expect("job");

    // Totals: by tenant, then by key, model, day and batch.
    let all = totals(s, T.into(), UsageGroup::Total).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let t = &all[0];
    assert_eq!((t.tenant.as_str(), t.group.as_str()), (T, ""));
    assert_eq!((t.jobs, t.succeeded, t.failed, t.cancelled), (3, 1, 1, 1));
    assert_eq!(t.steps, 12);
    assert!((t.audio_seconds - 2.0).abs() < 1e-6);
    assert!((t.device_seconds - 5.5).abs() < 1e-6, "{t:?}");
    let denoise: Vec<_> = t
        .devices
        .iter()
        .map(|d| (&d.stage[..], &d.device[..]))
        .collect();
    assert_eq!(denoise, [("denoise", "cuda"), ("vocode", "cpu")]);
    assert!((t.devices[0].seconds - 5.0).abs() < 1e-6);

    let by_key = totals(s, T.into(), UsageGroup::Key).await;
    let groups: Vec<(&str, i64)> = by_key.iter().map(|t| (&t.group[..], t.jobs)).collect();
    assert_eq!(groups, [("", 2), ("tt_0123456789ab", 1)]);
    let by_model = totals(s, T.into(), UsageGroup::Model).await;
    assert_eq!(by_model.len(), 1);
    assert_eq!(by_model[0].group, "tiny@1");
    let by_day = totals(s, T.into(), UsageGroup::Day).await;
    let today = Utc::now().format("%Y-%m-%d").to_string();
    assert!(by_day.iter().all(|t| t.group.len() == 10), "{by_day:?}");
    assert!(by_day.iter().any(|t| t.group == today), "{by_day:?}");
    assert_eq!(by_day.iter().map(|t| t.jobs).sum::<i64>(), 3);
    let by_batch = totals(s, T.into(), UsageGroup::Batch).await;
    assert_eq!(by_batch.len(), 1);
    assert_eq!(by_batch[0].group, "");
    // A period before the jobs holds nothing; another tenant sees nothing of T's.
    let past = s
        .usage(&UsageQuery {
            scope: T.into(),
            from: Utc::now() - Span::days(3),
            to: Utc::now() - Span::days(2),
            group: UsageGroup::Total,
        })
        .await
        .expect("usage");
    assert!(past.is_empty(), "{past:?}");
    assert!(totals(s, Scope::Tenant("tenant-b"), UsageGroup::Total)
        .await
        .is_empty());
    // Admins see every tenant (tenant-b's job is still queued: no record).
    let every = totals(s, Scope::All, UsageGroup::Total).await;
    assert_eq!(every.len(), 1);
}

pub(super) async fn batch_cancels_write_usage_with_the_batch(s: &dyn JobStore) {
    use crate::store::batches::NewItem;
    let batch = crate::batches::batch_id(T, "m.jsonl");
    s.batches()
        .open_batch(T, batch, "m.jsonl", None, None)
        .await
        .expect("open");
    let items: Vec<NewItem> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(line, id)| NewItem {
            item_id: id.to_string(),
            line: line as i64,
            job_id: crate::batches::item_job_id(batch, id),
            job: Ok(NewJob {
                api_key: Some("tt_00000000batch".into()),
                ..new_job(4, 4, None)
            }),
        })
        .collect();
    s.batches()
        .add_items(T, batch, &items)
        .await
        .expect("items");
    s.batches()
        .cancel_batch(T, batch)
        .await
        .expect("cancel")
        .expect("batch");
    let by_batch = totals(s, T.into(), UsageGroup::Batch).await;
    assert_eq!(by_batch.len(), 1, "{by_batch:?}");
    assert_eq!(by_batch[0].group, batch.to_string());
    assert_eq!((by_batch[0].jobs, by_batch[0].cancelled), (2, 2));
    // The key that submitted the batch is its items' key.
    let by_key = totals(s, T.into(), UsageGroup::Key).await;
    assert_eq!(by_key.len(), 1, "{by_key:?}");
    assert_eq!(by_key[0].group, "tt_00000000batch");
}

pub(super) async fn budgets_refuse_submits_until_their_period_resets(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    s.record_heartbeat(&device_heartbeat("w-gpu", "cuda:0"))
        .await
        .expect("hb");
    s.record_heartbeat(&device_heartbeat("w-cpu", "cpu"))
        .await
        .expect("hb");
    // 5 audio seconds a day: one job of 2 s delivered, one of 2 s in flight, a third refused.
    let budgets = Budgets {
        audio_seconds_per_day: Some(5.0),
        ..Default::default()
    };
    s.create_tenant(
        T,
        &Limits {
            budgets,
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    assert_eq!(
        s.tenant(T)
            .await
            .expect("read")
            .expect("tenant")
            .limits
            .budgets,
        budgets
    );
    run_to_success(s, &q, &new_job(8, 4, None)).await;
    s.insert_job(T, &new_job(8, 4, None))
        .await
        .expect("4 s of 5");
    let over = s.insert_job(T, &new_job(8, 4, None)).await;
    match &over {
        Err(Error::ResourceExhausted {
            limit,
            retry_after: Some(wait),
            detail,
        }) => {
            assert_eq!(*limit, "audio_seconds_per_day");
            assert!(detail.contains("resets at"), "{detail}");
            assert!(wait.as_secs() <= 86_400, "{wait:?}");
        }
        other => panic!("expected audio_seconds_per_day, got {other:?}"),
    }
    // The refused submit stored nothing.
    let jobs = s
        .list_jobs(T.into(), None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(jobs.len(), 2);
    // Device seconds per month: 4.5 s spent of 4, so no more submits; then lifted.
    s.set_limits(
        T,
        &Limits {
            budgets: Budgets {
                device_seconds_per_month: Some(4.0),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("limits");
    match s.insert_job(T, &new_job(8, 4, None)).await {
        Err(Error::ResourceExhausted { limit, .. }) => {
            assert_eq!(limit, "device_seconds_per_month")
        }
        other => panic!("expected device_seconds_per_month, got {other:?}"),
    }
    s.set_limits(T, &Limits::default()).await.expect("limits");
    s.insert_job(T, &new_job(8, 4, None))
        .await
        .expect("no budget");
    // Other tenants are not held to T's budget.
    s.insert_job("tenant-b", &new_job(8, 4, None))
        .await
        .expect("b");
}

job_store_suite!(
    ended_jobs_leave_usage_records,
    batch_cancels_write_usage_with_the_batch,
    budgets_refuse_submits_until_their_period_resets,
);
