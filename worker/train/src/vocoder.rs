//! `tutti train vocoder`: the Vocos vocoder on the rendered audio (log-mel -> waveform), with a
//! log-mel L1 loss and a multi-resolution STFT loss (spectral convergence + log magnitude), and,
//! when the run asks for them, the adversarial and feature-matching losses of Vocos' multi-period
//! and multi-resolution discriminators (`gan.rs`). Same optimizer, EMA and exact-resume scheme as
//! the denoiser.
//!
//! Alignment: Vocos' "same" iSTFT centres output frame `k` at sample `k * hop + hop / 2`, the mel
//! front end centres frame `k` at `k * hop`, so the target is the audio delayed by `hop / 2`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::data::{self, ManifestRow};
use super::gan::{Discriminators, GanConfig};
use super::optim::{AdamW, AdamWConfig, Ema};
use super::{checkpoint, cpu_seconds, plot, rng_for, vocos_net, Result, TrainError};
use tutti_model::mel::{MelConfig, MelFrontEnd};
use tutti_model::vocoder::{Vocos, VocosConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocoderConfig {
    pub seed: u64,
    pub vocos: VocosConfig,
    pub segment_frames: usize,
    pub batch: usize,
    pub grad_clip: f64,
    pub ema: f64,
    pub adam: AdamWConfig,
    /// Adversarial training (runs made before it read as without).
    #[serde(default)]
    pub gan: Option<GanConfig>,
}

impl Default for VocoderConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            vocos: VocosConfig {
                dim: 256,
                intermediate_dim: 768,
                num_layers: 6,
                ..Default::default()
            },
            segment_frames: 48,
            batch: 8,
            grad_clip: 1.0,
            ema: 0.999,
            adam: AdamWConfig {
                lr: 5e-4,
                warmup: 100,
                ..Default::default()
            },
            gan: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VocoderState {
    pub config: VocoderConfig,
    pub mel: MelConfig,
    pub step: u64,
    pub losses: Vec<(u64, f64)>,
    pub cpu_seconds: f64,
}

pub const VOCODER_CHECKPOINT: &str = "vocoder.ckpt.safetensors";

pub struct VocoderTrainer {
    pub state: VocoderState,
    pub opt: AdamW,
    pub ema: Ema,
    vars: std::collections::HashMap<String, Tensor>,
    front: MelFrontEnd,
    rows: Vec<ManifestRow>,
    dataset: PathBuf,
    run: PathBuf,
    device: Device,
    /// The discriminators and their optimizer, for a run with `gan`.
    disc: Option<(Discriminators, AdamW)>,
    _vs: nn::VarStore,
}

/// Spectral convergence + log-magnitude L1 at one STFT resolution.
fn stft_loss(y: &Tensor, t: &Tensor, n_fft: i64) -> Tensor {
    let win = Tensor::hann_window_periodic(n_fft, true, (Kind::Float, y.device()));
    let spec = |x: &Tensor| {
        x.stft(
            n_fft,
            n_fft / 4,
            n_fft,
            Some(&win),
            false,
            true,
            true,
            false,
        )
        .abs()
            + 1e-5
    };
    let (sy, st) = (spec(y), spec(t));
    let sc = (&st - &sy).square().sum(Kind::Float).sqrt() / st.square().sum(Kind::Float).sqrt();
    sc + (sy.log() - st.log()).abs().mean(Kind::Float)
}

impl VocoderTrainer {
    pub fn open(
        cfg: &VocoderConfig,
        dataset: &std::path::Path,
        run: &std::path::Path,
        device: Device,
    ) -> Result<Self> {
        let ds = crate::dataset::read_config(dataset)?;
        let rows = data::read_manifest(dataset)?;
        std::fs::create_dir_all(run).map_err(|e| super::file_err(run, e))?;
        let path = run.join(VOCODER_CHECKPOINT);
        let loaded = path.exists().then(|| checkpoint::load(&path)).transpose()?;
        let state: VocoderState = match &loaded {
            Some(l) => l.state()?,
            None => VocoderState {
                config: cfg.clone(),
                mel: ds.mel.clone(),
                step: 0,
                losses: Vec::new(),
                cpu_seconds: 0.0,
            },
        };
        tch::manual_seed(state.config.seed as i64);
        let vs = nn::VarStore::new(device);
        let _v = Vocos::new(&vs.root(), &state.config.vocos, &state.mel)?;
        let vars = vs.variables();
        let params: BTreeMap<String, Tensor> = vars
            .iter()
            .filter(|(k, _)| k.as_str() != "head.istft.window")
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        let mut opt = AdamW::new(state.config.adam.clone(), params);
        let mut ema = Ema::new(state.config.ema, &opt.params);
        if let Some(l) = &loaded {
            l.restore("param", &mut opt.params)?;
            l.restore("adam_m", &mut opt.m)?;
            l.restore("adam_v", &mut opt.v)?;
            l.restore("ema", &mut ema.shadow)?;
            opt.t = state.step;
        }
        let disc = match &state.config.gan {
            Some(g) => {
                let d = Discriminators::new(g, device);
                // HiFi-GAN's and Vocos' discriminator optimizer: betas (0.8, 0.9), no decay.
                let adam = AdamWConfig {
                    lr: g.lr,
                    beta1: 0.8,
                    beta2: 0.9,
                    weight_decay: 0.0,
                    warmup: 1,
                    ..Default::default()
                };
                let mut dopt = AdamW::new(adam, d.params());
                if let Some(l) = &loaded {
                    l.restore("disc", &mut dopt.params)?;
                    l.restore("disc_m", &mut dopt.m)?;
                    l.restore("disc_v", &mut dopt.v)?;
                    dopt.t = state.step.saturating_sub(g.from_step);
                }
                Some((d, dopt))
            }
            None => None,
        };
        let front = MelFrontEnd::new(&state.mel, device)?;
        Ok(Self {
            state,
            opt,
            ema,
            vars,
            front,
            rows,
            dataset: dataset.to_path_buf(),
            run: run.to_path_buf(),
            device,
            disc,
            _vs: vs,
        })
    }

    /// One step; returns the reconstruction loss (comparable before and after the adversarial
    /// losses switch on).
    pub fn step(&mut self) -> Result<f64> {
        let c = &self.state.config;
        let mut rng = rng_for(c.seed, 20, self.state.step);
        let hop = self.state.mel.hop_length;
        let f = c.segment_frames;
        let (mut mels, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..c.batch {
            let row = &self.rows[rng.random_range(0..self.rows.len())];
            let audio = data::read_audio(&self.dataset, row.id)?;
            let frames = self.front.frames_for(audio.len());
            if frames < f + 3 {
                return Err(TrainError::Input(format!(
                    "clip {} is shorter than a training segment",
                    row.id
                )));
            }
            let k0 = rng.random_range(1..frames - f - 1);
            let wave = Tensor::from_slice(&audio)
                .view([1, -1])
                .to_device(self.device);
            let mel = tch::no_grad(|| self.front.log_mel(&wave))?;
            mels.push(mel.narrow(2, k0 as i64, f as i64));
            let start = (k0 * hop - hop / 2) as i64;
            targets.push(wave.narrow(1, start, (f * hop) as i64));
        }
        let mel = Tensor::cat(&mels, 0);
        let target = Tensor::cat(&targets, 0);
        let c = self.state.config.clone();
        let n_fft = self.state.mel.n_fft as i64;
        let y = vocos_net::forward(&self.vars, &c.vocos, n_fft, hop as i64, &mel)?;
        let mel_y = self.front.log_mel(&y)?;
        let mel_t = tch::no_grad(|| self.front.log_mel(&target))?;
        let mut recon = (mel_y - mel_t).abs().mean(Kind::Float) * 2.0;
        for n in [256, 512, 1024] {
            recon += stft_loss(&y, &target, n);
        }
        let adversarial = self
            .disc
            .as_ref()
            .filter(|(d, _)| self.state.step >= d.cfg.from_step);
        let loss = match adversarial {
            Some((d, _)) => &recon + d.g_loss(&target, &y) * d.cfg.weight,
            None => recon.shallow_clone(),
        };
        self.opt.zero_grad();
        loss.backward();
        self.opt.clip_grad_norm(c.grad_clip);
        self.opt.step();
        if let Some((d, dopt)) = self
            .disc
            .as_mut()
            .filter(|(d, _)| self.state.step >= d.cfg.from_step)
        {
            // The generator's backward left gradients on the discriminators: cleared first.
            dopt.zero_grad();
            d.d_loss(&target, &y).backward();
            dopt.clip_grad_norm(c.grad_clip * 10.0);
            dopt.step();
        }
        self.state.step += 1;
        self.ema.update(&self.opt.params, self.state.step);
        Ok(recon.double_value(&[]))
    }

    /// The discriminators' weights, for a run with `gan`.
    pub fn disc_params(&self) -> Option<BTreeMap<String, Tensor>> {
        self.disc.as_ref().map(|(_, o)| {
            o.params
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect()
        })
    }

    pub fn save(&self) -> Result<()> {
        let mut ema = BTreeMap::new();
        for (k, v) in &self.ema.shadow {
            ema.insert(k.clone(), v.shallow_clone());
        }
        ema.insert(
            "head.istft.window".into(),
            self.vars["head.istft.window"].shallow_clone(),
        );
        let mut groups = vec![
            ("param", &self.opt.params),
            ("adam_m", &self.opt.m),
            ("adam_v", &self.opt.v),
            ("ema", &ema),
        ];
        if let Some((_, dopt)) = &self.disc {
            groups.extend([
                ("disc", &dopt.params),
                ("disc_m", &dopt.m),
                ("disc_v", &dopt.v),
            ]);
        }
        checkpoint::save(&self.run.join(VOCODER_CHECKPOINT), &groups, &self.state)
    }

    pub fn run(
        &mut self,
        until: u64,
        save_every: u64,
        max_seconds: f64,
        log_every: u64,
        progress: bool,
    ) -> Result<f64> {
        let bar = if progress {
            ProgressBar::new(until)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} eta {eta}")
                .map_err(|e| TrainError::Input(e.to_string()))?,
        );
        bar.set_position(self.state.step);
        let (t0, cpu0, s0) = (Instant::now(), cpu_seconds(), self.state.step);
        let (mut acc, mut n, mut last) = (0.0, 0u64, f64::NAN);
        while self.state.step < until && t0.elapsed().as_secs_f64() < max_seconds {
            acc += self.step()?;
            n += 1;
            if self.state.step.is_multiple_of(log_every.max(1)) {
                last = acc / n as f64;
                self.state.losses.push((self.state.step, last));
                let sps = self.state.config.batch as f64
                    * self.state.config.segment_frames as f64
                    * ((self.state.step - s0) as f64)
                    / t0.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {last:.4} {sps:.0} frames/s"));
                super::log_line(
                    &self.run,
                    self.state.step,
                    last,
                    sps,
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
            &self.run.join("vocoder_loss.png"),
            "vocoder loss",
            &self.state.losses,
        )?;
        Ok(last)
    }
}
