//! The packs the farm serves, whatever their family: a [`Family`] chosen once by the factory
//! ([`crate::families::loader`]) from the `family` the registry read, never sniffed again. Every
//! family makes and steps the same [`DenoiseState`] through the one step loop, so the worker's
//! engine, held latents and checkpoints do not know which one they drive.

use std::path::Path;

use tch::Device;
use tutti_shared::models::ModelInfo;

use crate::device::Precision;
use crate::families::{self, Family, Render};
use crate::state::{BatchShape, DenoiseState, GenerationParams};
use crate::Result;

/// Rendered clips of one job: one per variation, `channels` interleaved frame by frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub waveforms: Vec<Vec<f32>>,
    pub channels: u16,
    pub sample_rate: u32,
}

/// A loaded pack of any family.
#[derive(Debug)]
pub struct ServedModel {
    family: Box<dyn Family>,
}

impl ServedModel {
    /// Loads the pack `info` describes (the registry's header: its family and folder), its
    /// networks in `precision` (see [`Precision::kinds`]).
    pub fn open(info: &ModelInfo, device: Device, precision: Precision) -> Result<Self> {
        Ok(Self {
            family: families::load(info, device, precision)?,
        })
    }

    /// [`Self::open`] for the pack at `dir`, reading its header.
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self> {
        Self::open(&families::read_info(dir)?, device, precision)
    }

    /// The family's runtime.
    pub fn get(&self) -> &dyn Family {
        self.family.as_ref()
    }

    /// `mel` or `stable_audio` (as `model.toml` spells it).
    pub fn family(&self) -> &'static str {
        self.family.family().as_str()
    }

    pub fn model_id(&self) -> &str {
        self.family.model_id()
    }

    pub fn sample_rate(&self) -> u32 {
        self.family.sample_rate()
    }

    pub fn channels(&self) -> u16 {
        self.family.channels()
    }

    pub fn default_params(&self, prompt: &str, duration_s: f32) -> GenerationParams {
        self.family.default_params(prompt, duration_s)
    }

    pub fn validate(&self, params: &GenerationParams) -> Result<()> {
        self.family.validate(params)
    }

    pub fn prepare(&self, params: &GenerationParams) -> Result<DenoiseState> {
        self.family.prepare(params)
    }

    /// Audio-to-audio (see [`Family::prepare_from_audio`]): `audio` is `[channels, samples]` at
    /// the pack's rate.
    pub fn prepare_from_audio(
        &self,
        params: &GenerationParams,
        audio: &tch::Tensor,
        strength: f64,
    ) -> Result<DenoiseState> {
        self.family.prepare_from_audio(params, audio, strength)
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
        self.family.batch_shape(state)
    }

    /// The family's estimate of one state's activation memory in a forward.
    pub fn forward_bytes(&self, state: &DenoiseState) -> usize {
        self.family.forward_bytes(state)
    }

    /// Advances every state by one step in one forward (the one step loop).
    pub fn step_batch(&self, states: &mut [&mut DenoiseState]) -> Result<()> {
        crate::step::step_batch(self.family.as_ref(), states)
    }

    /// The final stage: decode (and vocode, for the mel family) a finished state.
    pub fn render(&self, state: &DenoiseState) -> Result<Audio> {
        Ok(Audio {
            waveforms: self.family.render(state)?,
            channels: self.channels(),
            sample_rate: self.sample_rate(),
        })
    }
}

/// A pack's final stage alone, for a thread that only renders.
pub struct ServedRenderer {
    render: Box<dyn Render>,
}

impl ServedRenderer {
    /// The final stage of the pack `info` describes, in the kinds its family takes from
    /// `precision` (the mel family's decoder and vocoder always run in f32).
    pub fn open(info: &ModelInfo, device: Device, precision: Precision) -> Result<Self> {
        Ok(Self {
            render: families::load_renderer(info, device, precision)?,
        })
    }

    /// [`Self::open`] for the pack at `dir`, reading its header.
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self> {
        Self::open(&families::read_info(dir)?, device, precision)
    }

    /// As [`ServedModel::render`], bit for bit.
    pub fn render(&self, state: &DenoiseState) -> Result<Audio> {
        Ok(Audio {
            waveforms: self.render.render(state)?,
            channels: self.render.channels(),
            sample_rate: self.render.sample_rate(),
        })
    }
}
