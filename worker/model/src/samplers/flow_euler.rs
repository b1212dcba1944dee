//! Flow-matching Euler (diffusers' `FlowMatchEulerDiscreteScheduler`, static shift, no stochastic
//! sampling): `x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v`. Stateless.

use super::{f32r, np_linspace, upcast, FlowSpacing, Sampler, SamplerState, ScheduleConfig};
use crate::Result;
use tch::Tensor;

/// Rectified-flow Euler sampler; sigmas run from 1 (noise) to 0 (data).
#[derive(Debug, Clone)]
pub struct FlowEuler {
    /// `num_steps + 1` sigmas, the last one 0; f32-rounded as diffusers stores them.
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
}

impl FlowEuler {
    pub fn new(cfg: &ScheduleConfig, num_steps: usize) -> Result<Self> {
        let n_train = cfg.num_train_timesteps as f64;
        let shift = cfg.shift;
        if !(shift.is_finite() && shift > 0.0) {
            return Err(crate::ModelError::Input(format!(
                "schedule.shift must be positive, got {shift}"
            )));
        }
        if cfg.flow_spacing == FlowSpacing::Unit {
            return Ok(Self::unit(shift, num_steps));
        }
        // The training sigmas, shifted once at construction (f32 in diffusers).
        let shift_f32 = |s: f64| f32r(f32r(shift * s) / f32r(1.0 + f32r((shift - 1.0) * s)));
        let sigma_max = shift_f32(1.0);
        let sigma_min = shift_f32(f32r(1.0 / n_train));
        // diffusers shifts the inference sigmas again (in f64) after spacing them between the
        // already-shifted ends; kept as is for parity.
        let mut sigmas: Vec<f64> = np_linspace(sigma_max * n_train, sigma_min * n_train, num_steps)
            .into_iter()
            .map(|t| {
                let s = t / n_train;
                f32r(shift * s / (1.0 + (shift - 1.0) * s))
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| f32r(s * n_train)).collect();
        sigmas.push(0.0);
        Ok(Self { sigmas, timesteps })
    }

    /// ACE-Step's schedule: `linspace(1, 0, N + 1)` in f32, shifted in f32 ops, the last (0)
    /// dropped and appended again as the scheduler does; the model is fed the sigma itself.
    fn unit(shift: f64, num_steps: usize) -> Self {
        let n = num_steps as f64;
        let mut sigmas: Vec<f64> = (0..num_steps)
            .map(|i| {
                let t = f32r(1.0 - i as f64 / n);
                if shift == 1.0 {
                    t
                } else {
                    f32r(f32r(shift * t) / f32r(1.0 + f32r((shift - 1.0) * t)))
                }
            })
            .collect();
        let timesteps = sigmas.clone();
        sigmas.push(0.0);
        Self { sigmas, timesteps }
    }

    /// The sigma (noise fraction) at step `i`; `sigma(num_steps()) == 0`.
    pub fn sigma(&self, i: usize) -> f64 {
        self.sigmas[i]
    }
}

impl Sampler for FlowEuler {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn model_timestep(&self, i: usize) -> f64 {
        self.timesteps[i]
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
        // dt in f64 of two f32 values, rounded once: the same value as diffusers' f32 subtraction.
        let dt = f32r(self.sigmas[i + 1] - self.sigmas[i]);
        (upcast(sample) + upcast(model_output) * dt).to_kind(model_output.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_spacing_gives_ace_steps_turbo_tables() {
        let cfg = |shift| ScheduleConfig {
            shift,
            flow_spacing: FlowSpacing::Unit,
            ..Default::default()
        };
        // The turbo checkpoints' fixed 8-step tables (shift 3 and 1), then the terminal 0.
        let s3 = FlowEuler::new(&cfg(3.0), 8).unwrap();
        let want = [1.0, 0.95455, 0.9, 0.83333, 0.75, 0.64286, 0.5, 0.3];
        for (i, w) in want.iter().enumerate() {
            assert!((s3.sigma(i) - w).abs() < 1e-5, "{i}: {}", s3.sigma(i));
            assert_eq!(s3.model_timestep(i), s3.sigma(i));
        }
        assert_eq!(s3.sigma(8), 0.0);
        let s1 = FlowEuler::new(&cfg(1.0), 8).unwrap();
        assert_eq!(s1.sigma(7), 0.125);
    }
}
