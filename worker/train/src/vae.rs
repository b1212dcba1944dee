//! `tutti train vae`: a small convolutional VAE over the normalised log-mel, `factor` times
//! shorter in time (a learned latent the denoiser could work on with fewer tokens), and its
//! round trip as a `tutti train ceiling` row: log-mel -> encoder mean -> decoder -> log-mel ->
//! Griffin-Lim. L1 reconstruction plus a small KL term (the latent stays near N(0, 1) so that a
//! denoiser could start from noise); same optimizer and exact-resume scheme as the other trainers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

use super::data::{self, ManifestRow};
use super::optim::{AdamW, AdamWConfig};
use super::{checkpoint, cpu_seconds, rng_for, Result, TrainError};
use tutti_model::mel::MelConfig;
use tutti_model::vocoder::Vocoder;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub seed: u64,
    pub latent_channels: i64,
    pub hidden: i64,
    /// Time downsampling: 2 or 4 (one stride-2 stage each).
    pub factor: i64,
    pub kl_weight: f64,
    pub crop_frames: usize,
    pub batch: usize,
    pub adam: AdamWConfig,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            latent_channels: 32,
            hidden: 192,
            factor: 2,
            kl_weight: 1e-4,
            crop_frames: 128,
            batch: 8,
            adam: AdamWConfig {
                lr: 1e-3,
                warmup: 100,
                weight_decay: 0.0,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeState {
    pub config: VaeConfig,
    pub mel: MelConfig,
    pub mean: f64,
    pub std: f64,
    pub step: u64,
    pub losses: Vec<(u64, f64)>,
    pub cpu_seconds: f64,
}

pub const VAE_CHECKPOINT: &str = "vae.ckpt.safetensors";

/// Encoder and decoder.
pub struct MelVae {
    enc: nn::Sequential,
    dec: nn::Sequential,
    channels: i64,
}

fn conv(p: nn::Path<'_>, i: i64, o: i64, k: i64, s: i64) -> nn::Conv1D {
    let cfg = nn::ConvConfig {
        stride: s,
        padding: if s == 2 { 1 } else { k / 2 },
        ..Default::default()
    };
    nn::conv1d(p, i, o, k, cfg)
}

impl MelVae {
    pub fn new(p: &nn::Path<'_>, cfg: &VaeConfig, n_mels: i64) -> Result<Self> {
        let stages = match cfg.factor {
            2 => 1,
            4 => 2,
            f => return Err(TrainError::Input(format!("vae factor {f}: use 2 or 4"))),
        };
        let (h, c) = (cfg.hidden, cfg.latent_channels);
        let mut enc = nn::seq().add(conv(p / "enc" / "in", n_mels, h, 3, 1));
        for i in 0..stages {
            enc = enc.add_fn(|x| x.gelu("none")).add(conv(
                p / "enc" / format!("down{i}"),
                h,
                h,
                4,
                2,
            ));
        }
        let enc = enc
            .add_fn(|x| x.gelu("none"))
            .add(conv(p / "enc" / "mid", h, h, 3, 1))
            .add_fn(|x| x.gelu("none"))
            .add(conv(p / "enc" / "out", h, 2 * c, 3, 1));
        let mut dec = nn::seq()
            .add(conv(p / "dec" / "in", c, h, 3, 1))
            .add_fn(|x| x.gelu("none"))
            .add(conv(p / "dec" / "mid", h, h, 3, 1));
        for i in 0..stages {
            let up = nn::conv_transpose1d(
                p / "dec" / format!("up{i}"),
                h,
                h,
                4,
                nn::ConvTransposeConfig {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                },
            );
            dec = dec.add_fn(|x| x.gelu("none")).add(up);
        }
        let dec = dec
            .add_fn(|x| x.gelu("none"))
            .add(conv(p / "dec" / "out", h, n_mels, 3, 1));
        Ok(Self {
            enc,
            dec,
            channels: c,
        })
    }

    /// `[B, n_mels, T]` (T a multiple of the factor) -> (mean, log-variance) `[B, C, T / factor]`.
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        let h = self.enc.forward(x);
        let parts = h.split(self.channels, 1);
        (parts[0].shallow_clone(), parts[1].clamp(-12.0, 6.0))
    }

    pub fn decode(&self, z: &Tensor) -> Tensor {
        self.dec.forward(z)
    }
}

