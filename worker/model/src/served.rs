//! The packs the farm serves, whatever their family: the mel [`Pipeline`] (tutti-mini: latent
//! -> log-mel -> vocoder, mono) or a [`StableAudioPipeline`] (T5, seconds conditioning, DiT,
//! Oobleck VAE straight to stereo). Both make and step the same [`DenoiseState`], so the worker's
//! engine, held latents and checkpoints do not know which one they drive; they differ in how a
//! state is conditioned, how much a forward costs and how the final stage renders it.

use std::path::Path;

use tch::Device;

use crate::device::Precision;
use crate::families::mel::pipeline::{Pipeline, Renderer};
use crate::families::stable_audio::model::is_stable_audio_pack;
use crate::families::stable_audio::serve::{StableAudioPipeline, StableAudioRenderer};
use crate::state::BatchShape;
use crate::state::{DenoiseState, GenerationParams};
use crate::Result;

/// Rendered clips of one job: one per variation, `channels` interleaved frame by frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub waveforms: Vec<Vec<f32>>,
    pub channels: u16,
    pub sample_rate: u32,
}

/// A loaded pack of either family.
// Both variants are a few KB of configs; there is one per loaded pack and it never moves in a
// hot path, so boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ServedModel {
    Mel(Pipeline),
    StableAudio(StableAudioPipeline),
}

impl ServedModel {
    /// Loads the pack at `dir` by the family its `model.toml` names (none: mel), its networks in
    /// `precision` (see [`Precision::kinds`]).
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self> {
        Ok(if is_stable_audio_pack(dir) {
            Self::StableAudio(StableAudioPipeline::load(
                dir,
                device,
                precision.kinds(device),
            )?)
        } else {
            Self::Mel(Pipeline::load_with(dir, device, precision.kind(device))?)
        })
    }

    /// `mel` or `stable_audio` (as `model.toml` spells it).
    pub fn family(&self) -> &'static str {
        match self {
            Self::Mel(_) => "mel",
            Self::StableAudio(_) => crate::families::stable_audio::model::FAMILY,
        }
    }

    pub fn model_id(&self) -> &str {
        match self {
            Self::Mel(p) => p.model_id(),
            Self::StableAudio(p) => p.model_id(),
        }
    }

    pub fn sample_rate(&self) -> u32 {
        match self {
            Self::Mel(p) => p.config().model.sample_rate,
            Self::StableAudio(p) => p.config().vae.sampling_rate as u32,
        }
    }

    pub fn channels(&self) -> u16 {
        match self {
            Self::Mel(_) => 1,
            Self::StableAudio(p) => p.config().vae.audio_channels as u16,
        }
    }

    pub fn default_params(&self, prompt: &str, duration_s: f32) -> GenerationParams {
        match self {
            Self::Mel(p) => p.default_params(prompt, duration_s),
            Self::StableAudio(p) => p.default_params(prompt, duration_s),
        }
    }

    pub fn validate(&self, params: &GenerationParams) -> Result<()> {
        match self {
            Self::Mel(p) => p.validate(params),
            Self::StableAudio(p) => p.validate(params),
        }
    }

    pub fn prepare(&self, params: &GenerationParams) -> Result<DenoiseState> {
        match self {
            Self::Mel(p) => p.prepare(params),
            Self::StableAudio(p) => p.prepare(params),
        }
    }

    /// Audio-to-audio (see `StableAudioPipeline::prepare_from_audio`): `audio` is `[channels,
    /// samples]` at the pack's rate. A mel pack has no audio encoder: an input error.
    pub fn prepare_from_audio(
        &self,
        params: &GenerationParams,
        audio: &tch::Tensor,
        strength: f64,
    ) -> Result<DenoiseState> {
        match self {
            Self::Mel(p) => Err(crate::ModelError::Input(format!(
                "model {} (mel family) has no audio encoder; init audio needs a waveform-VAE model",
                p.model_id()
            ))),
            Self::StableAudio(p) => p.prepare_from_audio(params, audio, strength),
        }
    }

    /// [`Self::prepare_from_audio`] from a decoded WAV (channels interleaved).
    pub fn prepare_from_pcm(
        &self,
        params: &GenerationParams,
        pcm: &tutti_shared::audio::Pcm,
        strength: f64,
    ) -> Result<DenoiseState> {
        let ch = i64::from(pcm.channels.max(1));
        let frames = pcm.frames() as i64;
        let audio = tch::Tensor::from_slice(&pcm.samples[..(frames * ch) as usize])
            .view([frames, ch])
            .transpose(0, 1)
            .contiguous();
        self.prepare_from_audio(params, &audio, strength)
    }

    pub fn batch_shape(&self, state: &DenoiseState) -> BatchShape {
        match self {
            Self::Mel(p) => p.batch_shape(state),
            Self::StableAudio(p) => p.batch_shape(state),
        }
    }

    /// The family's estimate of one state's activation memory in a forward.
    pub fn forward_bytes(&self, state: &DenoiseState) -> usize {
        match self {
            Self::Mel(p) => p.forward_bytes(state),
            Self::StableAudio(p) => p.forward_bytes(state),
        }
    }

    pub fn step_batch(&self, states: &mut [&mut DenoiseState]) -> Result<()> {
        match self {
            Self::Mel(p) => p.step_batch(states),
            Self::StableAudio(p) => p.step_batch(states),
        }
    }

    /// The final stage: decode (and vocode, for the mel family) a finished state.
    pub fn render(&self, state: &DenoiseState) -> Result<Audio> {
        let waveforms = match self {
            Self::Mel(p) => p.render(state)?,
            Self::StableAudio(p) => p.render(state)?,
        };
        Ok(Audio {
            waveforms,
            channels: self.channels(),
            sample_rate: self.sample_rate(),
        })
    }
}

/// A pack's final stage alone, for a thread that only renders.
pub enum ServedRenderer {
    Mel(Renderer),
    StableAudio(StableAudioRenderer),
}

impl ServedRenderer {
    /// The final stage of the pack at `dir`; the mel family's decoder and vocoder run in f32
    /// whatever `precision` says (only its denoiser has a kind), Stable Audio's VAE in its kind.
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self> {
        Ok(if is_stable_audio_pack(dir) {
            Self::StableAudio(StableAudioRenderer::load(
                dir,
                device,
                precision.kinds(device).vae,
            )?)
        } else {
            Self::Mel(Renderer::load(dir, device)?)
        })
    }

    /// As [`ServedModel::render`], bit for bit.
    pub fn render(&self, state: &DenoiseState) -> Result<Audio> {
        Ok(match self {
            Self::Mel(r) => Audio {
                waveforms: r.render(state)?,
                channels: 1,
                sample_rate: r.config().model.sample_rate,
            },
            Self::StableAudio(r) => Audio {
                waveforms: r.render(state)?,
                channels: r.config().vae.audio_channels as u16,
                sample_rate: r.config().vae.sampling_rate as u32,
            },
        })
    }
}
