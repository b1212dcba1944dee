//! `tutti train denoiser`: rectified flow on normalised log-mel latents (the identity decoder).
//!
//! `x_sigma = (1 - sigma) x0 + sigma eps`, the DiT predicts `v = eps - x0` at timestep
//! `sigma * num_train_timesteps` (what the runtime's flow Euler sampler passes), conditioned on the
//! frozen text encoder's token states (cross-attention) and `[pooled text | numeric conditioners]`
//! (global). AdamW, gradient clipping, EMA; checkpoints hold weights, moments, EMA, the step and
//! the loss history, and every random draw is keyed by (seed, step), so a resumed run is exactly
//! the uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::batch::{self, BatchSpec, TextCache};
use super::data::{self, ManifestRow};
use super::optim::{AdamW, AdamWConfig, Ema};
use super::{checkpoint, cond, cpu_seconds, plot, rng_for, Result, TrainError};
use tutti_model::conditioners::{ConditionerConfig, Conditioners};
use tutti_model::decoder::DecoderConfig;
use tutti_model::dit::{DitConfig, DitInput, StableAudioDit};
use tutti_model::frame_cond::{FrameCondConfig, FrameConditioner};
use tutti_model::mel::MelConfig;
use tutti_model::pack::PackConfig;
use tutti_model::text_encoder::TextEncoder;
use tutti_model::weights;

/// Size and recipe of the denoiser (saved in the checkpoint; a resume must match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenoiserConfig {
    pub seed: u64,
    pub layers: i64,
    pub heads: i64,
    pub head_dim: i64,
    pub kv_heads: i64,
    pub cross_dim: i64,
    pub time_proj_dim: i64,
    pub cond_embed: i64,
    pub cond_fourier: i64,
    pub max_duration_s: f32,
    pub crop_min: usize,
    pub crop_max: usize,
    pub tokens: usize,
    pub cfg_dropout: f64,
    pub cond_dropout: f64,
    pub grad_clip: f64,
    pub ema: f64,
    pub adam: AdamWConfig,
    /// Per-frame beat grid (`frame_cond`); runs made before it read as without.
    #[serde(default)]
    pub beat_grid: bool,
    /// Per-frame key profile.
    #[serde(default)]
    pub key_profile: bool,
    /// The instrument families the caption names, per frame.
    #[serde(default)]
    pub instruments: bool,
    /// Chance that a clip's beat grid (and, apart, its key profile and its instruments) is
    /// dropped to "unknown".
    #[serde(default = "frame_dropout")]
    pub frame_dropout: f64,
}

fn frame_dropout() -> f64 {
    0.2
}

impl Default for DenoiserConfig {
    /// The default (small) size: trains on two CPU cores.
    fn default() -> Self {
        Self {
            seed: 0,
            layers: 4,
            heads: 3,
            head_dim: 64,
            kv_heads: 1,
            cross_dim: 192,
            time_proj_dim: 64,
            cond_embed: 64,
            cond_fourier: 32,
            max_duration_s: 30.0,
            crop_min: 96,
            crop_max: 192,
            tokens: 2048,
            cfg_dropout: 0.1,
            cond_dropout: 0.15,
            grad_clip: 1.0,
            ema: 0.999,
            adam: AdamWConfig::default(),
            beat_grid: false,
            key_profile: false,
            instruments: false,
            frame_dropout: frame_dropout(),
        }
    }
}

impl DenoiserConfig {
    pub fn conditioners(&self) -> ConditionerConfig {
        ConditionerConfig::builtin(self.cond_embed, self.cond_fourier, self.max_duration_s)
    }

    /// The per-frame controls' config, if the run has any.
    pub fn frame_cond(&self) -> Option<FrameCondConfig> {
        (self.beat_grid || self.key_profile || self.instruments).then(|| FrameCondConfig {
            dim: self.heads * self.head_dim,
            beat_grid: self.beat_grid,
            key_profile: self.key_profile,
            instruments: self.instruments,
        })
    }

    pub fn dit(&self, channels: i64, text_dim: i64) -> DitConfig {
        DitConfig {
            sample_size: 1024,
            in_channels: channels,
            num_layers: self.layers,
            attention_head_dim: self.head_dim,
            num_attention_heads: self.heads,
            num_key_value_attention_heads: self.kv_heads,
            out_channels: channels,
            cross_attention_dim: self.cross_dim,
            time_proj_dim: self.time_proj_dim,
            global_states_input_dim: text_dim + self.conditioners().output_dim(),
            cross_attention_input_dim: text_dim,
        }
    }
}

