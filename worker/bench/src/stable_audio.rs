//! `tutti bench stable-audio`: one side of the Stable Audio benchmark. Loads an imported Stable
//! Audio pack and times clips stage by stage: prepare (tokenizer, T5, number conditioners,
//! initial noise), each denoising step (DiT forward(s), guidance, sampler, per-step noise) and the
//! VAE decode. `scripts/bench/stable_audio.py` runs it beside the Python references on the same
//! weights and noise and writes the side-by-side table.
//!
//! Before the timed clips a warm-up runs prepare, one step and a decode of a short slice of the
//! latent (on CUDA, of the clips' own span), so that the first use of each kernel is not timed;
//! the Python side does the same on CPU.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Tensor};

use tutti_model::graphed::GraphStats;
use tutti_model::oobleck::DECODE_CHUNK_FRAMES;
use tutti_model::stable_audio::StableAudioModel;
use tutti_model::stable_audio_run::SaoRequest;
use tutti_model::{device, ModelError, Result};

use crate::host::{process_cpu_seconds, read_loadavg};

/// Latent frames the warm-up decodes (enough for every kernel of the VAE to run once).
const WARMUP_FRAMES: i64 = 16;

#[derive(Debug, Clone)]
pub struct SaoBenchOptions {
    pub pack: PathBuf,
    pub device: String,
    /// The networks' precision (`auto`: f32 on CPU; bf16 DiT and f16 VAE on CUDA).
    pub precision: device::Precision,
    pub prompt: String,
    pub seconds: f64,
    /// Default: the pack's.
    pub steps: Option<usize>,
    /// Default: the pack's.
    pub guidance: Option<f64>,
    pub seed: u64,
    /// Clips denoised and decoded together (prompt repeated, seeds `seed..seed + batch`).
    pub batch: usize,
    pub runs: usize,
    /// libtorch intra-op threads; `None` keeps libtorch's default.
    pub threads: Option<i32>,
    /// Writes the last run's final latent and decoded audio here (safetensors: `latent`, `audio`),
    /// so the driver can check that both sides computed the same clip.
    pub out: Option<PathBuf>,
    /// The denoiser's CUDA graphs (CUDA only; the warm-up step captures the batch's bucket).
    pub cuda_graphs: bool,
    /// cuDNN first in SDPA's backend order ([`device::put_cudnn_attention_first`]).
    pub cudnn_attention: bool,
}

