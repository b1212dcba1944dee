//! Stable Audio packs on the farm's path: the family's [`Family`] (prepare a [`DenoiseState`],
//! step any set of them in one DiT forward with per-sample timesteps through the shared step
//! loop, render), so that chunked denoising, held latents, checkpoints and continuous batching
//! work as for every family.
//!
//! A state holds the conditioning as `StableAudioPipeline` builds it, under the names
//! `text_cond` gives them: `text_states` `[2, L + n, D]` is the DiT's whole cross input (row 0
//! the unconditional one: zeros, or the negative prompt's; row 1 the prompt's, seconds tokens
//! included), `text_mask` is all ones (SAO attends to its zeroed padding) and `global_cond`
//! `[2, n * D]` the seconds embeddings. The latent is the model's full window, as the reference draws it;
//! the render crops the audio to the asked duration. Variation `i` starts from the noise of seed
//! `seed + i`, and the stochastic samplers' noise of step `k` is `step_noise(seed + i, k)`: a
//! function of the job's seed and the step only, so a chunked or resumed job equals a one-shot
//! one bit for bit, and this path computes what [`StableAudioModel::generate`] computes.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};
use tutti_shared::models::ModelFamily;

use crate::decoders::oobleck::Oobleck;
use crate::device::Kinds;
use crate::families::stable_audio::model::{
    load_vae, StableAudioConfig, StableAudioModel, StableAudioPack,
};
use crate::families::stable_audio::run::guided;
use crate::families::{common, text_cond, Family, Render};
use crate::samplers;
use crate::state::{seeded_noise, BatchShape, DenoiseState, GenerationParams};
use crate::step::{seeds, Denoiser, Rows};
use crate::{ModelError, Result};

fn bad(m: String) -> ModelError {
    ModelError::Input(m)
}

/// A loaded Stable Audio pack on one device, for the farm. `Send + Sync` like `Pipeline`: the
/// modules sit behind a mutex.
pub struct StableAudioPipeline {
    pack: StableAudioPack,
    config: StableAudioConfig,
    device: Device,
    /// The DiT's kind (its activation bytes) and the VAE's.
    kinds: Kinds,
    model_id: String,
    model: Mutex<StableAudioModel>,
}

