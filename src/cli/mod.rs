//! Subcommands of `tutti`.

mod admin;
mod batch;
mod bench;
mod bench_ace;
mod bench_batch;
mod bench_farm;
mod bench_sao;
mod bench_timeline;
mod channel;
mod client;
mod embedded;
mod generate;
mod models;
mod operator;
mod signals;
mod train;
mod usage;
mod webhook;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tutti_coordinator::CoordinatorConfig;
use tutti_shared::telemetry::LogFormat;
use tutti_worker::WorkerConfig;

pub(crate) use client::GenerateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "tutti",
    version,
    about = "A render farm for text-to-music generation"
)]
pub(crate) struct Cli {
    /// Log lines as text or JSON.
    #[arg(
        long,
        env = "TUTTI_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a coordinator: the gRPC API, dispatch and result handling.
    Coordinator(CoordinatorConfig),
    /// Run a worker: consume denoise and/or vocode tasks.
    Worker(WorkerConfig),
    /// Generate music: embedded (no servers) by default, or on a farm with --server.
    Generate(GenerateArgs),
    /// Run the whole farm in one process: gRPC API, SQLite store, in-process queue and workers.
    Dev(embedded::DevConfig),
    /// Show a job.
    Job(client::JobArgs),
    /// Follow a job's progress until it ends.
    Watch(client::JobArgs),
    /// Cancel a job.
    Cancel(client::JobArgs),
    /// Run a failed or cancelled job again (same request and seed), from its last checkpoint.
    Retry(client::JobArgs),
    /// Delete a job: its outputs and inputs leave the blob store and its prompt is blanked (a
    /// job that has not ended is cancelled first); its usage record stays.
    Delete(client::JobArgs),
    /// List jobs.
    List(client::ListArgs),
    /// The models: local packs, or a farm's with --server (limits, samplers, what each takes,
    /// whether workers can run it now).
    Models(models::ModelsArgs),
    /// The farm's workers: slots in use, held latents, last heartbeat (admin key with auth).
    Workers(operator::WorkersArgs),
    /// Backlog per stage and class, tenants' shares, recent failures (admin key with auth).
    Queues(operator::QueuesArgs),
    /// Dead-lettered messages: put them back on their queues (admin key with auth).
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(operator::DeadLetterCommand),
    /// Usage totals for a period (jobs, audio and device seconds), per model, key, day or batch;
    /// --csv exports them.
    Usage(usage::UsageArgs),
    /// Tenants and their limits (operators: talks to the job store directly).
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// API keys (operators: talks to the job store directly).
    #[command(subcommand)]
    Key(admin::KeyCommand),
    /// Backfill batches: submit a manifest, watch, get, cancel, retry.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Webhooks: the tenant-wide endpoint, signing secrets, deliveries (list, redeliver).
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Model packs.
    #[command(subcommand)]
    Model(ModelCommand),
    Bench(bench::BenchCommand),
    /// Train the built-in model: dataset, denoiser, vocoder, pack, eval.
    #[command(subcommand)]
    Train(train::TrainCommand),
}

