//! The model on a dedicated OS thread: tasks arrive over a channel, the thread owns the loaded
//! pipelines (one per model pack, loaded on first use) and answers each task over a oneshot.
//! libtorch calls block for long stretches, so they never run on the async runtime.
//!
//! Continuous step batching (`thread`, by the rules in `policy`): the thread holds every denoise chunk in hand and runs one
//! denoiser forward per step for all chunks of the same pack and latent length (each at its own
//! timestep and guidance scale; `ServedModel::step_batch`, for packs of either family), at most `max_batch` per forward. New
//! chunks join, and finished or cancelled ones leave, at step boundaries. Chunks of other shapes
//! form their own batches, stepped in turn. Only same-length latents share a forward because
//! they are bit-identical batched or alone (padding a shorter latent changes float
//! reassociation in attention); so batching never changes a job's audio.
//!
//! A finished chunk's state stays in memory ([`HeldStates`]) so that the job's next chunk on
//! this worker skips the checkpoint read. A vocode task runs between two steps of the batch; on
//! CPU, vocodes of other classes than interactive run beside the step loop instead, on a
//! lower-priority thread (`vocoder`).

mod policy;
mod thread;
mod vocoder;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tutti_model::device::Precision;

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tutti_shared::job::{JobSpec, ModelRef, Priority};
use tutti_shared::messages::ErrorCode;
use tutti_shared::models::{ModelInfo, ModelRegistry};
use uuid::Uuid;

use self::thread::EngineThread;
use self::vocoder::Background;
use crate::held::{HeldStates, Holds};

use tutti_model::pipeline::GenerationParams;
use tutti_model::served::ServedModel;
use tutti_model::state::DenoiseState;
use tutti_model::ModelError;

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
    /// The held state was evicted between the runner's look and the engine's: read the
    /// checkpoint instead.
    #[error("the job's state is no longer held in memory")]
    NotHeld,
    /// A batched forward failed; every chunk in it gets this.
    #[error("batched step: {0}")]
    Step(String),
}

impl EngineError {
    /// Whether another attempt (perhaps on another worker) might succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, EngineError::Model(ModelError::Input(_)))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::UnknownModel(_) => ErrorCode::ModelNotInstalled,
            EngineError::Model(ModelError::Input(_)) => ErrorCode::InvalidInput,
            EngineError::Model(_) => ErrorCode::ModelError,
            EngineError::Packs(_) => ErrorCode::ModelPacks,
            EngineError::Stopped => ErrorCode::WorkerStopping,
            EngineError::NotHeld => ErrorCode::NotHeld,
            EngineError::Step(_) => ErrorCode::ModelError,
        }
    }
}

/// Where a denoise chunk or a vocode task starts.
pub enum Start {
    /// Step 0: encode the prompt and draw the noise.
    Fresh,
    /// Step 0 of an audio-to-audio job: as `Fresh`, the latent drawn from the job's init clip
    /// (decoded from its WAV) at the job's strength.
    FreshFrom(tutti_shared::audio::Pcm),
    /// The state this engine holds for the job (see [`Engine::holds`]).
    Held,
    /// Checkpoint bytes (from S3).
    Checkpoint(Vec<u8>),
}

/// One denoise chunk for the engine.
pub struct DenoiseRequest {
    pub job: Uuid,
    pub spec: JobSpec,
    pub from_step: usize,
    pub to_step: usize,
    pub start: Start,
    pub cancel: Arc<AtomicBool>,
    /// Steps done, after every step.
    pub progress: mpsc::UnboundedSender<usize>,
    /// The job's class: interactive chunks step first (`EngineOptions::interactive_first`).
    pub priority: Priority,
}

/// How a denoise run ended.
pub enum DenoiseOutcome {
    /// Reached `to_step`: the checkpoint to store.
    Done(Vec<u8>),
    Cancelled,
}

/// Rendered audio of every variation (channels interleaved frame by frame).
pub type Rendered = tutti_model::served::Audio;

