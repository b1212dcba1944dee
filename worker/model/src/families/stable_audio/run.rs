//! Text to audio with a loaded [`StableAudioModel`], step by step, as `StableAudioPipeline`
//! (SAO 1.0) and stable-audio-tools (SAO Small) run it: prompts → T5 → conditioning (the uncond
//! row of classifier-free guidance is zeros without a negative prompt) → the full latent window
//! from each row's seed → the pack's sampler (per-step noise from the rows' seeds) → the VAE →
//! audio cropped to `[seconds_start, seconds_total)`.
//!
//! Each prompt is a [`DenoiseState`] stepped by the farm's own step loop
//! ([`crate::step::step_batch`]), all of a request's in one forward; a [`SaoState`] holds them
//! between steps, so a caller can run a chunk of steps, stop and go on: the result does not
//! depend on where it stopped (the noise of step `i` is a function of the seeds and `i`, and the
//! sampler's memory lives in the states).

use tch::{Device, Kind, Tensor};
use tutti_shared::prompt::Controls;

use crate::decoders::oobleck::DECODE_CHUNK_FRAMES;
use crate::families::stable_audio::model::StableAudioModel;
use crate::families::stable_audio::projection::Conditioning;
use crate::families::text_cond;
use crate::nn::dit::DitInput;
use crate::nn::graphed::{self, GraphStats};
use crate::samplers::{self, SamplerKind, SamplerState};
use crate::state::{seeded_noise, DenoiseState, GenerationParams};
use crate::step::{Denoiser, Rows};
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

/// A request in progress: one state per prompt.
pub struct SaoState {
    states: Vec<DenoiseState>,
    crop: (i64, i64),
}

impl std::fmt::Debug for SaoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaoState")
            .field("step", &self.step())
            .field("total_steps", &self.total_steps())
            .field("prompts", &self.states.len())
            .finish()
    }
}

impl SaoState {
    pub fn step(&self) -> usize {
        self.states[0].step()
    }
    pub fn total_steps(&self) -> usize {
        self.states[0].total_steps()
    }
    pub fn is_done(&self) -> bool {
        self.states[0].is_done()
    }
    /// The current latents `[B, C, T]` (f32), one row per prompt.
    pub fn latent(&self) -> Tensor {
        let rows: Vec<&Tensor> = self.states.iter().map(|s| s.latent()).collect();
        Tensor::cat(&rows, 0)
    }
}

fn bad(m: String) -> ModelError {
    ModelError::Input(m)
}

