//! Diffusion samplers. Each step is a pure function of (sample, sampler state, model output), so a
//! chunk of steps can stop after any step and resume elsewhere with identical results: the state
//! that a multistep solver carries between steps lives in [`SamplerState`], which the pipeline
//! stores in every checkpoint.

use std::collections::BTreeMap;
use tch::Tensor;

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    V,
    /// Rectified flow: the model predicts the velocity `noise - x0`.
    Flow,
}

/// The samplers a request may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Flow-matching Euler (rectified flow); stateless between steps.
    FlowEuler,
    Ddim,
    /// DPM-Solver++ 2M (diffusers' DPMSolverMultistepScheduler, algorithm dpmsolver++, order 2).
    DpmSolverPp2m,
    /// The cosine-schedule DPM-Solver++ 2M that Stable Audio uses (CosineDPMSolverMultistepScheduler).
    CosineDpmSolverPp2m,
}

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
    fn step(&self, i: usize, sample: &Tensor, model_output: &Tensor, state: &mut SamplerState)
        -> Tensor;
}

/// The noise schedule a pack declares in `model.toml` (`[schedule]`). Fields are filled in by the
/// samplers' module; every field has a default so that a pack may give only what it changes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    pub prediction: Prediction,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { prediction: Prediction::Flow }
    }
}
