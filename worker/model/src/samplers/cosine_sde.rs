//! The stochastic cosine-schedule DPM-Solver++ 2M that diffusers' `CosineDPMSolverMultistepScheduler`
//! runs for Stable Audio Open 1.0 (sde-dpmsolver++, midpoint, first order at the first step and,
//! with a zero final sigma, at the last). It shares the schedule, input scaling and EDM output
//! preconditioning of the ODE solver ([`DpmSolverPp2m::new_cosine`]) and adds the SDE's noise
//! term. diffusers draws that noise from a torchsde Brownian tree; here each step takes it from
//! the caller ([`Sampler::step_with_noise`]), who draws it from the job's seed
//! ([`super::step_noise`]), so a seed fixes the output and resumed jobs reproduce it.
//!
//! With alpha = 1 and lambda = -ln(sigma), a step from sigma_s to sigma_t is
//! `x_t = (s_t/s_s) e^-h x + (1 - e^-2h) (D0 + D1/2) + s_t sqrt(1 - e^-2h) noise`, `h = ln(s_s/s_t)`,
//! with `D0` the denoised prediction and `D1 = (h/h0)(D0 - D0_prev)` (0 at first order).

use tch::Tensor;

use super::dpm_solver::{DpmSolverPp2m, PREV_DENOISED, PREV_STEP};
use super::{upcast, Sampler, SamplerState, ScheduleConfig};
use crate::Result;

#[derive(Debug, Clone)]
pub struct CosineDpmSolverPp2mSde {
    ode: DpmSolverPp2m,
}

impl CosineDpmSolverPp2mSde {
    pub fn new(cfg: &ScheduleConfig, num_steps: usize) -> Result<Self> {
        Ok(Self {
            ode: DpmSolverPp2m::new_cosine(cfg, num_steps)?,
        })
    }

    /// The schedule's sigma at step `i` (`i <= num_steps`).
    pub fn sigma(&self, i: usize) -> f64 {
        self.ode.sigma(i)
    }
}

impl Sampler for CosineDpmSolverPp2mSde {
    fn num_steps(&self) -> usize {
        self.ode.num_steps()
    }

    fn model_timestep(&self, i: usize) -> f64 {
        self.ode.model_timestep(i)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.ode.init_noise_sigma()
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        self.ode.scale_model_input(sample, i)
    }

    /// The noise-free step (the SDE's drift only); the pipeline calls `step_with_noise`.
    fn step(
        &self,
        i: usize,
        sample: &Tensor,
        model_output: &Tensor,
        state: &mut SamplerState,
    ) -> Tensor {
        self.step_with_noise(i, sample, model_output, state, &sample.zeros_like())
    }

    fn is_stochastic(&self) -> bool {
        true
    }

    fn step_with_noise(
        &self,
        i: usize,
        sample: &Tensor,
        model_output: &Tensor,
        state: &mut SamplerState,
        noise: &Tensor,
    ) -> Tensor {
        let x = upcast(sample);
        let m0 = self.ode.denoised(i, &x, &upcast(model_output));
        let prev = match (
            state.tensors.get(PREV_DENOISED),
            state.tensors.get(PREV_STEP),
        ) {
            (Some(d), Some(k))
                if i > 0 && k.reshape([-1]).f_int64_value(&[0]).ok() == Some(i as i64 - 1) =>
            {
                Some(d.to_kind(m0.kind()))
            }
            _ => None,
        };
        let (s_t, s_0) = (self.sigma(i + 1), self.sigma(i));
        let out = if s_t == 0.0 {
            // h = inf: every term but the denoised prediction vanishes.
            m0.shallow_clone()
        } else {
            let h = (s_0 / s_t).ln();
            let e2 = 1.0 - (-2.0 * h).exp();
            // Out of place: `m0` is kept in the state for the next step.
            let d = match prev {
                Some(m1) => {
                    let h0 = (self.sigma(i - 1) / s_0).ln();
                    &m0 + (&m0 - m1) * (0.5 * h / h0)
                }
                None => m0.shallow_clone(),
            };
            &x * (s_t / s_0 * (-h).exp()) + d * e2 + upcast(noise) * (s_t * e2.sqrt())
        };
        state.tensors.insert(PREV_DENOISED.to_string(), m0);
        state
            .tensors
            .insert(PREV_STEP.to_string(), Tensor::from_slice(&[i as i64]));
        out.to_kind(model_output.kind())
    }
}
