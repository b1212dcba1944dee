//! `tutti bench ...`: benchmarks.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tutti_worker::bench::{self, BenchOptions, PackSource};

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

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let a = match cmd.what {
        BenchWhat::Model(a) => a,
        BenchWhat::Farm(a) => return super::bench_farm::run(a).await,
        BenchWhat::BatchAccept(a) => return super::bench_batch::run(a).await,
    };
    let opts = BenchOptions {
        pack: match (a.pack, a.tiny) {
            (Some(dir), _) => PackSource::Dir(dir),
            (None, true) => PackSource::Tiny,
            (None, false) => PackSource::BuiltinSize,
        },
        device: a.device,
        duration_s: a.seconds,
        steps: a.steps,
        batch_steps: a.batch_steps,
        batch_sizes: a.batches,
        repeats: a.repeats,
        threads: a.threads,
    };
    // libtorch work blocks: keep it off the async workers.
    let report = tokio::task::spawn_blocking(move || bench::run(&opts)).await??;
    print!("{}", report.to_markdown());
    Ok(())
}
