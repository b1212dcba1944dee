//! Stable Audio's conditioning projection (diffusers' `StableAudioProjectionModel`): the text
//! projection (Identity when the text and conditioning widths are equal, as in SAO 1.0 and Small)
//! and the `seconds_start` / `seconds_total` number conditioners, with diffusers' weight names:
//!
//! ```text
//! text_projection.{weight,bias}                                  (only when the widths differ)
//! {start,end}_number_conditioner.time_positional_embedding.0.weights   [internal/2]
//! {start,end}_number_conditioner.time_positional_embedding.1.{weight,bias} [dim, internal+1], [dim]
//! ```
//!
//! A number is clamped to `[min_value, max_value]`, normalised to `[0, 1]` and embedded as
//! `Linear([x, sin 2πxw, cos 2πxw])`. SAO Small has only `seconds_total`, which maps to the end
//! conditioner; its start conditioner is absent.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::weights::source::{read_json, TensorSource};
use crate::{ModelError, Result};

/// Width of the number embedders' Fourier features (fixed in diffusers and stable-audio-tools).
pub const NUMBER_INTERNAL_DIM: i64 = 256;

/// `projection_model/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionConfig {
    pub text_encoder_dim: i64,
    pub conditioning_dim: i64,
    pub min_value: f64,
    pub max_value: f64,
}

/// One `StableAudioNumberConditioner`.
#[derive(Debug)]
pub struct NumberConditioner {
    freqs: Tensor,
    weight: Tensor,
    bias: Tensor,
    min: f64,
    max: f64,
}

impl NumberConditioner {
    fn from_source(src: &mut TensorSource, prefix: &str, cfg: &ProjectionConfig) -> Result<Self> {
        let p = format!("{prefix}.time_positional_embedding");
        let d = cfg.conditioning_dim;
        Ok(Self {
            freqs: src.take(&format!("{p}.0.weights"), &[NUMBER_INTERNAL_DIM / 2])?,
            weight: src.take(&format!("{p}.1.weight"), &[d, NUMBER_INTERNAL_DIM + 1])?,
            bias: src.take(&format!("{p}.1.bias"), &[d])?,
            min: cfg.min_value,
            max: cfg.max_value,
        })
    }

    /// `values` f32 `[B]` → `[B, 1, dim]`.
    pub fn forward(&self, values: &Tensor) -> Tensor {
        let x = values
            .to_device(self.freqs.device())
            .to_kind(Kind::Float)
            .clamp(self.min, self.max);
        let x = ((x - self.min) / (self.max - self.min)).to_kind(self.freqs.kind());
        let t = x.unsqueeze(-1);
        let f = &t * self.freqs.unsqueeze(0) * 2.0 * std::f64::consts::PI;
        let four = Tensor::cat(&[&t, &f.sin(), &f.cos()], -1);
        four.linear(&self.weight, Some(&self.bias))
            .view([-1, 1, self.weight.size()[0]])
    }
}

/// `StableAudioProjectionModel`.
#[derive(Debug)]
pub struct ProjectionModel {
    cfg: ProjectionConfig,
    text_projection: Option<(Tensor, Tensor)>,
    start: Option<NumberConditioner>,
    end: NumberConditioner,
}

