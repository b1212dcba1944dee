//! `tutti bench model`: the model runtime's speed on a pack of the built-in size.
//!
//! Two measurements, each after a warm-up run, reported as medians over repeats:
//! - the real-time factor of one clip (default 10 s) at the pack's default steps, split into
//!   prepare (text encoding and initial noise), denoise and render (decoder and vocoder);
//! - continuous batching: B jobs advanced together by `step_batch` against the same B jobs one
//!   by one, same steps, as jobs per second and their ratio.
//!
//! The pack is written with random weights (speed does not depend on their values) unless a real
//! pack folder is given. Timings on a shared machine are pessimistic; the report says how much
//! CPU other processes used while it ran (Linux `/proc`).

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::Device;
use tutti_shared::prompt::{Controls, Mode};

use tutti_model::pack::{self, PackConfig};
use tutti_model::text_encoder::TextEncoderConfig;
use tutti_model::vocoder::VocoderConfig;
use tutti_model::{device, tiny, DenoiseState, Family, ModelError, Pipeline, Result};
use tutti_train::denoiser::{DenoiserConfig, DenoiserState};
use tutti_train::pack as train_pack;
use tutti_train::vocoder::{VocoderConfig as TrainVocoderConfig, VocoderState};

use crate::host::{median, read_loadavg, CpuSnapshot};

/// The size of the built-in model (`tutti-mini`): the pack that `tutti train pack` writes from
/// the training defaults, so the benchmark follows the trainer when its sizes change.
///
/// Why these sizes (chosen by the trainer, `train::denoiser::DenoiserConfig::default`): the model
/// must train usefully on 2 CPU cores and ship in about 25 MB of weights.
/// - Mel: 16 kHz (the rendered data's rate), hop 256 (62.5 frames/s: a 10 s clip is 625 latent
///   frames, so self-attention stays cheap), 64 bins, n_fft 1024; the identity decoder keeps the
///   normalised log-mel as the latent, so there is no VAE to train. (The shipped pack was widened
///   to 128 bins, `--n-mels 128`: only the layers that touch the bands grow, by about 49 k
///   parameters.)
/// - DiT: 4 layers of width 192 (3 heads of 64, 1 KV head in cross-attention), about 3 M
///   parameters: a training step on crops of 96-192 frames takes well under a second on 2 cores.
/// - Text encoder: the real MiniLM-L6 (384 hidden, 6 layers), frozen and not in the 25 MB.
/// - Vocoder: a Vocos of width 256 with 6 ConvNeXt blocks: one forward pass, far cheaper than
///   Griffin-Lim's iterations over 10 s of audio.
/// - Sampling: flow-matching Euler, 50 steps, guidance 4 (the trained pack's defaults).
pub fn builtin_size() -> (PackConfig, TextEncoderConfig) {
    let text = TextEncoderConfig::minilm_l6();
    let mel = tutti_train::dataset::DatasetConfig::new(1, 10.0, 0).mel;
    let denoiser = DenoiserState {
        config: DenoiserConfig::default(),
        mel: mel.clone(),
        text_dim: text.hidden_size,
        step: 0,
        // Log-mel normalisation: any value times the same.
        mean: -4.0,
        std: 2.0,
        losses: Vec::new(),
        samples: 0,
        cpu_seconds: 0.0,
        init: None,
        init_steps: 0,
    };
    let vocoder = VocoderState {
        config: TrainVocoderConfig::default(),
        mel,
        step: 0,
        losses: Vec::new(),
        cpu_seconds: 0.0,
    };
    let mut cfg = train_pack::pack_config(
        &denoiser,
        text.hidden_size,
        Some(&vocoder),
        "bench-builtin-size",
    );
    cfg.model.description = "random weights at the built-in model's size, for benchmarks".into();
    (cfg, text)
}

