//! The ping-pong sampler of rectified-flow denoisers (stable-audio-tools' `sample_flow_pingpong`,
//! the default of Stable Audio Open Small): each step predicts the clean sample from the model's
//! velocity, `x0 = x - t_i v(x, t_i)`, then re-noises it to the next time with fresh noise,
//! `x = (1 - t_{i+1}) x0 + t_{i+1} noise`. The last time is 0, so the last step returns `x0`.
//!
//! The times follow stable-audio-tools 0.0.19's `sample_rf`: `t = sigmoid(-linspace(logsnr_max,
//! 2, steps + 1))` in f32, `t[0] = sigma_max` and `t[-1] = 0`, with `logsnr_max = -6` for
//! generation from noise (`sigma_max = 1`). The denoiser sees `t` itself (in [0, 1]).

use tch::{Device, Kind, Tensor};

use super::{to_f64_vec, upcast, Sampler, SamplerState};
use crate::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct PingPong {
    /// `num_steps + 1` times (f32-rounded), from `sigma_max` to 0.
    t: Vec<f64>,
}

impl PingPong {
    /// Generation from noise: `sigma_max = 1`.
    pub fn new(num_steps: usize) -> Result<Self> {
        Self::with_sigma_max(num_steps, 1.0)
    }

    /// Starting at `sigma_max` in (0, 1] (below 1 for audio-to-audio: the init audio is mixed
    /// with noise at that level).
    pub fn with_sigma_max(num_steps: usize, sigma_max: f64) -> Result<Self> {
        if num_steps == 0 {
            return Err(ModelError::Input("num_steps must be at least 1".into()));
        }
        if !(sigma_max > 0.0 && sigma_max <= 1.0) {
            return Err(ModelError::Input(format!(
                "ping-pong sigma_max must be in (0, 1], got {sigma_max}"
            )));
        }
        let logsnr_max = if sigma_max < 1.0 {
            ((1.0 - sigma_max) / sigma_max + 1e-6).ln()
        } else {
            -6.0
        };
        let logsnr = Tensor::linspace(
            logsnr_max,
            2.0,
            num_steps as i64 + 1,
            (Kind::Float, Device::Cpu),
        );
        let mut t = to_f64_vec(&(-logsnr).sigmoid());
        t[0] = sigma_max as f32 as f64;
        t[num_steps] = 0.0;
        Ok(Self { t })
    }

    /// The time at step `i` (`i <= num_steps`).
    pub fn time(&self, i: usize) -> f64 {
        self.t[i]
    }
}

impl Sampler for PingPong {
    fn num_steps(&self) -> usize {
        self.t.len() - 1
    }

    fn model_timestep(&self, i: usize) -> f64 {
        self.t[i]
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Tensor {
        sample.shallow_clone()
    }

    /// The step with zero noise (the denoised estimate scaled to the next time); the pipeline
    /// calls `step_with_noise`.
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
        _state: &mut SamplerState,
        noise: &Tensor,
    ) -> Tensor {
        let (t, next) = (self.t[i], self.t[i + 1]);
        let x0 = upcast(sample) - upcast(model_output) * t;
        let out = if next == 0.0 {
            x0
        } else {
            x0 * (1.0 - next) as f32 as f64 + upcast(noise) * next
        };
        out.to_kind(model_output.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_runs_from_one_to_zero() {
        let p = PingPong::new(8).unwrap();
        assert_eq!(p.num_steps(), 8);
        assert_eq!(p.time(0), 1.0);
        assert_eq!(p.time(8), 0.0);
        assert!((1..8).all(|i| p.time(i) < p.time(i - 1)));
        // sigmoid(-linspace(-6, 2, 9))[1] = sigmoid(5)
        assert!((p.time(1) - 1.0 / (1.0 + (-5f64).exp())).abs() < 1e-6);
        assert!(PingPong::new(0).is_err());
        assert!(PingPong::with_sigma_max(8, 1.5).is_err());
    }
}
