//! The rules for an audio-to-audio request's init clip (`init_audio`, `init_strength`): only for
//! models of a family with an audio encoder, a WAV the worker can read, at the model's rate,
//! mono or with the model's channels, no longer than the model's window. The submit stores the
//! clip as the job's own object (`inputs/<tenant>/<clip>.wav`, see `api.rs`), and the job
//! names that key; the content-hash key `check` returns is replaced there.

use tutti_proto::v1 as pb;
use tutti_shared::audio::{self, decode_wav};
use tutti_shared::job::{init_audio_key, InitAudio};
use tutti_shared::models::{ModelInfo, ModelInput};

use crate::error::{Error, Result};

/// Strength when a request gives init audio and no strength.
pub const DEFAULT_STRENGTH: f32 = 0.7;

/// An accepted init clip: what the job records, and the WAV to store at its key.
#[derive(Debug, Clone)]
pub struct InitClip {
    pub init: InitAudio,
    pub wav: Vec<u8>,
    /// Its length in seconds (a repaint's default duration).
    pub seconds: f32,
}

/// Checks `init_audio` and `init_strength` for `model`; `None` when the request has no clip.
pub fn check(model: &ModelInfo, req: &pb::SubmitGenerationRequest) -> Result<Option<InitClip>> {
    if req.init_audio.is_empty() {
        if req.init_strength.is_some() {
            return Err(Error::invalid("init_strength", "only with init_audio"));
        }
        return Ok(None);
    }
    // A song model takes a clip to repaint a span of it, with no strength.
    let repaints = model.takes(ModelInput::Repaint) && !model.takes(ModelInput::InitAudio);
    if repaints {
        if req.repaint_start_seconds.is_none() {
            return Err(Error::invalid(
                "init_audio",
                format!(
                    "model {} takes a clip only to repaint a span of it: set repaint_start_seconds",
                    model.name
                ),
            ));
        }
        if req.init_strength.is_some() {
            return Err(Error::invalid(
                "init_strength",
                format!(
                    "model {} repaints a span (repaint_start_seconds, repaint_end_seconds); it takes no strength",
                    model.name
                ),
            ));
        }
    }
    // The catalogue lists the same answer (`ModelInput::InitAudio` among the model's inputs).
    if !model.takes(ModelInput::InitAudio) && !repaints {
        return Err(Error::invalid(
            "init_audio",
            format!(
                "model {} ({} family) has no audio encoder; audio-to-audio needs a waveform-VAE model",
                model.name,
                model.family.as_str()
            ),
        ));
    }
    // A repaint regenerates its span from pure noise: no strength (1 in the spec).
    let strength = if repaints {
        1.0
    } else {
        req.init_strength.unwrap_or(DEFAULT_STRENGTH)
    };
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::invalid("init_strength", "must be in (0, 1]"));
    }
    let pcm = decode_wav(&req.init_audio)
        .map_err(|e| Error::invalid("init_audio", format!("must be a WAV file ({e})")))?;
    if pcm.sample_rate != model.sample_rate {
        return Err(Error::invalid(
            "init_audio",
            format!(
                "must be at {} Hz for model {} (got {} Hz)",
                model.sample_rate, model.name, pcm.sample_rate
            ),
        ));
    }
    if pcm.channels != 1 && pcm.channels != model.channels {
        return Err(Error::invalid(
            "init_audio",
            format!(
                "must have 1 or {} channels for model {} (got {})",
                model.channels, model.name, pcm.channels
            ),
        ));
    }
    let seconds = pcm.frames() as f32 / pcm.sample_rate as f32;
    let window = model.limits.max_duration_s;
    if pcm.frames() == 0 || seconds > window + 0.01 {
        return Err(Error::invalid(
            "init_audio",
            format!(
                "must be between one sample and {window} s long for model {} (got {seconds:.2} s)",
                model.name
            ),
        ));
    }
    Ok(Some(InitClip {
        init: InitAudio {
            key: init_audio_key(&audio::sha256_hex(&req.init_audio)),
            strength,
        },
        wav: req.init_audio.clone(),
        seconds,
    }))
}
