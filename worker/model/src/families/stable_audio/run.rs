//! Text to audio with a loaded [`StableAudioModel`], step by step, as `StableAudioPipeline`
//! (SAO 1.0) and stable-audio-tools (SAO Small) run it: prompts → T5 → conditioning (the uncond
//! row of classifier-free guidance is zeros without a negative prompt) → the full latent window
//! from each row's seed → the pack's sampler (per-step noise from the rows' seeds) → the VAE →
//! audio cropped to `[seconds_start, seconds_total)`.
//!
//! A [`SaoState`] holds everything between steps, so a caller can run a chunk of steps, stop and
//! go on: the result does not depend on where it stopped (the noise of step `i` is a function of
//! the seeds and `i`, and the sampler's memory lives in the state).

use tch::{Kind, Tensor};

use crate::decoders::oobleck::DECODE_CHUNK_FRAMES;
use crate::families::stable_audio::model::StableAudioModel;
use crate::families::stable_audio::projection::Conditioning;
use crate::nn::dit::DitInput;
use crate::samplers::{self, step_noise, Sampler, SamplerKind, SamplerState};
use crate::state::seeded_noise;
use crate::{ModelError, Result};

/// One batch of prompts to render (one row per prompt).
#[derive(Debug, Clone)]
pub struct SaoRequest {
    pub prompts: Vec<String>,
    /// One per prompt; `None` or an empty string: the zero unconditional input.
    pub negative_prompts: Option<Vec<String>>,
    /// One seed per prompt: its initial noise and its per-step noise.
    pub seeds: Vec<u64>,
    pub seconds_start: f64,
    pub seconds_total: f64,
    pub steps: usize,
    /// Guidance is applied only above 1 (diffusers' rule; stable-audio-tools' cfg below 1 is not
    /// supported).
    pub guidance_scale: f64,
    pub sampler: SamplerKind,
}

/// A request in progress.
pub struct SaoState {
    step: usize,
    latent: Tensor,
    cond: Conditioning,
    guided: bool,
    guidance: f64,
    sampler: Box<dyn Sampler>,
    sampler_state: SamplerState,
    seeds: Vec<u64>,
    crop: (i64, i64),
}

impl std::fmt::Debug for SaoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaoState")
            .field("step", &self.step)
            .field("total_steps", &self.sampler.num_steps())
            .field("latent", &self.latent.size())
            .finish()
    }
}

impl SaoState {
    pub fn step(&self) -> usize {
        self.step
    }
    pub fn total_steps(&self) -> usize {
        self.sampler.num_steps()
    }
    pub fn is_done(&self) -> bool {
        self.step == self.sampler.num_steps()
    }
    /// The current latent `[B, C, T]` (f32).
    pub fn latent(&self) -> &Tensor {
        &self.latent
    }
}

fn bad(m: String) -> ModelError {
    ModelError::Input(m)
}

impl StableAudioModel {
    fn validate(&self, r: &SaoRequest) -> Result<()> {
        let b = r.prompts.len();
        if b == 0 {
            return Err(bad("prompts: at least one is needed".into()));
        }
        if r.seeds.len() != b {
            return Err(bad(format!(
                "seeds: {} given for {b} prompts",
                r.seeds.len()
            )));
        }
        if let Some(n) = &r.negative_prompts {
            if n.len() != b {
                return Err(bad(format!(
                    "negative_prompts: {} given for {b} prompts",
                    n.len()
                )));
            }
        }
        let p = &self.config.projection;
        let window = self.config.max_duration_s();
        let (s, e) = (r.seconds_start, r.seconds_total);
        if !(s.is_finite() && e.is_finite() && s >= p.min_value && e <= p.max_value && s < e) {
            return Err(bad(format!(
                "seconds_start {s} and seconds_total {e} must satisfy {} <= start < total <= {}",
                p.min_value, p.max_value
            )));
        }
        if e - s > window || e > window {
            return Err(bad(format!(
                "seconds_total {e} is past the model's window of {window:.2} s"
            )));
        }
        if !r.guidance_scale.is_finite() || r.guidance_scale < 0.0 {
            return Err(bad(format!(
                "guidance_scale must be finite and non-negative, got {}",
                r.guidance_scale
            )));
        }
        Ok(())
    }

    pub(crate) fn encode(
        &self,
        prompts: &[&str],
        start: &Tensor,
        total: &Tensor,
    ) -> Result<Conditioning> {
        let (ids, mask) = self.tokenizer.tokenize(prompts)?;
        let text = self.t5.forward(&ids, &mask);
        let kind = self.kind;
        let c = self.projection.condition(&text, &mask, start, total);
        Ok(Conditioning {
            cross: c.cross.to_kind(kind),
            global: c.global.to_kind(kind),
        })
    }

