//! The conformance suite for backfill batches, on Postgres and SQLite (see `tests/mod.rs`).

use tutti_shared::job::Priority;
use tutti_shared::messages::{Outcome, OutputInfo};
use tutti_shared::taskqueue::MemoryQueue;
use uuid::Uuid;

use super::{at, bound, done, drain, new_job, POLICY, T};
use crate::dispatcher::dispatch_once;
use crate::error::Error;
use crate::store::batches::{ItemFilter, NewItem};
use crate::store::JobStore;

fn item(batch: Uuid, id: &str, line: i64, steps: u32) -> NewItem {
    let mut job = new_job(steps, 4, None);
    job.priority = Priority::Batch;
    NewItem {
        item_id: id.to_string(),
        line,
        job_id: crate::batches::item_job_id(batch, id),
        job: Ok(job),
    }
}

fn bad(batch: Uuid, id: &str, line: i64) -> NewItem {
    NewItem {
        item_id: id.to_string(),
        line,
        job_id: crate::batches::item_job_id(batch, id),
        job: Err("steps: must be between 1 and 50".into()),
    }
}

pub(super) async fn items_are_added_once_and_resubmissions_resume(s: &dyn JobStore) {
    let b = s.batches();
    let id = crate::batches::batch_id(T, "m.jsonl");
    let batch = b
        .open_batch(T, id, "m.jsonl", None, None)
        .await
        .expect("open");
    assert!(!batch.sealed && batch.results_key.is_none());
    let first = [item(id, "a", 1, 4), bad(id, "b", 2), item(id, "c", 3, 4)];
    let out = b.add_items(T, id, &first).await.expect("add");
    assert_eq!((out.accepted, out.existing), (2, 0));
    assert_eq!(
        out.rejected,
        vec![(
            2,
            "b".to_string(),
            "steps: must be between 1 and 50".to_string()
        )]
    );

    // The same rows again (a resumed submission) add nothing and report the bad row again;
    // the same item id with another request is a conflict; a fixed row replaces its rejection.
    b.open_batch(T, id, "m.jsonl", None, None)
        .await
        .expect("reopen");
    let again = [
        item(id, "a", 1, 4),
        bad(id, "b", 2),
        item(id, "c", 3, 8),
        item(id, "d", 4, 4),
        item(id, "d", 4, 4),
    ];
    let out = b.add_items(T, id, &again).await.expect("add again");
    // "d" twice in one chunk: stored once, the second found.
    assert_eq!((out.accepted, out.existing), (1, 2));
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.conflicts.len(), 1);
    assert_eq!(out.conflicts[0].1, "c");
    let fixed = b
        .add_items(T, id, &[item(id, "b", 2, 4)])
        .await
        .expect("fixed");
    assert_eq!(fixed.accepted, 1);

    let (_, counts) = b.get_batch(T, id).await.expect("get").expect("batch");
    assert_eq!((counts.queued, counts.rejected, counts.total()), (4, 0, 4));
    assert!(b.get_batch("tenant-b", id).await.expect("get").is_none());
    // Each item's job has the derived id, at batch priority.
    let job = s
        .get_job(T.into(), crate::batches::item_job_id(id, "a"))
        .await
        .expect("get job")
        .expect("item a's job");
    assert_eq!(job.job.priority, Priority::Batch.rank());

    // Pages in line order, and the state filter.
    let p1 = b.list_items(T, id, None, None, 2).await.expect("page 1");
    assert_eq!(
        p1.iter().map(|i| i.item_id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let after = p1.last().map(|i| (i.line, i.item_id.clone()));
    let p2 = b.list_items(T, id, None, after, 10).await.expect("page 2");
    assert_eq!(
        p2.iter().map(|i| i.item_id.as_str()).collect::<Vec<_>>(),
        ["c", "d"]
    );
    assert!(b
        .list_items(T, id, Some(ItemFilter::Rejected), None, 10)
        .await
        .expect("rejected")
        .is_empty());
    assert!(b
        .list_items("tenant-b", id, None, None, 10)
        .await
        .expect("other")
        .is_empty());
}

pub(super) async fn a_batch_finishes_once_every_item_has_ended(s: &dyn JobStore) {
    let b = s.batches();
    let q = MemoryQueue::new();
    let id = crate::batches::batch_id(T, "two");
    b.open_batch(T, id, "two", None, None).await.expect("open");
    b.add_items(
        T,
        id,
        &[
            item(id, "ok", 1, 4),
            bad(id, "no", 2),
            item(id, "gone", 3, 4),
        ],
    )
    .await
    .expect("add");
    // Run "ok" to its output; cancel "gone".
    let ok = crate::batches::item_job_id(id, "ok");
    let gone = crate::batches::item_job_id(id, "gone");
    s.cancel_job(T.into(), gone)
        .await
        .expect("cancel")
        .expect("job");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let t0 = drain(&q).await.pop().expect("denoise");
    assert_eq!(t0.job_id, ok);
    s.record_result(at(&t0), &done(5), POLICY)
        .await
        .expect("denoise done");
    assert!(
        b.batches_to_finish().await.expect("due").is_empty(),
        "not sealed yet"
    );
    b.seal_batch(T, id).await.expect("seal");
    assert!(
        b.batches_to_finish().await.expect("due").is_empty(),
        "an item is running"
    );
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let v = drain(&q).await.pop().expect("vocode");
    let outcome = Outcome::Done {
        millis: 5,
        outputs: vec![OutputInfo {
            index: 0,
            key: format!("outputs/{T}/{ok}/0.wav"),
            sha256: "ab".into(),
            size_bytes: 10,
            duration_s: 2.0,
            sample_rate: 16000,
            channels: 1,
            loudness_lufs: None,
            true_peak_dbtp: None,
        }],
        held: false,
    };
    s.record_result(at(&v), &outcome, POLICY)
        .await
        .expect("vocode done");

    assert_eq!(
        b.batches_to_finish().await.expect("due"),
        vec![(T.to_string(), id)]
    );
    let (_, c) = b.get_batch(T, id).await.expect("get").expect("batch");
    assert_eq!(
        (c.succeeded, c.cancelled, c.rejected, c.ended()),
        (1, 1, 1, 2)
    );
    assert!(c.first_started.is_some() && c.last_finished.is_some());
    let items = b.list_items(T, id, None, None, 10).await.expect("items");
    assert_eq!(items[0].outputs.len(), 1);
    assert_eq!(items[0].outputs[0].sha256, "ab");
    assert_eq!(
        (items[1].state.as_str(), items[1].job_id),
        ("rejected", None)
    );
    assert_eq!(
        items[1].error_message.as_deref(),
        Some("steps: must be between 1 and 50")
    );
    assert_eq!(items[2].state, "cancelled");

    // One claim at a time; the results are recorded once.
    let until = chrono::Utc::now() + chrono::Duration::seconds(60);
    assert!(b.claim_finish(id, until).await.expect("claim"));
    assert!(!b.claim_finish(id, until).await.expect("second claim"));
    b.set_results(id, "batches/x/results.jsonl")
        .await
        .expect("results");
    b.set_results(id, "batches/y/results.jsonl")
        .await
        .expect("results again");
    let (row, _) = b.get_batch(T, id).await.expect("get").expect("batch");
    assert_eq!(row.results_key.as_deref(), Some("batches/x/results.jsonl"));
    assert!(row.finished_at.is_some());
    assert!(b.batches_to_finish().await.expect("due").is_empty());
    assert!(!b
        .claim_finish(id, until)
        .await
        .expect("claim after results"));
}

pub(super) async fn a_cancelled_batch_cancels_its_items_and_takes_no_more(s: &dyn JobStore) {
    let b = s.batches();
    let q = MemoryQueue::new();
    let id = crate::batches::batch_id(T, "stop");
    b.open_batch(T, id, "stop", None, None).await.expect("open");
    b.add_items(T, id, &[item(id, "x", 1, 8), item(id, "y", 2, 8)])
        .await
        .expect("add");
    dispatch_once(s, &q, &bound(1)).await.expect("dispatch");
    let t = drain(&q).await.pop().expect("a task");
    s.record_progress(at(&t), 1).await.expect("progress");
    let running = b.cancel_batch(T, id).await.expect("cancel").expect("batch");
    assert_eq!(running, vec![t.job_id]);
    assert!(b
        .cancel_batch("tenant-b", id)
        .await
        .expect("other")
        .is_none());
    let (row, c) = b.get_batch(T, id).await.expect("get").expect("batch");
    assert!(row.cancelled && row.sealed);
    assert_eq!(c.cancelled, 2);
    assert!(matches!(
        b.open_batch(T, id, "stop", None, None).await,
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        b.add_items(T, id, &[item(id, "z", 3, 8)]).await,
        Err(Error::FailedPrecondition(_))
    ));
    // Nothing of it is dispatched any more.
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    assert!(drain(&q).await.is_empty());
}

macro_rules! batch_store_suite {
    ($($name:ident),+ $(,)?) => {
        mod postgres_suite {
            $(#[tokio::test] async fn $name() { super::$name(&$crate::store::tests::pg().await).await; })+
        }
        mod sqlite_suite {
            $(#[tokio::test] async fn $name() {
                let (s, _dir) = $crate::store::tests::sqlite().await;
                super::$name(&s).await;
            })+
        }
    };
}

pub(super) async fn batches_are_listed_newest_first_per_tenant(s: &dyn JobStore) {
    let b = s.batches();
    let mut ids = Vec::new();
    for name in ["first", "second", "third"] {
        let id = crate::batches::batch_id(T, name);
        b.open_batch(T, id, name, None, None).await.expect("open");
        ids.push(id);
        // Distinct creation times (SQLite keeps microseconds).
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let other = crate::batches::batch_id("tenant-b", "first");
    b.open_batch("tenant-b", other, "first", None, None)
        .await
        .expect("open");
    let page = b.list_batches(T, None, 2).await.expect("list");
    let names: Vec<&str> = page.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["third", "second"]);
    let last = page.last().expect("a row");
    let rest = b
        .list_batches(T, Some((last.created_at, last.id)), 2)
        .await
        .expect("list");
    assert_eq!(
        rest.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]],
        "the next page is the oldest, and another tenant's batch is not on it"
    );
    assert!(b
        .list_batches("tenant-c", None, 10)
        .await
        .expect("list")
        .is_empty());
}

batch_store_suite!(
    batches_are_listed_newest_first_per_tenant,
    items_are_added_once_and_resubmissions_resume,
    a_batch_finishes_once_every_item_has_ended,
    a_cancelled_batch_cancels_its_items_and_takes_no_more,
);
