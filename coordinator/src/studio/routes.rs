//! The gateway's routes: each one a call of a gRPC method, in process (see `mod.rs`).
//!
//! | route                               | method                        |
//! |-------------------------------------|-------------------------------|
//! | `POST /api/prompt/render`           | Generation.RenderPrompt       |
//! | `GET  /api/models`                  | Generation.ListModels         |
//! | `GET  /api/models/{name}?version`   | Generation.GetModel           |
//! | `POST /api/jobs`                    | Generation.SubmitGeneration   |
//! | `GET  /api/jobs?state&label&text…`  | Generation.ListJobs           |
//! | `GET  /api/jobs/{id}`               | Generation.GetJob             |
//! | `GET  /api/jobs/{id}/events`        | Generation.WatchJob (SSE)     |
//! | `POST /api/jobs/{id}/cancel`        | Generation.CancelJob          |
//! | `POST /api/jobs/{id}/retry`         | Generation.RetryJob           |
//! | `POST /api/jobs/{id}/delete`        | Generation.DeleteJob          |
//! | `GET  /api/batches?page_size…`      | Batches.ListBatches           |
//! | `POST /api/batches?name&file`       | Batches.SubmitBatch (checked with validate_only, then stored) |
//! | `GET  /api/batches/{id}`            | Batches.GetBatch              |
//! | `POST /api/batches/{id}/cancel`     | Batches.CancelBatch           |
//! | `POST /api/batches/{id}/retry?include_cancelled` | Batches.RetryBatchItems |
//! | `POST /api/batches/{id}/delete`     | Batches.DeleteBatch           |
//! | `GET  /api/usage?from&to&by&tenant` | Generation.GetUsage           |
//! | `GET  /api/webhooks`                 | Webhooks.GetWebhookEndpoint   |
//! | `PUT  /api/webhooks`                 | Webhooks.SetWebhookEndpoint   |
//! | `POST /api/webhooks/rotate`          | Webhooks.RotateWebhookSecret  |
//! | `GET  /api/webhooks/deliveries?state…` | Webhooks.ListWebhookDeliveries |
//! | `POST /api/webhooks/deliveries/{id}/redeliver` | Webhooks.RedeliverWebhook |
//! | `GET  /api/operator/workers`        | Operator.ListWorkers          |
//! | `POST /api/operator/dead-letters/replay` | Operator.ReplayDeadLetters (body: `{limit, queue}`) |
//! | `GET  /api/operator/queues`         | Operator.GetQueues            |

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use futures::StreamExt;
use tutti_proto::v1 as pb;
use tutti_proto::v1::generation_server::Generation;
use tutti_proto::v1::operator_server::Operator;

use super::gateway::{error_body, json, parse, ApiError};
use super::{assets, batches, blobs, guard, models, openapi, rest, webhooks, Studio};
use crate::auth::AuthMode;

pub(super) fn router(studio: Studio, guard: guard::Guard) -> Router {
    let page = assets::SCRIPTS.iter().fold(
        Router::new()
            .route("/", get(assets::index))
            .route("/studio.css", get(assets::style)),
        |r, &(path, body)| r.route(path, get(move || async move { assets::script(body) })),
    );
    page.route("/blobs/{*key}", get(blobs::get))
        .route("/api/info", get(info))
        .route("/api/prompt/render", post(render_prompt))
        .route("/api/models", get(models::list))
        .route("/api/models/{name}", get(models::get))
        .route(
            "/api/jobs",
            post(submit)
                .get(list)
                .layer(DefaultBodyLimit::max(models::MAX_JOB_BODY)),
        )
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/events", get(watch))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/retry", post(retry))
        .route("/api/jobs/{id}/delete", post(delete_job))
        .route(
            "/api/batches",
            get(batches::list)
                .post(batches::upload)
                .layer(DefaultBodyLimit::max(studio.options.max_upload_bytes)),
        )
        .route("/api/batches/{id}", get(batches::get))
        .route("/api/batches/{id}/cancel", post(batches::cancel))
        .route("/api/batches/{id}/retry", post(batches::retry))
        .route("/api/batches/{id}/delete", post(batches::delete))
        .route("/api/usage", get(usage))
        .route(
            "/api/operator/dead-letters/replay",
            post(replay_dead_letters),
        )
        .route(
            "/api/webhooks",
            get(webhooks::get_endpoint).put(webhooks::set_endpoint),
        )
        .route("/api/webhooks/rotate", post(webhooks::rotate))
        .route("/api/webhooks/deliveries", get(webhooks::deliveries))
        .route(
            "/api/webhooks/deliveries/{id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/api/operator/workers", get(workers))
        .route("/api/operator/queues", get(queues))
        .merge(v1())
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .with_state(studio)
}