/// How the engine batches and what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Most denoise chunks in one forward (1: one chunk at a time).
    pub max_batch: usize,
    /// Bytes of finished states kept for the jobs' next chunks (0: none; always the checkpoint).
    pub held_bytes: usize,
    /// Activation memory one forward may take, by `ServedModel::forward_bytes` (per family): a batch stops
    /// growing at `max_batch` chunks or at this budget, whichever comes first (one chunk always
    /// runs, whatever its size).
    pub batch_bytes: usize,
    /// Interactive chunks step in forwards of their own, the others in `YIELD_SHARE` of the
    /// time while any is in hand: on CPU, where a bigger batch costs proportionally more time.
    /// Off on CUDA, where a forward of 32 chunks costs about one, so all step together.
    pub interactive_first: bool,
    /// Interactive tasks of each kind the worker takes beyond its slots (its express lane), so an
    /// interactive job never waits for a batch chunk to end.
    pub express: usize,
    /// With `interactive_first`: how long a forward of other chunks may run, by their shapes'
    /// recent step cost (at least one chunk), since interactive work that arrives waits for the
    /// forward in progress. On CPU short forwards cost nothing: N chunks take N times one.
    pub other_forward: std::time::Duration,
    /// Vocodes of other classes than interactive run on a thread of their own at a lower CPU
    /// priority (see `vocoder`), instead of between two steps: on CPU, where one of a long clip
    /// takes as long as dozens of steps and cannot be split.
    pub background_vocodes: bool,
    /// The networks' precision (`auto`: f32 on CPU; on CUDA bf16, with Stable Audio's VAE in
    /// f16).
    pub precision: Precision,
}

/// Activations of one forward on CPU. Batching buys nothing there while a forward fits the
/// cache and costs once it does not: `tutti bench model --device cpu --batches 1,2,3,4,8` on a
/// 2-core EPYC with 32 MB of L3 gave 0.97-1.02x per chunk for 5 s clips (10.5 MB each) and
/// 1.01, 0.98, 0.83, 0.81, 0.78x for 10 s ones (26 MB each). 24 MB holds two 5 s clips or one
/// 10 s clip (one chunk always runs, whatever its size).
pub const CPU_BATCH_BYTES: usize = 24 << 20;

impl EngineOptions {
    /// The defaults for a device: 8 chunks, 256 MB of held latents and [`CPU_BATCH_BYTES`] of
    /// activations on CPU, 32, 2 GB and 16 GB on CUDA (where a forward of 32 small latents costs
    /// little more than one; 16 GB leaves most of an 80 GB card to the weights and the
    /// allocator's cache).
    pub fn default_for(device: tch::Device) -> Self {
        if device.is_cuda() {
            Self {
                max_batch: 32,
                held_bytes: 2048 << 20,
                batch_bytes: 16 << 30,
                interactive_first: false,
                express: 4,
                other_forward: std::time::Duration::MAX,
                background_vocodes: false,
                precision: Precision::Auto,
            }
        } else {
            Self {
                max_batch: 8,
                held_bytes: 256 << 20,
                batch_bytes: CPU_BATCH_BYTES,
                interactive_first: true,
                express: 2,
                other_forward: std::time::Duration::from_millis(10),
                background_vocodes: true,
                precision: Precision::Auto,
            }
        }
    }

    /// One chunk at a time and nothing held: the engine before continuous batching.
    pub fn sequential() -> Self {
        Self {
            max_batch: 1,
            held_bytes: 0,
            batch_bytes: usize::MAX,
            interactive_first: false,
            express: 0,
            other_forward: std::time::Duration::MAX,
            background_vocodes: false,
            precision: Precision::Auto,
        }
    }
}

/// A task for the engine thread, with the span of the task it serves (the thread's log lines
/// for it carry the job's trace).
enum Command {
    Denoise {
        req: DenoiseRequest,
        reply: oneshot::Sender<Result<DenoiseOutcome, EngineError>>,
        sent: Instant,
        span: tracing::Span,
    },
    Vocode(Vocode),
}

/// A vocode task waiting for the step loop.
struct Vocode {
    job: Uuid,
    spec: JobSpec,
    start: Start,
    priority: Priority,
    reply: oneshot::Sender<Result<Rendered, EngineError>>,
    span: tracing::Span,
}

/// Counters of the step loop since the engine started.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Denoiser forwards run.
    pub forwards: AtomicU64,
    /// Chunk-steps they advanced (a forward over 3 chunks advances 3).
    pub chunk_steps: AtomicU64,
    /// Vocodes run on the background vocoder thread (`EngineOptions::background_vocodes`).
    pub background_vocodes: AtomicU64,
}