/// What the checkpoint's metadata holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenoiserState {
    pub config: DenoiserConfig,
    pub mel: MelConfig,
    /// Width of the text encoder's states.
    #[serde(default = "minilm_dim")]
    pub text_dim: i64,
    pub step: u64,
    /// Log-mel normalisation: `latent = (log_mel - mean) / std`.
    pub mean: f64,
    pub std: f64,
    /// (step, mean loss since the previous entry).
    pub losses: Vec<(u64, f64)>,
    pub samples: u64,
    /// Process CPU seconds spent training, over all sittings.
    pub cpu_seconds: f64,
    /// The pack this run started from (`name@version`), if any (`Trainer::init_from_pack`).
    #[serde(default)]
    pub init: Option<String>,
    /// Steps the starting pack had been trained for (counted in this run's pack version).
    #[serde(default)]
    pub init_steps: u64,
}

fn minilm_dim() -> i64 {
    384
}

/// Where a run reads and writes.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub dataset: PathBuf,
    pub text_encoder: PathBuf,
    pub run: PathBuf,
}

pub const CHECKPOINT: &str = "denoiser.ckpt.safetensors";

/// Mean and std of the log-mels of the first clips (a fixed, deterministic sample).
pub fn mel_stats(dir: &Path, rows: &[ManifestRow], n_mels: usize) -> Result<(f64, f64)> {
    let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
    for r in rows.iter().take(256) {
        for v in data::read_mel(dir, r.id, n_mels, r.frames)? {
            s += v as f64;
            s2 += (v as f64) * (v as f64);
            n += 1.0;
        }
    }
    if n == 0.0 {
        return Err(TrainError::Input(format!(
            "{}: the dataset has no clips",
            dir.display()
        )));
    }
    let mean = s / n;
    Ok((mean, (s2 / n - mean * mean).max(1e-6).sqrt()))
}

/// The model, its optimizer and data.
pub struct Trainer {
    pub state: DenoiserState,
    pub opt: AdamW,
    pub ema: Ema,
    pub dit: StableAudioDit,
    cond_cfg: ConditionerConfig,
    cond_vars: std::collections::HashMap<String, Tensor>,
    frames: Option<FrameConditioner>,
    text: TextCache,
    rows: Vec<ManifestRow>,
    paths: RunPaths,
    device: Device,
    amp: bool,
    _stores: (nn::VarStore, nn::VarStore),
}

