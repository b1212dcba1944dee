//! DDIM (diffusers' `DDIMScheduler` with eta = 0): deterministic and stateless.

use super::{alphas_cumprod, np_arange, np_linspace, upcast, Prediction, Sampler, SamplerState};
use super::{ScheduleConfig, TimestepSpacing};
use crate::{ModelError, Result};
use tch::Tensor;

#[derive(Debug, Clone)]
pub struct Ddim {
    timesteps: Vec<i64>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    /// diffusers steps back by `num_train // num_steps` whatever the spacing; kept for parity.
    step_ratio: i64,
    prediction: Prediction,
    clip_sample: Option<f64>,
}

impl Ddim {
    pub fn new(cfg: &ScheduleConfig, num_steps: usize) -> Result<Self> {
        let n_train = cfg.num_train_timesteps;
        if num_steps > n_train {
            return Err(ModelError::Input(format!(
                "{num_steps} ddim steps exceed the {n_train} training timesteps"
            )));
        }
        let timesteps = spaced_timesteps(
            cfg.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            n_train,
            num_steps,
            cfg.steps_offset,
        );
        super::check_timesteps(&timesteps, num_steps, n_train)?;
        let alphas_cumprod = alphas_cumprod(cfg);
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            timesteps,
            alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: (n_train / num_steps) as i64,
            prediction: cfg.prediction,
            clip_sample: cfg.clip_sample,
        })
    }
}

/// DDIM's `set_timesteps` (numpy rounds half to even).
fn spaced_timesteps(spacing: TimestepSpacing, n_train: usize, n: usize, offset: usize) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = n_train / n;
            (0..n).rev().map(|k| (k * ratio + offset) as i64).collect()
        }
        TimestepSpacing::Trailing => trailing(n_train, n),
    }
}

/// `round(np.arange(n_train, 0, -n_train / n)) - 1`, shared with DPM-Solver.
pub(super) fn trailing(n_train: usize, n: usize) -> Vec<i64> {
    np_arange(n_train as f64, 0.0, -(n_train as f64 / n as f64))
        .into_iter()
        .map(|t| t.round_ties_even() as i64 - 1)
        .collect()
}

impl Sampler for Ddim {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn model_timestep(&self, i: usize) -> f64 {
        self.timesteps[i] as f64
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Tensor {
        sample.shallow_clone()
    }

    fn step(
        &self,
        i: usize,
        sample: &Tensor,
        model_output: &Tensor,
        _state: &mut SamplerState,
    ) -> Tensor {
        let t = self.timesteps[i];
        let prev_t = t - self.step_ratio;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (x, m) = (upcast(sample), upcast(model_output));
        let (mut x0, eps) = match self.prediction {
            Prediction::V => (
                &x * a_t.sqrt() - &m * b_t.sqrt(),
                &m * a_t.sqrt() + &x * b_t.sqrt(),
            ),
            // `build` admits only epsilon and v here.
            _ => ((&x - &m * b_t.sqrt()) / a_t.sqrt(), m.shallow_clone()),
        };
        if let Some(c) = self.clip_sample {
            x0 = x0.clamp(-c, c);
        }
        let out = x0 * a_prev.sqrt() + eps * (1.0 - a_prev).sqrt();
        out.to_kind(model_output.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings_match_diffusers() {
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Leading, 1000, 10, 1),
            vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Trailing, 1000, 3, 0),
            vec![999, 666, 332]
        );
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Linspace, 1000, 4, 0),
            vec![999, 666, 333, 0]
        );
    }
}
