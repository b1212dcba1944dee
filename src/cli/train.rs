//! `tutti train ...`: render the dataset, train the denoiser and the vocoder, write and evaluate
//! the built-in pack.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum TrainCommand {
    /// Render a captioned dataset (procedural compositions and the music21 corpus) with log-mels.
    Dataset(DatasetArgs),
    /// Train the denoiser (rectified flow on log-mels); resumes from RUN's checkpoint.
    Denoiser(DenoiserArgs),
    /// Train the Vocos vocoder on the rendered audio; resumes from RUN's checkpoint.
    Vocoder(VocoderArgs),
    /// Write a model pack from the trained checkpoints.
    Pack(PackArgs),
    /// Evaluate a pack on the held-out prompts: tempo, mode, diversity; report + spectrograms.
    Eval(EvalArgs),
    /// Round-trip ceiling: held-out renders -> representation -> audio -> the analyzers, for
    /// each candidate representation (and the source audio itself).
    Ceiling(CeilingArgs),
    /// Train a small mel VAE (a learned latent, 2-4x shorter in time) for the ceiling's
    /// learned-latent row; resumes from RUN's checkpoint.
    Vae(VaeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VaeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Time downsampling of the latent: 2 or 4.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(2..=4))]
    pub factor: i64,
    #[arg(long, default_value_t = 32)]
    pub latent_channels: i64,
}

#[derive(Debug, Args)]
pub(crate) struct CeilingArgs {
    /// A rendered dataset (16 kHz, 64 mels): its settings choose the music; the instrument
    /// classifier trains on it.
    #[arg(long)]
    pub dataset: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub clips: usize,
    /// Id of the first held-out clip (above every dataset's ids).
    #[arg(long, default_value_t = 1_000_000)]
    pub first_id: usize,
    #[arg(long, default_value = "/usr/share/sounds/sf2/FluidR3_GM.sf2")]
    pub soundfont: PathBuf,
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Also a pack's own mel and vocoder (repeatable), e.g. one with a trained Vocos.
    #[arg(long)]
    pub pack: Vec<PathBuf>,
    /// Also a trained mel VAE's round trip before Griffin-Lim (a `tutti train vae` run folder;
    /// repeatable).
    #[arg(long)]
    pub vae: Vec<PathBuf>,
    /// Only these rows of the standard table (repeatable; 0 is today's 64 mels, 1 is 128 mels,
    /// then 256 mels, 22.05 kHz, 24 kHz, Griffin-Lim 100); all of them without it.
    #[arg(long)]
    pub standard: Vec<usize>,
    /// Write the table here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
}

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    pub pack: PathBuf,
    /// Output folder (report.md, PNG spectrograms, WAVs).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f32,
    #[arg(long, default_value_t = 2)]
    pub seeds: usize,
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// A rendered dataset: trains the instrument classifier on it and runs the analyzers on its
    /// clips (their accuracy on ground truth).
    #[arg(long)]
    pub calibrate: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    pub calibrate_clips: usize,
    /// Generate these prompts instead of the held-out set (repeatable).
    #[arg(long)]
    pub prompt: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Dataset folder (from `tutti train dataset`).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Run folder: checkpoint, loss curve.
    #[arg(long)]
    pub run: PathBuf,
    /// Train until this step (counted over all sittings).
    #[arg(long, default_value_t = 20_000)]
    pub steps: u64,
    /// Stop this sitting after so many minutes (a checkpoint is written).
    #[arg(long, default_value_t = 1e9)]
    pub minutes: f64,
    #[arg(long, default_value_t = 200)]
    pub save_every: u64,
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub(crate) struct DenoiserArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Text encoder folder (MiniLM: config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "TUTTI_TEXT_ENCODER")]
    pub text_encoder: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub layers: i64,
    #[arg(long, default_value_t = 3)]
    pub heads: i64,
    /// Latent frames per batch.
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Decay the learning rate linearly to zero over the last N steps before `--steps`
    /// (constant after the warm-up without it); set when a run starts, kept by its resumes.
    #[arg(long)]
    pub anneal: Option<u64>,
    /// Shortest training crop, in latent frames (62.5 per second).
    #[arg(long, default_value_t = 96)]
    pub crop_min: usize,
    /// Longest training crop, in latent frames (up to the clip length).
    #[arg(long, default_value_t = 192)]
    pub crop_max: usize,
    /// Start a new run from this pack's weights (same size); ignored when RUN resumes.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Mixed precision (autocast) on CUDA.
    #[arg(long)]
    pub amp: bool,
    /// Per-frame beat grid from the renders' true beats (the pack declares it; requests with a
    /// tempo get it).
    #[arg(long)]
    pub beat_grid: bool,
    /// Per-frame pitch-class profile of the true key and mode.
    #[arg(long)]
    pub key_profile: bool,
    /// Per-frame input of the instrument families the caption names (requests: the prompt).
    #[arg(long)]
    pub instruments: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VocoderArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 256)]
    pub dim: usize,
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Train with Vocos' adversarial losses (multi-period and multi-resolution discriminators,
    /// hinge + feature matching), switched on at this step; without it, reconstruction only.
    #[arg(long)]
    pub gan_from: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct PackArgs {
    /// Output pack folder.
    pub out: PathBuf,
    /// Denoiser run folder.
    #[arg(long)]
    pub denoiser: PathBuf,
    /// Vocoder run folder (Griffin-Lim without one).
    #[arg(long)]
    pub vocoder: Option<PathBuf>,
    /// Copy this text encoder folder into the pack.
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    #[arg(long, default_value = "tutti-mini")]
    pub name: String,
}

