//! `tutti bench stable-audio`: the tutti side of the Stable Audio benchmark (see
//! `tutti_bench::stable_audio`); prints its report as one JSON object on stdout.

use std::path::PathBuf;

use anyhow::Context;
use tutti_bench::stable_audio::{self, SaoBenchOptions};

#[derive(Debug, clap::Args)]
pub(crate) struct SaoBenchArgs {
    /// An imported Stable Audio pack (`tutti model import`).
    #[arg(long)]
    pack: PathBuf,
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision of the DiT, projection and VAE: auto (f32 on CPU; on CUDA the DiT in bf16 and
    /// the VAE in f16), f32, bf16 or f16; the T5 runs in f32 whatever is asked.
    #[arg(long, default_value = "auto")]
    precision: tutti_model::device::Precision,
    #[arg(long, default_value = "warm analog synth pads with a slow drum groove")]
    prompt: String,
    /// Clip length (seconds_total); the latent is always the model's full window.
    #[arg(long, default_value_t = 11.0)]
    seconds: f64,
    /// Denoising steps (default: the pack's).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance (default: the pack's; 1 or less: none).
    #[arg(long)]
    guidance: Option<f64>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Clips made together, in one batch (seeds seed, seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// libtorch threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Write the last clip's final latent and audio here (safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replay the denoiser's steps from CUDA graphs (CUDA only; the CPU never graphs).
    #[arg(long, env = "TUTTI_CUDA_GRAPHS", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    cuda_graphs: bool,
    /// Put cuDNN first in scaled-dot-product attention's backend order.
    #[arg(long)]
    cudnn_attention: bool,
}

pub(crate) async fn run(a: SaoBenchArgs) -> anyhow::Result<()> {
    let opts = SaoBenchOptions {
        pack: a.pack,
        device: a.device,
        precision: a.precision,
        prompt: a.prompt,
        seconds: a.seconds,
        steps: a.steps,
        guidance: a.guidance,
        seed: a.seed,
        batch: a.batch,
        runs: a.runs,
        threads: a.threads,
        out: a.out,
        cuda_graphs: a.cuda_graphs,
        cudnn_attention: a.cudnn_attention,
    };
    // libtorch work blocks: keep it off the async workers.
    let report = tokio::task::spawn_blocking(move || stable_audio::run(&opts)).await??;
    println!(
        "{}",
        serde_json::to_string(&report).context("serialising the report")?
    );
    Ok(())
}