impl std::fmt::Debug for StableAudioPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableAudioPipeline")
            .field("model", &self.model_id)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl StableAudioPipeline {
    /// Loads a pack: the DiT and projection in `kinds.dit`, the VAE (decoder and, for
    /// audio-to-audio, encoder) in `kinds.vae` (see [`Precision::kinds`]), the T5 in f32.
    ///
    /// [`Precision::kinds`]: crate::device::Precision::kinds
    pub fn load(dir: &Path, device: Device, kinds: Kinds) -> Result<Self> {
        Ok(Self::from_model(
            StableAudioModel::load(dir, device, kinds, true)?,
            kinds,
        ))
    }

    /// Serves a loaded model whose networks run in `kinds`.
    pub fn from_model(model: StableAudioModel, kinds: Kinds) -> Self {
        let device = model.device;
        Self {
            pack: model.pack.clone(),
            config: model.config.clone(),
            device,
            kinds,
            model_id: model.model_id.clone(),
            model: Mutex::new(model),
        }
    }

    pub fn pack(&self) -> &StableAudioPack {
        &self.pack
    }

    pub fn config(&self) -> &StableAudioConfig {
        &self.config
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn lock(&self) -> MutexGuard<'_, StableAudioModel> {
        // Inference only: a panic inside libtorch leaves no torn state behind.
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances every state by one step with one DiT forward over all of them, each at its own
    /// timestep and guidance scale (the shared step loop, [`crate::step::step_batch`]).
    pub fn step_batch(&self, states: &mut [&mut DenoiseState]) -> Result<()> {
        crate::step::step_batch(self, states)
    }
}

impl Family for StableAudioPipeline {
    fn family(&self) -> ModelFamily {
        ModelFamily::StableAudio
    }

    fn sample_rate(&self) -> u32 {
        self.config.vae.sampling_rate as u32
    }

    fn channels(&self) -> u16 {
        self.config.vae.audio_channels as u16
    }

    /// Parameters with the pack's defaults for a prompt.
    fn default_params(&self, prompt: &str, duration_s: f32) -> GenerationParams {
        let d = &self.pack.defaults;
        GenerationParams::with_defaults(prompt, duration_s, d.sampler, d.steps, d.guidance_scale)
    }

    /// Checks a request against the pack's limits and the model's window.
    fn validate(&self, p: &GenerationParams) -> Result<()> {
        let l = &self.pack.limits;
        common::check_counts(p, l.max_steps)?;
        let d = f64::from(p.controls.duration_s);
        let window = self
            .config
            .max_duration_s()
            .min(self.config.projection.max_value);
        if !d.is_finite() || d <= self.config.projection.min_value || d > window {
            return Err(bad(format!(
                "duration must be in ({}, {window:.2}] seconds for model {}, got {d}",
                self.config.projection.min_value, self.model_id
            )));
        }
        common::check_guidance(p)?;
        if !l.samplers.contains(&p.sampler) {
            return Err(bad(format!(
                "sampler {} is not one model {} runs ({:?})",
                p.sampler.as_str(),
                self.model_id,
                l.samplers
            )));
        }
        Ok(())
    }

    /// Encodes the prompt (and the negative prompt, when guided and given), draws the full
    /// latent window of every variation; step 0.
    fn prepare(&self, p: &GenerationParams) -> Result<DenoiseState> {
        self.validate(p)?;
        let m = self.lock();
        let _g = tch::no_grad_guard();
        let dev = self.device;
        let start = Tensor::zeros([1], (Kind::Float, dev));
        let total = Tensor::full([1], f64::from(p.controls.duration_s), (Kind::Float, dev));
        let cond = m.encode(&[&p.prompt], &start, &total)?;
        let uncond = if guided(p.guidance_scale) && !p.negative_prompt.is_empty() {
            m.encode(&[&p.negative_prompt], &start, &total)?
        } else {
            cond.unconditional()
        };
        let (c, t) = (self.config.dit.in_channels, self.config.dit.sample_size);
        let noise: Vec<Tensor> = seeds(p)
            .iter()
            .map(|&s| seeded_noise(s, &[1, c, t]))
            .collect();
        m.state(p.clone(), &uncond.cat(&cond), Tensor::cat(&noise, 0))
    }

    /// Audio-to-audio: as [`Self::prepare`], but the latent starts from `audio` (`[channels,
    /// samples]` f32 at the pack's rate; mono is spread to every channel, the clip cropped or
    /// zero-padded to the window) encoded by the VAE (its posterior mean) and noised to the level
    /// `strength` in (0, 1] names: 1 is pure noise (the text alone decides), lower keeps more
    /// of the audio. Ping-pong starts at time `strength`, `x = (1 - t) x0 + t n`; the cosine
    /// samplers at `sigma = sigma_min (sigma_max / sigma_min)^strength`, `x = x0 + sigma n`
    /// (stable-audio-tools' init-audio rule, with its noise level spelled as a strength). The
    /// sampler then runs all the asked steps from there; `n` is the variation's seeded noise.
    fn prepare_from_audio(
        &self,
        p: &GenerationParams,
        audio: &Tensor,
        strength: f64,
    ) -> Result<DenoiseState> {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(bad(format!(
                "init strength must be in (0, 1], got {strength}"
            )));
        }
        let channels = self.config.vae.audio_channels;
        let (ch, len) = audio.size2().map_err(|_| {
            bad(format!(
                "init audio must be [channels, samples], got {:?}",
                audio.size()
            ))
        })?;
        if ch != 1 && ch != channels {
            return Err(bad(format!(
                "init audio has {ch} channels; model {} takes 1 or {channels}",
                self.model_id
            )));
        }
        let mut state = self.prepare(p)?;
        let sched = &self.config.schedule;
        let flow = sched.prediction == crate::samplers::Prediction::Flow;
        let sigma = if flow {
            strength
        } else {
            sched.sigma_min * (sched.sigma_max / sched.sigma_min).powf(strength)
        };
        let schedule = crate::samplers::ScheduleConfig {
            init_noise: Some(sigma),
            ..sched.clone()
        };
        let sampler = samplers::build(p.sampler, &schedule, p.steps)?;
        let window = self.config.dit.sample_size * self.config.vae.hop_length();
        let _g = tch::no_grad_guard();
        let dev = self.device;
        let clip = audio.to_kind(Kind::Float).narrow(1, 0, len.min(window));
        let clip = if clip.size()[1] < window {
            let pad = Tensor::zeros([ch, window - clip.size()[1]], (Kind::Float, clip.device()));
            Tensor::cat(&[&clip, &pad], 1)
        } else {
            clip
        };
        let clip = clip
            .expand([channels, window], false)
            .unsqueeze(0)
            .to_device(dev);
        let x0 = {
            let m = self.lock();
            m.vae
                .encode(&clip.to_kind(self.kinds.vae))?
                .0
                .to_kind(Kind::Float)
        };
        let (c, t) = (self.config.dit.in_channels, self.config.dit.sample_size);
        if x0.size() != [1, c, t] {
            return Err(bad(format!(
                "the vae encodes the window to {:?}, the DiT takes [1, {c}, {t}]",
                x0.size()
            )));
        }
        let noise: Vec<Tensor> = seeds(p)
            .iter()
            .map(|&s| seeded_noise(s, &[1, c, t]))
            .collect();
        let noise = Tensor::cat(&noise, 0).to_device(dev);
        state.latent = if flow {
            &x0 * (1.0 - sigma) + noise * sigma
        } else {
            &x0 + noise * sigma
        };
        state.schedule = schedule;
        state.sampler = sampler;
        Ok(state)
    }

    /// Every state of one pack has the same shape (the full window, the fixed text length).
    fn batch_shape(&self, state: &DenoiseState) -> BatchShape {
        BatchShape {
            frames: state.latent.size()[2],
            text_tokens: text_cond::tokens(state),
        }
    }

    /// Its rows (two per variation with guidance, one without) through the DiT over the window
    /// and the cross tokens ([`DitConfig::activation_bytes`]).
    ///
    /// [`DitConfig::activation_bytes`]: crate::nn::dit::DitConfig::activation_bytes
    fn forward_bytes(&self, state: &DenoiseState) -> usize {
        self.config.dit.activation_bytes(
            rows_per_variation(&state.params) * state.params.variations as i64,
            state.latent.size()[2],
            text_cond::tokens(state),
            self.kinds.dit.elt_size_in_bytes(),
        )
    }

    /// Decodes a finished state: one clip per variation, channels interleaved frame by frame,
    /// exactly `duration * sample_rate` frames (see [`render_state`]).
    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>> {
        let m = self.lock();
        render_state(&m.vae, self.kinds.vae, self.device, &self.model_id, state)
    }
}