type Reply = Result<Response, ApiError>;

/// What the page must know before its first call: whether it needs an API key.
async fn info(State(s): State<Studio>) -> Reply {
    json(&serde_json::json!({
        "auth_required": s.auth.mode() == AuthMode::Required,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

pub(super) async fn render_prompt(
    State(s): State<Studio>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req = s.request(&headers, parse(&body)?).await?;
    json(s.generation.render_prompt(req).await?.get_ref())
}

pub(super) async fn submit(State(s): State<Studio>, headers: HeaderMap, body: Bytes) -> Reply {
    let req = s.request(&headers, parse(&body)?).await?;
    let mut job = s.generation.submit_generation(req).await?.into_inner();
    s.blobs.rewrite(&mut job);
    json(&job)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct ListQuery {
    page_size: Option<u32>,
    page_token: Option<String>,
    /// A `JobState` name (`JOB_STATE_SUCCEEDED`) or its short form (`succeeded`).
    state: Option<String>,
    /// `key=value`.
    label: Option<String>,
    text: Option<String>,
}

fn job_state(name: &str) -> Result<pb::JobState, ApiError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return Ok(pb::JobState::Unspecified);
    }
    pb::JobState::from_str_name(&upper)
        .or_else(|| pb::JobState::from_str_name(&format!("JOB_STATE_{upper}")))
        .ok_or_else(|| crate::error::Error::invalid("state", "unknown job state").into())
}

pub(super) async fn list(
    State(s): State<Studio>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Reply {
    let mut labels = std::collections::HashMap::new();
    if let Some(l) = q.label.as_deref().filter(|l| !l.trim().is_empty()) {
        let (k, v) = l.split_once('=').ok_or_else(|| {
            ApiError::from(crate::error::Error::invalid("labels", "must be key=value"))
        })?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let message = pb::ListJobsRequest {
        page_size: q.page_size.unwrap_or(0),
        page_token: q.page_token.unwrap_or_default(),
        state: job_state(q.state.as_deref().unwrap_or(""))? as i32,
        labels,
        text: q.text.unwrap_or_default(),
    };
    let req = s.request(&headers, message).await?;
    let mut page = s.generation.list_jobs(req).await?.into_inner();
    for job in &mut page.jobs {
        s.blobs.rewrite(job);
    }
    json(&page)
}

pub(super) async fn get_job(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s.request(&headers, pb::GetJobRequest { id }).await?;
    let mut job = s.generation.get_job(req).await?.into_inner();
    s.blobs.rewrite(&mut job);
    json(&job)
}

pub(super) async fn cancel(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s.request(&headers, pb::CancelJobRequest { id }).await?;
    let mut job = s.generation.cancel_job(req).await?.into_inner();
    s.blobs.rewrite(&mut job);
    json(&job)
}

pub(super) async fn retry(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s.request(&headers, pb::RetryJobRequest { id }).await?;
    let mut job = s.generation.retry_job(req).await?.into_inner();
    s.blobs.rewrite(&mut job);
    json(&job)
}

async fn delete_job(State(s): State<Studio>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let req = s.request(&headers, pb::DeleteJobRequest { id }).await?;
    let mut job = s.generation.delete_job(req).await?.into_inner();
    s.blobs.rewrite(&mut job);
    json(&job)
}

/// WatchJob as server-sent events: one `message` event per JobEvent (its JSON), then an
/// `error` event with the error body if the stream ends in one.
pub(super) async fn watch(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s.request(&headers, pb::WatchJobRequest { id }).await?;
    let events = s.generation.watch_job(req).await?.into_inner();
    let urls = s.blobs.clone();
    let stream = events.map(move |item| {
        let event = match item {
            Ok(mut e) => {
                if let Some(job) = e.job.as_mut() {
                    urls.rewrite(job);
                }
                Event::default().json_data(&e)
            }
            Err(status) => Event::default()
                .event("error")
                .json_data(error_body(&status)),
        };
        Ok::<_, Infallible>(event.unwrap_or_else(|e| {
            Event::default()
                .event("error")
                .data(format!("encoding an event: {e}"))
        }))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub(super) async fn workers(State(s): State<Studio>, headers: HeaderMap) -> Reply {
    let req = s.request(&headers, pb::ListWorkersRequest {}).await?;
    json(s.operator.list_workers(req).await?.get_ref())
}

#[derive(serde::Deserialize, Default)]
pub(super) struct QueuesQuery {
    share_window_seconds: Option<u32>,
}

pub(super) async fn queues(
    State(s): State<Studio>,
    headers: HeaderMap,
    Query(q): Query<QueuesQuery>,
) -> Reply {
    let message = pb::GetQueuesRequest {
        share_window_seconds: q.share_window_seconds.unwrap_or(0),
    };
    let req = s.request(&headers, message).await?;
    json(s.operator.get_queues(req).await?.get_ref())
}

#[derive(serde::Deserialize, Default)]
struct UsageQuery {
    /// A UTC date (`2026-12-01`) or an RFC 3339 time.
    from: Option<String>,
    to: Option<String>,
    /// `model`, `key`, `day` or `batch`.
    by: Option<String>,
    tenant: Option<String>,
}

fn usage_time(
    field: &str,
    v: Option<&str>,
) -> Result<Option<tutti_proto::wkt::Timestamp>, ApiError> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let t = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(v).map(|t| t.to_utc()))
        .map_err(|_| {
            crate::error::Error::invalid(field, "must be a date (2026-12-01) or an RFC 3339 time")
        })?;
    Ok(Some(crate::api::ts(t)))
}

async fn usage(State(s): State<Studio>, headers: HeaderMap, Query(q): Query<UsageQuery>) -> Reply {
    let group_by = match q.by.as_deref().map(str::trim).unwrap_or("") {
        "" => pb::UsageGrouping::Unspecified,
        "model" => pb::UsageGrouping::Model,
        "key" => pb::UsageGrouping::Key,
        "day" => pb::UsageGrouping::Day,
        "batch" => pb::UsageGrouping::Batch,
        _ => {
            return Err(crate::error::Error::invalid(
                "group_by",
                "must be one of model, key, day, batch (or unset)",
            )
            .into())
        }
    };
    let message = pb::GetUsageRequest {
        from: usage_time("from", q.from.as_deref())?,
        to: usage_time("to", q.to.as_deref())?,
        group_by: group_by as i32,
        tenant: q.tenant.unwrap_or_default(),
    };
    let req = s.request(&headers, message).await?;
    json(s.generation.get_usage(req).await?.get_ref())
}

async fn replay_dead_letters(State(s): State<Studio>, headers: HeaderMap, body: Bytes) -> Reply {
    let req = s
        .request(&headers, parse::<pb::ReplayDeadLettersRequest>(&body)?)
        .await?;
    json(s.operator.replay_dead_letters(req).await?.get_ref())
}

/// The handler of an operation: the same functions the studio's own `/api` routes use.
fn handler(op: rest::Op) -> MethodRouter<Studio> {
    match op {
        rest::Op::Submit => post(submit).layer(DefaultBodyLimit::max(models::MAX_JOB_BODY)),
        rest::Op::ListJobs => get(list),
        rest::Op::GetJob => get(get_job),
        rest::Op::WatchJob => get(watch),
        rest::Op::CancelJob => post(cancel),
        rest::Op::RetryJob => post(retry),
        rest::Op::RenderPrompt => post(render_prompt),
        rest::Op::ListModels => get(models::list),
        rest::Op::GetModel => get(models::get),
        rest::Op::ListBatches => get(batches::list),
        rest::Op::GetBatch => get(batches::get),
        rest::Op::CancelBatch => post(batches::cancel),
        rest::Op::RetryBatch => post(batches::retry),
        rest::Op::GetEndpoint => get(webhooks::get_endpoint),
        rest::Op::SetEndpoint => put(webhooks::set_endpoint),
        rest::Op::RotateSecret => post(webhooks::rotate),
        rest::Op::Deliveries => get(webhooks::deliveries),
        rest::Op::Redeliver => post(webhooks::redeliver),
        rest::Op::Workers => get(workers),
        rest::Op::Queues => get(queues),
        rest::Op::DeleteJob => delete(delete_job),
        rest::Op::DeleteBatch => delete(batches::delete),
        rest::Op::Usage => get(usage),
        rest::Op::ReplayDeadLetters => post(replay_dead_letters),
    }
}

/// The `/v1` routes, from the table, and the document that describes them.
fn v1() -> Router<Studio> {
    let mut paths: BTreeMap<&str, MethodRouter<Studio>> = BTreeMap::new();
    for r in rest::ROUTES {
        let m = handler(r.op);
        let merged = match paths.remove(r.path) {
            Some(prev) => prev.merge(m),
            None => m,
        };
        paths.insert(r.path, merged);
    }
    let mut router = Router::new().route("/v1/openapi.json", get(openapi::serve));
    for (path, m) in paths {
        router = router.route(path, m);
    }
    router
}
