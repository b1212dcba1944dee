//! `tutti batch ...`: submit a manifest as a backfill batch, follow it, show it, cancel it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::BufReader;
use tonic::service::interceptor::InterceptedService;
use tutti_coordinator::batches::manifest::{ManifestFormat, ManifestReader, RowError};
use tutti_proto::v1 as pb;
use tutti_proto::v1::batches_client::BatchesClient;

use super::channel::{status_err, Bearer, FarmChannel, ServerArgs};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BatchCommand {
    /// Submit a JSONL or CSV manifest (a local file, streamed, or an s3:// URI the coordinator
    /// reads). Submitting the same batch again resumes it and never duplicates an item.
    Submit(SubmitArgs),
    /// Follow a batch with a progress bar until every item has ended.
    Watch(BatchIdArgs),
    /// Show a batch: counts per state, throughput, ETA, results.
    Get(BatchIdArgs),
    /// Cancel every item of a batch that has not ended.
    Cancel(BatchIdArgs),
    /// Delete every item's job (outputs and inputs removed, prompts blanked; those not ended
    /// are cancelled first); the batch and its usage records stay.
    Delete(BatchIdArgs),
    /// Run the failed items of a batch again (and its cancelled ones with
    /// --include-cancelled); the batch finishes again with new results.
    Retry(RetryArgs),
    /// The tenant's batches, newest first.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RetryArgs {
    /// Retry cancelled items too (this lifts the batch's cancel).
    #[arg(long)]
    pub include_cancelled: bool,
    #[command(flatten)]
    pub batch: BatchIdArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Batches to show.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// A manifest: a local `.jsonl`/`.csv` file, or `s3://<bucket>/manifests/<tenant>/<key>` in
    /// the farm's bucket (a tenant names only its own prefixes).
    pub manifest: String,
    /// The batch's name (default: the manifest's absolute path or URI). The same name is the
    /// same batch.
    #[arg(long)]
    pub name: Option<String>,
    /// Read a local file as CSV or JSONL regardless of its extension.
    #[arg(long, value_enum)]
    pub format: Option<ManifestFormat>,
    /// Follow the batch until it ends.
    #[arg(long)]
    pub watch: bool,
    /// Check every row against the server's rules and report; submit nothing.
    #[arg(long, conflicts_with = "watch")]
    pub validate_only: bool,
    /// Call this URL back once the batch's results are written (instead of the tenant's
    /// endpoint).
    #[arg(long)]
    pub webhook: Option<String>,
    /// An event --webhook receives, repeatable (default: batch_completed and the items'
    /// succeeded, failed, cancelled); job events make each item call back.
    #[arg(long = "webhook-event", requires = "webhook", value_parser = super::client::parse_webhook_event)]
    pub webhook_events: Vec<pb::WebhookEvent>,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl SubmitArgs {
    fn webhook(&self) -> Option<pb::Webhook> {
        self.webhook.as_ref().map(|url| pb::Webhook {
            url: url.clone(),
            events: self.webhook_events.iter().map(|e| *e as i32).collect(),
        })
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct BatchIdArgs {
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

type Client = BatchesClient<InterceptedService<FarmChannel, Bearer>>;

/// The farm's Batches service with the command's key and TLS settings (as every client
/// command: `--api-key`, `--tls-ca`, ...).
async fn connect(server: &ServerArgs) -> anyhow::Result<Client> {
    let (channel, bearer) = super::channel::channel_to(&server.server, &server.credentials).await?;
    Ok(batches_client(channel, bearer))
}

fn batches_client(channel: FarmChannel, bearer: Bearer) -> Client {
    // Manifests can be large: allow big responses (rejection reports).
    BatchesClient::with_interceptor(channel, bearer).max_decoding_message_size(64 << 20)
}

pub(crate) async fn run(cmd: BatchCommand) -> anyhow::Result<()> {
    match cmd {
        BatchCommand::Submit(a) => submit(a).await,
        BatchCommand::Watch(a) => {
            let mut c = connect(&a.server).await?;
            let b = watch(&mut c, &a.id).await?;
            print_batch(&b);
            Ok(())
        }
        BatchCommand::Get(a) => {
            let b = connect(&a.server)
                .await?
                .get_batch(pb::GetBatchRequest { id: a.id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_batch(&b);
            Ok(())
        }
        BatchCommand::List(a) => list(a).await,
        BatchCommand::Cancel(a) => {
            let b = connect(&a.server)
                .await?
                .cancel_batch(pb::CancelBatchRequest { id: a.id })
                .await
                .map_err(status_err)?
                .into_inner();
            print_batch(&b);
            Ok(())
        }
        BatchCommand::Delete(a) => {
            let res = connect(&a.server)
                .await?
                .delete_batch(pb::DeleteBatchRequest { id: a.id })
                .await
                .map_err(status_err)?
                .into_inner();
            println!("deleted    {} items' jobs", res.deleted);
            if let Some(b) = &res.batch {
                print_batch(b);
            }
            Ok(())
        }
        BatchCommand::Retry(a) => {
            let res = connect(&a.batch.server)
                .await?
                .retry_batch_items(pb::RetryBatchItemsRequest {
                    id: a.batch.id,
                    include_cancelled: a.include_cancelled,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            println!("retried    {} items", res.retried);
            if let Some(b) = &res.batch {
                print_batch(b);
            }
            Ok(())
        }
    }
}

/// Streams a local manifest's rows (rows that cannot become a request stay here, reported by
/// line); `sent` counts what went out.
pub(crate) fn stream_file(
    path: PathBuf,
    format: ManifestFormat,
    name: String,
    validate_only: bool,
    webhook: Option<pb::Webhook>,
    sent: ProgressBar,
) -> (
    tokio_stream::wrappers::ReceiverStream<pb::SubmitBatchRequest>,
    tokio::task::JoinHandle<anyhow::Result<Vec<RowError>>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let reader = tokio::spawn(async move {
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let mut rows = ManifestReader::new(BufReader::new(file), format);
        let header = pb::SubmitBatchRequest {
            kind: Some(pb::submit_batch_request::Kind::Header(pb::BatchHeader {
                name,
                manifest_uri: String::new(),
                validate_only,
                webhook,
            })),
        };
        if tx.send(header).await.is_err() {
            return Ok(Vec::new());
        }
        let mut errors = Vec::new();
        while let Some(row) = rows
            .next()
            .await
            .with_context(|| format!("reading {}", path.display()))?
        {
            match row {
                Ok(item) => {
                    let msg = pb::SubmitBatchRequest {
                        kind: Some(pb::submit_batch_request::Kind::Item(pb::BatchItem {
                            item_id: item.item_id,
                            line: item.line,
                            request: Some(item.request),
                        })),
                    };
                    // The server hung up: its status says why.
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                    sent.inc(1);
                }
                Err(e) => errors.push(e),
            }
        }
        Ok(errors)
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), reader)
}

async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let (channel, bearer) =
        super::channel::upload_channel_to(&a.server.server, &a.server.credentials).await?;
    let mut client = batches_client(channel, bearer);
    let format = a
        .format
        .unwrap_or_else(|| ManifestFormat::from_name(&a.manifest));
    let (response, local_errors) = if a.manifest.starts_with("s3://") {
        let header = pb::SubmitBatchRequest {
            kind: Some(pb::submit_batch_request::Kind::Header(pb::BatchHeader {
                name: a.name.clone().unwrap_or_default(),
                manifest_uri: a.manifest.clone(),
                validate_only: a.validate_only,
                webhook: a.webhook(),
            })),
        };
        let r = client
            .submit_batch(tokio_stream::iter([header]))
            .await
            .map_err(status_err)?
            .into_inner();
        (r, Vec::new())
    } else {
        let path = PathBuf::from(&a.manifest);
        let abs =
            std::fs::canonicalize(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = a
            .name
            .clone()
            .unwrap_or_else(|| format!("file://{}", abs.display()));
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} sent {pos} items ({per_sec})")
                .map_err(|e| anyhow::anyhow!("progress style: {e}"))?,
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let (stream, reader) =
            stream_file(abs, format, name, a.validate_only, a.webhook(), bar.clone());
        let result = client.submit_batch(stream).await;
        bar.finish_and_clear();
        let local = reader.await.context("manifest reader")??;
        (result.map_err(status_err)?.into_inner(), local)
    };
    let batch = response.batch.clone().unwrap_or_default();
    if a.validate_only {
        println!("checked: nothing was submitted");
    } else {
        println!("batch {}  ({})", batch.id, batch.name);
    }
    println!(
        "accepted {}  already held {}  rejected {}",
        response.accepted,
        response.existing,
        response.rejected + local_errors.len() as u64
    );
    let mut rejected: Vec<(u64, String)> = local_errors
        .into_iter()
        .map(|e| (e.line, e.message))
        .chain(
            response
                .rejected_items
                .iter()
                .map(|r| (r.line, format!("{}: {}", r.item_id, r.error))),
        )
        .collect();
    rejected.sort_by_key(|r| r.0);
    for (line, msg) in rejected.iter().take(50) {
        eprintln!("  line {line}: {msg}");
    }
    if rejected.len() > 50 {
        eprintln!("  ... and {} more", rejected.len() - 50);
    }
    if a.watch {
        let b = watch(&mut client, &batch.id).await?;
        print_batch(&b);
    }
    Ok(())
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let page = connect(&a.server)
        .await?
        .list_batches(pb::ListBatchesRequest {
            page_size: a.limit,
            page_token: String::new(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    println!(
        "{:<36} {:<10} {:>7} {:>7} {:>7} {:>7}  NAME",
        "BATCH", "STATE", "ITEMS", "DONE", "FAILED", "QUEUED"
    );
    for b in &page.batches {
        println!(
            "{:<36} {:<10} {:>7} {:>7} {:>7} {:>7}  {}",
            b.id,
            state_name(b),
            b.total,
            b.succeeded,
            b.failed,
            b.queued + b.running,
            b.name
        );
    }
    if page.batches.is_empty() {
        println!("(no batches)");
    }
    Ok(())
}

fn state_name(b: &pb::Batch) -> String {
    pb::BatchState::try_from(b.state)
        .unwrap_or(pb::BatchState::Unspecified)
        .as_str_name()
        .trim_start_matches("BATCH_STATE_")
        .to_lowercase()
}

/// Polls the batch with a progress bar until its results are written.
async fn watch(client: &mut Client, id: &str) -> anyhow::Result<pb::Batch> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} items  {msg}")
            .map_err(|e| anyhow::anyhow!("progress style: {e}"))?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        let b = client
            .get_batch(pb::GetBatchRequest { id: id.to_string() })
            .await
            .map_err(status_err)?
            .into_inner();
        bar.set_length((b.total - b.rejected).max(1));
        bar.set_position(b.succeeded + b.failed + b.cancelled);
        let eta = b
            .eta_seconds
            .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
            .unwrap_or_else(|| "-".into());
        bar.set_message(format!(
            "{}  running {}  failed {}  {:.2} items/s  eta {eta}",
            state_name(&b),
            b.running,
            b.failed,
            b.items_per_second
        ));
        if !b.results_uri.is_empty() {
            bar.finish_and_clear();
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_batch(b: &pb::Batch) {
    println!("batch      {}", b.id);
    println!("name       {}", b.name);
    println!("state      {}", state_name(b));
    println!(
        "items      {} total: {} queued, {} running, {} succeeded, {} failed, {} cancelled, {} rejected",
        b.total, b.queued, b.running, b.succeeded, b.failed, b.cancelled, b.rejected
    );
    println!("throughput {:.2} items/s", b.items_per_second);
    if let Some(eta) = b.eta_seconds {
        println!(
            "eta        {}",
            humantime::format_duration(Duration::from_secs(eta))
        );
    }
    if !b.results_uri.is_empty() {
        println!("results    {}", b.results_uri);
    }
}
