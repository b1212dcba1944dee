//! What every family does alike around its own parts: the request checks that do not depend on
//! the model, and the finishing of decoded clips.

use tch::{Device, Kind, Tensor};

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