impl ProjectionModel {
    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` from `dir` (SAO 1.0's
    /// `projection_model/`: both conditioners).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg: ProjectionConfig = read_json(&dir.join("config.json"), "projection config")?;
        let path = dir.join("diffusion_pytorch_model.safetensors");
        let mut src = TensorSource::read(&path, device, kind)?;
        let model = Self::from_source(&cfg, &mut src, true)?;
        src.finish()?;
        Ok(model)
    }

    /// Takes the weights from `src`; `with_start` is false for models conditioned on
    /// `seconds_total` only. The caller finishes `src`.
    pub fn from_source(
        cfg: &ProjectionConfig,
        src: &mut TensorSource,
        with_start: bool,
    ) -> Result<Self> {
        if cfg.text_encoder_dim <= 0 || cfg.conditioning_dim <= 0 {
            return Err(ModelError::Input(format!(
                "projection dims must be positive, got {} and {}",
                cfg.text_encoder_dim, cfg.conditioning_dim
            )));
        }
        if cfg.max_value.partial_cmp(&cfg.min_value) != Some(std::cmp::Ordering::Greater) {
            return Err(ModelError::Input(format!(
                "projection max_value {} must exceed min_value {}",
                cfg.max_value, cfg.min_value
            )));
        }
        let text_projection = if cfg.text_encoder_dim == cfg.conditioning_dim {
            None
        } else {
            let (i, o) = (cfg.text_encoder_dim, cfg.conditioning_dim);
            Some((
                src.take("text_projection.weight", &[o, i])?,
                src.take("text_projection.bias", &[o])?,
            ))
        };
        let start = if with_start {
            Some(NumberConditioner::from_source(
                src,
                "start_number_conditioner",
                cfg,
            )?)
        } else {
            None
        };
        let end = NumberConditioner::from_source(src, "end_number_conditioner", cfg)?;
        Ok(Self {
            cfg: cfg.clone(),
            text_projection,
            start,
            end,
        })
    }

    pub fn config(&self) -> &ProjectionConfig {
        &self.cfg
    }

    /// The text hidden states projected to the conditioning width.
    pub fn project_text(&self, text: &Tensor) -> Tensor {
        match &self.text_projection {
            Some((w, b)) => text.to_kind(w.kind()).linear(w, Some(b)),
            None => text.shallow_clone(),
        }
    }

    /// `seconds_start` embeddings `[B, 1, dim]`; `None` for a model without that conditioner.
    pub fn seconds_start(&self, seconds: &Tensor) -> Option<Tensor> {
        self.start.as_ref().map(|c| c.forward(seconds))
    }

    /// `seconds_total` (diffusers' `end`) embeddings `[B, 1, dim]`.
    pub fn seconds_total(&self, seconds: &Tensor) -> Tensor {
        self.end.forward(seconds)
    }
}

/// The DiT's conditioning inputs for one batch of prompts, as `StableAudioPipeline` builds them.
#[derive(Debug)]
pub struct Conditioning {
    /// `[B, L + n, dim]`: the masked text states, then one token per number conditioner (n = 2
    /// for start and total, 1 for total only). Passed to the DiT without a mask: the zeroed
    /// padding is attended to.
    pub cross: Tensor,
    /// `[B, 1, n * dim]`: the number embeddings side by side.
    pub global: Tensor,
}

impl ProjectionModel {
    /// Conditioning from T5 states `[B, L, text dim]`, their mask `[B, L]` and the seconds `[B]`
    /// (`seconds_start` is ignored by a model without that conditioner).
    pub fn condition(
        &self,
        text: &Tensor,
        mask: &Tensor,
        seconds_start: &Tensor,
        seconds_total: &Tensor,
    ) -> Conditioning {
        let text = self.project_text(text);
        let text = &text
            * mask
                .to_device(text.device())
                .unsqueeze(-1)
                .to_kind(text.kind());
        let total = self.seconds_total(seconds_total).to_kind(text.kind());
        let numbers: Vec<Tensor> = match self.seconds_start(seconds_start) {
            Some(start) => vec![start.to_kind(text.kind()), total],
            None => vec![total],
        };
        let mut cross = vec![text];
        cross.extend(numbers.iter().map(Tensor::shallow_clone));
        Conditioning {
            cross: Tensor::cat(&cross, 1),
            global: Tensor::cat(&numbers, 2),
        }
    }
}

impl Conditioning {
    /// The unconditional row of classifier-free guidance without a negative prompt: the whole
    /// cross input is zeros (seconds tokens included), the global input is unchanged.
    pub fn unconditional(&self) -> Conditioning {
        Conditioning {
            cross: self.cross.zeros_like(),
            global: self.global.shallow_clone(),
        }
    }

    /// Rows of `self` followed by rows of `other` (the CFG batch: uncond first).
    pub fn cat(&self, other: &Conditioning) -> Conditioning {
        Conditioning {
            cross: Tensor::cat(&[&self.cross, &other.cross], 0),
            global: Tensor::cat(&[&self.global, &other.global], 0),
        }
    }
}
