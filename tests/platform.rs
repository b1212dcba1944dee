//! What a platform builds on (issue 26), on both farms: signed webhooks sent to a real HTTP
//! receiver in this test process, verified the way a receiver would (HMAC-SHA256 over
//! `id.timestamp.body` with the tenant's secret); retries until a failing receiver answers;
//! deliveries committed by a coordinator that was killed before it sent them; a queued job's
//! place (gRPC, WatchJob, HTTP) as the queue moves; deadlines.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{request, Backend, Farm, FarmOptions};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::transport::Channel;
use tutti_proto::v1 as pb;
use tutti_proto::v1::webhooks_client::WebhooksClient;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<HashMap<String, Vec<Received>>>>,
    /// Per path: how many requests to answer 503 before answering 204.
    fail_first: Arc<Mutex<HashMap<String, usize>>>,
}

async fn hook(
    State(r): State<Receiver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let got = Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
    };
    let mut all = r.got.lock().unwrap_or_else(|e| e.into_inner());
    let seen = all.entry(name.clone()).or_default();
    seen.push(got);
    let fail = r
        .fail_first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .copied()
        .unwrap_or(0);
    if seen.len() <= fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        let app = Router::new()
            .route("/hook/{name}", post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, addr)
    }

    fn got(&self, name: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `name` got at least `n` requests.
    async fn wait_for(&self, name: &str, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.got(name);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {} of {n} deliveries after {limit:?}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a receiver does with the Standard Webhooks headers, in a few lines.
fn verifies(secret: &str, r: &Received) -> bool {
    let key = B64
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
    let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    r.signature.split(' ').any(|s| s == expected)
}

fn options(backend: Backend, send: bool) -> FarmOptions {
    FarmOptions {
        coordinator_env: vec![
            ("TUTTI_WEBHOOK_ALLOW_PRIVATE", "true".into()),
            ("TUTTI_WEBHOOK_BACKOFF", "50ms".into()),
            ("TUTTI_WEBHOOK_MAX_BACKOFF", "200ms".into()),
            ("TUTTI_WEBHOOK_SEND", send.to_string()),
        ],
        ..FarmOptions::on(backend)
    }
}

async fn webhooks(farm: &Farm) -> WebhooksClient<Channel> {
    WebhooksClient::new(farm.channel().await.expect("channel"))
}

fn with_hook(url: String, events: &[pb::WebhookEvent]) -> pb::SubmitGenerationRequest {
    pb::SubmitGenerationRequest {
        webhook: Some(pb::Webhook {
            url,
            events: events.iter().map(|e| *e as i32).collect(),
        }),
        ..request("webhook test")
    }
}

fn body(r: &Received) -> serde_json::Value {
    serde_json::from_str(&r.body).expect("json body")
}

async fn signed_webhooks_reach_a_real_receiver(backend: Backend) {
    let (rx, addr) = Receiver::start().await;
    let farm = Farm::start(options(backend, true)).await;
    let mut client = farm.client().await;
    let mut hooks = webhooks(&farm).await;
    let endpoint = hooks
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest {})
        .await
        .expect("endpoint")
        .into_inner();
    assert!(endpoint.webhook.is_none());
    let secret = endpoint.secrets[0].secret.clone();

    // A bad callback is refused before anything is stored, naming the field and the rule.
    let bad = client
        .submit_generation(with_hook("ftp://example.com/x".into(), &[]))
        .await
        .expect_err("ftp");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad.message(), "webhook.url: must be an http or https URL");

    // Every event asked for, each signed and verifiable, each with its own stable id.
    use pb::WebhookEvent as E;
    let all = [E::Queued, E::Started, E::OutputReady, E::Succeeded];
    let job = client
        .submit_generation(with_hook(format!("http://{addr}/hook/all"), &all))
        .await
        .expect("submit")
        .into_inner();
    farm.wait_job(&job.id, Duration::from_secs(120)).await;
    let got = rx.wait_for("all", 4, Duration::from_secs(30)).await;
    let mut types: Vec<String> = got
        .iter()
        .map(|r| body(r)["type"].as_str().unwrap_or_default().to_string())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "job.output_ready",
            "job.queued",
            "job.started",
            "job.succeeded"
        ]
    );
    for r in &got {
        assert!(verifies(&secret, r), "signature of {r:?}");
        assert_eq!(body(r)["data"]["job_id"], job.id.as_str());
        let age = chrono_free_age(&r.timestamp);
        assert!(age < 600, "timestamp {} is {age} s off", r.timestamp);
    }
    let listed = hooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .deliveries;
    for r in &got {
        let d = listed.iter().find(|d| d.id == r.id).expect("listed");
        assert_eq!(d.state(), pb::WebhookDeliveryState::Delivered);
        assert_eq!((d.attempts, d.last_status), (1, Some(204)));
        assert_eq!(d.payload, r.body);
    }

    // A receiver that fails five times, then answers: the sixth attempt, same id and body.
    rx.fail_first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert("flaky".into(), 5);
    let job = client
        .submit_generation(with_hook(
            format!("http://{addr}/hook/flaky"),
            &[E::Succeeded],
        ))
        .await
        .expect("submit")
        .into_inner();
    farm.wait_job(&job.id, Duration::from_secs(120)).await;
    let got = rx.wait_for("flaky", 6, Duration::from_secs(30)).await;
    assert!(got
        .iter()
        .all(|r| r.id == got[0].id && r.body == got[0].body));
    assert!(got.iter().all(|r| verifies(&secret, r)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rx.got("flaky").len(),
        6,
        "delivered once more, then no more"
    );
    let d = hooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .deliveries
        .into_iter()
        .find(|d| d.id == got[0].id)
        .expect("listed");
    assert_eq!(
        (d.state(), d.attempts),
        (pb::WebhookDeliveryState::Delivered, 6)
    );

    // By hand: sent again with the same id; after a rotation, signed with both secrets.
    let rotated = hooks
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            overlap_seconds: Some(3600),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.secrets.len(), 2);
    let new_secret = rotated.secrets[1].secret.clone();
    hooks
        .redeliver_webhook(pb::RedeliverWebhookRequest { id: d.id.clone() })
        .await
        .expect("redeliver");
    let again = rx.wait_for("flaky", 7, Duration::from_secs(30)).await;
    let last = &again[6];
    assert_eq!(last.id, d.id);
    assert!(verifies(&secret, last) && verifies(&new_secret, last));
    let unknown = hooks
        .redeliver_webhook(pb::RedeliverWebhookRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// Seconds between a `webhook-timestamp` and now.
fn chrono_free_age(ts: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    now.abs_diff(ts.parse::<u64>().expect("timestamp"))
}

async fn a_killed_coordinator_s_commits_are_still_delivered(backend: Backend) {
    let (rx, addr) = Receiver::start().await;
    // This coordinator commits deliveries but never sends them, as one killed between its
    // commit and its send would.
    let mut farm = Farm::start(options(backend, false)).await;
    let mut client = farm.client().await;
    use pb::WebhookEvent as E;
    let job = client
        .submit_generation(with_hook(
            format!("http://{addr}/hook/later"),
            &[E::Queued, E::Succeeded],
        ))
        .await
        .expect("submit")
        .into_inner();
    farm.wait_job(&job.id, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.got("later").is_empty());
    farm.kill_coordinator();
    farm.opts.coordinator_env = options(backend, true).coordinator_env;
    farm.start_coordinator().await;
    let got = rx.wait_for("later", 2, Duration::from_secs(30)).await;
    let mut types: Vec<String> = got
        .iter()
        .map(|r| body(r)["type"].as_str().unwrap_or_default().to_string())
        .collect();
    types.sort();
    assert_eq!(types, ["job.queued", "job.succeeded"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got("later").len(), 2, "each delivered once");
}

async fn get(farm: &Farm, id: &str) -> pb::Job {
    farm.client()
        .await
        .get_job(pb::GetJobRequest { id: id.into() })
        .await
        .expect("get")
        .into_inner()
}

/// Polls GetJob until `check` holds.
async fn wait_until(
    farm: &Farm,
    id: &str,
    what: &str,
    check: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = get(farm, id).await;
        if check(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "{what}: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn queued_jobs_see_their_place_and_deadlines_cancel(backend: Backend) {
    let (rx, addr) = Receiver::start().await;
    // No worker, one task in flight: the first job holds the slot, the others queue.
    let mut opts = options(backend, true);
    opts.workers = 0;
    opts.coordinator_env
        .push(("TUTTI_MAX_IN_FLIGHT", "1".into()));
    let farm = Farm::start(opts).await;
    let mut client = farm.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let job = client
            .submit_generation(request(&format!("queued {i}")))
            .await
            .expect("submit")
            .into_inner();
        ids.push(job.id);
    }
    wait_until(&farm, &ids[0], "first job dispatched", |j| {
        j.state() == pb::JobState::Running
    })
    .await;
    assert_eq!(get(&farm, &ids[1]).await.queue_position, Some(0));
    let third = get(&farm, &ids[2]).await;
    assert_eq!(third.queue_position, Some(1));
    // Nothing has finished on this farm: no pace, no estimate.
    assert!(third.estimated_start.is_none() && third.estimated_end.is_none());
    assert_eq!(get(&farm, &ids[0]).await.queue_position, None);
    // The same over WatchJob and the HTTP API.
    let mut events = client
        .watch_job(pb::WatchJobRequest { id: ids[2].clone() })
        .await
        .expect("watch")
        .into_inner();
    let first = events.message().await.expect("event").expect("snapshot");
    assert_eq!(first.job.and_then(|j| j.queue_position), Some(1));
    let url = format!("http://{}/api/jobs/{}", farm.studio_addr, ids[2]);
    let text = reqwest::get(&url)
        .await
        .expect("http")
        .text()
        .await
        .expect("body");
    let over_http: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(over_http["queue_position"], 1);
    // The queue moves: the first job's slot frees, the third is next.
    client
        .cancel_job(pb::CancelJobRequest { id: ids[0].clone() })
        .await
        .expect("cancel");
    wait_until(&farm, &ids[2], "third job next", |j| {
        j.queue_position == Some(0)
    })
    .await;
    let moved = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let e = events.message().await.expect("event").expect("open");
            if e.job.as_ref().and_then(|j| j.queue_position) == Some(0) {
                return e;
            }
        }
    })
    .await
    .expect("WatchJob reports the move");
    assert_eq!(moved.kind(), pb::job_event::Kind::Queued);

    // A deadline: bad ones are refused naming the field; a job past it is cancelled with that
    // reason, and its webhook says so.
    let bad = client
        .submit_generation(pb::SubmitGenerationRequest {
            cancel_after: Some(tutti_proto::wkt::Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..request("too soon")
        })
        .await
        .expect_err("zero");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        bad.message(),
        "cancel_after: must be between 1 second and 7 days"
    );
    let late = client
        .submit_generation(pb::SubmitGenerationRequest {
            cancel_after: Some(tutti_proto::wkt::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..with_hook(
                format!("http://{addr}/hook/deadline"),
                &[pb::WebhookEvent::Cancelled],
            )
        })
        .await
        .expect("submit")
        .into_inner();
    assert!(late
        .request
        .as_ref()
        .and_then(|r| r.deadline.as_ref())
        .is_some());
    let ended = farm.wait_job(&late.id, Duration::from_secs(30)).await;
    assert_eq!(ended.state(), pb::JobState::Cancelled);
    assert_eq!(
        ended.error.map(|e| e.code),
        Some("DEADLINE_EXCEEDED".into())
    );
    let got = rx.wait_for("deadline", 1, Duration::from_secs(30)).await;
    let b = body(&got[0]);
    assert_eq!(b["type"], "job.cancelled");
    assert_eq!(b["data"]["reason"], "DEADLINE_EXCEEDED");
    let secret = webhooks(&farm)
        .await
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest {})
        .await
        .expect("endpoint")
        .into_inner()
        .secrets[0]
        .secret
        .clone();
    assert!(verifies(&secret, &got[0]));
}

