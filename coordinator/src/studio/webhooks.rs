//! The gateway's webhook routes: the caller's endpoint, secrets and deliveries, each a call
//! of the `Webhooks` service's method (same scoping, validation and errors as gRPC).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use tutti_proto::v1 as pb;
use tutti_proto::v1::webhooks_server::Webhooks;

use super::gateway::{json, parse, ApiError};
use super::Studio;

type Reply = Result<Response, ApiError>;

pub(super) async fn get_endpoint(State(s): State<Studio>, headers: HeaderMap) -> Reply {
    let req = s
        .request(&headers, pb::GetWebhookEndpointRequest {})
        .await?;
    json(s.webhooks.get_webhook_endpoint(req).await?.get_ref())
}

pub(super) async fn set_endpoint(
    State(s): State<Studio>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let req = s
        .request(&headers, parse::<pb::SetWebhookEndpointRequest>(&body)?)
        .await?;
    json(s.webhooks.set_webhook_endpoint(req).await?.get_ref())
}

pub(super) async fn rotate(State(s): State<Studio>, headers: HeaderMap, body: Bytes) -> Reply {
    let req = s
        .request(&headers, parse::<pb::RotateWebhookSecretRequest>(&body)?)
        .await?;
    json(s.webhooks.rotate_webhook_secret(req).await?.get_ref())
}

#[derive(serde::Deserialize, Default)]
pub(super) struct DeliveriesQuery {
    page_size: Option<u32>,
    page_token: Option<String>,
    /// A `WebhookDeliveryState` name or its short form (`failed`).
    state: Option<String>,
}

fn delivery_state(name: &str) -> Result<pb::WebhookDeliveryState, ApiError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return Ok(pb::WebhookDeliveryState::Unspecified);
    }
    pb::WebhookDeliveryState::from_str_name(&upper)
        .or_else(|| {
            pb::WebhookDeliveryState::from_str_name(&format!("WEBHOOK_DELIVERY_STATE_{upper}"))
        })
        .ok_or_else(|| {
            crate::error::Error::invalid("state", "must be pending, delivered or failed").into()
        })
}

pub(super) async fn deliveries(
    State(s): State<Studio>,
    headers: HeaderMap,
    Query(q): Query<DeliveriesQuery>,
) -> Reply {
    let message = pb::ListWebhookDeliveriesRequest {
        page_size: q.page_size.unwrap_or(0),
        page_token: q.page_token.unwrap_or_default(),
        state: delivery_state(q.state.as_deref().unwrap_or(""))? as i32,
    };
    let req = s.request(&headers, message).await?;
    json(s.webhooks.list_webhook_deliveries(req).await?.get_ref())
}

pub(super) async fn redeliver(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s
        .request(&headers, pb::RedeliverWebhookRequest { id })
        .await?;
    json(s.webhooks.redeliver_webhook(req).await?.get_ref())
}
