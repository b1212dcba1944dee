//! `tutti workers` and `tutti queues`: the farm's Operator service as tables.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::service::interceptor::InterceptedService;
use tutti_proto::v1 as pb;
use tutti_proto::v1::operator_client::OperatorClient;

use super::channel::{channel_to, status_err, Bearer, FarmChannel, ServerArgs};

#[derive(Debug, clap::Args)]
pub(crate) struct WorkersArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct QueuesArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Window of the tenants' shares, in seconds.
    #[arg(long, default_value_t = 300)]
    pub window: u32,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// Put dead-lettered messages back on the queues they were refused from (once the cause is
    /// fixed), oldest first; `tutti queues` lists what was replayed.
    Replay {
        #[command(flatten)]
        server: ServerArgs,
        /// At most this many messages (server default 100, at most 10000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Only this queue's: denoise, vocode or results.
        #[arg(long)]
        queue: Option<String>,
    },
}

type Client = OperatorClient<InterceptedService<FarmChannel, Bearer>>;

async fn client(server: &ServerArgs) -> anyhow::Result<Client> {
    let (channel, bearer) = channel_to(&server.server, &server.credentials).await?;
    Ok(OperatorClient::with_interceptor(channel, bearer))
}

fn class(c: i32) -> &'static str {
    match pb::Priority::try_from(c) {
        Ok(pb::Priority::Interactive) => "interactive",
        Ok(pb::Priority::Batch) => "batch",
        _ => "standard",
    }
}

fn ago(t: Option<&tutti_proto::wkt::Timestamp>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match t {
        Some(t) => format!("{}s ago", (now - t.seconds).max(0)),
        None => "-".into(),
    }
}

pub(crate) async fn workers(args: WorkersArgs) -> anyhow::Result<()> {
    let resp = client(&args.server)
        .await?
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<8} {:<8} {:<15} {:>9} {:>9} {:>7} {:>5} {:>7}  LAST HEARTBEAT",
        "WORKER", "STATE", "DEVICE", "STAGES", "DENOISE", "VOCODE", "EXPRESS", "HELD", "CHUNK/F"
    );
    for w in &resp.workers {
        let state = if w.gone {
            "gone"
        } else if w.draining {
            "draining"
        } else {
            "live"
        };
        // Chunks per denoiser forward over the worker's last minute; "-" when it ran none.
        let fill = if w.chunks_per_forward > 0.0 {
            format!("{:.1}", w.chunks_per_forward)
        } else {
            "-".to_string()
        };
        let device = if w.device.is_empty() { "-" } else { &w.device };
        println!(
            "{:<24} {:<8} {:<8} {:<15} {:>9} {:>9} {:>7} {:>5} {:>7}  {}",
            w.name,
            state,
            device,
            w.stages.join(","),
            format!("{}/{}", w.denoise_in_use, w.denoise_slots),
            format!("{}/{}", w.vocode_in_use, w.vocode_slots),
            format!("{}/{}", w.express_in_use, w.express_slots),
            w.held_latents,
            fill,
            ago(w.last_heartbeat.as_ref()),
        );
    }
    if resp.workers.is_empty() {
        println!("(no worker has sent a heartbeat)");
    }
    Ok(())
}

pub(crate) async fn queues(args: QueuesArgs) -> anyhow::Result<()> {
    let resp = client(&args.server)
        .await?
        .get_queues(pb::GetQueuesRequest {
            share_window_seconds: args.window,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(());
    }
    println!(
        "jobs: {} queued, {} running",
        resp.jobs_queued, resp.jobs_running
    );
    println!(
        "{:<8} {:<12} {:>8} {:>10} {:>12}",
        "STAGE", "CLASS", "PENDING", "IN FLIGHT", "OLDEST WAIT"
    );
    for q in &resp.queues {
        println!(
            "{:<8} {:<12} {:>8} {:>10} {:>11.1}s",
            q.stage,
            class(q.class),
            q.pending,
            q.in_flight,
            q.oldest_wait_seconds
        );
    }
    if !resp.shares.is_empty() {
        println!(
            "\nshares over the last {} s:\n{:<20} {:<12} {:>6} {:>6} {:>6} {:>8}",
            resp.share_window_seconds, "TENANT", "CLASS", "WEIGHT", "FAIR", "SHARE", "TASKS"
        );
        for s in &resp.shares {
            println!(
                "{:<20} {:<12} {:>6.1} {:>5.0}% {:>5.0}% {:>8}",
                s.tenant,
                class(s.class),
                s.weight,
                s.fair_share * 100.0,
                s.share * 100.0,
                s.tasks_done
            );
        }
    }
    if !resp.failures.is_empty() {
        println!("\nrecent failed jobs:");
        for f in &resp.failures {
            println!(
                "  {} {} {}: {} ({})",
                f.job_id,
                f.tenant,
                f.code,
                f.message,
                ago(f.at.as_ref())
            );
        }
    }
    if !resp.failed_tasks.is_empty() {
        println!("\nfailed task attempts:");
        for t in &resp.failed_tasks {
            println!(
                "  {} chunk {} {} attempt {} on {} [{}]: {}",
                t.job_id,
                t.chunk,
                t.stage,
                t.attempt,
                if t.worker.is_empty() { "-" } else { &t.worker },
                t.state,
                t.error
            );
        }
    }
    if resp.dead_letters_waiting > 0 {
        println!(
            "\n{} dead letters waiting (tutti dead-letters replay puts them back)",
            resp.dead_letters_waiting
        );
    }
    if !resp.replays.is_empty() {
        println!("\ndead letters replayed:");
        for r in &resp.replays {
            println!(
                "  {} to {} by {} ({} bytes, {})",
                r.messages,
                r.queue,
                r.replayed_by,
                r.size_bytes,
                ago(r.at.as_ref())
            );
        }
    }
    if !resp.dead_letters.is_empty() {
        println!("\ndead letters (messages that could not be parsed):");
        for d in &resp.dead_letters {
            println!(
                "  from {} refused by {} ({} bytes, {}): {}",
                d.queue,
                d.refused_by,
                d.size_bytes,
                ago(d.at.as_ref()),
                d.error
            );
        }
    }
    Ok(())
}

pub(crate) async fn dead_letters(cmd: DeadLetterCommand) -> anyhow::Result<()> {
    let DeadLetterCommand::Replay {
        server,
        limit,
        queue,
    } = cmd;
    let resp = client(&server)
        .await?
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            limit,
            queue: queue.unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    for r in &resp.replays {
        println!(
            "replayed {} to {} ({} bytes)",
            r.messages, r.queue, r.size_bytes
        );
    }
    println!(
        "{} replayed, {} dead letters left",
        resp.replayed, resp.left
    );
    Ok(())
}
