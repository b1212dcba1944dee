//! The `Webhooks` gRPC service: a tenant's endpoint and secrets, and its deliveries (listed,
//! and sent again by hand). Every call is scoped to the caller's own tenant: another tenant's
//! delivery is NOT_FOUND.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tutti_proto::v1 as pb;
use uuid::Uuid;

use crate::api::ts;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::webhooks::{DeliveryRow, SecretRow};
use crate::store::JobStore;
use crate::webhooks::{Subscription, WebhookEvent};

/// The default overlap of a rotation: a day for receivers to take the new secret.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(86_400);
/// The longest overlap accepted (a month).
const MAX_OVERLAP_S: u32 = 31 * 86_400;

pub struct WebhooksService {
    pub store: Arc<dyn JobStore>,
    /// Whether endpoints may be private addresses (the operator's flag).
    pub allow_private: bool,
}

#[derive(Clone)]
pub struct WebhooksApi(pub Arc<WebhooksService>);

fn secret_pb(s: SecretRow) -> pb::WebhookSecret {
    pb::WebhookSecret {
        secret: s.secret,
        created_at: Some(ts(s.created_at)),
        expires_at: s.expires_at.map(ts),
    }
}

fn state_pb(s: &str) -> pb::WebhookDeliveryState {
    match s {
        "pending" => pb::WebhookDeliveryState::Pending,
        "delivered" => pb::WebhookDeliveryState::Delivered,
        "failed" => pb::WebhookDeliveryState::Failed,
        _ => pb::WebhookDeliveryState::Unspecified,
    }
}

pub fn delivery_pb(d: DeliveryRow) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: d.id.to_string(),
        event: WebhookEvent::from_stored(&d.event)
            .map_or(pb::WebhookEvent::Unspecified, pb::WebhookEvent::from) as i32,
        job_id: d.job_id.map(|j| j.to_string()).unwrap_or_default(),
        batch_id: d.batch_id.map(|b| b.to_string()).unwrap_or_default(),
        url: d.url,
        state: state_pb(&d.state) as i32,
        attempts: d.attempts,
        last_status: d.last_status.map(u32::from),
        last_error: d.last_error.unwrap_or_default(),
        created_at: Some(ts(d.created_at)),
        next_attempt_at: (d.state == "pending").then(|| ts(d.next_at)),
        finished_at: d.finished_at.map(ts),
        payload: d.payload,
    }
}

impl WebhooksService {
    async fn endpoint(&self, tenant: &str) -> Result<pb::WebhookEndpoint> {
        let webhook = self.store.endpoint(tenant).await?.map(|s| s.to_pb());
        let secrets = self.store.webhook_secrets(tenant).await?;
        Ok(pb::WebhookEndpoint {
            webhook,
            secrets: secrets.into_iter().map(secret_pb).collect(),
        })
    }

    pub async fn set_endpoint(
        &self,
        caller: &Caller,
        req: pb::SetWebhookEndpointRequest,
    ) -> Result<pb::WebhookEndpoint> {
        let sub = match req.webhook {
            Some(w) if w.url.is_empty() && w.events.is_empty() => None,
            None => None,
            Some(w) => Subscription::from_pb("webhook", Some(&w), self.allow_private)?,
        };
        self.store
            .set_endpoint(&caller.tenant, sub.as_ref())
            .await?;
        self.endpoint(&caller.tenant).await
    }

    pub async fn get_endpoint(&self, caller: &Caller) -> Result<pb::WebhookEndpoint> {
        self.endpoint(&caller.tenant).await
    }

    pub async fn rotate(
        &self,
        caller: &Caller,
        req: pb::RotateWebhookSecretRequest,
    ) -> Result<pb::WebhookEndpoint> {
        let overlap = match req.overlap_seconds {
            None => DEFAULT_OVERLAP,
            Some(s) if s > MAX_OVERLAP_S => {
                return Err(Error::invalid(
                    "overlap_seconds",
                    format!("must be at most {MAX_OVERLAP_S} (31 days)"),
                ))
            }
            Some(s) => Duration::from_secs(u64::from(s)),
        };
        // The first secret is made before rotating, so a first rotation keeps one to overlap.
        self.store.webhook_secrets(&caller.tenant).await?;
        self.store
            .rotate_webhook_secret(&caller.tenant, overlap)
            .await?;
        self.endpoint(&caller.tenant).await
    }

    pub async fn list(
        &self,
        caller: &Caller,
        req: pb::ListWebhookDeliveriesRequest,
    ) -> Result<pb::ListWebhookDeliveriesResponse> {
        let limit = match req.page_size {
            0 => 50,
            n if n > 500 => return Err(Error::invalid("page_size", "must be at most 500")),
            n => i64::from(n),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(crate::page_token::decode(t, "ListWebhookDeliveries")?),
        };
        let state = match pb::WebhookDeliveryState::try_from(req.state) {
            Ok(pb::WebhookDeliveryState::Unspecified) => None,
            Ok(pb::WebhookDeliveryState::Pending) => Some("pending"),
            Ok(pb::WebhookDeliveryState::Delivered) => Some("delivered"),
            Ok(pb::WebhookDeliveryState::Failed) => Some("failed"),
            Err(_) => {
                return Err(Error::invalid(
                    "state",
                    "must be a WebhookDeliveryState value",
                ))
            }
        };
        let mut rows = self
            .store
            .list_deliveries(&caller.tenant, state, after, limit + 1)
            .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => crate::page_token::encode(last.created_at, last.id),
            _ => String::new(),
        };
        Ok(pb::ListWebhookDeliveriesResponse {
            deliveries: rows.into_iter().map(delivery_pb).collect(),
            next_page_token,
        })
    }

    pub async fn redeliver(
        &self,
        caller: &Caller,
        req: pb::RedeliverWebhookRequest,
    ) -> Result<pb::WebhookDelivery> {
        let id: Uuid = req
            .id
            .parse()
            .map_err(|_| Error::invalid("id", "must be a delivery id (a UUID)"))?;
        let row = self
            .store
            .redeliver(&caller.tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("webhook delivery {id} not found")))?;
        Ok(delivery_pb(row))
    }
}

#[tonic::async_trait]
impl pb::webhooks_server::Webhooks for WebhooksApi {
    async fn set_webhook_endpoint(
        &self,
        request: Request<pb::SetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.0.set_endpoint(&caller, request.into_inner()).await?,
        ))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.0.get_endpoint(&caller).await?))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.0.rotate(&caller, request.into_inner()).await?,
        ))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.0.list(&caller, request.into_inner()).await?,
        ))
    }

    async fn redeliver_webhook(
        &self,
        request: Request<pb::RedeliverWebhookRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.0.redeliver(&caller, request.into_inner()).await?,
        ))
    }
}
