//! Vocoders: log-mel spectrogram -> waveform.

use tch::Tensor;

/// Turns a log-mel spectrogram `[batch, n_mels, frames]` (natural-log magnitude, the front end of
/// [`crate::model::mel`]) into a waveform `[batch, samples]`.
pub trait Vocoder: Send + Sync {
    fn vocode(&self, log_mel: &Tensor) -> super::Result<Tensor>;
}