/// Which pack to measure.
#[derive(Debug, Clone, PartialEq)]
pub enum PackSource {
    /// Random weights at [`builtin_size`]; the MiniLM weights from `~/.cache/tutti/minilm` (or
    /// `$TUTTI_HOME/minilm`) when present.
    BuiltinSize,
    /// The tiny test pack (for smoke tests).
    Tiny,
    /// An existing pack folder.
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub pack: PackSource,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Clip length in seconds.
    pub duration_s: f32,
    /// Steps of the real-time-factor run; `None` takes the pack's default.
    pub steps: Option<usize>,
    /// Steps of each batching run.
    pub batch_steps: usize,
    pub batch_sizes: Vec<usize>,
    pub repeats: usize,
    /// libtorch intra-op threads; `None` keeps libtorch's default.
    pub threads: Option<i32>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            pack: PackSource::BuiltinSize,
            device: "auto".into(),
            duration_s: 10.0,
            steps: None,
            batch_steps: 10,
            batch_sizes: vec![1, 4, 16],
            repeats: 3,
            threads: None,
        }
    }
}

/// What was measured on.
#[derive(Debug, Clone)]
pub struct PackSummary {
    pub source: String,
    pub denoiser: String,
    pub denoiser_params: u64,
    pub text_encoder: String,
    pub text_encoder_params: u64,
    pub vocoder: String,
    pub vocoder_params: u64,
    pub latent: String,
}

/// Medians of the real-time-factor run, in seconds.
#[derive(Debug, Clone)]
pub struct RtfReport {
    pub steps: usize,
    pub prepare_s: f64,
    pub denoise_s: f64,
    pub render_s: f64,
    pub total_s: f64,
    /// Wall time over audio duration (below 1 is faster than real time).
    pub rtf: f64,
}

/// One batch size: B jobs stepped together against one by one.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub batch: usize,
    pub steps: usize,
    pub batched_s: f64,
    pub sequential_s: f64,
    pub batched_jobs_per_s: f64,
    pub sequential_jobs_per_s: f64,
    /// Batched over one-by-one throughput.
    pub ratio: f64,
}

/// CPU used by other processes while the benchmark ran.
#[derive(Debug, Clone)]
pub struct HostLoad {
    pub cpus: usize,
    pub loadavg_at_start: f64,
    /// Average cores busy with other processes during the run.
    pub others_cores: f64,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub device: String,
    pub threads: i32,
    pub repeats: usize,
    pub duration_s: f32,
    pub pack: PackSummary,
    pub rtf: RtfReport,
    pub batches: Vec<BatchRow>,
    pub load: Option<HostLoad>,
}

/// Runs the benchmark; progress goes to stderr.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    validate(opts)?;
    if let Some(n) = opts.threads {
        tch::set_num_threads(n);
    }
    let dev = device::select(&opts.device)?;
    let loadavg_at_start = read_loadavg();
    let cpu_start = CpuSnapshot::read();

    let scratch;
    let (dir, source) = match &opts.pack {
        PackSource::Dir(d) => (d.clone(), format!("pack {}", d.display())),
        PackSource::BuiltinSize | PackSource::Tiny => {
            scratch = tempfile::Builder::new().prefix("tutti-bench-").tempdir()?;
            let source = write_random_pack(scratch.path(), &opts.pack)?;
            (scratch.path().to_path_buf(), source)
        }
    };
    let pipeline = Pipeline::load(&dir, dev)?;
    let summary = summarize(&dir, pipeline.config(), source)?;
    let steps = opts.steps.unwrap_or(pipeline.config().defaults.steps);

    eprintln!("bench: warm-up");
    rtf_once(&pipeline, opts.duration_s, steps.min(2))?;
    let mut runs = Vec::new();
    for r in 0..opts.repeats {
        eprintln!(
            "bench: {} s clip, {steps} steps, run {}/{}",
            opts.duration_s,
            r + 1,
            opts.repeats
        );
        runs.push(rtf_once(&pipeline, opts.duration_s, steps)?);
    }
    let stage = |f: fn(&[f64; 3]) -> f64| median(runs.iter().map(f).collect());
    let (prepare_s, denoise_s, render_s) = (stage(|r| r[0]), stage(|r| r[1]), stage(|r| r[2]));
    let total_s = stage(|r| r[0] + r[1] + r[2]);
    let rtf = RtfReport {
        steps,
        prepare_s,
        denoise_s,
        render_s,
        total_s,
        rtf: total_s / opts.duration_s as f64,
    };

    let mut batches = Vec::new();
    for &b in &opts.batch_sizes {
        batches.push(batch_row(&pipeline, opts, b)?);
    }

    let load = match (loadavg_at_start, cpu_start, CpuSnapshot::read()) {
        (Some(loadavg_at_start), Some(a), Some(b)) => Some(HostLoad {
            cpus: a.cpus,
            loadavg_at_start,
            others_cores: a.others_cores_until(&b),
        }),
        _ => None,
    };
    Ok(BenchReport {
        device: format!("{dev:?}").to_lowercase(),
        threads: tch::get_num_threads(),
        repeats: opts.repeats,
        duration_s: opts.duration_s,
        pack: summary,
        rtf,
        batches,
        load,
    })
}