/// A handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    holds: Holds,
    options: EngineOptions,
    stats: Arc<EngineStats>,
    device: tch::Device,
    /// The packs it serves, `name@version`.
    models: Arc<[String]>,
}

pub fn generation_params(spec: &JobSpec) -> GenerationParams {
    GenerationParams {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        controls: spec.controls,
        seed: spec.seed,
        steps: spec.steps as usize,
        guidance_scale: f64::from(spec.guidance_scale),
        sampler: spec.sampler,
        variations: spec.variations as usize,
        song: spec.song.clone(),
        varispeed: None,
    }
}

impl Engine {
    /// Starts the engine thread over the packs under `models_dir`, on `device`.
    pub fn start(
        models_dir: PathBuf,
        device: tch::Device,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        let registry =
            ModelRegistry::scan(&models_dir).map_err(|e| EngineError::Packs(e.to_string()))?;
        let models = registry
            .all()
            .map(|m| format!("{}@{}", m.name, m.version))
            .collect();
        let options = EngineOptions {
            max_batch: options.max_batch.max(1),
            ..options
        };
        let held = HeldStates::new(options.held_bytes);
        let holds = held.holds();
        let (tx, rx) = mpsc::channel::<Command>(64);
        let stats = Arc::new(EngineStats::default());
        let thread_stats = Arc::clone(&stats);
        let background = if options.background_vocodes {
            Some(Background::start(
                registry.clone(),
                device,
                options.precision,
                Arc::clone(&stats),
            )?)
        } else {
            None
        };
        std::thread::Builder::new()
            .name("tutti-engine".into())
            .spawn(move || {
                let _guard = tch::no_grad_guard();
                EngineThread::new(
                    rx,
                    background,
                    registry,
                    device,
                    options,
                    held,
                    thread_stats,
                )
                .run()
            })
            .map_err(|e| EngineError::Packs(format!("spawning the engine thread: {e}")))?;
        Ok(Self {
            tx,
            holds,
            options,
            stats,
            device,
            models,
        })
    }

    pub fn options(&self) -> EngineOptions {
        self.options
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Where the model runs, as operators read it: `cpu`, `cuda:0`, `mps`, `vulkan`.
    pub fn device_name(&self) -> String {
        device_name(self.device)
    }

    /// The model packs it serves (`name@version`), as heartbeats tell the catalogue.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The jobs whose latest state this engine holds, with their steps.
    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    /// Runs one denoise chunk in the step batch; answers when it reached `to_step`, was
    /// cancelled or failed. `Err(NotHeld)` for `Start::Held` means: retry from the checkpoint.
    pub async fn denoise(&self, req: DenoiseRequest) -> Result<DenoiseOutcome, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Denoise {
                req,
                reply,
                sent: Instant::now(),
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Decodes and vocodes a finished job (`start`: its held state or its last checkpoint).
    /// `priority`: the job's class; while interactive chunks are in hand on a device that runs
    /// them first, other vocodes wait for the others' share of the step loop.
    pub async fn vocode(
        &self,
        job: Uuid,
        spec: JobSpec,
        start: Start,
        priority: Priority,
    ) -> Result<Rendered, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Vocode(Vocode {
                job,
                spec,
                start,
                priority,
                reply,
                span: tracing::Span::current(),
            }))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}

pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

/// What `load` makes of `model`'s pack folder, kept in `loaded` from the first use on.
pub(crate) fn load_once<'a, T>(
    loaded: &'a mut HashMap<ModelRef, T>,
    registry: &ModelRegistry,
    model: &ModelRef,
    load: impl FnOnce(&ModelInfo) -> Result<T, ModelError>,
) -> Result<&'a T, EngineError> {
    if !loaded.contains_key(model) {
        let info = registry
            .resolve(&model.name, &model.version)
            .ok_or_else(|| EngineError::UnknownModel(model.clone()))?;
        loaded.insert(model.clone(), load(info)?);
    }
    loaded
        .get(model)
        .ok_or_else(|| EngineError::UnknownModel(model.clone()))
}

/// The final stage of a finished state, by the pack's family (decode and vocode a mel pack's
/// latent; decode a waveform-VAE pack's straight to audio).
fn render(model: &ServedModel, state: &DenoiseState) -> Result<Rendered, EngineError> {
    Ok(model.render(state)?)
}
