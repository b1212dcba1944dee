//! The state of one generation between denoising steps, and its checkpoint format.
//!
//! Checkpoint (`tutti-denoise-state/2`): a safetensors file whose tensors are `latent` [V, C, T],
//! the family's conditioning as `cond.<name>` and the sampler's memory as `sampler.<name>`, all
//! on CPU in f32 (f64 kept as is); the metadata holds `format`, `model` (name@version), `step`,
//! `params` and `schedule` (JSON). The format names no family's tensors: each family keeps what
//! it conditions on under its own names (see its module) and reads them back by name. A round
//! trip is bit-exact.
//!
//! `tutti-denoise-state/1` (before the family seam) stored the mel and Stable Audio families'
//! conditioning as bare `text_states`, `text_mask` and `global_cond`; such a checkpoint loads as
//! those named tensors. Any other format is refused with its name.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use tutti_shared::job::Song;
use tutti_shared::prompt::Controls;

use crate::samplers::{self, NoiseAhead, Sampler, SamplerKind, SamplerState, ScheduleConfig};
use crate::varispeed::Varispeed;
use crate::{weights, ModelError, Result};

const FORMAT: &str = "tutti-denoise-state/2";
/// The format before conditioning was named tensors; still read.
const FORMAT_V1: &str = "tutti-denoise-state/1";
/// The conditioning tensors of a `/1` checkpoint.
const V1_CONDITIONING: [&str; 3] = ["text_states", "text_mask", "global_cond"];

/// Most variations one request may ask for.
pub const MAX_VARIATIONS: usize = 16;

/// What states must share to be stepped in one forward bit-identically to each alone: latent
/// frames and text tokens as the family pads them (plus the model, which the engine keys on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchShape {
    pub frames: i64,
    pub text_tokens: i64,
}

/// What a request asks the model for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub controls: Controls,
    pub seed: u64,
    pub steps: usize,
    pub guidance_scale: f64,
    pub sampler: SamplerKind,
    /// Independent samples of the same request; variation `i` starts from the noise of seed `seed + i`.
    pub variations: usize,
    /// What a song model sings (song families only; older checkpoints have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub song: Option<Song>,
    /// Set by a mel pack's `prepare`, never by a request: the generation is rendered in another
    /// key with `controls` scaled to match and played back at another speed (`Varispeed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub varispeed: Option<Varispeed>,
}

impl GenerationParams {
    /// A prompt of `duration_s` seconds with a pack's default sampler, steps and guidance (no
    /// negative prompt, no other controls, seed 0, one take): what each family's
    /// `default_params` starts from.
    pub fn with_defaults(
        prompt: &str,
        duration_s: f32,
        sampler: SamplerKind,
        steps: usize,
        guidance_scale: f64,
    ) -> Self {
        GenerationParams {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            controls: Controls {
                duration_s,
                ..Default::default()
            },
            seed: 0,
            steps,
            guidance_scale,
            sampler,
            variations: 1,
            song: None,
            varispeed: None,
        }
    }
}

/// One generation between steps: latent, conditioning, sampler state and progress.
pub struct DenoiseState {
    pub(crate) params: GenerationParams,
    pub(crate) step: usize,
    pub(crate) model: String,
    pub(crate) schedule: ScheduleConfig,
    pub(crate) sampler: Box<dyn Sampler>,
    /// [V, C, T] f32.
    pub(crate) latent: Tensor,
    /// The family's conditioning by name (f32 or f64; see the family's module).
    pub(crate) cond: BTreeMap<String, Tensor>,
    pub(crate) sampler_state: SamplerState,
    /// Per-step noise drawn ahead (stochastic samplers; not checkpointed: it is a function of
    /// the seeds and steps).
    pub(crate) noise_ahead: Option<NoiseAhead>,
}

