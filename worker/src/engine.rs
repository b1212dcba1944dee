//! The model on a dedicated OS thread: tasks arrive over a channel, the thread owns the loaded
//! pipelines (one per model pack, loaded on first use) and answers each task over a oneshot.
//! libtorch calls block for long stretches, so they never run on the async runtime.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tutti_shared::job::{JobSpec, ModelRef, SamplerName};
use tutti_shared::models::ModelRegistry;

use crate::model::pipeline::{GenerationParams, Pipeline};
use crate::model::sampler::SamplerKind;
use crate::model::state::DenoiseState;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model {0} is not installed on this worker")]
    UnknownModel(ModelRef),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("model packs: {0}")]
    Packs(String),
    #[error("the engine thread stopped")]
    Stopped,
}

impl EngineError {
    /// Whether another attempt (perhaps on another worker) might succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, EngineError::Model(ModelError::Input(_)))
    }

    pub fn code(&self) -> &'static str {
        match self {
            EngineError::UnknownModel(_) => "MODEL_NOT_INSTALLED",
            EngineError::Model(ModelError::Input(_)) => "INVALID_INPUT",
            EngineError::Model(_) => "MODEL_ERROR",
            EngineError::Packs(_) => "MODEL_PACKS",
            EngineError::Stopped => "WORKER_STOPPING",
        }
    }
}

/// How a denoise run ended.
pub enum DenoiseOutcome {
    /// Reached `to_step`: the checkpoint to store.
    Done(Vec<u8>),
    Cancelled,
}

/// Rendered audio of every variation.
pub struct Rendered {
    pub waveforms: Vec<Vec<f32>>,
    pub sample_rate: u32,
}

enum Command {
    Denoise {
        spec: JobSpec,
        from_step: usize,
        to_step: usize,
        checkpoint: Option<Vec<u8>>,
        cancel: Arc<AtomicBool>,
        progress: mpsc::UnboundedSender<usize>,
        reply: oneshot::Sender<Result<DenoiseOutcome, EngineError>>,
    },
    Vocode {
        spec: JobSpec,
        checkpoint: Vec<u8>,
        reply: oneshot::Sender<Result<Rendered, EngineError>>,
    },
}

/// A handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
}

pub fn sampler_kind(s: SamplerName) -> SamplerKind {
    match s {
        SamplerName::FlowEuler => SamplerKind::FlowEuler,
        SamplerName::Ddim => SamplerKind::Ddim,
        SamplerName::DpmSolverPp2m => SamplerKind::DpmSolverPp2m,
        SamplerName::CosineDpmSolverPp2m => SamplerKind::CosineDpmSolverPp2m,
    }
}

pub fn generation_params(spec: &JobSpec) -> GenerationParams {
    GenerationParams {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        controls: spec.controls,
        seed: spec.seed,
        steps: spec.steps as usize,
        guidance_scale: f64::from(spec.guidance_scale),
        sampler: sampler_kind(spec.sampler),
        variations: spec.variations as usize,
    }
}

impl Engine {
    /// Starts the engine thread over the packs under `models_dir`, on `device`.
    pub fn start(models_dir: PathBuf, device: tch::Device) -> Result<Self, EngineError> {
        let registry =
            ModelRegistry::scan(&models_dir).map_err(|e| EngineError::Packs(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<Command>(16);
        std::thread::Builder::new()
            .name("tutti-engine".into())
            .spawn(move || {
                let mut engine = EngineThread {
                    registry,
                    device,
                    loaded: HashMap::new(),
                };
                while let Some(cmd) = rx.blocking_recv() {
                    engine.handle(cmd);
                }
            })
            .map_err(|e| EngineError::Packs(format!("spawning the engine thread: {e}")))?;
        Ok(Self { tx })
    }

    pub async fn denoise(
        &self,
        spec: JobSpec,
        from_step: usize,
        to_step: usize,
        checkpoint: Option<Vec<u8>>,
        cancel: Arc<AtomicBool>,
        progress: mpsc::UnboundedSender<usize>,
    ) -> Result<DenoiseOutcome, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Denoise {
                spec,
                from_step,
                to_step,
                checkpoint,
                cancel,
                progress,
                reply,
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    pub async fn vocode(
        &self,
        spec: JobSpec,
        checkpoint: Vec<u8>,
    ) -> Result<Rendered, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Vocode {
                spec,
                checkpoint,
                reply,
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}

struct EngineThread {
    registry: ModelRegistry,
    device: tch::Device,
    loaded: HashMap<ModelRef, Pipeline>,
}

impl EngineThread {
    fn pipeline(&mut self, model: &ModelRef) -> Result<&Pipeline, EngineError> {
        if !self.loaded.contains_key(model) {
            let info = self
                .registry
                .resolve(&model.name, &model.version)
                .ok_or_else(|| EngineError::UnknownModel(model.clone()))?;
            tracing::info!(model = %model, dir = %info.dir.display(), device = ?self.device, "loading model pack");
            let p = Pipeline::load(&info.dir, self.device)?;
            self.loaded.insert(model.clone(), p);
        }
        self.loaded
            .get(model)
            .ok_or_else(|| EngineError::UnknownModel(model.clone()))
    }

    fn handle(&mut self, cmd: Command) {
        let _guard = tch::no_grad_guard();
        match cmd {
            Command::Denoise {
                spec,
                from_step,
                to_step,
                checkpoint,
                cancel,
                progress,
                reply,
            } => {
                let r = self.denoise(&spec, from_step, to_step, checkpoint, &cancel, &progress);
                let _ = reply.send(r);
            }
            Command::Vocode {
                spec,
                checkpoint,
                reply,
            } => {
                let r = self.vocode(&spec, &checkpoint);
                let _ = reply.send(r);
            }
        }
    }

    fn denoise(
        &mut self,
        spec: &JobSpec,
        from_step: usize,
        to_step: usize,
        checkpoint: Option<Vec<u8>>,
        cancel: &AtomicBool,
        progress: &mpsc::UnboundedSender<usize>,
    ) -> Result<DenoiseOutcome, EngineError> {
        let device = self.device;
        let pipeline = self.pipeline(&spec.model)?;
        let mut state = match checkpoint {
            None => pipeline.prepare(&generation_params(spec))?,
            Some(bytes) => DenoiseState::from_checkpoint(&bytes, device)?,
        };
        if state.step() != from_step {
            return Err(ModelError::Checkpoint(format!(
                "checkpoint is at step {}, the task starts at {from_step}",
                state.step()
            ))
            .into());
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(DenoiseOutcome::Cancelled);
        }
        // Cancellation is checked after every step: it lands within one denoising step.
        let reached = pipeline.denoise(&mut state, to_step, &mut |done| {
            let _ = progress.send(done);
            if cancel.load(Ordering::Relaxed) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if reached < to_step {
            return Ok(DenoiseOutcome::Cancelled);
        }
        Ok(DenoiseOutcome::Done(state.to_checkpoint()?))
    }

    fn vocode(&mut self, spec: &JobSpec, checkpoint: &[u8]) -> Result<Rendered, EngineError> {
        let device = self.device;
        let pipeline = self.pipeline(&spec.model)?;
        let state = DenoiseState::from_checkpoint(checkpoint, device)?;
        if !state.is_done() {
            return Err(ModelError::Checkpoint(format!(
                "vocode needs a finished latent; checkpoint is at step {} of {}",
                state.step(),
                state.total_steps()
            ))
            .into());
        }
        let waveforms = pipeline.render(&state)?;
        Ok(Rendered {
            waveforms,
            sample_rate: pipeline.config().model.sample_rate,
        })
    }
}