fn validate(opts: &BenchOptions) -> Result<()> {
    let bad = |m: &str| Err(ModelError::Input(m.to_string()));
    if opts.repeats == 0 || opts.batch_steps == 0 || opts.steps == Some(0) {
        return bad("repeats, steps and batch steps must be positive");
    }
    if opts.batch_sizes.contains(&0) {
        return bad("batch sizes must be positive");
    }
    if !(opts.duration_s.is_finite() && opts.duration_s > 0.0) {
        return bad("the clip duration must be positive");
    }
    if opts.threads.is_some_and(|n| n < 1) {
        return bad("threads must be positive");
    }
    Ok(())
}

const PROMPTS: [&str; 4] = [
    "lo-fi hip hop with mellow piano and soft drums",
    "energetic house track with a driving bass line",
    "a sorrowful string quartet, slow and quiet",
    "bright acoustic guitar folk tune",
];

fn params(
    p: &Pipeline,
    job: usize,
    duration_s: f32,
    steps: usize,
) -> tutti_model::GenerationParams {
    let mut params = p.default_params(PROMPTS[job % PROMPTS.len()], duration_s);
    params.seed = job as u64;
    params.steps = steps;
    params.controls = Controls {
        duration_s,
        bpm: Some(70.0 + 10.0 * (job % 8) as f32),
        key: Some((job % 12) as u8),
        mode: Some(if job.is_multiple_of(2) {
            Mode::Major
        } else {
            Mode::Minor
        }),
    };
    params
}