/// Whether a request runs classifier-free guidance: above 1, diffusers' rule.
pub(crate) fn guided(guidance_scale: f64) -> bool {
    guidance_scale > 1.0
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
        let start = Tensor::full([b], r.seconds_start, (Kind::Float, dev));
        let total = Tensor::full([b], r.seconds_total, (Kind::Float, dev));
        let prompts: Vec<&str> = r.prompts.iter().map(String::as_str).collect();
        let cond = self.encode(&prompts, &start, &total)?;
        let negative = r
            .negative_prompts
            .as_ref()
            .filter(|n| guided(r.guidance_scale) && n.iter().any(|p| !p.is_empty()));
        let uncond = match negative {
            Some(n) => {
                let n: Vec<&str> = n.iter().map(String::as_str).collect();
                self.encode(&n, &start, &total)?
            }
            None => cond.unconditional(),
        };
        let (c, t) = (self.config.dit.in_channels, self.config.dit.sample_size);
        let states = (0..b)
            .map(|i| {
                let row = |c: &Conditioning| Conditioning {
                    cross: c.cross.narrow(0, i, 1),
                    global: c.global.narrow(0, i, 1),
                };
                let pair = row(&uncond).cat(&row(&cond));
                let p = GenerationParams {
                    prompt: r.prompts[i as usize].clone(),
                    negative_prompt: negative.map(|n| n[i as usize].clone()).unwrap_or_default(),
                    controls: Controls {
                        duration_s: r.seconds_total as f32,
                        ..Default::default()
                    },
                    seed: r.seeds[i as usize],
                    steps: r.steps,
                    guidance_scale: r.guidance_scale,
                    sampler: r.sampler,
                    variations: 1,
                    song: None,
                    varispeed: None,
                };
                self.state(p, &pair, seeded_noise(r.seeds[i as usize], &[1, c, t]))
            })
            .collect::<Result<Vec<_>>>()?;
        let sr = self.config.vae.sampling_rate as f64;
        Ok(SaoState {
            states,
            crop: ((r.seconds_start * sr) as i64, (r.seconds_total * sr) as i64),
        })
    }

    /// A state at step 0 from its conditioning pair (unconditional row first) and its noise.
    pub(crate) fn state(
        &self,
        params: GenerationParams,
        cond: &Conditioning,
        noise: Tensor,
    ) -> Result<DenoiseState> {
        let sampler = samplers::build(params.sampler, &self.config.schedule, params.steps)?;
        let text_states = cond.cross.to_kind(Kind::Float);
        let global_cond = cond.global.squeeze_dim(1).to_kind(Kind::Float);
        let text_mask = Tensor::ones(
            [2, text_states.size()[1]],
            (Kind::Float, text_states.device()),
        );
        let latent = (noise * sampler.init_noise_sigma()).to_device(self.device);
        Ok(DenoiseState {
            params,
            step: 0,
            model: self.model_id.clone(),
            schedule: self.config.schedule.clone(),
            sampler,
            latent,
            cond: text_cond::named(text_states, text_mask, global_cond),
            sampler_state: SamplerState::default(),
            noise_ahead: None,
        })
    }

    /// One denoising step of every prompt, in one forward.
    pub fn step(&self, st: &mut SaoState) -> Result<()> {
        let mut states: Vec<&mut DenoiseState> = st.states.iter_mut().collect();
        crate::step::step_batch(self, &mut states)
    }

    /// The finished latents decoded and cropped: `[B, audio channels, samples]` (f32, unscaled).
    pub fn decode(&self, st: &SaoState) -> Result<Tensor> {
        if !st.is_done() {
            return Err(bad(format!(
                "the request is at step {} of {}",
                st.step(),
                st.total_steps()
            )));
        }
        let _g = tch::no_grad_guard();
        let (a, e) = st.crop;
        Ok(self
            .vae
            .decode_span(
                &st.latent().to_kind(self.vae_kind),
                a,
                e,
                DECODE_CHUNK_FRAMES,
            )?
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

/// The Stable Audio forward: the DiT over every state's rows at once, the conditioning rows
/// each state's guidance picks, no masks (the model attends to its zeroed padding).
impl Denoiser for StableAudioModel {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn device(&self) -> Device {
        self.device
    }

    fn guided(&self, p: &GenerationParams) -> bool {
        guided(p.guidance_scale)
    }

    fn forward(&self, rows: &[Rows<'_>]) -> Result<Tensor> {
        let dev = self.device;
        let kind = self.kind;
        let (mut xs, mut ts, mut cross, mut global) = (vec![], vec![], vec![], vec![]);
        for r in rows {
            xs.push(r.x.shallow_clone());
            ts.push(r.timestep.shallow_clone());
            let cond = text_cond::get(r.state)?;
            cross.push(r.select_cond(&cond.states.to_device(dev)));
            global.push(r.select_cond(&cond.global.to_device(dev)));
        }
        let hidden = Tensor::cat(&xs, 0).to_kind(kind);
        let timestep = Tensor::cat(&ts, 0);
        let cross = Tensor::cat(&cross, 0).to_kind(kind);
        let global = Tensor::cat(&global, 0).unsqueeze(1).to_kind(kind);
        let rotary = self.dit.rotary(hidden.size()[2], dev);
        let run = |s: &[Tensor]| {
            self.dit.forward(&DitInput {
                hidden_states: &s[0],
                timestep: &s[1],
                encoder_hidden_states: &s[2],
                global_hidden_states: &s[3],
                rotary: &rotary,
                attention_mask: None,
                encoder_attention_mask: None,
                frame_states: None,
            })
        };
        if let Some(graphs) = &self.graphs {
            let mut g = graphs.lock().unwrap_or_else(|e| e.into_inner());
            let inputs = [&hidden, &timestep, &cross, &global];
            if let Some(out) = g.run(&inputs, &[&rotary.cos, &rotary.sin], &run) {
                return Ok(out);
            }
        }
        Ok(run(&[hidden, timestep, cross, global]))
    }
}

impl StableAudioModel {
    /// Turns the denoiser's CUDA graphs on or off (on by default on CUDA unless
    /// `TUTTI_CUDA_GRAPHS=0`; never on the CPU). Turning them on again starts with no graphs.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs = graphed::for_device(self.device, on);
    }

    /// What the denoiser's graphs have done; `None` when they are off.
    pub fn graph_stats(&self) -> Option<GraphStats> {
        self.graphs
            .as_ref()
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).stats().clone())
    }
}
