//! Diffusion samplers. Each step is a pure function of (sample, sampler state, model output), so a
//! chunk of steps can stop after any step and resume elsewhere with identical results: the state
//! that a multistep solver carries between steps lives in [`SamplerState`], which the pipeline
//! stores in every checkpoint.

mod cosine_sde;
mod ddim;
mod dpm_solver;
mod flow_euler;
mod noise;
mod pingpong;

pub use cosine_sde::CosineDpmSolverPp2mSde;
pub use ddim::Ddim;
pub use dpm_solver::{DpmSolverPp2m, PREV_DENOISED, PREV_STEP};
pub use flow_euler::FlowEuler;
pub use noise::{seeded_noise, step_noise, step_noise_seed, NoiseAhead, NOISE_AHEAD_STEPS};
pub use pingpong::PingPong;

use crate::{ModelError, Result};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    V,
    /// Rectified flow: the model predicts the velocity `noise - x0`.
    Flow,
}

/// The one sampler enum (requests, packs and the runtime share it).
pub use tutti_shared::job::SamplerKind;

/// Tensors a sampler carries between steps (e.g. the previous model output). Empty for
/// stateless samplers. Keys are stable names; they are written into checkpoints.
#[derive(Debug, Default)]
pub struct SamplerState {
    pub tensors: BTreeMap<String, Tensor>,
}

impl SamplerState {
    /// A deep copy (tensors are reference-counted handles in tch).
    pub fn deep_clone(&self) -> Self {
        Self {
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.copy()))
                .collect(),
        }
    }
}

/// A configured noise schedule for a fixed number of inference steps.
pub trait Sampler: Send + Sync {
    /// Number of inference steps this schedule was built for.
    fn num_steps(&self) -> usize;
    /// The timestep value fed to the denoiser at step `i` (0-based, `i < num_steps()`).
    fn model_timestep(&self, i: usize) -> f64;
    /// Multiplier for the initial Gaussian noise (1 for flow matching; sigma_max for k-diffusion
    /// style schedules).
    fn init_noise_sigma(&self) -> f64;
    /// Scale the sample before the model sees it at step `i` (identity for most samplers).
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor;
    /// One step: the sample at step `i+1` from the sample at step `i` and the model output.
    /// Reads and updates `state`; must not depend on anything else.
    fn step(
        &self,
        i: usize,
        sample: &Tensor,
        model_output: &Tensor,
        state: &mut SamplerState,
    ) -> Tensor;
    /// Whether each step takes fresh standard-normal noise (SDE and ping-pong samplers). The
    /// caller then draws it with [`step_noise`] from the rows' seeds and calls
    /// [`Sampler::step_with_noise`]; their plain `step` uses zero noise.
    fn is_stochastic(&self) -> bool {
        false
    }
    /// One step with `noise` (the sample's shape) for stochastic samplers; deterministic ones
    /// ignore it.
    fn step_with_noise(
        &self,
        i: usize,
        sample: &Tensor,
        model_output: &Tensor,
        state: &mut SamplerState,
        _noise: &Tensor,
    ) -> Tensor {
        self.step(i, sample, model_output, state)
    }
}

/// How the training betas are laid out (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BetaSchedule {
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// How a rectified-flow schedule lays out its sigmas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowSpacing {
    /// diffusers' `FlowMatchEulerDiscreteScheduler` alone: spaced between the shifted training
    /// ends, the model fed `sigma * num_train_timesteps`.
    #[default]
    Train,
    /// ACE-Step's: `linspace(1, 0, N + 1)` shifted (`s t / (1 + (s - 1) t)`), the model fed the
    /// sigma itself.
    Unit,
}

/// How inference timesteps are picked from the training ones (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// The sigma ramp of the cosine DPM-Solver (diffusers' `sigma_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigmaSchedule {
    Exponential,
    Karras,
}

