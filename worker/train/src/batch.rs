//! Training batches of the denoiser: random crops of normalised log-mels, captions (with guidance
//! dropout) encoded by the frozen text encoder, numeric controls (with conditioner dropout), noise
//! and timesteps, all drawn from a generator keyed by (seed, step) so that any step can be redone.

use std::collections::HashMap;
use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};
use tutti_shared::prompt::Controls;

use super::data::{self, ManifestRow};
use super::Result;
use tutti_model::frame_cond::{instrument_features, key_features, BeatGrid, FrameControls};
use tutti_model::text_encoder::TextEncoder;

/// Standard normal samples from `rng` (Box-Muller).
pub fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Text states of captions, each encoded alone (so a caption's encoding never depends on the
/// batch it first appears in) and cached.
pub struct TextCache {
    encoder: TextEncoder,
    cache: HashMap<String, (Tensor, Tensor)>,
}

impl TextCache {
    pub fn new(encoder: TextEncoder) -> Self {
        Self {
            encoder,
            cache: HashMap::new(),
        }
    }

    pub fn hidden_size(&self) -> i64 {
        self.encoder.hidden_size()
    }

    /// `(states [1, L, H], pooled [1, H])`.
    pub fn get(&mut self, caption: &str) -> Result<(Tensor, Tensor)> {
        if let Some((s, p)) = self.cache.get(caption) {
            return Ok((s.shallow_clone(), p.shallow_clone()));
        }
        let enc = self.encoder.encode(&[caption])?;
        let v = (enc.token_states.detach(), enc.pooled.detach());
        self.cache.insert(
            caption.to_string(),
            (v.0.shallow_clone(), v.1.shallow_clone()),
        );
        Ok(v)
    }

    /// Pads the captions' states to a common length: `(states [B, L, H], mask bool [B, L],
    /// pooled [B, H])`.
    pub fn batch(
        &mut self,
        captions: &[String],
        device: Device,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let enc: Vec<(Tensor, Tensor)> = captions
            .iter()
            .map(|c| self.get(c))
            .collect::<Result<_>>()?;
        let max_l = enc.iter().map(|(s, _)| s.size()[1]).max().unwrap_or(1);
        let h = self.hidden_size();
        let (mut states, mut masks, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
        for (s, p) in &enc {
            let l = s.size()[1];
            let s = s.to_device(device).to_kind(Kind::Float);
            states.push(if l < max_l {
                Tensor::cat(
                    &[s, Tensor::zeros([1, max_l - l, h], (Kind::Float, device))],
                    1,
                )
            } else {
                s
            });
            masks.push(Tensor::cat(
                &[
                    Tensor::ones([1, l], (Kind::Bool, device)),
                    Tensor::zeros([1, max_l - l], (Kind::Bool, device)),
                ],
                1,
            ));
            pooled.push(p.to_device(device).to_kind(Kind::Float));
        }
        Ok((
            Tensor::cat(&states, 0),
            Tensor::cat(&masks, 0),
            Tensor::cat(&pooled, 0),
        ))
    }
}

/// One batch before the model.
pub struct Batch {
    /// Clean normalised latents `[B, C, T]`.
    pub x0: Tensor,
    pub captions: Vec<String>,
    pub controls: Vec<Controls>,
    pub noise: Tensor,
    /// Noise fractions `[B]` in (0, 1).
    pub sigma: Tensor,
    /// Per-frame controls of each row (empty when the run has none).
    pub frames: Vec<FrameControls>,
}

/// Settings that shape a batch.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub crop_min: usize,
    pub crop_max: usize,
    /// Latent frames per batch (batch size = tokens / crop length).
    pub tokens: usize,
    pub cfg_dropout: f64,
    pub cond_dropout: f64,
    pub mean: f64,
    pub std: f64,
    pub frames_per_second: f64,
    /// The run's per-frame controls (beat grid from the renders' true beats, key profile from
    /// their true key and mode, instruments as the caption names them), each dropped with
    /// `frame_dropout` so it stays optional.
    pub beat_grid: bool,
    pub key_profile: bool,
    pub instruments: bool,
    pub frame_dropout: f64,
}

/// Draws the batch of one step.
pub fn draw(
    rng: &mut ChaCha8Rng,
    spec: &BatchSpec,
    dir: &Path,
    rows: &[ManifestRow],
    n_mels: usize,
) -> Result<Batch> {
    // Crops are multiples of 16 frames, at most the shortest clip (every crop of a batch has the
    // same length).
    let shortest = rows.iter().map(|r| r.frames).min().unwrap_or(0).max(16);
    let hi_max = shortest / 16;
    let lo = spec.crop_min.div_ceil(16).min(hi_max);
    let hi = (spec.crop_max / 16).clamp(lo, hi_max);
    let frames = 16 * rng.random_range(lo..=hi);
    let b = (spec.tokens / frames).max(1);
    let mut x0 = Vec::with_capacity(b * n_mels * frames);
    let (mut captions, mut controls, mut frame_rows) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..b {
        let row = &rows[rng.random_range(0..rows.len())];
        let mel = data::read_mel(dir, row.id, n_mels, row.frames)?;
        let frames = frames.min(row.frames);
        let off = rng.random_range(0..=row.frames - frames);
        for m in 0..n_mels {
            let line = &mel[m * row.frames + off..m * row.frames + off + frames];
            x0.extend(
                line.iter()
                    .map(|v| ((*v as f64 - spec.mean) / spec.std) as f32),
            );
        }
        let dropped = rng.random_bool(spec.cfg_dropout);
        captions.push(if dropped {
            String::new()
        } else {
            row.caption.clone()
        });
        let mut c = row.controls;
        c.duration_s = (frames as f64 / spec.frames_per_second) as f32;
        if rng.random_bool(spec.cond_dropout) {
            c.bpm = None;
        }
        if rng.random_bool(spec.cond_dropout) {
            c.key = None;
        }
        if rng.random_bool(spec.cond_dropout) {
            c.mode = None;
        }
        controls.push(c);
        if spec.beat_grid || spec.key_profile || spec.instruments {
            let grid = (spec.beat_grid && row.bpm > 0.0 && !rng.random_bool(spec.frame_dropout))
                .then(|| {
                    BeatGrid {
                        bpm: row.bpm,
                        beats_per_bar: row.beats_per_bar,
                        downbeat_s: row.downbeat_s,
                    }
                    .features(off, frames, spec.frames_per_second)
                });
            // A request sends a key and mode ("in D minor"), a mode alone ("in a minor key")
            // or a tonic alone ("in D"): each is trained, so no request's key input is new.
            let key = (spec.key_profile && !rng.random_bool(spec.frame_dropout))
                .then(|| match rng.random_range(0..10) {
                    0..=5 => key_features(Some(row.tonic), Some(row.mode)),
                    6..=8 => key_features(None, Some(row.mode)),
                    _ => key_features(Some(row.tonic), None),
                })
                .flatten();
            // Read from the caption as a request's prompt is read (a caption that names no
            // instrument, as 20% do, teaches the unknown input as well).
            let instruments = (spec.instruments && !rng.random_bool(spec.frame_dropout))
                .then(|| instrument_features(&row.caption))
                .flatten();
            frame_rows.push(FrameControls {
                grid,
                key,
                instruments,
            });
        }
    }
    let shape = [b as i64, n_mels as i64, frames as i64];
    let noise = Tensor::from_slice(&normal(rng, b * n_mels * frames)).view(shape);
    // Logit-normal noise fractions (SD3), away from the ends.
    let sig: Vec<f32> = normal(rng, b)
        .into_iter()
        .map(|z| (1.0 / (1.0 + (-z as f64).exp())).clamp(1e-3, 1.0 - 1e-3) as f32)
        .collect();
    Ok(Batch {
        x0: Tensor::from_slice(&x0).view(shape),
        captions,
        controls,
        noise,
        sigma: Tensor::from_slice(&sig),
        frames: frame_rows,
    })
}