impl Trainer {
    /// A fresh model, or the run's checkpoint when there is one (its config wins over `cfg`).
    pub fn open(cfg: &DenoiserConfig, paths: &RunPaths, device: Device, amp: bool) -> Result<Self> {
        let ds = crate::dataset::read_config(&paths.dataset)?;
        let rows = data::read_manifest(&paths.dataset)?;
        let n_mels = ds.mel.n_mels;
        std::fs::create_dir_all(&paths.run).map_err(|e| super::file_err(&paths.run, e))?;
        let ckpt_path = paths.run.join(CHECKPOINT);
        let loaded = ckpt_path
            .exists()
            .then(|| checkpoint::load(&ckpt_path))
            .transpose()?;
        let encoder = TextEncoder::load(&paths.text_encoder, device)?;
        let text_dim = encoder.hidden_size();
        let state: DenoiserState = match &loaded {
            Some(l) => l.state()?,
            None => {
                let (mean, std) = mel_stats(&paths.dataset, &rows, n_mels)?;
                DenoiserState {
                    config: cfg.clone(),
                    mel: ds.mel.clone(),
                    text_dim,
                    step: 0,
                    mean,
                    std,
                    losses: Vec::new(),
                    samples: 0,
                    cpu_seconds: 0.0,
                    init: None,
                    init_steps: 0,
                }
            }
        };
        let cfg = state.config.clone();
        if state.text_dim != text_dim {
            return Err(TrainError::Input(format!(
                "the checkpoint was trained with text states of width {}, {} has {text_dim}",
                state.text_dim,
                paths.text_encoder.display()
            )));
        }
        tch::manual_seed(cfg.seed as i64);
        let dit_vs = nn::VarStore::new(device);
        let dit = StableAudioDit::new(dit_vs.root(), &cfg.dit(n_mels as i64, text_dim));
        let cond_vs = nn::VarStore::new(device);
        let cond_cfg = cfg.conditioners();
        let _c = Conditioners::new(cond_vs.root(), &cond_cfg);
        let frames = cfg
            .frame_cond()
            .map(|f| FrameConditioner::new(cond_vs.root() / "frames", &f));
        let mut params = BTreeMap::new();
        for (k, v) in dit_vs.variables() {
            if k == "time_proj.weight" {
                // Timesteps run to 1000: frequencies of N(0, 4) per unit sigma, frozen.
                tch::no_grad(|| {
                    let mut v = v.shallow_clone();
                    let _ = v.g_mul_scalar_(0.004);
                });
                continue;
            }
            if k == "proj_out.weight" {
                // Zero output projection (as DiT): the untrained model predicts v = 0.
                tch::no_grad(|| {
                    let mut v = v.shallow_clone();
                    let _ = v.zero_();
                });
            }
            params.insert(format!("dit.{k}"), v);
        }
        let cond_vars = cond_vs.variables();
        for (k, v) in &cond_vars {
            params.insert(format!("cond.{k}"), v.shallow_clone());
        }
        let mut frozen = BTreeMap::from([(
            "time_proj.weight".to_string(),
            dit_vs.variables()["time_proj.weight"].shallow_clone(),
        )]);
        let mut opt = AdamW::new(cfg.adam.clone(), params);
        let mut ema = Ema::new(cfg.ema, &opt.params);
        if let Some(l) = &loaded {
            l.restore("param", &mut opt.params)?;
            l.restore("frozen", &mut frozen)?;
            l.restore("adam_m", &mut opt.m)?;
            l.restore("adam_v", &mut opt.v)?;
            l.restore("ema", &mut ema.shadow)?;
            opt.t = state.step;
        }
        Ok(Self {
            state,
            opt,
            ema,
            dit,
            cond_cfg,
            cond_vars,
            frames,
            text: TextCache::new(encoder),
            rows,
            paths: paths.clone(),
            device,
            amp,
            _stores: (dit_vs, cond_vs),
        })
    }