impl Command {
    /// Client commands, run by a person: quiet logs unless RUST_LOG says otherwise.
    pub(crate) fn is_interactive(&self) -> bool {
        matches!(
            self,
            Command::Generate(_)
                | Command::Job(_)
                | Command::Watch(_)
                | Command::Cancel(_)
                | Command::Retry(_)
                | Command::Delete(_)
                | Command::List(_)
                | Command::Models(_)
                | Command::Workers(_)
                | Command::Queues(_)
                | Command::Usage(_)
                | Command::DeadLetters(_)
                | Command::Tenant(_)
                | Command::Key(_)
                | Command::Batch(_)
                | Command::Webhook(_)
        )
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Print what a model pack holds.
    Inspect { path: PathBuf },
    /// Make a pack of a published folder: ACE-Step 1.5 (its diffusers folder), or Stable Audio
    /// (diffusers layout of SAO 1.0, or the stable-audio-tools layout of SAO Small with --t5);
    /// the pack links to the folder.
    Import {
        dir: PathBuf,
        /// The pack folder to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        version: Option<String>,
        /// The t5-base folder (config.json, model.safetensors, tokenizer.json) for SAO Small.
        #[arg(long)]
        t5: Option<PathBuf>,
    },
    /// Write a tiny random-weight pack of the real architecture (for tests and demos of the farm).
    Tiny {
        path: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.command.is_interactive() {
        // The root of the command's trace: its context goes out with every gRPC call, so the
        // farm's spans for this command share one trace id (exported when OTLP is configured).
        use tracing::Instrument;
        let span = tracing::info_span!("cli", otel.name = "tutti client", otel.kind = "client");
        return run_command(cli).instrument(span).await;
    }
    run_command(cli).await
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Coordinator(cfg) => {
            tracing::info!(config = ?cfg, "starting coordinator");
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding {}: {e}", cfg.listen))?;
            let shutdown = signals::shutdown_on_signal();
            tutti_coordinator::serve(&cfg, cfg.amqp.topology(), listener, shutdown).await
        }
        Command::Worker(cfg) => {
            tracing::info!(config = ?cfg, "starting worker");
            let shutdown = signals::shutdown_on_signal();
            tutti_worker::serve(&cfg, shutdown).await
        }
        Command::Dev(cfg) => {
            tracing::info!(config = ?cfg, "starting tutti dev");
            let shutdown = signals::shutdown_on_signal();
            embedded::dev(cfg, shutdown).await
        }
        Command::Generate(args) => generate::generate(args).await,
        Command::Job(args) => client::show_job(args).await,
        Command::Watch(args) => client::watch(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Retry(args) => client::retry(args).await,
        Command::Delete(args) => client::delete(args).await,
        Command::List(args) => client::list(args).await,
        Command::Models(args) => models::run(args).await,
        Command::Workers(args) => operator::workers(args).await,
        Command::Queues(args) => operator::queues(args).await,
        Command::Usage(args) => usage::run(args).await,
        Command::DeadLetters(cmd) => operator::dead_letters(cmd).await,
        Command::Tenant(cmd) => admin::tenant(cmd).await,
        Command::Key(cmd) => admin::key(cmd).await,
        Command::Batch(cmd) => batch::run(cmd).await,
        Command::Webhook(cmd) => webhook::run(cmd).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Train(cmd) => train::run(cmd),
        Command::Model(ModelCommand::Inspect { path }) => {
            println!("{}", tutti_model::families::inspect(&path)?);
            Ok(())
        }
        Command::Model(ModelCommand::Import {
            dir,
            output,
            name,
            version,
            t5,
        }) if tutti_model::families::ace_step::pack::is_ace_step_folder(&dir) => {
            if t5.is_some() {
                anyhow::bail!("--t5 is for Stable Audio Open Small; an ACE-Step folder has its own text encoder");
            }
            let opts = tutti_model::families::ace_step::pack::ImportOptions { name, version };
            let pack = tutti_model::families::ace_step::pack::import(&dir, &output, &opts)?;
            println!(
                "imported {} (ACE-Step 1.5{}) into {}",
                pack.model.name,
                if pack.ace_step.turbo { ", turbo" } else { "" },
                output.display()
            );
            Ok(())
        }
        Command::Model(ModelCommand::Import {
            dir,
            output,
            name,
            version,
            t5,
        }) => {
            let opts = tutti_model::stable_audio::ImportOptions { name, version, t5 };
            let pack = tutti_model::stable_audio::import(&dir, &output, &opts)?;
            println!(
                "imported {} ({:?} layout) into {}",
                pack.model.name,
                pack.model.layout,
                output.display()
            );
            Ok(())
        }
        Command::Model(ModelCommand::Tiny { path, seed }) => {
            tutti_model::tiny::write_tiny_pack(&path, seed)?;
            println!("wrote a tiny random pack to {}", path.display());
            Ok(())
        }
    }
}