/// The noise schedule a pack declares in `model.toml` (`[schedule]`). Every field has a default so
/// that a pack gives only what it changes; names and defaults follow diffusers' scheduler configs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    pub prediction: Prediction,
    pub num_train_timesteps: usize,
    // Discrete VP schedules (DDIM, DPM-Solver++).
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// `None`: each sampler's diffusers default (DDIM `leading`, DPM-Solver `linspace`).
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: usize,
    /// DDIM: the final step lands on alpha_cumprod = 1 (diffusers' `set_alpha_to_one`).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted x0 to +-this. diffusers clips at 1 by default, which is wrong for
    /// unbounded latents, so tutti's default is off.
    pub clip_sample: Option<f64>,
    // Flow matching.
    /// Timestep shift of rectified-flow schedules (diffusers' `shift`).
    pub shift: f64,
    /// How a flow schedule lays out its sigmas (older checkpoints: the training-timestep way).
    #[serde(default)]
    pub flow_spacing: FlowSpacing,
    // Cosine DPM-Solver (k-diffusion style sigmas with EDM preconditioning; Stable Audio Open).
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub sigma_data: f64,
    pub sigma_schedule: SigmaSchedule,
    pub rho: f64,
    /// Audio-to-audio: the noise level the sampler starts from instead of pure noise (the
    /// ping-pong time in (0, 1], or the cosine schedule's first sigma). Kept in checkpoints with
    /// the rest of the schedule, so a resumed job rebuilds the same sampler.
    pub init_noise: Option<f64>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            prediction: Prediction::Flow,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_sample: None,
            shift: 1.0,
            flow_spacing: FlowSpacing::Train,
            sigma_min: 0.3,
            sigma_max: 500.0,
            sigma_data: 1.0,
            sigma_schedule: SigmaSchedule::Exponential,
            rho: 7.0,
            init_noise: None,
        }
    }
}

/// Builds the sampler `kind` for `num_steps` inference steps of `schedule`.
pub fn build(
    kind: SamplerKind,
    schedule: &ScheduleConfig,
    num_steps: usize,
) -> Result<Box<dyn Sampler>> {
    if num_steps == 0 {
        return Err(ModelError::Input("num_steps must be at least 1".into()));
    }
    if schedule.num_train_timesteps < 2 && schedule.flow_spacing == FlowSpacing::Train {
        return Err(ModelError::Input(
            "schedule.num_train_timesteps must be at least 2".into(),
        ));
    }
    let p = schedule.prediction;
    // Audio-to-audio on the cosine schedule: its sigmas start at the init level.
    let from_init;
    let schedule = match schedule.init_noise {
        Some(sigma) if p != Prediction::Flow => {
            from_init = ScheduleConfig {
                sigma_max: sigma,
                ..schedule.clone()
            };
            &from_init
        }
        _ => schedule,
    };
    match kind {
        SamplerKind::FlowEuler => {
            if p != Prediction::Flow {
                return Err(incompatible(kind, p));
            }
            Ok(Box::new(FlowEuler::new(schedule, num_steps)?))
        }
        SamplerKind::Ddim => {
            if p == Prediction::Flow {
                return Err(incompatible(kind, p));
            }
            Ok(Box::new(Ddim::new(schedule, num_steps)?))
        }
        SamplerKind::DpmSolverPp2m => {
            if p == Prediction::Flow {
                return Err(incompatible(kind, p));
            }
            Ok(Box::new(DpmSolverPp2m::new_vp(schedule, num_steps)?))
        }
        SamplerKind::CosineDpmSolverPp2m => {
            if p == Prediction::Flow {
                return Err(incompatible(kind, p));
            }
            Ok(Box::new(DpmSolverPp2m::new_cosine(schedule, num_steps)?))
        }
        SamplerKind::CosineDpmSolverPp2mSde => {
            if p == Prediction::Flow {
                return Err(incompatible(kind, p));
            }
            Ok(Box::new(CosineDpmSolverPp2mSde::new(schedule, num_steps)?))
        }
        SamplerKind::PingPong => {
            if p != Prediction::Flow {
                return Err(incompatible(kind, p));
            }
            Ok(Box::new(PingPong::with_sigma_max(
                num_steps,
                schedule.init_noise.unwrap_or(1.0),
            )?))
        }
    }
}