    /// Starts this new run from a pack's weights (to continue training a shipped model on a new
    /// dataset or with longer crops): the pack's DiT and conditioner weights become the parameters
    /// and the EMA, and its log-mel normalisation replaces the dataset's (the weights were trained
    /// on it). Adam's moments and the learning-rate warm-up start afresh. The sizes must match,
    /// except that a pack on fewer mel bands is widened to the run's (`widen.rs`).
    pub fn init_from_pack(&mut self, dir: &Path) -> Result<()> {
        if self.state.step != 0 {
            return Err(TrainError::Input(format!(
                "{} is at step {}: a pack can only start a new run",
                self.paths.run.display(),
                self.state.step
            )));
        }
        let cfg = PackConfig::read(dir)?;
        // A pack on fewer mel bands (and otherwise the same mel settings) widens (`widen.rs`).
        let (from, to) = (cfg.mel.n_mels, self.state.mel.n_mels);
        let want = self.state.config.dit(from as i64, self.state.text_dim);
        let same_mel = MelConfig {
            n_mels: to,
            ..cfg.mel.clone()
        } == self.state.mel;
        // The run may add per-frame controls to the pack's (they start at zero), not drop any.
        let run_frames = self.state.config.frame_cond();
        let frames_differ = cfg
            .frame_conditioning
            .as_ref()
            .is_some_and(|f| !run_frames.as_ref().is_some_and(|r| f.is_within(r)));
        if cfg.denoiser != want
            || cfg.conditioners != self.cond_cfg
            || !same_mel
            || from > to
            || frames_differ
        {
            return Err(TrainError::Input(format!(
                "{}: its denoiser, conditioners or mel settings differ from this run's",
                dir.display()
            )));
        }
        let DecoderConfig::Identity { scale, shift } = cfg.decoder else {
            return Err(TrainError::Input(format!(
                "{}: only packs with the identity decoder (log-mel latents) can start a run",
                dir.display()
            )));
        };
        let dit = weights::read_safetensors(&dir.join(tutti_model::pack::DENOISER_FILE))?.tensors;
        let cond =
            weights::read_safetensors(&dir.join(tutti_model::pack::CONDITIONERS_FILE))?.tensors;
        let _g = tch::no_grad_guard();
        let mut targets: Vec<(String, Tensor)> = self
            .opt
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        targets.push(("dit.time_proj.weight".into(), self.dit_time_proj()));
        for (name, mut t) in targets {
            let src = match name.split_once('.') {
                Some(("dit", k)) => dit.get(k),
                Some(("cond", k)) => cond.get(k),
                _ => None,
            };
            let pack_lacks = name.strip_prefix("cond.frames.").is_some_and(|w| {
                !cfg.frame_conditioning
                    .as_ref()
                    .is_some_and(|f| f.declares(w))
            });
            if src.is_none() && pack_lacks {
                // Per-frame controls the pack lacks start at zero: the pack's function exactly.
                continue;
            }
            let src = src
                .ok_or_else(|| TrainError::Input(format!("{}: no weight {name}", dir.display())))?;
            let widened = match name.strip_prefix("dit.") {
                Some(k) if from != to => super::widen::widen(k, src, from, to)?,
                _ => None,
            };
            let src = widened.as_ref().unwrap_or(src);
            if src.size() != t.size() {
                return Err(TrainError::Input(format!(
                    "{}: {name} has shape {:?}, the run {:?}",
                    dir.display(),
                    src.size(),
                    t.size()
                )));
            }
            t.f_copy_(&src.to_kind(t.kind()).to_device(t.device()))?;
        }
        self.ema = Ema::new(self.state.config.ema, &self.opt.params);
        // Widened, the run keeps the dataset's own normalisation: the finer bands' log values
        // sit elsewhere, and normalised they reach the transformer as the pack's bands did.
        if from == to {
            self.state.mean = shift;
            self.state.std = scale;
        }
        self.state.init = Some(format!("{}@{}", cfg.model.name, cfg.model.version));
        // Versions the pack writer makes end in `step<N>`.
        self.state.init_steps = cfg
            .model
            .version
            .rsplit("step")
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(())
    }

    fn spec(&self) -> BatchSpec {
        let c = &self.state.config;
        BatchSpec {
            crop_min: c.crop_min,
            crop_max: c.crop_max,
            tokens: c.tokens,
            cfg_dropout: c.cfg_dropout,
            cond_dropout: c.cond_dropout,
            mean: self.state.mean,
            std: self.state.std,
            frames_per_second: self.state.mel.sample_rate as f64 / self.state.mel.hop_length as f64,
            beat_grid: c.beat_grid,
            key_profile: c.key_profile,
            instruments: c.instruments,
            frame_dropout: c.frame_dropout,
        }
    }

    /// One optimisation step; returns (loss, frames in the batch).
    pub fn step(&mut self) -> Result<(f64, usize)> {
        let step = self.state.step;
        let mut rng = rng_for(self.state.config.seed, 10, step);
        let n_mels = self.state.mel.n_mels;
        let b = batch::draw(
            &mut rng,
            &self.spec(),
            &self.paths.dataset,
            &self.rows,
            n_mels,
        )?;
        let dev = self.device;
        let (states, mask, pooled) = self.text.batch(&b.captions, dev)?;
        let numeric = cond::embed(&self.cond_vars, &self.cond_cfg, &b.controls, dev);
        let global = Tensor::cat(&[pooled, numeric], 1).unsqueeze(1);
        let (x0, noise) = (b.x0.to_device(dev), b.noise.to_device(dev));
        let sigma = b.sigma.to_device(dev);
        let s3 = sigma.view([-1, 1, 1]);
        let xt = &x0 * (1.0 - &s3) + &noise * &s3;
        let target = &noise - &x0;
        let frames = x0.size()[2];
        let frame_states = self
            .frames
            .as_ref()
            .map(|fc| fc.forward(&b.frames, frames).to_device(dev));
        let rotary = self.dit.rotary(frames, dev);
        let timestep = &sigma * 1000.0;
        let forward = || {
            self.dit.forward(&DitInput {
                hidden_states: &xt,
                timestep: &timestep,
                encoder_hidden_states: &states,
                global_hidden_states: &global,
                rotary: &rotary,
                attention_mask: None,
                encoder_attention_mask: Some(&mask),
                frame_states: frame_states.as_ref(),
            })
        };
        let pred = if self.amp && dev.is_cuda() {
            tch::autocast(true, forward)
        } else {
            forward()
        };
        let loss = (pred.to_kind(Kind::Float) - &target)
            .square()
            .mean(Kind::Float);
        self.opt.zero_grad();
        loss.backward();
        self.opt.clip_grad_norm(self.state.config.grad_clip);
        self.opt.step();
        self.state.step += 1;
        self.ema.update(&self.opt.params, self.state.step);
        let bsz = x0.size()[0] as usize;
        self.state.samples += bsz as u64;
        Ok((loss.double_value(&[]), bsz * frames as usize))
    }

