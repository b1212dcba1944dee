//! DPM-Solver++ 2M (data prediction, midpoint second-order update, first order at the first step
//! and, with a zero final sigma, at the last) on two parameterisations that share the update:
//! - VP: diffusers' `DPMSolverMultistepScheduler` (alpha_t = 1/sqrt(1+s^2), sigma_t = s*alpha_t);
//! - cosine: the sigma ramp, EDM preconditioning and `atan` timesteps of diffusers'
//!   `CosineDPMSolverMultistepScheduler` (Stable Audio Open), with alpha_t = 1, sigma_t = s.
//!   diffusers only implements that scheduler as an SDE (Brownian-tree noise); here it is the ODE
//!   solver, i.e. `EDMDPMSolverMultistepScheduler(algorithm_type="dpmsolver++")`, so that a seed
//!   fixes the output.
//!
//! The one multistep quantity, the previous step's denoised prediction, lives in the state under
//! [`PREV_DENOISED`], tagged with its step under [`PREV_STEP`].

use super::{alphas_cumprod, ddim::trailing, f32r, np_linspace, upcast, Prediction, Sampler};
use super::{SamplerState, ScheduleConfig, SigmaSchedule, TimestepSpacing};
use crate::Result;
use tch::{Device, Kind, Tensor};

/// State key: the denoised (x0) prediction of the last step taken.
pub const PREV_DENOISED: &str = "dpm.prev_denoised";
/// State key: the step index (i64 scalar) that produced [`PREV_DENOISED`].
pub const PREV_STEP: &str = "dpm.prev_step";

#[derive(Debug, Clone, Copy)]
enum Param {
    Vp,
    Cosine { sigma_data: f64, sigma_max: f64 },
}

#[derive(Debug, Clone)]
pub struct DpmSolverPp2m {
    /// `num_steps + 1` sigmas (f32-rounded), the last one 0.
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    prediction: Prediction,
    param: Param,
}

impl DpmSolverPp2m {
    /// diffusers' `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint, zero final sigma).
    pub fn new_vp(cfg: &ScheduleConfig, num_steps: usize) -> Result<Self> {
        let n_train = cfg.num_train_timesteps;
        let off = cfg.steps_offset as i64;
        let ts: Vec<i64> = match cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Linspace => {
                let v = np_linspace(0.0, (n_train - 1) as f64, num_steps + 1);
                v[1..]
                    .iter()
                    .rev()
                    .map(|t| t.round_ties_even() as i64)
                    .collect()
            }
            TimestepSpacing::Leading => {
                let ratio = (n_train / (num_steps + 1)) as i64;
                (1..=num_steps as i64)
                    .rev()
                    .map(|k| k * ratio + off)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing(n_train, num_steps),
        };
        super::check_timesteps(&ts, num_steps, n_train)?;
        let ac = alphas_cumprod(cfg);
        // sigma = sqrt((1 - ac) / ac), computed in f32 like diffusers' table.
        let table: Vec<f64> = ac
            .iter()
            .map(|&a| f32r(f32r(f32r(1.0 - a) / a).sqrt()))
            .collect();
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| table[t as usize]).collect();
        sigmas.push(0.0);
        Ok(Self {
            sigmas,
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            prediction: cfg.prediction,
            param: Param::Vp,
        })
    }

    /// The cosine-schedule solver of Stable Audio Open (ODE form, see the module docs).
    pub fn new_cosine(cfg: &ScheduleConfig, num_steps: usize) -> Result<Self> {
        let (lo, hi) = (cfg.sigma_min, cfg.sigma_max);
        if !(lo > 0.0 && hi > lo && cfg.sigma_data > 0.0 && cfg.rho > 0.0) {
            return Err(crate::ModelError::Input(format!(
                "cosine schedule needs 0 < sigma_min < sigma_max and positive sigma_data, rho; got {lo}, {hi}, {}, {}",
                cfg.sigma_data, cfg.rho
            )));
        }
        // Same f32 libtorch ops as diffusers so the sigmas agree bit for bit.
        let opts = (Kind::Float, Device::Cpu);
        let n = num_steps as i64;
        let s = match cfg.sigma_schedule {
            SigmaSchedule::Exponential => Tensor::linspace(lo.ln(), hi.ln(), n, opts).exp().flip(0),
            SigmaSchedule::Karras => {
                let (min_r, max_r) = (lo.powf(1.0 / cfg.rho), hi.powf(1.0 / cfg.rho));
                let ramp = Tensor::linspace(0.0, 1.0, n, opts);
                (ramp * (min_r - max_r) + max_r).pow_tensor_scalar(cfg.rho)
            }
        };
        let mut sigmas = super::to_f64_vec(&s);
        let timesteps = sigmas
            .iter()
            .map(|&s| f32r(f32r(f32r(s.atan()) / std::f64::consts::PI) * 2.0))
            .collect();
        sigmas.push(0.0);
        Ok(Self {
            sigmas,
            timesteps,
            prediction: cfg.prediction,
            param: Param::Cosine {
                sigma_data: cfg.sigma_data,
                sigma_max: hi,
            },
        })
    }

    /// The schedule's sigma at step `i` (`i <= num_steps`).
    pub fn sigma(&self, i: usize) -> f64 {
        self.sigmas[i]
    }

    /// (alpha_t, sigma_t) of a sigma.
    fn alpha_sigma(&self, s: f64) -> (f64, f64) {
        match self.param {
            Param::Vp => {
                let a = 1.0 / (s * s + 1.0).sqrt();
                (a, s * a)
            }
            Param::Cosine { .. } => (1.0, s),
        }
    }

    fn lambda(&self, s: f64) -> f64 {
        let (a, s) = self.alpha_sigma(s);
        a.ln() - s.ln()
    }

    /// The denoised (x0) prediction at step `i`.
    pub(super) fn denoised(&self, i: usize, x: &Tensor, m: &Tensor) -> Tensor {
        let s = self.sigmas[i];
        match self.param {
            Param::Vp => {
                let (a, st) = self.alpha_sigma(s);
                match self.prediction {
                    Prediction::V => x * a - m * st,
                    _ => (x - m * st) / a,
                }
            }
            Param::Cosine { sigma_data: d, .. } => {
                let c_skip = d * d / (s * s + d * d);
                let c_out = s * d / (s * s + d * d).sqrt();
                let c_out = if self.prediction == Prediction::V {
                    -c_out
                } else {
                    c_out
                };
                x * c_skip + m * c_out
            }
        }
    }
}

