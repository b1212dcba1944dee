//! Model families, one folder each. A family composes the shared parts (`nn`, `text`,
//! `samplers`, `decoders`) into an implementation of [`Family`]: how a request is validated and
//! conditioned into a [`DenoiseState`], what one forward over many states is (the
//! [`Denoiser`] half, which the one step loop in `step.rs` drives), what a state costs, and how
//! a finished state becomes audio. [`ModelFamily`] (the `family` of `model.toml`, read once by the
//! farm's registry) is the only key: [`loader`] is the one place that matches on it.
//!
//! Adding a family: a folder here with its parts, its `Family` and `Render` implementations and
//! a [`Loader`], one line in [`loader`], and its variant of [`ModelFamily`].

pub mod ace_step;
mod common;
pub mod mel;
pub mod stable_audio;
mod text_cond;

use std::path::Path;

use tch::{Device, Tensor};
use tutti_shared::models::{ModelFamily, ModelInfo};

use crate::device::Precision;
use crate::state::{BatchShape, DenoiseState, GenerationParams};
use crate::step::Denoiser;
use crate::{ModelError, Result};

/// A loaded pack of one family, as the farm drives it. `Send + Sync`: calls from several threads
/// run one at a time inside (libtorch modules sit behind a mutex).
pub trait Family: Denoiser + Send + Sync + std::fmt::Debug {
    fn family(&self) -> ModelFamily;
    /// Output rate and channels (1: mono, 2: interleaved stereo).
    fn sample_rate(&self) -> u32;
    fn channels(&self) -> u16;
    /// Parameters with the pack's defaults for a prompt.
    fn default_params(&self, prompt: &str, duration_s: f32) -> GenerationParams;
    /// Checks a request against the pack's limits.
    fn validate(&self, p: &GenerationParams) -> Result<()>;
    /// Conditions a request and draws its initial noise: step 0.
    fn prepare(&self, p: &GenerationParams) -> Result<DenoiseState>;
    /// Audio-to-audio: as [`Family::prepare`], the latent starting from `audio` (`[channels,
    /// samples]` f32 at the pack's rate) noised to `strength` in (0, 1]. A family without an
    /// audio encoder refuses it.
    fn prepare_from_audio(
        &self,
        _p: &GenerationParams,
        _audio: &Tensor,
        _strength: f64,
    ) -> Result<DenoiseState> {
        Err(ModelError::Input(format!(
            "model {} ({} family) has no audio encoder; init audio needs a waveform-VAE model",
            self.model_id(),
            self.family().as_str()
        )))
    }
    /// What states must share to be stepped in one forward (the engine batches by it).
    fn batch_shape(&self, state: &DenoiseState) -> BatchShape;
    /// An upper estimate of the activation memory one state adds to a forward, in bytes.
    fn forward_bytes(&self, state: &DenoiseState) -> usize;
    /// The final stage: one clip per variation, channels interleaved, the asked duration.
    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>>;
}

/// A pack's final stage alone, for a thread that only renders (bit for bit as
/// [`Family::render`]).
pub trait Render {
    fn sample_rate(&self) -> u32;
    fn channels(&self) -> u16;
    fn render(&self, state: &DenoiseState) -> Result<Vec<Vec<f32>>>;
}

/// How a family loads from its pack folder, given the header the registry read.
pub trait Loader: Sync {
    /// Every network of the pack, in `precision` where the family allows it.
    fn load(
        &self,
        info: &ModelInfo,
        device: Device,
        precision: Precision,
    ) -> Result<Box<dyn Family>>;
    /// The final stage only.
    fn load_renderer(
        &self,
        info: &ModelInfo,
        device: Device,
        precision: Precision,
    ) -> Result<Box<dyn Render>>;
    /// What `tutti model inspect` prints.
    fn inspect(&self, info: &ModelInfo) -> Result<String>;
}

/// The factory: the family's loader. The only `match` on the family in the runtime.
pub fn loader(family: ModelFamily) -> &'static dyn Loader {
    match family {
        ModelFamily::Mel => &mel::MelLoader,
        ModelFamily::StableAudio => &stable_audio::StableAudioLoader,
        ModelFamily::AceStep => &ace_step::AceStepLoader,
    }
}

/// The header of the pack at `dir` (its `model.toml`, parsed once).
pub fn read_info(dir: &Path) -> Result<ModelInfo> {
    ModelInfo::read(dir).map_err(|e| ModelError::Pack {
        path: dir.display().to_string(),
        message: e.to_string(),
    })
}

/// Loads the pack `info` describes.
pub fn load(info: &ModelInfo, device: Device, precision: Precision) -> Result<Box<dyn Family>> {
    loader(info.family).load(info, device, precision)
}

/// Loads the final stage of the pack `info` describes.
pub fn load_renderer(
    info: &ModelInfo,
    device: Device,
    precision: Precision,
) -> Result<Box<dyn Render>> {
    loader(info.family).load_renderer(info, device, precision)
}

/// A human-readable summary of the pack at `path`, by its family.
pub fn inspect(path: &Path) -> Result<String> {
    let info = read_info(path)?;
    loader(info.family).inspect(&info)
}