async fn a_batch_calls_back_with_its_results(backend: Backend) {
    let (rx, addr) = Receiver::start().await;
    let farm = Farm::start(options(backend, true)).await;
    let mut batches =
        tutti_proto::v1::batches_client::BatchesClient::new(farm.channel().await.expect("channel"));
    use pb::WebhookEvent as E;
    let header = pb::SubmitBatchRequest {
        kind: Some(pb::submit_batch_request::Kind::Header(pb::BatchHeader {
            name: "hooked".into(),
            webhook: Some(pb::Webhook {
                url: format!("http://{addr}/hook/batch"),
                events: vec![E::BatchCompleted as i32, E::Succeeded as i32],
            }),
            ..Default::default()
        })),
    };
    let item = |id: &str| pb::SubmitBatchRequest {
        kind: Some(pb::submit_batch_request::Kind::Item(pb::BatchItem {
            item_id: id.into(),
            line: 0,
            request: Some(pb::SubmitGenerationRequest {
                steps: Some(4),
                ..request(id)
            }),
        })),
    };
    let batch = batches
        .submit_batch(futures::stream::iter(vec![
            header,
            item("one"),
            item("two"),
        ]))
        .await
        .expect("submit")
        .into_inner()
        .batch
        .expect("a batch");
    // Each item's success, then the batch's end with its results key, all signed.
    let got = rx.wait_for("batch", 3, Duration::from_secs(120)).await;
    let secret = webhooks(&farm)
        .await
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest {})
        .await
        .expect("endpoint")
        .into_inner()
        .secrets[0]
        .secret
        .clone();
    assert!(got.iter().all(|r| verifies(&secret, r)));
    let mut types: Vec<String> = got
        .iter()
        .map(|r| body(r)["type"].as_str().unwrap_or_default().to_string())
        .collect();
    types.sort();
    assert_eq!(types, ["batch.completed", "job.succeeded", "job.succeeded"]);
    let done = got
        .iter()
        .map(body)
        .find(|b| b["type"] == "batch.completed")
        .expect("batch.completed");
    assert_eq!(done["data"]["batch_id"], batch.id.as_str());
    assert!(done["data"]["results_key"]
        .as_str()
        .is_some_and(|k| k.ends_with(".jsonl")));
}

both_backends!(
    a_batch_calls_back_with_its_results,
    signed_webhooks_reach_a_real_receiver,
    a_killed_coordinator_s_commits_are_still_delivered,
    queued_jobs_see_their_place_and_deadlines_cancel,
);