impl Sampler for DpmSolverPp2m {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn model_timestep(&self, i: usize) -> f64 {
        self.timesteps[i]
    }

    fn init_noise_sigma(&self) -> f64 {
        match self.param {
            Param::Vp => 1.0,
            // diffusers uses sqrt(sigma_max^2 + 1), not sigma_max, for the cosine schedule.
            Param::Cosine { sigma_max, .. } => (sigma_max * sigma_max + 1.0).sqrt(),
        }
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        match self.param {
            Param::Vp => sample.shallow_clone(),
            Param::Cosine { sigma_data: d, .. } => {
                let s = self.sigmas[i];
                sample * (1.0 / (s * s + d * d).sqrt())
            }
        }
    }

    fn step(
        &self,
        i: usize,
        sample: &Tensor,
        model_output: &Tensor,
        state: &mut SamplerState,
    ) -> Tensor {
        let x = upcast(sample);
        let m0 = self.denoised(i, &x, &upcast(model_output));
        // The previous prediction counts only if it is the one of step i-1 (a stale or missing
        // entry would silently change the result); without it the step is first order.
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
        let (s_t, s_0) = (self.sigmas[i + 1], self.sigmas[i]);
        let (a_t, sig_t) = self.alpha_sigma(s_t);
        let (_, sig_0) = self.alpha_sigma(s_0);
        let out = if s_t == 0.0 {
            // The final sigma is 0: h = inf, and diffusers' `lower_order_final` makes the last step
            // first order, x_t = alpha_t * x0.
            &m0 * a_t
        } else {
            let h = self.lambda(s_t) - self.lambda(s_0);
            let em1 = (-h).exp() - 1.0;
            let first = &x * (sig_t / sig_0) - &m0 * (a_t * em1);
            match prev {
                Some(m1) => {
                    let h0 = self.lambda(s_0) - self.lambda(self.sigmas[i - 1]);
                    let d1 = (&m0 - m1) * (h / h0);
                    first - d1 * (0.5 * a_t * em1)
                }
                None => first,
            }
        };
        state.tensors.insert(PREV_DENOISED.to_string(), m0);
        state
            .tensors
            .insert(PREV_STEP.to_string(), Tensor::from_slice(&[i as i64]));
        out.to_kind(model_output.kind())
    }
}