fn device(name: &str) -> anyhow::Result<tch::Device> {
    Ok(match name {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => tch::Device::Cuda(n),
            None => anyhow::bail!("unknown device {other}: use cpu, cuda or cuda:N"),
        },
    })
}

/// A composer style by its manifest name (`lofi_hip_hop`, `ambient`, ...).
fn parse_style(name: &str) -> Result<tutti_train::music::Style, String> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        let names: Vec<String> = tutti_train::music::Style::PROCEDURAL
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        format!("not a style: {name:?} (one of {})", names.join(", "))
    })
}

#[derive(Debug, Args)]
pub(crate) struct DatasetArgs {
    /// Output folder (resumable: missing clips are rendered).
    pub out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub clips: usize,
    /// Clip length in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value = "/usr/share/sounds/sf2/FluidR3_GM.sf2")]
    pub soundfont: PathBuf,
    /// Folder written by scripts/export_music21.py (index.jsonl + MIDI files).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 0.3)]
    pub corpus_fraction: f64,
    /// Only the composer's music in these styles (repeatable, e.g. `--style ambient`), to measure
    /// a change to the composer on what it changes; all styles without it.
    #[arg(long = "style", value_parser = parse_style)]
    pub styles: Vec<tutti_train::music::Style>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Mel bands of the log-mel features (16 kHz, n_fft 1024, hop 256 either way); 128 keeps
    /// the key and the strings that 64 lose, and the shipped tutti-mini is on 128 (see
    /// models/tutti-mini/README.md, ninth session).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(16..=512))]
    pub n_mels: u16,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
}

