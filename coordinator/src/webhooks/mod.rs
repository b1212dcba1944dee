//! Signed webhooks: a job's events (and a batch's end) written to an outbox in the transaction
//! that makes them, then sent by a loop that any replica may run (`webhook_service::sender`),
//! signed the Standard Webhooks way (`sign`), only to public addresses unless the operator
//! allows others (`target`). The tenant's endpoint, secrets and deliveries are served by
//! `webhook_service::api`. This module holds the vocabulary and depends on no store.

pub mod sign;
pub mod target;

use std::time::Duration;

use chrono::{DateTime, Utc};
use tutti_proto::v1 as pb;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::notify::Change;

/// What a webhook can report. The one place their names are spelled: the stored subscription
/// lists them by `as_str`, payloads carry `type()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    Queued,
    Started,
    OutputReady,
    Succeeded,
    Failed,
    Cancelled,
    BatchCompleted,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 7] = [
        WebhookEvent::Queued,
        WebhookEvent::Started,
        WebhookEvent::OutputReady,
        WebhookEvent::Succeeded,
        WebhookEvent::Failed,
        WebhookEvent::Cancelled,
        WebhookEvent::BatchCompleted,
    ];

    /// What a subscription gets when it names no events.
    pub const DEFAULT: [WebhookEvent; 4] = [
        WebhookEvent::Succeeded,
        WebhookEvent::Failed,
        WebhookEvent::Cancelled,
        WebhookEvent::BatchCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Queued => "queued",
            WebhookEvent::Started => "started",
            WebhookEvent::OutputReady => "output_ready",
            WebhookEvent::Succeeded => "succeeded",
            WebhookEvent::Failed => "failed",
            WebhookEvent::Cancelled => "cancelled",
            WebhookEvent::BatchCompleted => "batch_completed",
        }
    }

    /// The payload's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            WebhookEvent::Queued => "job.queued",
            WebhookEvent::Started => "job.started",
            WebhookEvent::OutputReady => "job.output_ready",
            WebhookEvent::Succeeded => "job.succeeded",
            WebhookEvent::Failed => "job.failed",
            WebhookEvent::Cancelled => "job.cancelled",
            WebhookEvent::BatchCompleted => "batch.completed",
        }
    }

    pub fn from_stored(s: &str) -> Option<WebhookEvent> {
        WebhookEvent::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The webhooks a job change sends (a success also reports its outputs first).
    pub fn of_change(c: Change) -> &'static [WebhookEvent] {
        match c {
            Change::Queued => &[WebhookEvent::Queued],
            Change::Started => &[WebhookEvent::Started],
            Change::Succeeded => &[WebhookEvent::OutputReady, WebhookEvent::Succeeded],
            Change::Failed => &[WebhookEvent::Failed],
            Change::Cancelled => &[WebhookEvent::Cancelled],
            Change::Step | Change::Stage | Change::Retry => &[],
        }
    }
}

impl From<WebhookEvent> for pb::WebhookEvent {
    fn from(e: WebhookEvent) -> Self {
        match e {
            WebhookEvent::Queued => pb::WebhookEvent::Queued,
            WebhookEvent::Started => pb::WebhookEvent::Started,
            WebhookEvent::OutputReady => pb::WebhookEvent::OutputReady,
            WebhookEvent::Succeeded => pb::WebhookEvent::Succeeded,
            WebhookEvent::Failed => pb::WebhookEvent::Failed,
            WebhookEvent::Cancelled => pb::WebhookEvent::Cancelled,
            WebhookEvent::BatchCompleted => pb::WebhookEvent::BatchCompleted,
        }
    }
}

/// A subscription as stored: a URL and the events it takes, space-separated (matched in SQL
/// by `' ' || events || ' ' LIKE '% name %'`, the same in both dialects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub url: String,
    pub events: String,
}