/// Rows of the DiT batch per variation: guidance doubles them.
fn rows_per_variation(p: &GenerationParams) -> i64 {
    if guided(p.guidance_scale) {
        2
    } else {
        1
    }
}

/// The farm's path runs the loaded model's forward, one state of the pack's shape at a time or
/// many in one forward.
impl Denoiser for StableAudioPipeline {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn device(&self) -> Device {
        self.device
    }

    fn guided(&self, p: &GenerationParams) -> bool {
        rows_per_variation(p) == 2
    }

    fn forward(&self, rows: &[Rows<'_>]) -> Result<Tensor> {
        let Some(first) = rows.first() else {
            return Err(bad("a forward needs at least one state".into()));
        };
        let shape = self.batch_shape(first.state);
        for r in rows {
            if self.batch_shape(r.state) != shape {
                return Err(bad(format!(
                    "states of shapes {shape:?} and {:?} cannot share a forward",
                    self.batch_shape(r.state)
                )));
            }
        }
        self.lock().forward(rows)
    }
}

/// A pack's VAE decoder alone, for a thread that only renders (the worker's background
/// vocoder): no T5 or DiT to load.
pub struct StableAudioRenderer {
    model_id: String,
    config: StableAudioConfig,
    device: Device,
    kind: Kind,
    vae: Oobleck,
}

impl StableAudioRenderer {
    /// Loads a pack's VAE decoder in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Ok(Self::from_vae(load_vae(dir, device, kind)?, device, kind))
    }

    /// Renders with a loaded VAE decoder (in `kind`, on `device`).
    pub fn from_vae(
        (pack, config, vae): (StableAudioPack, StableAudioConfig, Oobleck),
        device: Device,
        kind: Kind,
    ) -> Self {
        Self {
            model_id: pack.model_id(),
            config,
            device,
            kind,
            vae,
        }
    }

    pub fn config(&self) -> &StableAudioConfig {
        &self.config
    }
}

impl Render for StableAudioRenderer {
    fn sample_rate(&self) -> u32 {
        self.config.vae.sampling_rate as u32
    }

    fn channels(&self) -> u16 {
        self.config.vae.audio_channels as u16
    }

    /// As [`StableAudioPipeline::render`], bit for bit.
    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>> {
        render_state(&self.vae, self.kind, self.device, &self.model_id, state)
    }
}

/// The finished latent decoded by windows of [`crate::decoders::oobleck::DECODE_CHUNK_FRAMES`], cropped to the asked
/// duration, interleaved; non-finite samples zeroed, otherwise unscaled, as the mel family does
/// (the worker's gain stage sets levels).
pub fn render_state(
    vae: &Oobleck,
    kind: Kind,
    device: Device,
    model_id: &str,
    state: &DenoiseState,
) -> Result<Vec<Vec<f32>>> {
    common::render_oobleck(vae, kind, device, model_id, state)
}