/// Waits for queued GPU work so that wall times cover it.
fn sync(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One generation end to end: seconds of prepare, denoise and render.
fn rtf_once(p: &Pipeline, duration_s: f32, steps: usize) -> Result<[f64; 3]> {
    let dev = p.device();
    let t0 = Instant::now();
    let mut state = p.prepare(&params(p, 0, duration_s, steps))?;
    sync(dev);
    let t1 = Instant::now();
    p.denoise(&mut state, steps, &mut |_| ControlFlow::Continue(()))?;
    sync(dev);
    let t2 = Instant::now();
    let audio = p.render(&state)?;
    let t3 = Instant::now();
    if audio.is_empty() {
        return Err(ModelError::Input("render returned no audio".into()));
    }
    Ok([
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
    ])
}

fn prepare_jobs(p: &Pipeline, opts: &BenchOptions, b: usize) -> Result<Vec<DenoiseState>> {
    (0..b)
        .map(|j| p.prepare(&params(p, j, opts.duration_s, opts.batch_steps)))
        .collect()
}

/// Seconds to run `steps` steps of all `jobs`, together or one by one.
fn time_steps(
    p: &Pipeline,
    jobs: &mut [DenoiseState],
    steps: usize,
    together: bool,
) -> Result<f64> {
    let t0 = Instant::now();
    if together {
        let mut refs: Vec<&mut DenoiseState> = jobs.iter_mut().collect();
        for _ in 0..steps {
            p.step_batch(&mut refs)?;
        }
    } else {
        for job in jobs.iter_mut() {
            for _ in 0..steps {
                p.step_batch(&mut [&mut *job])?;
            }
        }
    }
    sync(p.device());
    Ok(t0.elapsed().as_secs_f64())
}

fn batch_row(p: &Pipeline, opts: &BenchOptions, b: usize) -> Result<BatchRow> {
    let steps = opts.batch_steps;
    eprintln!("bench: B = {b}: warm-up");
    // The batched shapes are new to the allocator; one-by-one shapes were warmed by the RTF run.
    time_steps(p, &mut prepare_jobs(p, opts, b)?, 1, true)?;
    let (mut together, mut alone) = (Vec::new(), Vec::new());
    for r in 0..opts.repeats {
        eprintln!(
            "bench: B = {b}, {steps} steps, run {}/{}",
            r + 1,
            opts.repeats
        );
        // Interleaved, so that a change in the machine's load hits both sides alike.
        together.push(time_steps(p, &mut prepare_jobs(p, opts, b)?, steps, true)?);
        alone.push(time_steps(p, &mut prepare_jobs(p, opts, b)?, steps, false)?);
    }
    let (batched_s, sequential_s) = (median(together), median(alone));
    let batched_jobs_per_s = b as f64 / batched_s;
    let sequential_jobs_per_s = b as f64 / sequential_s;
    Ok(BatchRow {
        batch: b,
        steps,
        batched_s,
        sequential_s,
        batched_jobs_per_s,
        sequential_jobs_per_s,
        ratio: batched_jobs_per_s / sequential_jobs_per_s,
    })
}

/// Writes a random pack; returns a description of it.
pub(crate) fn write_random_pack(dir: &Path, which: &PackSource) -> Result<String> {
    if *which == PackSource::Tiny {
        tiny::write_tiny_pack(dir, 0)?;
        return Ok("tiny random pack".into());
    }
    let (cfg, text) = builtin_size();
    eprintln!("bench: writing a random pack of the built-in size");
    tiny::write_pack_with(dir, 0, &cfg, &text)?;
    // Real MiniLM weights when the setup script fetched them: same shapes, so same speed, but
    // a benchmark on them exercises exactly what ships.
    let home = std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tutti")));
    if let Some(minilm) = home.map(|h| h.join("minilm")) {
        let weights = minilm.join("model.safetensors");
        if weights.is_file() {
            let te = dir.join(&cfg.text_encoder);
            std::fs::copy(&weights, te.join("model.safetensors"))?;
            return Ok(format!(
                "random weights at the built-in size; MiniLM weights from {}",
                minilm.display()
            ));
        }
    }
    Ok("random weights at the built-in size (random MiniLM-sized text encoder)".into())
}

/// Parameter count of a safetensors file from its header (0 when absent).
fn param_count(path: &Path) -> Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let bytes = std::fs::read(path)?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::Pack {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    Ok(header
        .tensors()
        .values()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum())
}

fn summarize(dir: &Path, cfg: &PackConfig, source: String) -> Result<PackSummary> {
    let d = &cfg.denoiser;
    let te_dir = dir.join(&cfg.text_encoder);
    let text_encoder = std::fs::read_to_string(te_dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<TextEncoderConfig>(&t).ok())
        .map(|t| {
            format!(
                "BERT {} layers, hidden {}",
                t.num_hidden_layers, t.hidden_size
            )
        })
        .unwrap_or_else(|| "BERT (config.json unreadable)".into());
    let vocoder = match &cfg.vocoder {
        VocoderConfig::GriffinLim(g) => format!("Griffin-Lim, {} iterations", g.iters),
        VocoderConfig::Vocos(v) => format!("Vocos, {} blocks of width {}", v.num_layers, v.dim),
        VocoderConfig::Hifigan(_) => "HiFi-GAN".into(),
    };
    let m = &cfg.mel;
    Ok(PackSummary {
        source,
        denoiser: format!(
            "DiT {} layers, width {} ({} heads x {}, {} KV heads)",
            d.num_layers,
            d.inner_dim(),
            d.num_attention_heads,
            d.attention_head_dim,
            d.num_key_value_attention_heads
        ),
        denoiser_params: param_count(&dir.join(pack::DENOISER_FILE))?,
        text_encoder,
        text_encoder_params: param_count(&te_dir.join("model.safetensors"))?,
        vocoder,
        vocoder_params: param_count(&dir.join(pack::VOCODER_FILE))?,
        latent: format!(
            "{} channels at {} frames/s (mel {} bins, {} Hz, hop {})",
            cfg.model.latent_channels,
            cfg.model.latent_frames_per_second,
            m.n_mels,
            m.sample_rate,
            m.hop_length
        ),
    })
}

fn millions(n: u64) -> String {
    format!("{:.1} M", n as f64 / 1e6)
}

impl BenchReport {
    /// The report as markdown.
    pub fn to_markdown(&self) -> String {
        let mut o = String::new();
        let p = &self.pack;
        let _ = writeln!(o, "## tutti bench model\n");
        let _ = writeln!(o, "- pack: {}", p.source);
        let _ = writeln!(
            o,
            "- denoiser: {}, {} params; text encoder: {}, {} params; vocoder: {}, {} params",
            p.denoiser,
            millions(p.denoiser_params),
            p.text_encoder,
            millions(p.text_encoder_params),
            p.vocoder,
            millions(p.vocoder_params)
        );
        let _ = writeln!(o, "- latent: {}", p.latent);
        let _ = writeln!(
            o,
            "- device: {}, {} libtorch threads; medians of {} runs after a warm-up",
            self.device, self.threads, self.repeats
        );
        if let Some(l) = &self.load {
            let shared = if l.others_cores >= 0.25 || l.loadavg_at_start >= 0.5 {
                " (shared machine: timings are pessimistic)"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "- host: {} CPUs, load average {:.2} at start, other processes used {:.2} cores on average during the run{shared}",
                l.cpus, l.loadavg_at_start, l.others_cores
            );
        }
        let r = &self.rtf;
        let _ = writeln!(
            o,
            "\n### One {} s clip at {} steps\n",
            self.duration_s, r.steps
        );
        let _ = writeln!(o, "| stage | seconds | share |\n| --- | ---: | ---: |");
        // Shares of the sum of the stage medians, so that they add up to 100%.
        let stages = r.prepare_s + r.denoise_s + r.render_s;
        for (name, s) in [
            ("prepare (text encoder, noise)", r.prepare_s),
            ("denoise", r.denoise_s),
            ("render (decoder, vocoder)", r.render_s),
        ] {
            let _ = writeln!(
                o,
                "| {name} | {s:.3} | {:.1}% |",
                100.0 * s / stages.max(f64::MIN_POSITIVE)
            );
        }
        let _ = writeln!(o, "| total (median of totals) | {:.3} | |", r.total_s);
        let _ = writeln!(
            o,
            "\nReal-time factor: **{:.3}** (wall time / audio duration; below 1 is faster than real time).",
            r.rtf
        );
        if !self.batches.is_empty() {
            let steps = self.batches[0].steps;
            let _ = writeln!(
                o,
                "\n### Continuous batching: B jobs ({} s each) in one `step_batch` vs one by one, {steps} steps\n",
                self.duration_s
            );
            let _ = writeln!(
                o,
                "| B | batched s | batched jobs/s | one by one s | one by one jobs/s | ratio |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for b in &self.batches {
                let _ = writeln!(
                    o,
                    "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
                    b.batch,
                    b.batched_s,
                    b.batched_jobs_per_s,
                    b.sequential_s,
                    b.sequential_jobs_per_s,
                    b.ratio
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_size_is_a_valid_pack() {
        let (cfg, text) = builtin_size();
        cfg.validate().unwrap();
        assert_eq!(cfg.denoiser.cross_attention_input_dim, text.hidden_size);
        assert_eq!(cfg.latent_frames(10.0), 625);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
