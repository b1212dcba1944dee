//! The mel family's [`Family`]: load a pack, prepare a generation, its denoiser forward over any
//! set of generations (the step loop in `step.rs` drives it: continuous batching), render.
//!
//! Guidance: each state contributes `2 * variations` rows to the batch: its variations conditioned
//! on the negative prompt (the unconditional half), then on the prompt; the guided output is
//! `uncond + scale * (cond - uncond)` with the state's own scale. The numeric controls condition
//! both halves (as Stable Audio duplicates its duration embedding), except those the pack's
//! `defaults.guided_controls` names: the unconditional half leaves them unknown, so guidance
//! steers by them as by the text.
//!
//! Batch invariance: a state's output must not depend on what else is in its forward. Text
//! tokens are padded to a fixed bucket (`TEXT_BUCKET` tokens: `text_bucket`) and masked in
//! cross-attention, so a state's keys are the same whatever the other prompts' lengths (padding
//! to the batch's longest prompt instead changes the attention kernel's blocking and the result
//! by ~1e-7 per step); latents of different lengths are padded at the end and masked as keys in
//! self-attention (rotary positions start at the global token, so padding does not move them).
//! On CPU (tests/pipeline.rs, worker/tests/batching.rs), states with the same latent length and
//! text bucket are bit-identical alone or batched, whatever their steps, guidance scales and
//! variation counts; the engine batches only such states (`BatchShape`). A state padded to a
//! longer latent differs by float reassociation (about 1e-5 on latents of magnitude 8). On CUDA,
//! cuBLAS may pick other kernels for other row counts, so batched audio equals one-by-one audio
//! there to within bf16 rounding, not bit for bit.
//!
//! Text conditioning differs from diffusers' `StableAudioPipeline`, which zeroes padded token
//! states and attends to them unmasked; tutti masks them (the only way to be batch-invariant).
//! The built-in model is trained this way.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};
use tutti_shared::models::ModelFamily;
use tutti_shared::prompt::Controls;

use crate::families::mel::frame_cond::{FrameConditioner, FrameControls};
use crate::families::mel::pack::{GuidedControl, LoadedPack, PackConfig, RenderPack};
use crate::families::mel::varispeed;
use crate::families::{common, text_cond, Family, Render};
use crate::nn::dit::DitInput;
use crate::samplers::{self, SamplerState};
use crate::state::seeded_noise;
pub use crate::state::{BatchShape, DenoiseState, GenerationParams, MAX_VARIATIONS};
use crate::step::{Denoiser, Rows};
use crate::{ModelError, Result};

/// Text tokens are padded to a multiple of this in a forward (see "Batch invariance" above).
/// 32 holds almost every prompt (MiniLM word pieces) at little cross-attention cost.
pub const TEXT_BUCKET: i64 = 32;

/// The token count a state's text is padded to in a forward.
pub fn text_bucket(tokens: i64) -> i64 {
    (tokens.max(1) as u64).div_ceil(TEXT_BUCKET as u64) as i64 * TEXT_BUCKET
}

/// A loaded pack on one device. `Send + Sync`: the modules sit behind a mutex (libtorch tensors are
/// `Send` but not `Sync`), so calls from several threads run one at a time.
pub struct Pipeline {
    config: PackConfig,
    device: Device,
    /// The denoiser's kind (its activation bytes).
    kind: Kind,
    model_id: String,
    pack: Mutex<LoadedPack>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("model", &self.model_id)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Loads a pack with its denoiser in the device's compute kind (`device::compute_kind`).
    pub fn load(pack_dir: &Path, device: Device) -> Result<Self> {
        Self::load_with(pack_dir, device, crate::device::compute_kind(device))
    }

    /// [`Self::load`] with the denoiser in `kind`.
    pub fn load_with(pack_dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::from_config(pack_dir, PackConfig::read(pack_dir)?, device, kind)
    }

    /// Loads the pack at `pack_dir` whose `model.toml` is `config`, its denoiser in `kind`.
    pub fn from_config(
        pack_dir: &Path,
        config: PackConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let pack = LoadedPack::load_config(pack_dir, config, device, kind)?;
        let config = pack.config.clone();
        let model_id = format!("{}@{}", config.model.name, config.model.version);
        Ok(Self {
            config,
            device,
            kind,
            model_id,
            pack: Mutex::new(pack),
        })
    }