/// Trains the VAE on a dataset's log-mels; resumes from `run`'s checkpoint.
pub struct VaeTrainer {
    pub state: VaeState,
    pub opt: AdamW,
    vae: MelVae,
    rows: Vec<ManifestRow>,
    dataset: PathBuf,
    run: PathBuf,
    _vs: nn::VarStore,
}

impl VaeTrainer {
    pub fn open(cfg: &VaeConfig, dataset: &Path, run: &Path) -> Result<Self> {
        let ds = crate::dataset::read_config(dataset)?;
        let rows = data::read_manifest(dataset)?;
        std::fs::create_dir_all(run).map_err(|e| super::file_err(run, e))?;
        let path = run.join(VAE_CHECKPOINT);
        let loaded = path.exists().then(|| checkpoint::load(&path)).transpose()?;
        let state: VaeState = match &loaded {
            Some(l) => l.state()?,
            None => {
                let (mean, std) = super::denoiser::mel_stats(dataset, &rows, ds.mel.n_mels)?;
                VaeState {
                    config: cfg.clone(),
                    mel: ds.mel.clone(),
                    mean,
                    std,
                    step: 0,
                    losses: Vec::new(),
                    cpu_seconds: 0.0,
                }
            }
        };
        tch::manual_seed(state.config.seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let vae = MelVae::new(&vs.root(), &state.config, state.mel.n_mels as i64)?;
        let params: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let mut opt = AdamW::new(state.config.adam.clone(), params);
        if let Some(l) = &loaded {
            l.restore("param", &mut opt.params)?;
            l.restore("adam_m", &mut opt.m)?;
            l.restore("adam_v", &mut opt.v)?;
            opt.t = state.step;
        }
        Ok(Self {
            state,
            opt,
            vae,
            rows,
            dataset: dataset.to_path_buf(),
            run: run.to_path_buf(),
            _vs: vs,
        })
    }

    /// One step; returns the reconstruction L1 (in normalised units).
    pub fn step(&mut self) -> Result<f64> {
        let c = self.state.config.clone();
        let n_mels = self.state.mel.n_mels;
        let mut rng = rng_for(c.seed, 30, self.state.step);
        let mut x = Vec::with_capacity(c.batch * n_mels * c.crop_frames);
        for _ in 0..c.batch {
            let r = &self.rows[rng.random_range(0..self.rows.len())];
            if r.frames < c.crop_frames {
                return Err(TrainError::Input(format!(
                    "clip {} is shorter than a crop",
                    r.id
                )));
            }
            let mel = data::read_mel(&self.dataset, r.id, n_mels, r.frames)?;
            let off = rng.random_range(0..=r.frames - c.crop_frames);
            for m in 0..n_mels {
                let row = &mel[m * r.frames + off..m * r.frames + off + c.crop_frames];
                x.extend(
                    row.iter()
                        .map(|v| ((*v as f64 - self.state.mean) / self.state.std) as f32),
                );
            }
        }
        let x = Tensor::from_slice(&x).view([c.batch as i64, n_mels as i64, c.crop_frames as i64]);
        let (mu, logvar) = self.vae.encode(&x);
        let eps = Tensor::randn(mu.size(), (Kind::Float, Device::Cpu));
        let z = &mu + (&logvar * 0.5).exp() * eps;
        let y = self.vae.decode(&z);
        let recon = (&y - &x).abs().mean(Kind::Float);
        let kl = ((mu.square() + logvar.exp() - 1.0 - &logvar) * 0.5).mean(Kind::Float);
        let loss = &recon + kl * c.kl_weight;
        self.opt.zero_grad();
        loss.backward();
        self.opt.clip_grad_norm(1.0);
        self.opt.step();
        self.state.step += 1;
        Ok(recon.double_value(&[]))
    }

    pub fn save(&self) -> Result<()> {
        checkpoint::save(
            &self.run.join(VAE_CHECKPOINT),
            &[
                ("param", &self.opt.params),
                ("adam_m", &self.opt.m),
                ("adam_v", &self.opt.v),
            ],
            &self.state,
        )
    }

    /// Trains until `until` steps or `max_seconds`, saving every `save_every`; the last mean loss.
    pub fn run(
        &mut self,
        until: u64,
        save_every: u64,
        max_seconds: f64,
        log_every: u64,
    ) -> Result<f64> {
        let (t0, cpu0) = (Instant::now(), cpu_seconds());
        let (mut acc, mut n, mut last) = (0.0, 0u64, f64::NAN);
        while self.state.step < until && t0.elapsed().as_secs_f64() < max_seconds {
            acc += self.step()?;
            n += 1;
            if self.state.step.is_multiple_of(log_every.max(1)) {
                last = acc / n as f64;
                self.state.losses.push((self.state.step, last));
                super::log_line(
                    &self.run,
                    self.state.step,
                    last,
                    0.0,
                    t0.elapsed().as_secs_f64(),
                );
                (acc, n) = (0.0, 0);
            }
            if self.state.step.is_multiple_of(save_every.max(1)) {
                self.state.cpu_seconds += cpu_seconds() - cpu0;
                self.save()?;
                self.state.cpu_seconds -= cpu_seconds() - cpu0;
            }
        }
        self.state.cpu_seconds += cpu_seconds() - cpu0;
        self.save()?;
        Ok(last)
    }
}

/// A trained VAE (from a run's checkpoint) in front of a vocoder: the ceiling's learned-latent
/// row. Frames beyond a multiple of the factor pass through the latent padded by repetition.
pub struct VaeRoundTrip {
    // libtorch modules are `Send` but not `Sync`: behind a mutex, as the runtime's vocoders.
    vae: std::sync::Mutex<MelVae>,
    mean: f64,
    std: f64,
    factor: i64,
    then: Box<dyn Vocoder>,
    _vs: nn::VarStore,
}

/// The settings of a VAE run (its mel front end: what a ceiling row analyses with).
pub fn read_state(run: &Path) -> Result<VaeState> {
    checkpoint::load(&run.join(VAE_CHECKPOINT))?.state()
}

impl VaeRoundTrip {
    pub fn load(run: &Path, then: Box<dyn Vocoder>) -> Result<(Self, MelConfig)> {
        let l = checkpoint::load(&run.join(VAE_CHECKPOINT))?;
        let state: VaeState = l.state()?;
        let vs = nn::VarStore::new(Device::Cpu);
        let vae = MelVae::new(&vs.root(), &state.config, state.mel.n_mels as i64)?;
        let mut vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        l.restore("param", &mut vars)?;
        Ok((
            Self {
                vae: std::sync::Mutex::new(vae),
                mean: state.mean,
                std: state.std,
                factor: state.config.factor,
                then,
                _vs: vs,
            },
            state.mel,
        ))
    }
}

impl Vocoder for VaeRoundTrip {
    fn vocode(&self, log_mel: &Tensor) -> tutti_model::Result<Tensor> {
        let _g = tch::no_grad_guard();
        let t = log_mel.size()[2];
        let pad = (self.factor - t % self.factor) % self.factor;
        let x = (log_mel.to_kind(Kind::Float) - self.mean) / self.std;
        let x = if pad > 0 {
            x.replication_pad1d([0, pad])
        } else {
            x
        };
        let vae = self.vae.lock().map_err(|_| {
            tutti_model::ModelError::Input("vae poisoned by an earlier panic".into())
        })?;
        let (mu, _) = vae.encode(&x);
        let y = vae.decode(&mu).narrow(2, 0, t) * self.std + self.mean;
        drop(vae);
        self.then.vocode(&y)
    }
}
