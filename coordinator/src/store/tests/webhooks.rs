//! The job store suite: the webhook outbox (written with the change it reports, claimed with
//! a lease, finished fenced by the attempt), a tenant's endpoint and secrets.

use std::time::Duration;

use chrono::Utc;
use tutti_proto::v1 as pb;
use tutti_shared::job::Priority;
use uuid::Uuid;

use super::{new_job, T};
use crate::store::batches::NewItem;
use crate::store::webhooks::{Attempted, DeliveryRow};
use crate::store::JobStore;
use crate::validate::NewJob;
use crate::webhooks::Subscription;

const URL: &str = "http://127.0.0.1:9/hook";

fn with_hook(events: &[pb::WebhookEvent]) -> NewJob {
    let mut job = new_job(4, 4, None);
    job.accepted.webhook = Some(pb::Webhook {
        url: URL.into(),
        events: events.iter().map(|e| *e as i32).collect(),
    });
    job
}

async fn deliveries(s: &dyn JobStore, tenant: &str) -> Vec<DeliveryRow> {
    s.list_deliveries(tenant, None, None, 100)
        .await
        .expect("list")
}

fn events_of(rows: &[DeliveryRow]) -> Vec<(&str, Option<Uuid>)> {
    rows.iter().map(|d| (d.event.as_str(), d.job_id)).collect()
}

pub(super) async fn webhooks_enter_the_outbox_with_their_change(s: &dyn JobStore) {
    let own = [pb::WebhookEvent::Queued, pb::WebhookEvent::Cancelled];
    let (a, _) = s.insert_job(T, &with_hook(&own)).await.expect("insert");
    let a = a.job.id;
    let rows = deliveries(s, T).await;
    assert_eq!(events_of(&rows), [("queued", Some(a))]);
    assert_eq!(
        (rows[0].url.as_str(), rows[0].state.as_str()),
        (URL, "pending")
    );
    let body: serde_json::Value = serde_json::from_str(&rows[0].payload).expect("json");
    assert_eq!(body["type"], "job.queued");
    assert_eq!(body["data"]["job_id"], a.to_string());

    // Its cancel is reported by the cancel's own transaction; an event it did not ask for
    // (started, succeeded) never is.
    s.cancel_job(T.into(), a).await.expect("cancel");
    let rows = deliveries(s, T).await;
    assert_eq!(
        events_of(&rows),
        [("cancelled", Some(a)), ("queued", Some(a))]
    );

    // No callback and no endpoint: nothing. With the tenant's endpoint: that endpoint, unless
    // the request names its own.
    let (b, _) = s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    assert_eq!(deliveries(s, T).await.len(), 2);
    let endpoint = Subscription {
        url: "http://127.0.0.1:9/tenant".into(),
        events: "queued cancelled".into(),
    };
    s.set_endpoint(T, Some(&endpoint)).await.expect("set");
    assert_eq!(s.endpoint(T).await.expect("get"), Some(endpoint.clone()));
    s.cancel_job(T.into(), b.job.id).await.expect("cancel");
    let (c, _) = s
        .insert_job(T, &with_hook(&[pb::WebhookEvent::Succeeded]))
        .await
        .expect("insert");
    let rows = deliveries(s, T).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (rows[0].event.as_str(), rows[0].job_id, rows[0].url.as_str()),
        ("cancelled", Some(b.job.id), "http://127.0.0.1:9/tenant")
    );
    assert!(rows.iter().all(|d| d.job_id != Some(c.job.id)));

    // Another tenant sees none of them and cannot redeliver them.
    assert!(deliveries(s, "tenant-b").await.is_empty());
    assert!(s
        .redeliver("tenant-b", rows[0].id)
        .await
        .expect("redeliver")
        .is_none());
    s.set_endpoint(T, None).await.expect("remove");
    assert_eq!(s.endpoint(T).await.expect("get"), None);
}

