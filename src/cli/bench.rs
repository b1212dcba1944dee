//! `tutti bench ...`: benchmarks.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tutti_bench::model::{self, BenchOptions, PackSource};
use tutti_bench::serve::{self, ServeOptions};

/// Benchmarks (run them on an otherwise idle machine; the report says when it was not).
#[derive(Debug, Args)]
pub(crate) struct BenchCommand {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// The model runtime: real-time factor of one clip, and continuous batching against one job
    /// at a time, on a random pack of the built-in model's size.
    Model(ModelBenchArgs),
    /// The farm itself with a tiny pack: its own time per job against the same jobs in
    /// process, interactive latency under a backfill, and submits per second.
    Farm(super::bench_farm::FarmBenchArgs),
    /// The coordinator accepting a large batch: items/s and its peak memory (RSS).
    BatchAccept(super::bench_batch::BatchAcceptArgs),
    /// One worker's jobs per hour with continuous step batching against one chunk at a time,
    /// on a seeded arrival trace mixed in duration and steps.
    Serve(ServeBenchArgs),
    /// One side of the Stable Audio benchmark: seconds per clip, stage by stage, on an imported
    /// Stable Audio pack (scripts/bench/stable_audio.py runs it beside the Python references).
    StableAudio(super::bench_sao::SaoBenchArgs),
    /// One side of the ACE-Step benchmark: seconds per song, stage by stage, on an imported
    /// ACE-Step pack (scripts/bench/ace_step.py runs it beside diffusers' AceStepPipeline).
    AceStep(super::bench_ace::AceBenchArgs),
}

#[derive(Debug, Args)]
struct ServeBenchArgs {
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Jobs in the trace.
    #[arg(long, default_value_t = 24)]
    jobs: usize,
    /// Durations in seconds the jobs draw from.
    #[arg(long, value_delimiter = ',', default_value = "5,10")]
    durations: Vec<f32>,
    /// Step counts the jobs draw from.
    #[arg(long, value_delimiter = ',', default_value = "25,50")]
    steps: Vec<u32>,
    /// Steps per denoise chunk.
    #[arg(long, default_value_t = 10)]
    chunk_steps: u32,
    /// Mean milliseconds between arrivals.
    #[arg(long, default_value_t = 200)]
    arrival_ms: u64,
    /// Batch capacity of the batching worker (default: the device's).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Seed of the arrival trace.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Measure this pack folder instead of random weights of the built-in size.
    #[arg(long, conflicts_with = "tiny")]
    pack: Option<PathBuf>,
    /// Use the tiny test pack (a quick check that the benchmark runs).
    #[arg(long)]
    tiny: bool,
}

#[derive(Debug, Args)]
struct ModelBenchArgs {
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Steps of the real-time-factor run (default: the pack's).
    #[arg(long)]
    steps: Option<usize>,
    /// Steps of each batching run.
    #[arg(long, default_value_t = 10)]
    batch_steps: usize,
    /// Batch sizes to compare with one job at a time.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batches: Vec<usize>,
    /// Runs per measurement (the report gives medians).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Clip length in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f32,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Measure this pack folder instead of random weights of the built-in size.
    #[arg(long, conflicts_with = "tiny")]
    pack: Option<PathBuf>,
    /// Use the tiny test pack (a quick check that the benchmark runs).
    #[arg(long)]
    tiny: bool,
}

fn pack_source(pack: Option<PathBuf>, tiny: bool) -> PackSource {
    match (pack, tiny) {
        (Some(dir), _) => PackSource::Dir(dir),
        (None, true) => PackSource::Tiny,
        (None, false) => PackSource::BuiltinSize,
    }
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let a = match cmd.what {
        BenchWhat::Model(a) => a,
        BenchWhat::Farm(a) => return super::bench_farm::run(a).await,
        BenchWhat::BatchAccept(a) => return super::bench_batch::run(a).await,
        BenchWhat::StableAudio(a) => return super::bench_sao::run(a).await,
        BenchWhat::AceStep(a) => return super::bench_ace::run(a).await,
        BenchWhat::Serve(a) => {
            let opts = ServeOptions {
                pack: pack_source(a.pack, a.tiny),
                device: a.device,
                jobs: a.jobs,
                durations_s: a.durations,
                steps: a.steps,
                chunk_steps: a.chunk_steps,
                arrival_ms: a.arrival_ms,
                max_batch: a.max_batch,
                seed: a.seed,
                threads: a.threads,
            };
            let report = serve::run(&opts).await?;
            print!("{}", report.to_markdown());
            return Ok(());
        }
    };
    let opts = BenchOptions {
        pack: pack_source(a.pack, a.tiny),
        device: a.device,
        duration_s: a.seconds,
        steps: a.steps,
        batch_steps: a.batch_steps,
        batch_sizes: a.batches,
        repeats: a.repeats,
        threads: a.threads,
    };
    // libtorch work blocks: keep it off the async workers.
    let report = tokio::task::spawn_blocking(move || model::run(&opts)).await??;
    print!("{}", report.to_markdown());
    Ok(())
}