    /// Encodes the prompts and draws the initial latents; step 0.
    pub fn prepare(&self, r: &SaoRequest) -> Result<SaoState> {
        self.validate(r)?;
        let _g = tch::no_grad_guard();
        let dev = self.device;
        let b = r.prompts.len() as i64;
        let sampler = samplers::build(r.sampler, &self.config.schedule, r.steps)?;
        let start = Tensor::full([b], r.seconds_start, (Kind::Float, dev));
        let total = Tensor::full([b], r.seconds_total, (Kind::Float, dev));
        let prompts: Vec<&str> = r.prompts.iter().map(String::as_str).collect();
        let cond = self.encode(&prompts, &start, &total)?;
        let guided = r.guidance_scale > 1.0;
        let cond = if !guided {
            cond
        } else {
            let negative = r
                .negative_prompts
                .as_ref()
                .filter(|n| n.iter().any(|p| !p.is_empty()));
            let uncond = match negative {
                Some(n) => {
                    let n: Vec<&str> = n.iter().map(String::as_str).collect();
                    self.encode(&n, &start, &total)?
                }
                None => cond.unconditional(),
            };
            uncond.cat(&cond)
        };
        let (c, t) = (self.config.dit.in_channels, self.config.dit.sample_size);
        let rows: Vec<Tensor> = r
            .seeds
            .iter()
            .map(|&s| seeded_noise(s, &[1, c, t]))
            .collect();
        let latent = (Tensor::cat(&rows, 0) * sampler.init_noise_sigma()).to_device(dev);
        let sr = self.config.vae.sampling_rate as f64;
        Ok(SaoState {
            step: 0,
            latent,
            cond,
            guided,
            guidance: r.guidance_scale,
            sampler,
            sampler_state: SamplerState::default(),
            seeds: r.seeds.clone(),
            crop: ((r.seconds_start * sr) as i64, (r.seconds_total * sr) as i64),
        })
    }

    /// One denoising step.
    pub fn step(&self, st: &mut SaoState) -> Result<()> {
        if st.is_done() {
            return Err(bad("the request has no steps left".into()));
        }
        let _g = tch::no_grad_guard();
        let dev = st.latent.device();
        let i = st.step;
        let b = st.latent.size()[0];
        let x = if st.guided {
            Tensor::cat(&[&st.latent, &st.latent], 0)
        } else {
            st.latent.shallow_clone()
        };
        let rows = x.size()[0];
        let xin = st.sampler.scale_model_input(&x, i).to_kind(self.kind);
        let ts = Tensor::full([rows], st.sampler.model_timestep(i), (Kind::Float, dev));
        let rotary = self.dit.rotary(x.size()[2], dev);
        let out = self
            .dit
            .forward(&DitInput {
                hidden_states: &xin,
                timestep: &ts,
                encoder_hidden_states: &st.cond.cross,
                global_hidden_states: &st.cond.global,
                rotary: &rotary,
                attention_mask: None,
                encoder_attention_mask: None,
                frame_states: None,
            })
            .to_kind(Kind::Float);
        let model_out = if st.guided {
            let (u, c) = (out.narrow(0, 0, b), out.narrow(0, b, b));
            &u + (&c - &u) * st.guidance
        } else {
            out
        };
        let next = if st.sampler.is_stochastic() {
            let shape = &st.latent.size()[1..];
            let noise = step_noise(&st.seeds, i, shape).to_device(dev);
            st.sampler
                .step_with_noise(i, &st.latent, &model_out, &mut st.sampler_state, &noise)
        } else {
            st.sampler
                .step(i, &st.latent, &model_out, &mut st.sampler_state)
        };
        st.latent = next.to_kind(Kind::Float);
        st.step += 1;
        Ok(())
    }

    /// The finished latents decoded and cropped: `[B, audio channels, samples]` (f32, unscaled).
    pub fn decode(&self, st: &SaoState) -> Result<Tensor> {
        if !st.is_done() {
            return Err(bad(format!(
                "the request is at step {} of {}",
                st.step,
                st.total_steps()
            )));
        }
        let _g = tch::no_grad_guard();
        let (a, e) = st.crop;
        Ok(self
            .vae
            .decode_span(&st.latent.to_kind(self.vae_kind), a, e, DECODE_CHUNK_FRAMES)?
            .to_kind(Kind::Float))
    }

    /// The whole request.
    pub fn generate(&self, r: &SaoRequest) -> Result<Tensor> {
        let mut st = self.prepare(r)?;
        while !st.is_done() {
            self.step(&mut st)?;
        }
        self.decode(&st)
    }
}
