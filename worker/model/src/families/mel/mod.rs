//! The mel family (tutti-mini and the packs `tutti train` makes): MiniLM text, numeric and
//! per-frame conditioners, a DiT over a mel-shaped latent, a decoder to log-mel and a vocoder.

pub mod conditioners;
pub mod frame_cond;
pub mod pack;
pub mod pipeline;
pub mod tiny;
pub mod varispeed;

use tch::Device;
use tutti_shared::models::ModelInfo;

use super::{Family, Loader, Render};
use crate::device::Precision;
use crate::Result;
use pack::PackConfig;
use pipeline::{Pipeline, Renderer};

/// Loads mel packs: the denoiser in `precision`, the decoder and vocoder in f32 whatever it
/// says (only the denoiser has a kind).
pub struct MelLoader;

impl Loader for MelLoader {
    fn load(
        &self,
        info: &ModelInfo,
        device: Device,
        precision: Precision,
    ) -> Result<Box<dyn Family>> {
        let config = PackConfig::from_table(&info.toml, &info.dir)?;
        let kind = precision.kind(device);
        Ok(Box::new(Pipeline::from_config(
            &info.dir, config, device, kind,
        )?))
    }

    fn load_renderer(
        &self,
        info: &ModelInfo,
        device: Device,
        _precision: Precision,
    ) -> Result<Box<dyn Render>> {
        let config = PackConfig::from_table(&info.toml, &info.dir)?;
        Ok(Box::new(Renderer::from_config(&info.dir, config, device)?))
    }

    fn inspect(&self, info: &ModelInfo) -> Result<String> {
        pack::inspect(&info.dir)
    }
}
