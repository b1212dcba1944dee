//! ACE-Step 1.5 (songs with lyrics, stereo 48 kHz, up to ten minutes), natively in tch from a
//! diffusers folder: the Qwen3 text encoder (`text::qwen3`), the condition encoder that packs
//! text, lyrics and timbre into one sequence, the DiT, and the Oobleck VAE decoder
//! (`decoders::oobleck`). The parity reference is diffusers 0.42.1's `AceStepPipeline`
//! (`scripts/fixtures/ace_step_tiny.py`, `tests/parity_ace_step.rs`).

pub mod condition;
pub mod config;
pub mod dit;
mod folder;
pub mod guidance;
mod layers;
pub mod pack;
pub use tutti_shared::song as prompt;
pub mod serve;

pub use condition::{ConditionEncoder, ConditionInputs};
pub use config::{ConditionConfig, DitConfig, LayerKind};
pub use dit::Dit;

use tch::Device;
use tutti_shared::models::ModelInfo;

use super::{Family, Loader, Render};
use crate::device::Precision;
use crate::Result;

/// Loads ACE-Step packs: the DiT and the VAE in their kinds of `precision`, the encoders in the
/// DiT's (f32 where that is f16).
pub struct AceStepLoader;

impl Loader for AceStepLoader {
    fn load(
        &self,
        info: &ModelInfo,
        device: Device,
        precision: Precision,
    ) -> Result<Box<dyn Family>> {
        Ok(Box::new(serve::AceStep::load(
            &info.toml,
            &info.dir,
            device,
            precision.kinds(device),
        )?))
    }

    fn load_renderer(
        &self,
        info: &ModelInfo,
        device: Device,
        precision: Precision,
    ) -> Result<Box<dyn Render>> {
        Ok(Box::new(serve::AceStepRenderer::load(
            &info.toml,
            &info.dir,
            device,
            precision.kinds(device).vae,
        )?))
    }

    fn inspect(&self, info: &ModelInfo) -> Result<String> {
        let (pack, cfg) = pack::AceStepPack::from_table(&info.toml, &info.dir)?;
        Ok(format!(
            "{} (ace_step family{}): DiT {} wide, {} layers; condition encoder {} wide; \
             text encoder {} wide, {} layers; VAE {} Hz, {} channels, {} latent frames/s; \
             default {} steps, guidance {}, shift {}",
            pack.model_id(),
            if pack.ace_step.turbo { ", turbo" } else { "" },
            cfg.dit.stack.hidden,
            cfg.dit.layers.len(),
            cfg.condition.stack.hidden,
            cfg.text.hidden_size,
            cfg.text.num_hidden_layers,
            cfg.vae.sampling_rate,
            cfg.vae.audio_channels,
            cfg.latents_per_second(),
            pack.defaults.steps,
            pack.defaults.guidance_scale,
            pack.ace_step.shift,
        ))
    }
}
