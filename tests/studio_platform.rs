//! tutti studio in a real browser (headless chromium) for issue 26 on both farms: a queued
//! job's card tells its place in the queue, and the Webhooks tab sets the tenant's endpoint
//! (a bad URL is refused next to its field), shows the signing secret and lists deliveries
//! with a Redeliver button.

#[macro_use]
mod common;

use common::browser::Browser;
use common::{request, Backend, Farm, FarmOptions};
use tutti_proto::v1 as pb;

both_backends!(a_queued_card_tells_its_place_and_webhooks_are_managed);

async fn a_queued_card_tells_its_place_and_webhooks_are_managed(backend: Backend) {
    // No worker, one task in flight: the first job holds the slot, the others queue.
    let farm = Farm::start(FarmOptions {
        workers: 0,
        coordinator_env: vec![
            ("TUTTI_MAX_IN_FLIGHT", "1".into()),
            ("TUTTI_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ],
        ..FarmOptions::on(backend)
    })
    .await;
    let mut client = farm.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let job = client
            .submit_generation(request(&format!("waits {i}")))
            .await
            .expect("submit")
            .into_inner();
        ids.push(job.id);
    }
    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    b.click(r#".tab[data-view="history"]"#).await;
    let open = format!(r#"#history li[data-job-id="{}"] button"#, ids[2]);
    b.wait_js(
        &format!("return !!document.querySelector('{open}')"),
        "the third job in the history",
    )
    .await;
    b.click(&open).await;
    b.wait_js(
        &format!(
            "const s = document.querySelector('#history-detail .job[data-job-id=\"{}\"] .status'); \
             return !!s && s.textContent.includes('1 ahead in the queue')",
            ids[2]
        ),
        "the card's place in the queue",
    )
    .await;
    b.screenshot("queue-position").await;

    // The Webhooks tab: a bad URL is refused by the server's rule, next to its field.
    b.click(r#".tab[data-view="webhooks"]"#).await;
    b.wait_js(
        "return [...document.querySelectorAll('#wh-secrets li')].some(l => l.textContent.startsWith('whsec_'))",
        "the tenant's signing secret",
    )
    .await;
    b.fill("#wh-url", "ftp://example.com/hook").await;
    b.click("#endpoint-form button[type=submit]").await;
    b.wait_js(
        "return document.querySelector('[data-error-for=\"webhook.url\"]').textContent === 'must be an http or https URL'",
        "the URL's rule next to the field",
    )
    .await;
    b.fill("#wh-url", "http://127.0.0.1:9/hook").await;
    b.click(r#"#wh-events input[value="WEBHOOK_EVENT_QUEUED"]"#)
        .await;
    b.click("#endpoint-form button[type=submit]").await;
    let mut hooks =
        pb::webhooks_client::WebhooksClient::new(farm.channel().await.expect("channel"));
    let mut saved = None;
    for _ in 0..100 {
        let e = hooks
            .get_webhook_endpoint(pb::GetWebhookEndpointRequest {})
            .await
            .expect("endpoint")
            .into_inner();
        if e.webhook.is_some() {
            saved = e.webhook;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let saved = saved.expect("the endpoint the page saved");
    assert_eq!(saved.url, "http://127.0.0.1:9/hook");
    assert_eq!(saved.events, vec![pb::WebhookEvent::Queued as i32]);

    // A job now calls the endpoint back (nothing listens there: the delivery retries), and
    // its delivery is listed with a Redeliver button that works.
    let job = client
        .submit_generation(request("calls back"))
        .await
        .expect("submit")
        .into_inner();
    b.wait_js(
        "return document.querySelectorAll('#deliveries tr[data-delivery]').length === 1",
        "the delivery in the table",
    )
    .await;
    let listed = hooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .deliveries;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id, job.id);
    b.click("#deliveries tr[data-delivery] button.redeliver")
        .await;
    b.wait_js(
        "return document.querySelector('#webhooks-error').textContent === ''",
        "a redelivery without error",
    )
    .await;
    b.screenshot("webhooks").await;
    b.close().await;
}
