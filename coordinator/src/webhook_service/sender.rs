//! The sending loop: any replica may run it. Each round claims due deliveries (leased, so a
//! replica that dies mid-send only delays them by the lease), signs each with its tenant's
//! active secrets, posts it with no redirects, a timeout and a capped read of the answer, and
//! records the outcome fenced by the attempt it claimed. A 2xx is delivered; anything else
//! is retried with exponential backoff and jitter until `retry_for` has passed, then failed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::Rng;
use reqwest::Url;
use tokio::sync::watch;

use crate::store::webhooks::{Attempted, Claimed};
use crate::store::JobStore;
use crate::webhooks::{sign, target, WebhookSettings};

/// Deliveries claimed per round.
const CLAIM: i64 = 32;
/// Sent at once.
const CONCURRENCY: usize = 8;
/// Bytes of a receiver's answer kept (for the delivery's last error).
const ANSWER_CAP: usize = 1024;
/// How often an idle sender looks for due deliveries.
const IDLE: Duration = Duration::from_millis(250);

pub struct Sender {
    pub store: Arc<dyn JobStore>,
    pub settings: WebhookSettings,
    client: reqwest::Client,
}

impl Sender {
    pub fn new(store: Arc<dyn JobStore>, settings: WebhookSettings) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("tutti-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            store,
            settings,
            client,
        })
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let sent = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: claiming deliveries failed");
                    0
                }
            };
            if sent < CLAIM as usize {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// One round: claims and sends; returns how many were claimed.
    pub async fn round(&self) -> crate::error::Result<usize> {
        let claimed = self
            .store
            .claim_deliveries(CLAIM, self.settings.lease)
            .await?;
        let n = claimed.len();
        futures::stream::iter(claimed)
            .for_each_concurrent(CONCURRENCY, |d| async move {
                let outcome = self.attempt(&d).await;
                match self.store.finish_delivery(d.id, d.attempt, &outcome).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(delivery = %d.id, "webhooks: claim lost before its outcome was recorded")
                    }
                    Err(e) => {
                        tracing::warn!(delivery = %d.id, error = %e, "webhooks: recording an outcome failed; the lease will run out and it goes again")
                    }
                }
            })
            .await;
        Ok(n)
    }

    async fn attempt(&self, d: &Claimed) -> Attempted {
        let (status, error) = match self.send(d).await {
            Ok(status) if (200..300).contains(&status) => {
                return Attempted::Delivered { status };
            }
            Ok(status) => (Some(status), format!("answered {status}")),
            Err(e) => (None, e),
        };
        let delay = backoff(&self.settings, d.attempt);
        let at = later(Utc::now(), delay);
        if at > gives_up_at(&self.settings, d.window_start) {
            Attempted::Failed { status, error }
        } else {
            Attempted::Retry { at, status, error }
        }
    }

    /// Posts the delivery; the status, or why there was none.
    async fn send(&self, d: &Claimed) -> Result<u16, String> {
        let url = Url::parse(&d.url).map_err(|e| format!("url: {e}"))?;
        let addr = target::resolve(&url, self.settings.allow_private).await?;
        let secrets: Vec<String> = self
            .store
            .webhook_secrets(&d.tenant)
            .await
            .map_err(|e| format!("secrets: {e}"))?
            .into_iter()
            .map(|s| s.secret)
            .collect();
        let id = d.id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = sign::header(&secrets, &id, timestamp, d.payload.as_bytes())
            .map_err(|e| e.to_string())?;
        // The connection goes to the address just checked, whatever DNS says next.
        let host = url.host_str().unwrap_or_default().to_string();
        let client = if host.parse::<std::net::IpAddr>().is_ok() {
            self.client.clone()
        } else {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(self.settings.timeout)
                .connect_timeout(self.settings.timeout)
                .resolve(&host, addr)
                .build()
                .map_err(|e| e.to_string())?
        };
        let mut resp = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = resp.status().as_u16();
        // Read a little of the answer (receivers may hold a connection open); never more.
        let mut kept = 0;
        while kept < ANSWER_CAP {
            match resp.chunk().await {
                Ok(Some(c)) => kept += c.len(),
                _ => break,
            }
        }
        Ok(status)
    }
}

/// The delay after failed attempt `attempt` (1-based): `backoff * 2^(attempt-1)`, at most
/// `max_backoff`, times a jitter in [0.5, 1.5).
pub fn backoff(s: &WebhookSettings, attempt: u32) -> Duration {
    let base = s
        .backoff
        .saturating_mul(1 << attempt.saturating_sub(1).min(20))
        .min(s.max_backoff);
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// When a delivery made at `window_start` stops being retried.
pub fn gives_up_at(s: &WebhookSettings, window_start: DateTime<Utc>) -> DateTime<Utc> {
    later(window_start, s.retry_for)
}

/// `t + d`, saturating at the end of time.
fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let s = WebhookSettings {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..crate::settings::Settings::default().webhooks
        };
        for (attempt, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (5, 10.0),
            (30, 10.0),
        ] {
            let d = backoff(&s, attempt).as_secs_f64();
            assert!(d >= base * 0.5 && d < base * 1.5, "attempt {attempt}: {d}");
        }
    }
}