fn incompatible(kind: SamplerKind, p: Prediction) -> ModelError {
    ModelError::Input(format!(
        "sampler {kind:?} does not support {p:?} prediction"
    ))
}

/// `alphas_cumprod` of the training schedule, computed with the same f32 libtorch ops as diffusers
/// so that the tables agree bit for bit; returned as f64 for the per-step scalar math.
fn alphas_cumprod(cfg: &ScheduleConfig) -> Vec<f64> {
    let n = cfg.num_train_timesteps;
    let opts = (Kind::Float, Device::Cpu);
    let betas = match cfg.beta_schedule {
        BetaSchedule::Linear => Tensor::linspace(cfg.beta_start, cfg.beta_end, n as i64, opts),
        BetaSchedule::ScaledLinear => {
            Tensor::linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n as i64, opts).square()
        }
        BetaSchedule::SquaredcosCapV2 => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                    .cos()
                    .powi(2)
            };
            let betas: Vec<f32> = (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect();
            Tensor::from_slice(&betas)
        }
    };
    let ac = (Tensor::ones_like(&betas) - &betas).cumprod(0, Kind::Float);
    to_f64_vec(&ac)
}

fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous();
    let n = t.numel();
    let mut v = vec![0f64; n];
    t.copy_data(&mut v, n);
    v
}

/// Rounds to f32, as diffusers stores its schedule tables.
fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// `numpy.linspace(start, stop, num)` exactly as numpy computes it (f64).
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `numpy.arange(start, stop, step)` for floats, with numpy's length and fill arithmetic.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Rejects spacings that do not yield `n` distinct in-range timesteps (numpy's float `arange` can
/// add a spurious last step for some counts; diffusers would then index timestep -1).
fn check_timesteps(ts: &[i64], n: usize, n_train: usize) -> Result<()> {
    if ts.len() != n || ts.iter().any(|&t| t < 0 || t >= n_train as i64) {
        return Err(ModelError::Input(format!(
            "{n} steps with this timestep spacing and steps_offset give invalid timesteps {ts:?}"
        )));
    }
    Ok(())
}

/// The solvers do their arithmetic in f32 at least (as diffusers does) and return the sample's kind.
fn upcast(t: &Tensor) -> Tensor {
    match t.kind() {
        Kind::Double | Kind::Float => t.shallow_clone(),
        _ => t.to_kind(Kind::Float),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_partial_toml() {
        let c: ScheduleConfig =
            toml::from_str("prediction = \"v\"\nbeta_schedule = \"squaredcos_cap_v2\"").unwrap();
        assert_eq!(c.prediction, Prediction::V);
        assert_eq!(c.beta_schedule, BetaSchedule::SquaredcosCapV2);
        assert_eq!(c.num_train_timesteps, 1000);
        assert_eq!(c.sigma_max, 500.0);
    }

    #[test]
    fn incompatible_combinations_error() {
        let mut c = ScheduleConfig {
            prediction: Prediction::Epsilon,
            ..Default::default()
        };
        assert!(build(SamplerKind::FlowEuler, &c, 10).is_err());
        assert!(build(SamplerKind::Ddim, &c, 10).is_ok());
        c.prediction = Prediction::Flow;
        assert!(build(SamplerKind::DpmSolverPp2m, &c, 10).is_err());
        assert!(build(SamplerKind::CosineDpmSolverPp2m, &c, 10).is_err());
        assert!(build(SamplerKind::FlowEuler, &c, 0).is_err());
    }

    #[test]
    fn np_linspace_matches_numpy_endpoints() {
        let v = np_linspace(0.0, 999.0, 11);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[10], 999.0);
        assert!((v[5] - 499.5).abs() < 1e-12);
    }
}
