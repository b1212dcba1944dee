//! Vocoders: log-mel spectrogram -> waveform.

mod griffin_lim;
mod hifigan;
mod vocos;

pub use griffin_lim::{GriffinLim, GriffinLimConfig};
pub use hifigan::{HifiGan, HifiGanConfig};
pub use vocos::{Vocos, VocosConfig};

use crate::decoders::mel::MelConfig;
use crate::{ModelError, Result};
use tch::{nn, Tensor};

/// Turns a log-mel spectrogram `[batch, n_mels, frames]` (natural-log magnitude, the front end of
/// [`crate::decoders::mel`]) into a waveform `[batch, samples]`.
pub trait Vocoder: Send + Sync {
    fn vocode(&self, log_mel: &Tensor) -> crate::Result<Tensor>;
}

/// The vocoder a pack declares (`[vocoder]` in `model.toml`, tagged by `kind`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VocoderConfig {
    /// No weights: fast Griffin-Lim phase reconstruction.
    GriffinLim(GriffinLimConfig),
    /// Vocos (ConvNeXt backbone, iSTFT head); checkpoint keys `backbone.*`, `head.*`.
    Vocos(VocosConfig),
    /// HiFi-GAN with transformers' `SpeechT5HifiGan` layout and keys.
    Hifigan(HifiGanConfig),
}

impl Default for VocoderConfig {
    fn default() -> Self {
        Self::GriffinLim(GriffinLimConfig::default())
    }
}

/// Builds the vocoder; its weights (if any) are variables under `vs_path`, which the caller loads
/// from the pack's vocoder safetensors. The vocoder runs on `vs_path`'s device.
pub fn build(cfg: &VocoderConfig, mel: &MelConfig, vs_path: nn::Path) -> Result<Box<dyn Vocoder>> {
    Ok(match cfg {
        VocoderConfig::GriffinLim(c) => Box::new(GriffinLim::new(c, mel, vs_path.device())?),
        VocoderConfig::Vocos(c) => Box::new(Vocos::new(&vs_path, c, mel)?),
        VocoderConfig::Hifigan(c) => Box::new(HifiGan::new(&vs_path, c, mel)?),
    })
}

/// Checks a log-mel input `[batch, n_mels, frames]`.
fn check_log_mel(log_mel: &Tensor, n_mels: usize) -> Result<()> {
    if log_mel.dim() != 3 || log_mel.size()[1] != n_mels as i64 || log_mel.size()[2] < 1 {
        return Err(ModelError::Input(format!(
            "vocoder expects a log-mel [batch, {n_mels}, frames], got {:?}",
            log_mel.size()
        )));
    }
    Ok(())
}

/// libtorch tensors are `Send` but not `Sync`: vocoders keep their modules behind a mutex (one
/// vocode call at a time per model).
fn lock<T>(m: &std::sync::Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| ModelError::Input("vocoder poisoned by an earlier panic".into()))
}