    pub fn save(&self) -> Result<()> {
        let frozen = BTreeMap::from([("time_proj.weight".to_string(), self.dit_time_proj())]);
        checkpoint::save(
            &self.paths.run.join(CHECKPOINT),
            &[
                ("param", &self.opt.params),
                ("frozen", &frozen),
                ("adam_m", &self.opt.m),
                ("adam_v", &self.opt.v),
                ("ema", &self.ema.shadow),
            ],
            &self.state,
        )
    }

    fn dit_time_proj(&self) -> Tensor {
        self._stores.0.variables()["time_proj.weight"].shallow_clone()
    }

    /// Trains until `until_step` (or `max_seconds`), saving every `save_every` steps and at the end;
    /// writes `loss.png`. Returns the last mean loss.
    pub fn run(
        &mut self,
        until_step: u64,
        save_every: u64,
        max_seconds: f64,
        log_every: u64,
        progress: bool,
    ) -> Result<f64> {
        let bar = if progress {
            ProgressBar::new(until_step)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} eta {eta}")
                .map_err(|e| TrainError::Input(e.to_string()))?,
        );
        bar.set_position(self.state.step);
        let t0 = Instant::now();
        let cpu0 = cpu_seconds();
        let (mut acc, mut n, mut frames, mut last) = (0f64, 0u64, 0usize, f64::NAN);
        while self.state.step < until_step && t0.elapsed().as_secs_f64() < max_seconds {
            let (loss, f) = self.step()?;
            acc += loss;
            n += 1;
            frames += f;
            if self.state.step.is_multiple_of(log_every.max(1)) {
                last = acc / n as f64;
                self.state.losses.push((self.state.step, last));
                let fps = frames as f64 / t0.elapsed().as_secs_f64();
                bar.set_message(format!("loss {last:.4} {fps:.0} frames/s"));
                super::log_line(
                    &self.paths.run,
                    self.state.step,
                    last,
                    fps,
                    t0.elapsed().as_secs_f64(),
                );
                (acc, n) = (0.0, 0);
            }
            bar.set_position(self.state.step);
            if self.state.step.is_multiple_of(save_every.max(1)) {
                self.state.cpu_seconds += cpu_seconds() - cpu0;
                self.save()?;
                self.state.cpu_seconds -= cpu_seconds() - cpu0;
            }
        }
        self.state.cpu_seconds += cpu_seconds() - cpu0;
        self.save()?;
        bar.finish();
        plot::loss_png(
            &self.paths.run.join("loss.png"),
            "denoiser loss",
            &self.state.losses,
        )?;
        Ok(last)
    }

    /// EMA weights for the pack: DiT (with the frozen time projection) and conditioners.
    pub fn ema_weights(&self) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
        split_ema(&self.ema.shadow, &self.dit_time_proj())
    }
}

/// Splits EMA shadow tensors (`dit.*`, `cond.*`) into the DiT's and the conditioners' weights.
pub fn split_ema(
    shadow: &BTreeMap<String, Tensor>,
    time_proj: &Tensor,
) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
    let mut dit = BTreeMap::new();
    let mut cond = BTreeMap::new();
    for (k, v) in shadow {
        if let Some(n) = k.strip_prefix("dit.") {
            dit.insert(n.to_string(), v.shallow_clone());
        } else if let Some(n) = k.strip_prefix("cond.") {
            cond.insert(n.to_string(), v.shallow_clone());
        }
    }
    dit.insert("time_proj.weight".into(), time_proj.shallow_clone());
    (dit, cond)
}
