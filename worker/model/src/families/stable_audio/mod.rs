//! The Stable Audio family (Stable Audio Open 1.0 and Small): T5 text, seconds conditioning,
//! a DiT over the Oobleck VAE's latent, stereo audio.

pub mod layout;
pub mod model;
pub mod pack;
pub mod projection;
pub mod run;
pub mod sat;
pub mod serve;
pub mod tiny;

use tch::Device;
use tutti_shared::models::ModelInfo;

use super::{Family, Loader, Render};
use crate::device::Precision;
use crate::Result;
use model::{load_vae_pack, StableAudioModel};
use pack::StableAudioPack;
use serve::{StableAudioPipeline, StableAudioRenderer};

/// Loads Stable Audio packs: the DiT and projection, and the VAE, each in its kind of
/// `precision` (see [`Precision::kinds`]); the T5 in f32.
pub struct StableAudioLoader;

impl Loader for StableAudioLoader {
    fn load(
        &self,
        info: &ModelInfo,
        device: Device,
        precision: Precision,
    ) -> Result<Box<dyn Family>> {
        let pack = StableAudioPack::from_table(&info.toml, &info.dir)?;
        let kinds = precision.kinds(device);
        let model = StableAudioModel::load_pack(&info.dir, pack, device, kinds, true)?;
        Ok(Box::new(StableAudioPipeline::from_model(model, kinds)))
    }

    fn load_renderer(
        &self,
        info: &ModelInfo,
        device: Device,
        precision: Precision,
    ) -> Result<Box<dyn Render>> {
        let pack = StableAudioPack::from_table(&info.toml, &info.dir)?;
        let kind = precision.kinds(device).vae;
        let vae = load_vae_pack(&info.dir, pack, device, kind)?;
        Ok(Box::new(StableAudioRenderer::from_vae(vae, device, kind)))
    }

    fn inspect(&self, info: &ModelInfo) -> Result<String> {
        model::inspect(&info.dir)
    }
}
