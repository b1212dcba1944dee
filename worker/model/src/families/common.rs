//! What every family does alike around its own parts: the request checks that do not depend on
//! the model, and the finishing of decoded clips.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::decoders::oobleck::{Oobleck, DECODE_CHUNK_FRAMES};

use crate::state::{DenoiseState, GenerationParams, MAX_VARIATIONS};
use crate::{ModelError, Result};

fn bad(m: String) -> ModelError {
    ModelError::Input(m)
}

/// Steps within the pack's limit and a variation count within [`MAX_VARIATIONS`].
pub(crate) fn check_counts(p: &GenerationParams, max_steps: usize) -> Result<()> {
    if p.steps == 0 || p.steps > max_steps {
        return Err(bad(format!(
            "steps must be in 1..={max_steps}, got {}",
            p.steps
        )));
    }
    if p.variations == 0 || p.variations > MAX_VARIATIONS {
        return Err(bad(format!(
            "variations must be in 1..={MAX_VARIATIONS}, got {}",
            p.variations
        )));
    }
    Ok(())
}

/// A finite, non-negative guidance scale.
pub(crate) fn check_guidance(p: &GenerationParams) -> Result<()> {
    if !p.guidance_scale.is_finite() || p.guidance_scale < 0.0 {
        return Err(bad(format!(
            "guidance_scale must be finite and non-negative, got {}",
            p.guidance_scale
        )));
    }
    Ok(())
}

/// A state made by the model `model_id`.
pub(crate) fn check_model(state: &DenoiseState, model_id: &str) -> Result<()> {
    if state.model != model_id {
        return Err(bad(format!(
            "state of model {} given to {model_id}",
            state.model
        )));
    }
    Ok(())
}

/// The clips of decoded audio `[B, C, L]` (`what` names it in errors): each cropped or
/// zero-padded to `frames` frames, channels interleaved frame by frame, non-finite samples
/// zeroed, otherwise unscaled: the worker's one gain stage sets loudness and true peak.
pub(crate) fn finish_clips(audio: &Tensor, frames: i64, what: &str) -> Result<Vec<Vec<f32>>> {
    let audio = audio.to_device(Device::Cpu).to_kind(Kind::Float);
    let (b, channels, len) = audio
        .size3()
        .map_err(|e| bad(format!("{what} output: {e}")))?;
    let kept = frames.min(len);
    let mut out = Vec::with_capacity(b as usize);
    for i in 0..b {
        let clip = audio.get(i).narrow(1, 0, kept).transpose(0, 1).contiguous();
        let n = (kept * channels) as usize;
        let mut samples = vec![0f32; n];
        clip.f_copy_data(&mut samples, n)?;
        samples.resize((frames * channels) as usize, 0.0);
        for x in samples.iter_mut() {
            if !x.is_finite() {
                *x = 0.0;
            }
        }
        out.push(samples);
    }
    Ok(out)
}

/// A finished state's latent decoded by an Oobleck VAE (in `kind` on `device`) in windows of
/// [`DECODE_CHUNK_FRAMES`] (so a long clip decodes within a worker's memory), cropped to the
/// asked duration (`floor(duration * rate)` frames, as diffusers crops), interleaved
/// ([`finish_clips`]): the final stage of the waveform-VAE families.
pub(crate) fn render_oobleck(
    vae: &Oobleck,
    kind: Kind,
    device: Device,
    model_id: &str,
    state: &DenoiseState,
) -> Result<Vec<Vec<f32>>> {
    check_model(state, model_id)?;
    if !state.is_done() {
        return Err(bad(format!(
            "the state is at step {} of {}",
            state.step,
            state.total_steps()
        )));
    }
    let _g = tch::no_grad_guard();
    let latent = state.latent.to_device(device).to_kind(kind);
    let rate = vae.config().sampling_rate as f64;
    let frames = (f64::from(state.params.controls.duration_s) * rate).floor() as i64;
    let audio = vae.decode_span(&latent, 0, frames, DECODE_CHUNK_FRAMES)?;
    finish_clips(&audio, frames, "vae")
}

/// Links a pack to the published folder it was imported from (nothing is copied).
#[cfg(unix)]
pub(crate) fn link_source(target: &Path, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at).map_err(|e| ModelError::Pack {
        path: at.display().to_string(),
        message: format!("cannot link to {}: {e}", target.display()),
    })
}

#[cfg(not(unix))]
pub(crate) fn link_source(_target: &Path, at: &Path) -> Result<()> {
    Err(ModelError::Pack {
        path: at.display().to_string(),
        message: "packs link to their source; this platform has no symlinks".into(),
    })
}