/// One timed clip, seconds.
#[derive(Debug, Clone, Serialize)]
pub struct SaoRun {
    pub prepare_s: f64,
    pub steps_s: Vec<f64>,
    pub decode_s: f64,
    pub total_s: f64,
    /// `total_s` per clip of the batch.
    pub clip_s: f64,
    /// CPU seconds the process used for the clip (all threads; `None` off Linux).
    pub cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaoReport {
    pub side: &'static str,
    pub model: String,
    pub device: String,
    pub precision: String,
    pub threads: i32,
    pub steps: usize,
    pub guidance: f64,
    pub seconds: f64,
    pub batch: usize,
    pub load_s: f64,
    pub warmup_s: f64,
    pub loadavg_at_start: Option<f64>,
    pub runs: Vec<SaoRun>,
    pub cudnn_attention: bool,
    /// What the denoiser's CUDA graphs did (captures, replays, eager forwards, a failure);
    /// `None`: graphs off (the CPU, or turned off).
    pub cuda_graphs: Option<GraphStats>,
}

fn request(opts: &SaoBenchOptions, model: &StableAudioModel) -> SaoRequest {
    let d = &model.pack.defaults;
    SaoRequest {
        prompts: vec![opts.prompt.clone(); opts.batch],
        negative_prompts: None,
        seeds: (0..opts.batch as u64)
            .map(|i| opts.seed.wrapping_add(i))
            .collect(),
        seconds_start: 0.0,
        seconds_total: opts.seconds,
        steps: opts.steps.unwrap_or(d.steps),
        guidance_scale: opts.guidance.unwrap_or(d.guidance_scale),
        sampler: d.sampler,
    }
}

/// Seconds since `t`, once the device has finished what was queued: CUDA kernels run
/// asynchronously, so a clock read without a sync times their launch, not their work.
fn secs_on(dev: Device, t: Instant) -> f64 {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
    t.elapsed().as_secs_f64()
}

/// Runs the benchmark; progress goes to stderr.
pub fn run(opts: &SaoBenchOptions) -> Result<SaoReport> {
    if opts.runs == 0
        || opts.batch == 0
        || opts.steps == Some(0)
        || opts.threads.is_some_and(|n| n < 1)
    {
        return Err(ModelError::Input(
            "runs, batch, steps and threads must be positive".into(),
        ));
    }
    if let Some(n) = opts.threads {
        tch::set_num_threads(n);
    }
    let dev = device::select(&opts.device)?;
    if opts.cudnn_attention {
        device::put_cudnn_attention_first()?;
    }
    let kinds = opts.precision.kinds(dev);
    let loadavg_at_start = read_loadavg();
    let t = Instant::now();
    let mut model = StableAudioModel::load(&opts.pack, dev, kinds, false)?;
    model.set_cuda_graphs(opts.cuda_graphs);
    let load_s = secs_on(dev, t);
    let req = request(opts, &model);

    eprintln!("tutti: warm-up");
    let t = Instant::now();
    {
        let _g = tch::no_grad_guard();
        let mut st = model.prepare(&req)?;
        model.step(&mut st)?;
        let latent = st.latent().to_kind(kinds.vae);
        if dev.is_cuda() {
            // cuDNN picks each convolution's algorithm by timing them at its first use of a
            // shape (`device::select`), as a serving worker does once; the clips' decode shapes
            // are the ones to warm, or the first timed clip carries that search.
            let sr = model.config.vae.sampling_rate as f64;
            let end = (opts.seconds * sr) as i64;
            let _ = model
                .vae
                .decode_span(&latent, 0, end, DECODE_CHUNK_FRAMES)?;
        } else {
            let _ = model.vae.decode(&latent.narrow(2, 0, WARMUP_FRAMES));
        }
    }
    let warmup_s = secs_on(dev, t);

    let mut runs = Vec::new();
    let mut last = None;
    for r in 0..opts.runs {
        eprintln!(
            "tutti: {} x {} s clip, {} steps, run {}/{}",
            opts.batch,
            opts.seconds,
            req.steps,
            r + 1,
            opts.runs
        );
        let cpu0 = process_cpu_seconds();
        let t0 = Instant::now();
        let mut st = model.prepare(&req)?;
        let prepare_s = secs_on(dev, t0);
        let mut steps_s = Vec::with_capacity(req.steps);
        while !st.is_done() {
            let t = Instant::now();
            model.step(&mut st)?;
            steps_s.push(secs_on(dev, t));
        }
        let t = Instant::now();
        let audio = model.decode(&st)?;
        let decode_s = secs_on(dev, t);
        let total_s = secs_on(dev, t0);
        runs.push(SaoRun {
            prepare_s,
            steps_s,
            decode_s,
            total_s,
            clip_s: total_s / opts.batch as f64,
            cpu_s: process_cpu_seconds().zip(cpu0).map(|(b, a)| b - a),
        });
        last = Some((st.latent().shallow_clone(), audio));
    }
    if let (Some(path), Some((latent, audio))) = (&opts.out, last) {
        let tensors: [(&str, Tensor); 2] = [
            ("latent", latent.to_device(Device::Cpu).contiguous()),
            ("audio", audio.to_device(Device::Cpu).contiguous()),
        ];
        Tensor::write_safetensors(&tensors, path)?;
    }
    Ok(SaoReport {
        side: "tutti",
        model: model.pack.model.name.clone(),
        device: format!("{dev:?}").to_lowercase(),
        // The DiT's kind, then the VAE's.
        precision: format!("{:?}/{:?}", kinds.dit, kinds.vae).to_lowercase(),
        threads: tch::get_num_threads(),
        steps: req.steps,
        guidance: req.guidance_scale,
        seconds: opts.seconds,
        batch: opts.batch,
        load_s,
        warmup_s,
        loadavg_at_start,
        runs,
        cudnn_attention: opts.cudnn_attention,
        cuda_graphs: model.graph_stats(),
    })
}