    /// The parsed `model.toml`.
    pub fn config(&self) -> &PackConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// `name@version`.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    fn lock(&self) -> MutexGuard<'_, LoadedPack> {
        // A panic inside libtorch leaves no torn state in the modules (inference only).
        self.pack.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances every state by one step with one denoiser forward over all of them (the shared
    /// step loop, [`crate::step::step_batch`]).
    pub fn step_batch(&self, states: &mut [&mut DenoiseState]) -> Result<()> {
        crate::step::step_batch(self, states)
    }

    /// The per-frame controls of each state's rows, padded with zeros to `max_t` frames:
    /// `[rows, max_t, dim]`. Each state's are computed alone (batch-invariant).
    fn frame_states(&self, fc: &FrameConditioner, rows: &[Rows<'_>], max_t: i64) -> Tensor {
        let fps = self.config.model.latent_frames_per_second;
        let dim = fc.config().dim;
        let guided = &self.config.defaults.guided_controls;
        let parts: Vec<Tensor> = rows
            .iter()
            .map(|r| {
                let s = r.state;
                let (n, t) = (r.x.size()[0], s.latent.size()[2]);
                let controls =
                    |c: &Controls| FrameControls::for_request(c, &s.params.prompt, t as usize, fps);
                let asked = controls(&s.params.controls);
                let cond = fc.forward(std::slice::from_ref(&asked), t);
                let mut uncond =
                    controls(&GuidedControl::unconditional(&s.params.controls, guided));
                if guided.contains(&GuidedControl::Instruments) {
                    uncond.instruments = None;
                }
                // Rows: the variations' unconditional half, then the prompt's (always guided).
                let f = if uncond == asked {
                    cond.expand([n, t, dim], false)
                } else {
                    let uncond = fc.forward(&[uncond], t);
                    Tensor::cat(
                        &[
                            uncond.expand([n / 2, t, dim], false),
                            cond.expand([n / 2, t, dim], false),
                        ],
                        0,
                    )
                }
                .to_device(self.device);
                if t < max_t {
                    Tensor::cat(
                        &[
                            f,
                            Tensor::zeros([n, max_t - t, dim], (Kind::Float, self.device)),
                        ],
                        1,
                    )
                } else {
                    f
                }
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Runs steps until `state.step() == to_step`, calling `on_step(steps_done)` after each; a
    /// `Break` stops early. Returns the step reached.
    pub fn denoise(
        &self,
        state: &mut DenoiseState,
        to_step: usize,
        on_step: &mut dyn FnMut(usize) -> ControlFlow<()>,
    ) -> Result<usize> {
        crate::step::denoise(self, state, to_step, on_step)
    }
}

impl Family for Pipeline {
    fn family(&self) -> ModelFamily {
        ModelFamily::Mel
    }

    fn sample_rate(&self) -> u32 {
        self.config.model.sample_rate
    }

    fn channels(&self) -> u16 {
        1
    }

    /// Parameters with the pack's defaults for a prompt.
    fn default_params(&self, prompt: &str, duration_s: f32) -> GenerationParams {
        let d = &self.config.defaults;
        GenerationParams::with_defaults(prompt, duration_s, d.sampler, d.steps, d.guidance_scale)
    }

    /// Checks a request against the pack's limits.
    fn validate(&self, p: &GenerationParams) -> Result<()> {
        let l = &self.config.limits;
        common::check_counts(p, l.max_steps)?;
        let d = p.controls.duration_s;
        if !d.is_finite() || d <= 0.0 || d > l.max_duration_s {
            return Err(ModelError::Input(format!(
                "duration must be in (0, {}] seconds, got {d}",
                l.max_duration_s
            )));
        }
        common::check_guidance(p)
    }

    /// Encodes the guidance pair and draws the initial noise; step 0.
    fn prepare(&self, params: &GenerationParams) -> Result<DenoiseState> {
        self.validate(params)?;
        let mut params = params.clone();
        let d = &self.config.defaults;
        params.controls = d.mode_tonics.resolve(&params.controls, params.seed);
        if let Some((v, rendered)) = varispeed::plan(
            &params.controls,
            &d.mode_tonics,
            d.varispeed_semitones,
            self.config.model.sample_rate,
            self.config.limits.max_duration_s,
        ) {
            (params.controls, params.varispeed) = (rendered, Some(v));
        }
        let params = &params;
        let sampler = samplers::build(params.sampler, &self.config.schedule, params.steps)?;
        let pack = self.lock();
        let _guard = tch::no_grad_guard();
        let text = pack
            .text_encoder
            .encode(&[&params.negative_prompt, &params.prompt])?;
        let uncond =
            GuidedControl::unconditional(&params.controls, &self.config.defaults.guided_controls);
        let numeric = pack
            .conditioners
            .embed(&[uncond, params.controls], self.device);
        let global_cond = Tensor::cat(&[&text.pooled, &numeric], 1);
        let frames = self.config.latent_frames(params.controls.duration_s);
        let channels = self.config.model.latent_channels;
        let noise: Vec<Tensor> = (0..params.variations as u64)
            .map(|i| seeded_noise(params.seed.wrapping_add(i), &[1, channels, frames]))
            .collect();
        let latent = (Tensor::cat(&noise, 0) * sampler.init_noise_sigma()).to_device(self.device);
        Ok(DenoiseState {
            params: params.clone(),
            step: 0,
            model: self.model_id.clone(),
            schedule: self.config.schedule.clone(),
            sampler,
            latent,
            cond: text_cond::named(text.token_states, text.mask, global_cond),
            sampler_state: SamplerState::default(),
            noise_ahead: None,
        })
    }

    /// The shape a state is batched by (see [`BatchShape`]).
    fn batch_shape(&self, state: &DenoiseState) -> BatchShape {
        BatchShape {
            frames: state.latent.size()[2],
            text_tokens: text_bucket(text_cond::tokens(state)),
        }
    }

    /// Its `2 * variations` rows through the DiT ([`DitConfig::activation_bytes`]), the text
    /// padded to its bucket.
    ///
    /// [`DitConfig::activation_bytes`]: crate::nn::dit::DitConfig::activation_bytes
    fn forward_bytes(&self, state: &DenoiseState) -> usize {
        self.config.denoiser.activation_bytes(
            2 * state.params.variations as i64,
            state.latent.size()[2],
            text_bucket(text_cond::tokens(state)),
            self.kind.elt_size_in_bytes(),
        )
    }

    /// Decodes and vocodes: one mono waveform per variation, exactly `duration * sample_rate`
    /// samples, non-finite samples zeroed, otherwise unscaled (the worker's gain stage sets levels).
    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>> {
        render_with(&self.config, self.device, &self.model_id, state, |raw| {
            let pack = self.lock();
            let log_mel = pack.decoder.decode(raw)?;
            pack.vocoder.vocode(&log_mel)
        })
    }
}

/// The mel family's forward: every state guided (its negative prompt's rows, then its
/// prompt's), latents padded to the longest and masked as keys, text padded to the largest
/// bucket and masked, per-frame controls when the pack has them (see "Batch invariance").
impl Denoiser for Pipeline {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn device(&self) -> Device {
        self.device
    }

    fn guided(&self, _: &GenerationParams) -> bool {
        true
    }

    fn forward(&self, rows: &[Rows<'_>]) -> Result<Tensor> {
        let dev = self.device;
        let max_t = rows.iter().map(|r| r.x.size()[2]).max().unwrap_or(1);
        let max_l = rows
            .iter()
            .map(|r| text_bucket(text_cond::tokens(r.state)))
            .max()
            .unwrap_or(TEXT_BUCKET);
        let ragged = rows.iter().any(|r| r.x.size()[2] != max_t);
        let (mut xs, mut ts, mut texts, mut tmasks, mut globals, mut fmasks) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for r in rows {
            let cond = text_cond::get(r.state)?;
            let (n, c, t) = (r.x.size()[0], r.x.size()[1], r.x.size()[2]);
            xs.push(if t < max_t {
                Tensor::cat(
                    &[&r.x, &Tensor::zeros([n, c, max_t - t], (Kind::Float, dev))],
                    2,
                )
            } else {
                r.x.shallow_clone()
            });
            if ragged {
                let m = Tensor::cat(
                    &[
                        Tensor::ones([n, t], (Kind::Bool, dev)),
                        Tensor::zeros([n, max_t - t], (Kind::Bool, dev)),
                    ],
                    1,
                );
                fmasks.push(m);
            }
            ts.push(r.timestep.shallow_clone());
            let (l, d) = (cond.states.size()[1], cond.states.size()[2]);
            let text = r.select_cond(&cond.states.to_device(dev));
            let mask = r.select_cond(&cond.mask.to_device(dev));
            texts.push(if l < max_l {
                Tensor::cat(
                    &[text, Tensor::zeros([n, max_l - l, d], (Kind::Float, dev))],
                    1,
                )
            } else {
                text
            });
            tmasks.push(if l < max_l {
                Tensor::cat(
                    &[mask, Tensor::zeros([n, max_l - l], (Kind::Float, dev))],
                    1,
                )
            } else {
                mask
            });
            globals.push(r.select_cond(&cond.global.to_device(dev)));
        }
        let hidden = Tensor::cat(&xs, 0);
        let timestep = Tensor::cat(&ts, 0);
        let text = Tensor::cat(&texts, 0);
        let text_mask = Tensor::cat(&tmasks, 0).to_kind(Kind::Bool);
        let global = Tensor::cat(&globals, 0);
        let frame_mask = ragged.then(|| Tensor::cat(&fmasks, 0));
        let pack = self.lock();
        let frame_states = pack
            .frames
            .as_ref()
            .map(|fc| self.frame_states(fc, rows, max_t));
        let rotary = pack.denoiser.rotary(max_t, dev);
        Ok(pack.denoiser.forward(&DitInput {
            hidden_states: &hidden,
            timestep: &timestep,
            encoder_hidden_states: &text,
            global_hidden_states: &global.unsqueeze(1),
            rotary: &rotary,
            attention_mask: frame_mask.as_ref(),
            encoder_attention_mask: Some(&text_mask),
            frame_states: frame_states.as_ref(),
        }))
    }
}

/// A pack's decoder and vocoder alone, for a thread that only renders (the worker's
/// background vocoder): no text encoder or denoiser to load.
pub struct Renderer {
    config: PackConfig,
    device: Device,
    model_id: String,
    pack: RenderPack,
}

impl Renderer {
    pub fn load(pack_dir: &Path, device: Device) -> Result<Self> {
        Self::from_config(pack_dir, PackConfig::read(pack_dir)?, device)
    }

    /// The decoder and vocoder of the pack at `pack_dir` whose `model.toml` is `config`.
    pub fn from_config(pack_dir: &Path, config: PackConfig, device: Device) -> Result<Self> {
        let pack = RenderPack::load_parts(pack_dir, &config, device)?;
        let model_id = format!("{}@{}", config.model.name, config.model.version);
        Ok(Self {
            config,
            device,
            model_id,
            pack,
        })
    }

    pub fn config(&self) -> &PackConfig {
        &self.config
    }
}

impl Render for Renderer {
    fn sample_rate(&self) -> u32 {
        self.config.model.sample_rate
    }

    fn channels(&self) -> u16 {
        1
    }

    /// As [`Pipeline::render`], bit for bit.
    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>> {
        render_with(&self.config, self.device, &self.model_id, state, |raw| {
            let log_mel = self.pack.decoder.decode(raw)?;
            self.pack.vocoder.vocode(&log_mel)
        })
    }
}

/// Decodes and vocodes `state` with `decode_vocode` (latent -> waveforms) and post-processes
/// the waveforms.
fn render_with(
    config: &PackConfig,
    device: Device,
    model_id: &str,
    state: &DenoiseState,
    decode_vocode: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Vec<f32>>> {
    common::check_model(state, model_id)?;
    let m = &config.model;
    let _guard = tch::no_grad_guard();
    let raw = state.latent.to_device(device) / m.latent_scale + m.latent_shift;
    let wave = decode_vocode(&raw)?;
    let frames = config.samples(state.params.controls.duration_s) as i64;
    let clips = common::finish_clips(&wave.unsqueeze(1), frames, "vocoder")?;
    match state.params.varispeed {
        None => Ok(clips),
        Some(v) => clips
            .iter()
            .map(|c| v.play(c, m.sample_rate, config.samples(v.duration_s)))
            .collect(),
    }
}
