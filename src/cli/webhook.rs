//! `tutti webhook ...`: the caller's tenant-wide endpoint, its signing secrets, and the
//! deliveries (listed, sent again by hand).

use std::time::Duration;

use tutti_proto::v1 as pb;
use tutti_proto::v1::webhooks_client::WebhooksClient;

use super::channel::{channel_to, status_err, ServerArgs};
use super::client::parse_webhook_event;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum WebhookCommand {
    /// Set the tenant-wide endpoint (used by jobs whose request names no webhook) and print
    /// the signing secrets.
    Set {
        url: String,
        /// An event to send, repeatable (default: succeeded, failed, cancelled,
        /// batch_completed).
        #[arg(long = "event", value_parser = parse_webhook_event)]
        events: Vec<pb::WebhookEvent>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show the endpoint and the signing secrets.
    Show {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove the tenant-wide endpoint.
    Clear {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make a new signing secret; the old ones stay valid for --overlap.
    Rotate {
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        overlap: Duration,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Recent deliveries, newest first.
    Deliveries {
        /// pending, delivered or failed (default: all).
        #[arg(long, value_parser = parse_state)]
        state: Option<pb::WebhookDeliveryState>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send a delivery again (same id, same body).
    Redeliver {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn parse_state(s: &str) -> Result<pb::WebhookDeliveryState, String> {
    pb::WebhookDeliveryState::from_str_name(&format!("WEBHOOK_DELIVERY_STATE_{}", s.to_uppercase()))
        .filter(|e| *e != pb::WebhookDeliveryState::Unspecified)
        .ok_or_else(|| format!("{s:?} is not a delivery state"))
}

/// The lowercase name of a protobuf enum value (`WEBHOOK_EVENT_OUTPUT_READY` -> `output_ready`).
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}

fn format_ts(t: &tutti_proto::wkt::Timestamp) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(t.seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn print_endpoint(e: &pb::WebhookEndpoint) {
    match &e.webhook {
        Some(w) => {
            let events: Vec<String> = w
                .events()
                .map(|ev| short(ev.as_str_name(), "WEBHOOK_EVENT_"))
                .collect();
            println!("endpoint  {}", w.url);
            println!("events    {}", events.join(", "));
        }
        None => println!("endpoint  (none)"),
    }
    for s in &e.secrets {
        let expires = s
            .expires_at
            .as_ref()
            .map(|t| format!("expires {}", format_ts(t)))
            .unwrap_or_else(|| "current".into());
        println!("secret    {}  ({expires})", s.secret);
    }
}

pub(crate) async fn run(cmd: WebhookCommand) -> anyhow::Result<()> {
    let server = match &cmd {
        WebhookCommand::Set { server, .. }
        | WebhookCommand::Show { server }
        | WebhookCommand::Clear { server }
        | WebhookCommand::Rotate { server, .. }
        | WebhookCommand::Deliveries { server, .. }
        | WebhookCommand::Redeliver { server, .. } => server,
    };
    let (channel, bearer) = channel_to(&server.server, &server.credentials).await?;
    let mut client = WebhooksClient::with_interceptor(channel, bearer);
    match cmd {
        WebhookCommand::Set { url, events, .. } => {
            let webhook = pb::Webhook {
                url,
                events: events.into_iter().map(|e| e as i32).collect(),
            };
            let e = client
                .set_webhook_endpoint(pb::SetWebhookEndpointRequest {
                    webhook: Some(webhook),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_endpoint(&e);
        }
        WebhookCommand::Show { .. } => {
            let e = client
                .get_webhook_endpoint(pb::GetWebhookEndpointRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            print_endpoint(&e);
        }
        WebhookCommand::Clear { .. } => {
            let e = client
                .set_webhook_endpoint(pb::SetWebhookEndpointRequest { webhook: None })
                .await
                .map_err(status_err)?
                .into_inner();
            print_endpoint(&e);
        }
        WebhookCommand::Rotate { overlap, .. } => {
            let overlap_seconds = u32::try_from(overlap.as_secs())
                .map_err(|_| anyhow::anyhow!("--overlap is too long"))?;
            let e = client
                .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                    overlap_seconds: Some(overlap_seconds),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_endpoint(&e);
        }
        WebhookCommand::Deliveries { state, limit, .. } => {
            let page = client
                .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                    page_size: limit,
                    page_token: String::new(),
                    state: state.map_or(0, |s| s as i32),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            println!(
                "{:<36}  {:<15}  {:<9}  {:>8}  {:>6}  subject",
                "id", "event", "state", "attempts", "status"
            );
            for d in page.deliveries {
                let subject = if d.job_id.is_empty() {
                    format!("batch {}", d.batch_id)
                } else {
                    format!("job {}", d.job_id)
                };
                println!(
                    "{:<36}  {:<15}  {:<9}  {:>8}  {:>6}  {subject}{}",
                    d.id,
                    short(d.event().as_str_name(), "WEBHOOK_EVENT_"),
                    short(d.state().as_str_name(), "WEBHOOK_DELIVERY_STATE_"),
                    d.attempts,
                    d.last_status.map_or("-".into(), |s| s.to_string()),
                    if d.last_error.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", d.last_error)
                    },
                );
            }
        }
        WebhookCommand::Redeliver { id, .. } => {
            let d = client
                .redeliver_webhook(pb::RedeliverWebhookRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            println!("delivery {} is due again", d.id);
        }
    }
    Ok(())
}