pub(super) async fn batches_call_back_once_their_results_are_written(s: &dyn JobStore) {
    let endpoint = Subscription {
        url: "http://127.0.0.1:9/tenant".into(),
        events: "queued batch_completed".into(),
    };
    s.set_endpoint(T, Some(&endpoint)).await.expect("set");
    let b = s.batches();
    let id = crate::batches::batch_id(T, "w.jsonl");
    b.open_batch(T, id, "w.jsonl", None, None)
        .await
        .expect("open");
    let mut job = new_job(4, 4, None);
    job.priority = Priority::Batch;
    let item = NewItem {
        item_id: "a".into(),
        line: 1,
        job_id: crate::batches::item_job_id(id, "a"),
        job: Ok(job),
    };
    b.add_items(T, id, &[item]).await.expect("add");
    // Items call back only through their batch.
    assert!(deliveries(s, T).await.is_empty());
    b.set_results(id, "batches/w/results.jsonl")
        .await
        .expect("results");
    b.set_results(id, "batches/w/again.jsonl")
        .await
        .expect("results again");
    let rows = deliveries(s, T).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].event.as_str(), rows[0].batch_id),
        ("batch_completed", Some(id))
    );
    let body: serde_json::Value = serde_json::from_str(&rows[0].payload).expect("json");
    assert_eq!(body["data"]["results_key"], "batches/w/results.jsonl");
}

pub(super) async fn a_batch_s_own_webhook_reports_its_end_and_the_item_events_it_names(
    s: &dyn JobStore,
) {
    let tenant_hook = Subscription {
        url: "http://127.0.0.1:9/tenant".into(),
        events: "cancelled batch_completed".into(),
    };
    s.set_endpoint(T, Some(&tenant_hook)).await.expect("set");
    let own = Subscription {
        url: "http://127.0.0.1:9/batch".into(),
        events: "batch_completed cancelled".into(),
    };
    let b = s.batches();
    let id = crate::batches::batch_id(T, "own.jsonl");
    b.open_batch(T, id, "own.jsonl", None, Some(&own))
        .await
        .expect("open");
    let items: Vec<NewItem> = ["a", "b"]
        .iter()
        .map(|name| {
            let mut job = new_job(4, 4, None);
            job.priority = Priority::Batch;
            NewItem {
                item_id: (*name).into(),
                line: 1,
                job_id: crate::batches::item_job_id(id, name),
                job: Ok(job),
            }
        })
        .collect();
    b.add_items(T, id, &items).await.expect("add");
    // An item cancelled on its own calls back through its batch's webhook, for an event the
    // batch names; the batch's cancel of the others does not call back item by item.
    let a = crate::batches::item_job_id(id, "a");
    s.cancel_job(T.into(), a).await.expect("cancel");
    b.cancel_batch(T, id).await.expect("cancel batch");
    b.set_results(id, "batches/own/results.jsonl")
        .await
        .expect("results");
    let rows = deliveries(s, T).await;
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|d| (d.event.as_str(), d.url.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("batch_completed", "http://127.0.0.1:9/batch"),
            ("cancelled", "http://127.0.0.1:9/batch"),
        ]
    );
    assert_eq!(rows[1].job_id, Some(a));
}

