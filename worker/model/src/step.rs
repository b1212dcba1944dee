//! The one step loop of every family: assemble each state's rows (its variations, twice when
//! guided: the unconditional rows, then the prompt's), run one denoiser forward over all of
//! them, guide, and advance each state's sampler, drawing a stochastic sampler's per-step noise
//! from the state's seeds. A family supplies only what differs ([`Denoiser`]): whether a request
//! is guided, the forward over the assembled rows (its conditioning, padding and masks), and,
//! if it is not classifier-free guidance, how the two halves combine.
//!
//! A state's step depends only on the state (its latent, sampler memory, seeds and step): the
//! noise of step `k` of variation `i` is `step_noise(seed + i, k)`, so a chunked, checkpointed
//! or resumed job equals a one-shot one bit for bit, whatever else shared its forwards (within
//! each family's batch-invariance rule).

use tch::{Device, Kind, Tensor};

use crate::samplers::NoiseAhead;
use crate::state::{DenoiseState, GenerationParams};
use crate::{ModelError, Result};

/// One state's rows in a forward, as the step loop assembles them.
pub struct Rows<'a> {
    pub state: &'a DenoiseState,
    /// The sampler-scaled latent of each row, `[n, C, T]` f32 on the model's device: the
    /// variations, twice when guided (unconditional first).
    pub x: Tensor,
    /// The model timestep of each row, `[n]` f32.
    pub timestep: Tensor,
    /// Whether the rows are the guided pair (unconditional rows first), else the prompt's rows.
    guided: bool,
    /// The state's variations.
    variations: i64,
}

impl Rows<'_> {
    /// The rows of a two-row conditioning tensor `[2, ..]` (0: unconditional, 1: the prompt)
    /// that these rows read, in order: `[n, ..]`, in fresh memory as `index_select` gave them
    /// (CPU kernels may round differently on a view at another alignment). Made on `cond`'s
    /// device by slicing: no index tensor crosses from the host on each step.
    pub fn select_cond(&self, cond: &Tensor) -> Tensor {
        let v = self.variations;
        let rows = |i: i64| {
            let mut size = cond.size();
            size[0] = v;
            cond.narrow(0, i, 1).expand(&size, false)
        };
        if self.guided {
            Tensor::cat(&[rows(0), rows(1)], 0)
        } else {
            rows(1).copy()
        }
    }
}

/// What a family gives the step loop.
pub trait Denoiser {
    /// `name@version` of the loaded pack; a state of another model is refused.
    fn model_id(&self) -> &str;
    fn device(&self) -> Device;
    /// Whether the request runs classifier-free guidance (two rows per variation).
    fn guided(&self, p: &GenerationParams) -> bool;
    /// One denoiser forward over every state's rows, in order: `[rows, C, T']` with `T'` at
    /// least each state's frames (a family may pad), any float kind.
    fn forward(&self, rows: &[Rows<'_>]) -> Result<Tensor>;
    /// The guided model output of a state from its unconditional and conditional outputs (f32,
    /// on the model's device); classifier-free guidance unless the family says otherwise. It may
    /// keep per-step memory in the state's sampler state (which checkpoints carry).
    fn guide(&self, state: &mut DenoiseState, uncond: &Tensor, cond: &Tensor) -> Tensor {
        uncond + (cond - uncond) * state.params.guidance_scale
    }
}

/// The row seeds of a request's variations: variation `i` is seeded `seed + i`.
pub fn seeds(p: &GenerationParams) -> Vec<u64> {
    (0..p.variations as u64)
        .map(|i| p.seed.wrapping_add(i))
        .collect()
}

/// Advances every state by one step with one forward of `model` over all of them.
pub fn step_batch<D: Denoiser + ?Sized>(model: &D, states: &mut [&mut DenoiseState]) -> Result<()> {
    if states.is_empty() {
        return Ok(());
    }
    for s in states.iter() {
        if s.model != model.model_id() {
            return Err(ModelError::Input(format!(
                "state of model {} given to {}",
                s.model,
                model.model_id()
            )));
        }
        if s.is_done() {
            return Err(ModelError::Input(format!(
                "state already finished its {} steps",
                s.params.steps
            )));
        }
    }
    let _guard = tch::no_grad_guard();
    let dev = model.device();
    let out = {
        let rows: Vec<Rows<'_>> = states.iter().map(|s| rows_of(model, s, dev)).collect();
        model.forward(&rows)?.to_kind(Kind::Float)
    };
    let mut row = 0;
    for s in states.iter_mut() {
        let v = s.params.variations as i64;
        let t = s.latent.size()[2];
        let model_out = if model.guided(&s.params) {
            let uncond = out.narrow(0, row, v).narrow(2, 0, t);
            let cond = out.narrow(0, row + v, v).narrow(2, 0, t);
            row += 2 * v;
            model.guide(s, &uncond, &cond)
        } else {
            row += v;
            out.narrow(0, row - v, v).narrow(2, 0, t)
        };
        let model_out = model_out.to_device(s.latent.device());
        let next = if s.sampler.is_stochastic() {
            let noise = NoiseAhead::noise(
                &mut s.noise_ahead,
                &seeds(&s.params),
                s.step,
                s.params.steps,
                &s.latent.size()[1..],
                s.latent.device(),
            );
            s.sampler
                .step_with_noise(s.step, &s.latent, &model_out, &mut s.sampler_state, &noise)
        } else {
            s.sampler
                .step(s.step, &s.latent, &model_out, &mut s.sampler_state)
        };
        s.latent = next.to_kind(Kind::Float);
        s.step += 1;
    }
    Ok(())
}

/// A state's rows: its variations' scaled latents, doubled when guided.
fn rows_of<'a, D: Denoiser + ?Sized>(model: &D, s: &'a DenoiseState, dev: Device) -> Rows<'a> {
    let v = s.params.variations as i64;
    let x = s
        .sampler
        .scale_model_input(&s.latent, s.step)
        .to_device(dev)
        .to_kind(Kind::Float);
    let guided = model.guided(&s.params);
    let x = if guided { Tensor::cat(&[&x, &x], 0) } else { x };
    Rows {
        state: s,
        timestep: Tensor::full(
            [x.size()[0]],
            s.sampler.model_timestep(s.step),
            (Kind::Float, dev),
        ),
        guided,
        variations: v,
        x,
    }
}

/// Runs `model` on `state` until `to_step`, calling `on_step(steps_done)` after each step; a
/// `Break` stops early. Returns the step reached.
pub fn denoise<D: Denoiser + ?Sized>(
    model: &D,
    state: &mut DenoiseState,
    to_step: usize,
    on_step: &mut dyn FnMut(usize) -> std::ops::ControlFlow<()>,
) -> Result<usize> {
    if to_step > state.total_steps() || to_step < state.step() {
        return Err(ModelError::Input(format!(
            "cannot denoise from step {} to step {to_step} of {}",
            state.step(),
            state.total_steps()
        )));
    }
    while state.step() < to_step {
        step_batch(model, &mut [&mut *state])?;
        if on_step(state.step()).is_break() {
            break;
        }
    }
    Ok(state.step())
}
