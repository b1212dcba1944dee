//! The `model.toml` of a Stable Audio pack: its family, the published folder's layout, the audio
//! it makes, and what a request gets by default and may ask for. The farm's model registry
//! (`tutti_shared::models`) reads the same file, so the coordinator validates requests for the
//! family (samplers, duration window) before a worker sees them.

use serde::{Deserialize, Serialize};

use crate::decoders::oobleck::OobleckConfig;
use crate::samplers::SamplerKind;

/// `family` of a Stable Audio pack's `model.toml`.
pub const FAMILY: &str = "stable_audio";
pub(crate) const CONFIG_FILE: &str = "model.toml";

/// How the published folder is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// diffusers' `StableAudioPipeline` folder (SAO 1.0).
    Diffusers,
    /// stable-audio-tools' `model_config.json` + `model.safetensors` (SAO Small).
    StableAudioTools,
}

/// `[model]` of a Stable Audio pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub layout: Layout,
    /// The VAE's rate and channels (copied from its config at import, for the farm's registry).
    pub sample_rate: u32,
    pub channels: u16,
}

/// `[defaults]`: what a request that names nothing gets (the model's own sampler and settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    pub sampler: SamplerKind,
    pub steps: usize,
    /// Classifier-free guidance; 1 or less means none (diffusers' rule).
    pub guidance_scale: f64,
    /// Denoise steps per farm task.
    pub chunk_steps: usize,
    pub duration_s: f64,
}

/// `[limits]`: what a request may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_steps: usize,
    /// The model's latent window in seconds (rounded down to 10 ms).
    pub max_duration_s: f64,
    /// The samplers its schedule runs.
    pub samplers: Vec<SamplerKind>,
}

/// A parsed Stable Audio `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StableAudioPack {
    pub family: String,
    pub model: ModelInfo,
    pub defaults: Defaults,
    pub limits: Limits,
}

/// Most steps a request may ask for (SAO 1.0's card uses 100, some users 250).
const MAX_STEPS: usize = 500;

impl StableAudioPack {
    /// `name@version`.
    pub fn model_id(&self) -> String {
        format!("{}@{}", self.model.name, self.model.version)
    }

    /// The pack `tutti model import` writes for a folder of `layout` whose VAE is `vae` and
    /// whose latent window holds `window_s` seconds: SAO 1.0
    /// runs diffusers' cosine DPM-Solver++ 2M SDE, 100 steps, guidance 7; Small the ping-pong
    /// sampler, 8 steps, no guidance (stable-audio-tools' defaults for it).
    pub fn for_layout(
        layout: Layout,
        vae: &OobleckConfig,
        window_s: f64,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Self {
        let window = (window_s * 100.0).floor() / 100.0;
        let (default_name, sampler, steps, guidance_scale, chunk_steps, samplers) = match layout {
            Layout::Diffusers => (
                "stable-audio-open-1.0",
                SamplerKind::CosineDpmSolverPp2mSde,
                100,
                7.0,
                10,
                vec![
                    SamplerKind::CosineDpmSolverPp2mSde,
                    SamplerKind::CosineDpmSolverPp2m,
                ],
            ),
            Layout::StableAudioTools => (
                "stable-audio-open-small",
                SamplerKind::PingPong,
                8,
                1.0,
                4,
                vec![SamplerKind::PingPong],
            ),
        };
        StableAudioPack {
            family: FAMILY.into(),
            model: ModelInfo {
                name: name.unwrap_or(default_name).to_string(),
                version: version.unwrap_or("1.0").to_string(),
                layout,
                sample_rate: vae.sampling_rate as u32,
                channels: vae.audio_channels as u16,
            },
            defaults: Defaults {
                sampler,
                steps,
                guidance_scale,
                chunk_steps,
                duration_s: window.min(10.0),
            },
            limits: Limits {
                max_steps: MAX_STEPS,
                max_duration_s: window,
                samplers,
            },
        }
    }
}