pub(super) async fn deliveries_are_leased_and_fenced_by_attempt(s: &dyn JobStore) {
    s.insert_job(T, &with_hook(&[pb::WebhookEvent::Queued]))
        .await
        .expect("insert");
    let lease = Duration::from_secs(60);
    let first = s.claim_deliveries(10, lease).await.expect("claim");
    assert_eq!(first.len(), 1);
    let d = &first[0];
    assert_eq!((d.attempt, d.tenant.as_str(), d.url.as_str()), (1, T, URL));
    // Leased: no other sender takes it.
    assert!(s
        .claim_deliveries(10, lease)
        .await
        .expect("claim")
        .is_empty());
    let retry = Attempted::Retry {
        at: Utc::now() - chrono::Duration::seconds(1),
        status: Some(500),
        error: "answered 500".into(),
    };
    assert!(!s.finish_delivery(d.id, 2, &retry).await.expect("stale"));
    assert!(s.finish_delivery(d.id, 1, &retry).await.expect("finish"));
    // A sender that dies holding it: its lease runs out and another takes it.
    let second = s.claim_deliveries(10, Duration::ZERO).await.expect("claim");
    assert_eq!(second.iter().map(|c| c.attempt).collect::<Vec<_>>(), [2]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let third = s.claim_deliveries(10, lease).await.expect("claim");
    assert_eq!(third.iter().map(|c| c.attempt).collect::<Vec<_>>(), [3]);
    let ok = Attempted::Delivered { status: 204 };
    assert!(!s.finish_delivery(d.id, 2, &ok).await.expect("lost claim"));
    assert!(s.finish_delivery(d.id, 3, &ok).await.expect("finish"));
    let row = &deliveries(s, T).await[0];
    assert_eq!(
        (row.state.as_str(), row.attempts, row.last_status),
        ("delivered", 3, Some(204))
    );
    assert!(row.finished_at.is_some());

    // Out of time: failed, listed as such, and sent again by hand with the same id.
    s.insert_job(T, &with_hook(&[pb::WebhookEvent::Queued]))
        .await
        .expect("insert");
    let c = s
        .claim_deliveries(10, lease)
        .await
        .expect("claim")
        .remove(0);
    let failed = Attempted::Failed {
        status: None,
        error: "connection refused".into(),
    };
    assert!(s.finish_delivery(c.id, 1, &failed).await.expect("fail"));
    let listed = s
        .list_deliveries(T, Some("failed"), None, 10)
        .await
        .expect("list");
    assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), [c.id]);
    assert_eq!(listed[0].last_error.as_deref(), Some("connection refused"));
    assert!(s
        .claim_deliveries(10, lease)
        .await
        .expect("claim")
        .is_empty());
    let again = s
        .redeliver(T, c.id)
        .await
        .expect("redeliver")
        .expect("found");
    assert_eq!(again.state, "pending");
    let c2 = s
        .claim_deliveries(10, lease)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!((c2.id, c2.attempt, &c2.payload), (c.id, 2, &c.payload));
    // Sent again by hand while a sender holds it: that sender's outcome no longer counts.
    s.redeliver(T, c.id)
        .await
        .expect("redeliver")
        .expect("found");
    assert!(!s.finish_delivery(c.id, 2, &ok).await.expect("voided claim"));
    let c3 = s
        .claim_deliveries(10, lease)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!((c3.id, c3.attempt), (c.id, 3));
    assert!(s.finish_delivery(c.id, 3, &ok).await.expect("finish"));

    // Pages, newest first.
    let page = s.list_deliveries(T, None, None, 1).await.expect("page");
    let rest = s
        .list_deliveries(T, None, Some((page[0].created_at, page[0].id)), 10)
        .await
        .expect("rest");
    assert_eq!((page.len(), rest.len()), (1, 1));
    assert_ne!(page[0].id, rest[0].id);
}

pub(super) async fn secrets_rotate_with_an_overlap(s: &dyn JobStore) {
    let first = s.webhook_secrets(T).await.expect("secrets");
    assert_eq!(first.len(), 1);
    assert!(first[0].secret.starts_with("whsec_") && first[0].expires_at.is_none());
    assert_eq!(s.webhook_secrets(T).await.expect("again"), first);
    let other = s.webhook_secrets("tenant-b").await.expect("b");
    assert_ne!(other[0].secret, first[0].secret);

    let rotated = s
        .rotate_webhook_secret(T, Duration::from_secs(3600))
        .await
        .expect("rotate");
    assert_eq!(rotated.len(), 2);
    assert_eq!(rotated[0].secret, first[0].secret);
    assert!(rotated[0].expires_at.is_some() && rotated[1].expires_at.is_none());
    // No overlap: only the newest stays.
    let now_only = s
        .rotate_webhook_secret(T, Duration::ZERO)
        .await
        .expect("rotate");
    assert_eq!(now_only.len(), 1);
    assert!(now_only[0].secret != rotated[1].secret && now_only[0].expires_at.is_none());
    assert_eq!(s.webhook_secrets("tenant-b").await.expect("b"), other);
}

job_store_suite!(
    webhooks_enter_the_outbox_with_their_change,
    batches_call_back_once_their_results_are_written,
    a_batch_s_own_webhook_reports_its_end_and_the_item_events_it_names,
    deliveries_are_leased_and_fenced_by_attempt,
    secrets_rotate_with_an_overlap,
);