impl std::fmt::Debug for DenoiseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenoiseState")
            .field("model", &self.model)
            .field("step", &self.step)
            .field("total_steps", &self.params.steps)
            .field("latent", &self.latent.size())
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl DenoiseState {
    /// Steps done so far.
    pub fn step(&self) -> usize {
        self.step
    }

    pub fn total_steps(&self) -> usize {
        self.params.steps
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.params.steps
    }

    pub fn params(&self) -> &GenerationParams {
        &self.params
    }

    /// `name@version` of the pack that made this state.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The current latent [variations, channels, frames] (f32).
    pub fn latent(&self) -> &Tensor {
        &self.latent
    }

    pub fn device(&self) -> Device {
        self.latent.device()
    }

    /// A conditioning tensor by the name its family gave it.
    pub fn cond(&self, name: &str) -> Result<&Tensor> {
        self.cond.get(name).ok_or_else(|| {
            ModelError::Input(format!(
                "the state of model {} has no conditioning tensor {name:?}",
                self.model
            ))
        })
    }

    /// Bytes its tensors take (the held-latent cache's budget counts these).
    pub fn memory_bytes(&self) -> usize {
        let size = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        std::iter::once(&self.latent)
            .chain(self.cond.values())
            .chain(self.sampler_state.tensors.values())
            .map(size)
            .sum::<usize>()
            + self.noise_ahead.as_ref().map_or(0, NoiseAhead::bytes)
    }

    /// Checkpoint bytes (see the module documentation).
    pub fn to_checkpoint(&self) -> Result<Vec<u8>> {
        let mut tensors = vec![("latent".to_string(), self.latent.shallow_clone())];
        for (k, v) in &self.cond {
            tensors.push((format!("cond.{k}"), v.shallow_clone()));
        }
        for (k, v) in &self.sampler_state.tensors {
            tensors.push((format!("sampler.{k}"), v.shallow_clone()));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("model".to_string(), self.model.clone());
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("params".to_string(), to_json(&self.params)?);
        meta.insert("schedule".to_string(), to_json(&self.schedule)?);
        weights::to_safetensors_bytes(&tensors, Some(meta))
    }

    /// Restores a state from [`to_checkpoint`](Self::to_checkpoint) bytes onto `device`.
    pub fn from_checkpoint(bytes: &[u8], device: Device) -> Result<Self> {
        let file = weights::parse_safetensors(bytes, "denoise checkpoint")?;
        let bad = |m: String| ModelError::Checkpoint(m);
        let meta = |k: &str| {
            file.metadata
                .get(k)
                .ok_or_else(|| bad(format!("metadata {k:?} is missing")))
        };
        let format = meta("format")?;
        if format != FORMAT && format != FORMAT_V1 {
            return Err(bad(format!(
                "unsupported format {format:?} (this worker reads {FORMAT} and {FORMAT_V1})"
            )));
        }
        let params: GenerationParams =
            serde_json::from_str(meta("params")?).map_err(|e| bad(format!("params: {e}")))?;
        let schedule: ScheduleConfig =
            serde_json::from_str(meta("schedule")?).map_err(|e| bad(format!("schedule: {e}")))?;
        let step: usize = meta("step")?
            .parse()
            .map_err(|e| bad(format!("step: {e}")))?;
        if step > params.steps {
            return Err(bad(format!(
                "step {step} is past the {} steps",
                params.steps
            )));
        }
        let sampler = samplers::build(params.sampler, &schedule, params.steps)?;
        let mut tensors = file.tensors;
        let mut take = |k: &str| -> Result<Tensor> {
            tensors
                .remove(k)
                .map(|t| t.to_device(device))
                .ok_or_else(|| bad(format!("tensor {k:?} is missing")))
        };
        let latent = take("latent")?;
        let (mut cond, mut sampler_state) = (BTreeMap::new(), SamplerState::default());
        for (k, v) in tensors {
            let v = v.to_device(device);
            if let Some(name) = k.strip_prefix("sampler.") {
                sampler_state.tensors.insert(name.to_string(), v);
            } else if let Some(name) = k.strip_prefix("cond.").filter(|_| format == FORMAT) {
                cond.insert(name.to_string(), v);
            } else if format == FORMAT_V1 && V1_CONDITIONING.contains(&k.as_str()) {
                cond.insert(k, v);
            } else {
                return Err(bad(format!("unknown tensor {k:?}")));
            }
        }
        let v = params.variations as i64;
        if latent.dim() != 3 || latent.size()[0] != v || latent.kind() != Kind::Float {
            return Err(bad(format!(
                "latent has shape {:?}, expected [{v}, C, T] f32",
                latent.size()
            )));
        }
        Ok(Self {
            params,
            step,
            model: meta("model")?.clone(),
            schedule,
            sampler,
            latent,
            cond,
            sampler_state,
            noise_ahead: None,
        })
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| ModelError::Checkpoint(e.to_string()))
}

/// The seeded noise lives with the samplers' per-step noise (one generator for both).
pub use crate::samplers::seeded_noise;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_deterministic_and_normal() {
        let a = seeded_noise(7, &[4, 1000]);
        let b = seeded_noise(7, &[4, 1000]);
        assert_eq!(a, b);
        assert_ne!(a, seeded_noise(8, &[4, 1000]));
        let mean = a.mean(Kind::Float).double_value(&[]);
        let std = a.std(true).double_value(&[]);
        assert!(
            mean.abs() < 0.05 && (std - 1.0).abs() < 0.05,
            "mean {mean} std {std}"
        );
    }
}