impl Subscription {
    /// A request's webhook, checked: `field` names it in errors. `None` when absent.
    pub fn from_pb(
        field: &str,
        hook: Option<&pb::Webhook>,
        allow_private: bool,
    ) -> Result<Option<Self>> {
        let Some(hook) = hook else {
            return Ok(None);
        };
        target::check_url(&format!("{field}.url"), &hook.url, allow_private)?;
        let mut events = Vec::new();
        for (i, e) in hook.events.iter().enumerate() {
            let e = match pb::WebhookEvent::try_from(*e) {
                Ok(pb::WebhookEvent::Queued) => WebhookEvent::Queued,
                Ok(pb::WebhookEvent::Started) => WebhookEvent::Started,
                Ok(pb::WebhookEvent::OutputReady) => WebhookEvent::OutputReady,
                Ok(pb::WebhookEvent::Succeeded) => WebhookEvent::Succeeded,
                Ok(pb::WebhookEvent::Failed) => WebhookEvent::Failed,
                Ok(pb::WebhookEvent::Cancelled) => WebhookEvent::Cancelled,
                Ok(pb::WebhookEvent::BatchCompleted) => WebhookEvent::BatchCompleted,
                Ok(pb::WebhookEvent::Unspecified) | Err(_) => {
                    return Err(Error::invalid(
                        format!("{field}.events[{i}]"),
                        "must name an event (queued, started, output_ready, succeeded, failed, cancelled, batch_completed)",
                    ))
                }
            };
            if !events.contains(&e) {
                events.push(e);
            }
        }
        if events.is_empty() {
            events.extend(WebhookEvent::DEFAULT);
        }
        Ok(Some(Subscription {
            url: hook.url.clone(),
            events: events
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        }))
    }

    /// The webhook of a request the API accepted (so already checked).
    pub fn of_accepted(req: &pb::SubmitGenerationRequest) -> Option<Self> {
        Self::from_pb("webhook", req.webhook.as_ref(), true)
            .ok()
            .flatten()
    }

    pub fn to_pb(&self) -> pb::Webhook {
        pb::Webhook {
            url: self.url.clone(),
            events: self
                .events
                .split(' ')
                .filter_map(WebhookEvent::from_stored)
                .map(|e| pb::WebhookEvent::from(e) as i32)
                .collect(),
        }
    }
}

/// The body of a job's webhook: its type, when it happened, and what a receiver needs to act
/// (the job, and `extra` fields: a failure's error, a deadline's reason); the rest is one
/// `GetJob` away.
pub fn job_payload(
    event: WebhookEvent,
    job: Uuid,
    extra: Option<&serde_json::Value>,
    at: DateTime<Utc>,
) -> serde_json::Value {
    let mut data = serde_json::json!({ "job_id": job.to_string() });
    if let (Some(serde_json::Value::Object(extra)), Some(map)) = (extra, data.as_object_mut()) {
        map.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    serde_json::json!({
        "type": event.type_name(),
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
}

/// The body of a batch's webhook.
pub fn batch_payload(batch: Uuid, results_key: &str, at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "type": WebhookEvent::BatchCompleted.type_name(),
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": { "batch_id": batch.to_string(), "results_key": results_key },
    })
}

/// How deliveries are sent (defaults in `settings::defaults`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Whether this replica runs the sending loop.
    pub send: bool,
    /// Allow loopback, private and link-local targets (tests, private networks).
    pub allow_private: bool,
    /// First retry delay; doubles per attempt (with jitter) up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long a delivery is retried before it is marked failed.
    pub retry_for: Duration,
    /// Per attempt: connect, send and read the (capped) answer.
    pub timeout: Duration,
    /// A claimed delivery is another replica's to send after this long.
    pub lease: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_their_events_once() {
        let hook = pb::Webhook {
            url: "https://example.com/hook".into(),
            events: vec![
                pb::WebhookEvent::Queued as i32,
                pb::WebhookEvent::Queued as i32,
            ],
        };
        let s = Subscription::from_pb("webhook", Some(&hook), false)
            .expect("valid")
            .expect("some");
        assert_eq!(s.events, "queued");
        assert_eq!(
            s.to_pb(),
            pb::Webhook {
                events: vec![pb::WebhookEvent::Queued as i32],
                ..hook.clone()
            }
        );
        let all = Subscription::from_pb(
            "webhook",
            Some(&pb::Webhook {
                events: vec![],
                ..hook.clone()
            }),
            false,
        )
        .expect("valid")
        .expect("some");
        assert_eq!(all.events, "succeeded failed cancelled batch_completed");
        let bad = pb::Webhook {
            events: vec![0],
            ..hook
        };
        let e = Subscription::from_pb("webhook", Some(&bad), false).expect_err("unspecified");
        assert!(e.to_string().starts_with("webhook.events[0]:"), "{e}");
        for e in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::from_stored(e.as_str()), Some(e));
        }
    }
}
