//! The job store suite: DeleteJob (words blanked, objects listed, usage kept, idempotent,
//! scoped) and the retention of outputs.

use chrono::{Duration as Span, Utc};
use prost::Message;

use super::*;

async fn succeed_with_output(s: &dyn JobStore, q: &MemoryQueue) -> (Uuid, String) {
    let (job, _) = s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    let id = job.job.id;
    dispatch_once(s, q, &bound(8)).await.expect("dispatch");
    let t = drain(q).await.pop().expect("denoise");
    s.record_result(at(&t), &done(10), POLICY)
        .await
        .expect("denoised");
    dispatch_once(s, q, &bound(8)).await.expect("dispatch");
    let v = drain(q).await.pop().expect("vocode");
    let key = format!("outputs/{T}/{id}/0.wav");
    let out = Outcome::Done {
        millis: 5,
        outputs: vec![OutputInfo {
            index: 0,
            key: key.clone(),
            sha256: "00".into(),
            size_bytes: 10,
            duration_s: 2.0,
            sample_rate: 44_100,
            channels: 1,
            loudness_lufs: None,
            true_peak_dbtp: None,
        }],
        held: false,
    };
    s.record_result(at(&v), &out, POLICY)
        .await
        .expect("vocoded");
    (id, key)
}

pub(super) async fn a_deleted_job_loses_its_words_and_objects_and_keeps_its_usage(
    s: &dyn JobStore,
) {
    let q = MemoryQueue::new();
    s.create_tenant(
        T,
        &Limits {
            retain_outputs_days: Some(1),
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    let (id, key) = succeed_with_output(s, &q).await;
    let now = Utc::now();
    let rec = s.get_job(T.into(), id).await.expect("get").expect("job");
    let out = &rec.outputs[0];
    let expires = out.expires_at.expect("retention sets expires_at");
    assert!(
        (expires - (now + Span::days(1))).num_seconds().abs() < 120,
        "{expires}"
    );
    assert!(out.available(now) && !out.available(now + Span::days(2)));
    // Retention: due only once the day has passed.
    assert!(s.outputs_to_expire(now, 10).await.expect("due").is_empty());
    assert_eq!(
        s.outputs_to_expire(now + Span::days(2), 10)
            .await
            .expect("due"),
        vec![(id, 0, key.clone())]
    );

    // Another tenant's delete finds nothing and changes nothing.
    assert!(s
        .delete_job(Scope::Tenant("tenant-b"), id)
        .await
        .expect("delete")
        .is_none());
    let (rec, deleted) = s
        .delete_job(T.into(), id)
        .await
        .expect("delete")
        .expect("job");
    assert_eq!(deleted.keys, vec![key.clone()]);
    assert!(deleted.newly && !deleted.cancelled);
    assert!(rec.job.deleted_at.is_some());
    assert_eq!(rec.job.spec.0.prompt, "");
    let request =
        tutti_proto::v1::SubmitGenerationRequest::decode(rec.job.request.as_slice()).expect("req");
    assert_eq!(request.prompt_kind, None);
    assert!(rec.outputs[0].deleted && !rec.outputs[0].available(now));
    // The usage record stays; the janitor has nothing left of it to expire.
    let usage = s
        .usage_record(T.into(), id)
        .await
        .expect("usage")
        .expect("kept");
    assert_eq!(usage.outcome, "succeeded");
    assert!(s
        .outputs_to_expire(now + Span::days(2), 10)
        .await
        .expect("due")
        .is_empty());
    // Again: the same objects to delete, nothing else changes.
    let (_, again) = s
        .delete_job(T.into(), id)
        .await
        .expect("delete")
        .expect("job");
    assert_eq!(again.keys, vec![key]);
    assert!(!again.newly);
    let deletes = kinds_of(&s.history(id).await.expect("history"))
        .into_iter()
        .filter(|k| *k == "deleted")
        .count();
    assert_eq!(deletes, 1);

    // A job that has not ended is cancelled, then deleted.
    let (live, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (rec, deleted) = s
        .delete_job(T.into(), live.job.id)
        .await
        .expect("delete")
        .expect("job");
    assert!(deleted.cancelled && deleted.newly && deleted.keys.is_empty());
    assert_eq!(rec.job.state, tutti_shared::job::JobState::Cancelled);
    let usage = s
        .usage_record(T.into(), live.job.id)
        .await
        .expect("usage")
        .expect("a cancelled job's record");
    assert_eq!(usage.outcome, "cancelled");
}

pub(super) async fn expired_outputs_are_marked_gone(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    s.create_tenant(
        T,
        &Limits {
            retain_outputs_days: Some(3),
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    let (id, key) = succeed_with_output(s, &q).await;
    let later = Utc::now() + Span::days(4);
    let due = s.outputs_to_expire(later, 10).await.expect("due");
    assert_eq!(due, vec![(id, 0, key)]);
    s.outputs_expired(&[(id, 0)]).await.expect("marked");
    let rec = s.get_job(T.into(), id).await.expect("get").expect("job");
    assert!(rec.outputs[0].deleted);
    assert!(s
        .outputs_to_expire(later, 10)
        .await
        .expect("due")
        .is_empty());
    // The job itself is not deleted: its words stay.
    assert_eq!(rec.job.deleted_at, None);
    assert_eq!(rec.job.spec.0.prompt, "a prompt");
}

pub(super) async fn a_batch_deletes_every_item_once(s: &dyn JobStore) {
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
            job: Ok(new_job(4, 4, None)),
        })
        .collect();
    s.batches()
        .add_items(T, batch, &items)
        .await
        .expect("items");
    // Another tenant's delete finds no batch.
    assert!(s
        .delete_batch("tenant-b", batch)
        .await
        .expect("delete")
        .is_none());
    let deleted = s
        .delete_batch(T, batch)
        .await
        .expect("delete")
        .expect("batch");
    assert_eq!(deleted.len(), 2);
    assert!(deleted.iter().all(|(_, d)| d.newly && d.cancelled));
    for (job, _) in &deleted {
        let rec = s.get_job(T.into(), *job).await.expect("get").expect("job");
        assert!(rec.job.deleted_at.is_some());
        assert_eq!(rec.job.spec.0.prompt, "");
    }
    let again = s
        .delete_batch(T, batch)
        .await
        .expect("delete")
        .expect("batch");
    assert!(again.iter().all(|(_, d)| !d.newly));
}

pub(super) async fn own_init_clips_expire_and_their_jobs_stay_ended(s: &dyn JobStore) {
    use tutti_shared::job::InitAudio;
    s.create_tenant(
        T,
        &Limits {
            retain_inputs_days: Some(1),
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    let with_clip = |key: String| {
        let mut new = new_job(4, 4, None);
        new.spec.init_audio = Some(InitAudio { key, strength: 0.5 });
        new
    };
    let own = tutti_shared::job::init_audio_job_key(T, Uuid::new_v4());
    let (job, _) = s
        .insert_job(T, &with_clip(own.clone()))
        .await
        .expect("insert");
    // A clip stored by content hash (older releases) may be shared: never expired.
    let (shared, _) = s
        .insert_job(T, &with_clip("inputs/00ff.wav".into()))
        .await
        .expect("insert");
    let now = Utc::now();
    // Not ended: kept.
    assert!(s
        .inputs_to_expire(now + Span::days(2), 10)
        .await
        .expect("due")
        .is_empty());
    for id in [job.job.id, shared.job.id] {
        s.cancel_job(T.into(), id)
            .await
            .expect("cancel")
            .expect("job");
    }
    assert!(s.inputs_to_expire(now, 10).await.expect("due").is_empty());
    let due = s
        .inputs_to_expire(now + Span::days(2), 10)
        .await
        .expect("due");
    assert_eq!(due, vec![(job.job.id, own)]);
    s.inputs_expired(&[job.job.id]).await.expect("marked");
    assert!(s
        .inputs_to_expire(now + Span::days(2), 10)
        .await
        .expect("due")
        .is_empty());
    // Without its clip the job cannot run again; the other one can.
    let (_, retried) = s
        .retry_job(T.into(), job.job.id)
        .await
        .expect("retry")
        .expect("job");
    assert_eq!(retried, crate::store::Retried::InputsGone);
    let (_, retried) = s
        .retry_job(T.into(), shared.job.id)
        .await
        .expect("retry")
        .expect("job");
    assert!(matches!(retried, crate::store::Retried::Requeued { .. }));
    // A deleted job's clip went with its delete: retention does not sweep it again.
    let other = tutti_shared::job::init_audio_job_key(T, Uuid::new_v4());
    let (deleted, _) = s
        .insert_job(T, &with_clip(other.clone()))
        .await
        .expect("insert");
    let (_, d) = s
        .delete_job(T.into(), deleted.job.id)
        .await
        .expect("delete")
        .expect("job");
    assert!(d.keys.contains(&other), "{:?}", d.keys);
    assert!(s
        .inputs_to_expire(now + Span::days(2), 10)
        .await
        .expect("due")
        .is_empty());
}

pub(super) async fn batch_manifests_expire_until_the_batch_finishes_again(s: &dyn JobStore) {
    use crate::store::batches::NewItem;
    s.create_tenant(
        T,
        &Limits {
            retain_manifests_days: Some(1),
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    let batch = crate::batches::batch_id(T, "m.jsonl");
    let uri = "s3://farm/uploads/tenant-a/m.jsonl".to_string();
    s.batches()
        .open_batch(T, batch, "m.jsonl", Some(&uri), None)
        .await
        .expect("open");
    let item = NewItem {
        item_id: "a".into(),
        line: 1,
        job_id: crate::batches::item_job_id(batch, "a"),
        job: Ok(new_job(4, 4, None)),
    };
    s.batches()
        .add_items(T, batch, &[item])
        .await
        .expect("items");
    s.batches()
        .cancel_batch(T, batch)
        .await
        .expect("cancel")
        .expect("batch");
    let now = Utc::now();
    // Not finished (no results yet): kept.
    assert!(s
        .manifests_to_expire(now + Span::days(2), 10)
        .await
        .expect("due")
        .is_empty());
    let key = format!("batches/{T}/{batch}/results.jsonl");
    s.batches().set_results(batch, &key).await.expect("results");
    assert!(s
        .manifests_to_expire(now, 10)
        .await
        .expect("due")
        .is_empty());
    let due = s
        .manifests_to_expire(now + Span::days(2), 10)
        .await
        .expect("due");
    assert_eq!(due, vec![(batch, T.to_string(), Some(key), Some(uri))]);
    s.manifests_expired(&[batch]).await.expect("marked");
    let (row, _) = s
        .batches()
        .get_batch(T, batch)
        .await
        .expect("get")
        .expect("batch");
    assert!(row.manifests_cleared);
    assert!(s
        .manifests_to_expire(now + Span::days(2), 10)
        .await
        .expect("due")
        .is_empty());
    // Retried items finish the batch again with a new results manifest: kept anew.
    s.retry_batch_items(T, batch, true)
        .await
        .expect("retry")
        .expect("batch");
    let (row, _) = s
        .batches()
        .get_batch(T, batch)
        .await
        .expect("get")
        .expect("batch");
    assert!(!row.manifests_cleared && row.results_key.is_none());
}

job_store_suite!(
    batch_manifests_expire_until_the_batch_finishes_again,
    own_init_clips_expire_and_their_jobs_stay_ended,
    a_deleted_job_loses_its_words_and_objects_and_keeps_its_usage,
    expired_outputs_are_marked_gone,
    a_batch_deletes_every_item_once,
);