pub(crate) fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Dataset(a) => {
            tch::set_num_threads(a.threads);
            let mut cfg = tutti_train::dataset::DatasetConfig::new(a.clips, a.seconds, a.seed);
            cfg.corpus_fraction = a.corpus_fraction;
            cfg.styles = a.styles;
            cfg.mel.n_mels = usize::from(a.n_mels);
            let paths = tutti_train::dataset::DatasetPaths {
                out: a.out.clone(),
                soundfont: a.soundfont,
                corpus: a.corpus,
            };
            let t0 = std::time::Instant::now();
            let n = tutti_train::dataset::make(&cfg, &paths, true)?;
            let s = t0.elapsed().as_secs_f64();
            println!(
                "rendered {n} clips into {} in {s:.1} s ({:.2} clips/s)",
                a.out.display(),
                n as f64 / s.max(1e-9)
            );
            Ok(())
        }
        TrainCommand::Denoiser(a) => {
            tch::set_num_threads(a.run.threads);
            let cfg = tutti_train::denoiser::DenoiserConfig {
                seed: a.run.seed,
                layers: a.layers,
                heads: a.heads,
                cross_dim: a.heads * 64,
                tokens: a.tokens,
                crop_min: a.crop_min,
                crop_max: a.crop_max,
                adam: tutti_train::optim::AdamWConfig {
                    lr: a.lr,
                    anneal: a
                        .anneal
                        .map(|n| tutti_train::optim::Anneal::last(n, a.run.steps)),
                    ..Default::default()
                },
                beat_grid: a.beat_grid,
                key_profile: a.key_profile,
                instruments: a.instruments,
                ..Default::default()
            };
            let paths = tutti_train::denoiser::RunPaths {
                dataset: a.run.dataset.clone(),
                text_encoder: a.text_encoder.clone(),
                run: a.run.run.clone(),
            };
            let mut t =
                tutti_train::denoiser::Trainer::open(&cfg, &paths, device(&a.run.device)?, a.amp)?;
            if let Some(pack) = &a.init {
                if t.state.step == 0 {
                    t.init_from_pack(pack)?;
                } else {
                    println!("resuming the run: --init {} is not used", pack.display());
                }
            }
            let params: i64 = t.opt.params.values().map(|p| p.numel() as i64).sum();
            println!(
                "denoiser: {params} trainable parameters, from step {}{}",
                t.state.step,
                t.state
                    .init
                    .as_deref()
                    .map(|p| format!(" (started from {p})"))
                    .unwrap_or_default()
            );
            let w0 = std::time::Instant::now();
            let s0 = t.state.step;
            let loss = t.run(
                a.run.steps,
                a.run.save_every,
                a.run.minutes * 60.0,
                a.run.log_every,
                true,
            )?;
            let dt = w0.elapsed().as_secs_f64();
            println!(
                "step {} loss {loss:.4}; {:.2} s/step this sitting; {:.2} CPU hours in all; checkpoint and loss.png in {}",
                t.state.step,
                dt / (t.state.step - s0).max(1) as f64,
                t.state.cpu_seconds / 3600.0,
                a.run.run.display()
            );
            Ok(())
        }
        TrainCommand::Vocoder(a) => {
            tch::set_num_threads(a.run.threads);
            let mut cfg = tutti_train::vocoder::VocoderConfig {
                seed: a.run.seed,
                batch: a.batch,
                ..Default::default()
            };
            cfg.vocos.dim = a.dim;
            cfg.vocos.intermediate_dim = 3 * a.dim;
            cfg.vocos.num_layers = a.layers;
            cfg.gan = a.gan_from.map(|from_step| tutti_train::gan::GanConfig {
                from_step,
                ..Default::default()
            });
            let mut t = tutti_train::vocoder::VocoderTrainer::open(
                &cfg,
                &a.run.dataset,
                &a.run.run,
                device(&a.run.device)?,
            )?;
            let params: i64 = t.opt.params.values().map(|p| p.numel() as i64).sum();
            println!(
                "vocoder: {params} trainable parameters, from step {}",
                t.state.step
            );
            let loss = t.run(
                a.run.steps,
                a.run.save_every,
                a.run.minutes * 60.0,
                a.run.log_every,
                true,
            )?;
            println!(
                "step {} loss {loss:.4}; {:.2} CPU hours in all",
                t.state.step,
                t.state.cpu_seconds / 3600.0
            );
            Ok(())
        }
        TrainCommand::Eval(a) => {
            tch::set_num_threads(a.threads);
            let opts = tutti_train::eval::EvalOptions {
                steps: a.steps,
                seconds: a.seconds,
                seeds: a.seeds,
                guidance: a.guidance,
                limit: a.limit,
                classifier_dataset: a.calibrate.clone(),
                prompts: a.prompt.clone(),
            };
            let t0 = std::time::Instant::now();
            let mut report = tutti_train::eval::evaluate(&a.pack, &a.out, &opts)?;
            println!(
                "generated and analysed in {:.0} s",
                t0.elapsed().as_secs_f64()
            );
            if let Some(ds) = &a.calibrate {
                let cal = tutti_train::eval::calibrate(ds, a.calibrate_clips)?;
                report.markdown.push_str(&format!("\n{}\n", cal.markdown()));
                let (v, g) = tutti_train::eval::vocoder_check::vocoder_check(&a.pack, ds, 20)?;
                report.markdown.push_str(&format!(
                    "\nVocoder on 20 rendered clips (true log-mel -> audio -> log-mel, mean L1; lower is better): the pack's vocoder {v:.3}, Griffin-Lim (32 iterations) {g:.3}.\n"
                ));
            }
            tutti_train::eval::write_report(&a.out, &report)?;
            println!("{}", report.markdown);
            Ok(())
        }
        TrainCommand::Ceiling(a) => {
            tch::set_num_threads(a.threads);
            let mut cands: Vec<_> = tutti_train::ceiling::standard_candidates()?
                .into_iter()
                .enumerate()
                .filter(|(i, _)| a.standard.is_empty() || a.standard.contains(i))
                .map(|(_, c)| c)
                .collect();
            for p in &a.pack {
                cands.push(tutti_train::ceiling::Candidate::from_pack(p)?);
            }
            for v in &a.vae {
                cands.push(tutti_train::ceiling::Candidate::vae(v, 32)?);
            }
            let opts = tutti_train::ceiling::CeilingOptions {
                clips: a.clips,
                first_id: a.first_id,
                dataset: a.dataset,
                soundfont: a.soundfont,
                corpus: a.corpus,
            };
            let t0 = std::time::Instant::now();
            let (_, md) = tutti_train::ceiling::run(&opts, &cands, true)?;
            println!("{md}\nmeasured in {:.0} s", t0.elapsed().as_secs_f64());
            if let Some(out) = &a.out {
                std::fs::write(out, &md).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            }
            Ok(())
        }
        TrainCommand::Vae(a) => {
            anyhow::ensure!(
                a.run.device == "cpu",
                "--device {}: the vae trains on the cpu only",
                a.run.device
            );
            tch::set_num_threads(a.run.threads);
            let cfg = tutti_train::vae::VaeConfig {
                seed: a.run.seed,
                factor: a.factor,
                latent_channels: a.latent_channels,
                ..Default::default()
            };
            let mut t = tutti_train::vae::VaeTrainer::open(&cfg, &a.run.dataset, &a.run.run)?;
            let loss = t.run(
                a.run.steps,
                a.run.save_every,
                a.run.minutes * 60.0,
                a.run.log_every,
            )?;
            println!(
                "step {} reconstruction L1 {loss:.4} (normalised log-mel); {:.2} CPU hours in all",
                t.state.step,
                t.state.cpu_seconds / 3600.0
            );
            Ok(())
        }
        TrainCommand::Pack(a) => {
            let cfg = tutti_train::pack::write_pack(
                &a.out,
                &a.denoiser,
                a.vocoder.as_deref(),
                a.text_encoder.as_deref(),
                &a.name,
            )?;
            println!(
                "wrote pack {}@{} to {}",
                cfg.model.name,
                cfg.model.version,
                a.out.display()
            );
            Ok(())
        }
    }
}
