//! The model on a dedicated OS thread: tasks arrive over a channel, the thread owns the loaded
//! pipelines (one per model pack, loaded on first use) and answers each task over a oneshot.
//! libtorch calls block for long stretches, so they never run on the async runtime.
//!
//! Continuous step batching: the thread holds every denoise chunk in hand and runs one
//! denoiser forward per step for all chunks of the same pack and latent length (each at its own
//! timestep and guidance scale; `Pipeline::step_batch`), at most `max_batch` per forward. New
//! chunks join, and finished or cancelled ones leave, at step boundaries. Chunks of other shapes
//! form their own batches, stepped in turn. Only same-length latents share a forward because
//! they are bit-identical batched or alone (padding a shorter latent changes float
//! reassociation in attention); so batching never changes a job's audio.
//!
//! A finished chunk's state stays in memory ([`HeldStates`]) so that the job's next chunk on
//! this worker skips the checkpoint read. A vocode task runs between two steps of the batch; on
//! CPU, vocodes of other classes than interactive run beside the step loop instead, on a
//! lower-priority thread (`vocoder`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tutti_shared::job::{JobSpec, ModelRef, Priority, SamplerName};
use tutti_shared::metrics::names;
use tutti_shared::models::ModelRegistry;
use uuid::Uuid;

use crate::held::{HeldStates, Holds};
use crate::vocoder::{self, Background};

use tutti_model::pipeline::{BatchShape, GenerationParams, Pipeline};
use tutti_model::sampler::SamplerKind;
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

    pub fn code(&self) -> &'static str {
        match self {
            EngineError::UnknownModel(_) => "MODEL_NOT_INSTALLED",
            EngineError::Model(ModelError::Input(_)) => "INVALID_INPUT",
            EngineError::Model(_) => "MODEL_ERROR",
            EngineError::Packs(_) => "MODEL_PACKS",
            EngineError::Stopped => "WORKER_STOPPING",
            EngineError::NotHeld => "NOT_HELD",
            EngineError::Step(_) => "MODEL_ERROR",
        }
    }
}

/// Where a denoise chunk or a vocode task starts.
pub enum Start {
    /// Step 0: encode the prompt and draw the noise.
    Fresh,
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

/// Rendered audio of every variation.
pub struct Rendered {
    pub waveforms: Vec<Vec<f32>>,
    pub sample_rate: u32,
}

/// How the engine batches and what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Most denoise chunks in one forward (1: one chunk at a time).
    pub max_batch: usize,
    /// Bytes of finished states kept for the jobs' next chunks (0: none; always the checkpoint).
    pub held_bytes: usize,
    /// Activation memory one forward may take, by `Pipeline::forward_bytes`: a batch stops
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
        }
    }
}

enum Command {
    Denoise {
        req: DenoiseRequest,
        reply: oneshot::Sender<Result<DenoiseOutcome, EngineError>>,
        sent: Instant,
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
    pub fn start(
        models_dir: PathBuf,
        device: tch::Device,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        let registry =
            ModelRegistry::scan(&models_dir).map_err(|e| EngineError::Packs(e.to_string()))?;
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
                Arc::clone(&stats),
            )?)
        } else {
            None
        };
        std::thread::Builder::new()
            .name("tutti-engine".into())
            .spawn(move || {
                let _guard = tch::no_grad_guard();
                EngineThread {
                    rx,
                    background,
                    registry,
                    device,
                    options,
                    loaded: HashMap::new(),
                    active: Vec::new(),
                    vocodes: Default::default(),
                    held,
                    steps_per_second: 0.0,
                    step_cost: HashMap::new(),
                    vocode_seconds: 0.0,
                    shares: Shares::default(),
                    stats: thread_stats,
                }
                .run()
            })
            .map_err(|e| EngineError::Packs(format!("spawning the engine thread: {e}")))?;
        Ok(Self {
            tx,
            holds,
            options,
            stats,
        })
    }

    pub fn options(&self) -> EngineOptions {
        self.options
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
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
            }))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}

/// Splits chunks (their `forward_bytes`, in order) into consecutive forwards: each takes chunks
/// while it holds fewer than `max_batch` and their bytes stay within `budget`; a chunk over the
/// budget on its own still runs, alone.
fn batch_sizes(bytes: &[usize], max_batch: usize, budget: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let (mut n, mut sum) = (0usize, 0usize);
    for &b in bytes {
        if n > 0 && (n == max_batch.max(1) || sum.saturating_add(b) > budget) {
            sizes.push(n);
            (n, sum) = (0, 0);
        }
        n += 1;
        sum = sum.saturating_add(b);
    }
    if n > 0 {
        sizes.push(n);
    }
    sizes
}

/// Chunks that may share a forward: same pack, same latent length and text bucket (so a
/// chunk's result does not depend on its company; see `pipeline`'s "Batch invariance").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BatchKey {
    model: ModelRef,
    shape: BatchShape,
}

/// A chunk in the step batch.
struct Active {
    job: Uuid,
    key: BatchKey,
    /// Its share of a forward's activation memory (`Pipeline::forward_bytes`).
    bytes: usize,
    state: DenoiseState,
    to_step: usize,
    cancel: Arc<AtomicBool>,
    progress: mpsc::UnboundedSender<usize>,
    reply: oneshot::Sender<Result<DenoiseOutcome, EngineError>>,
    failed: Option<String>,
    priority: Priority,
    /// Stepped in this round.
    chosen: bool,
    /// When the request was sent, and when it joined the batch.
    sent: Instant,
    admitted: Instant,
}

/// The share of the step loop's time that other chunks get while interactive ones are in hand
/// (on devices where batching costs time: CPU).
const YIELD_SHARE: f64 = 0.1;

/// Seconds the step loop spent on interactive and on other chunks since interactive work came.
#[derive(Debug, Default)]
struct Shares {
    urgent: f64,
    other: f64,
}

struct EngineThread {
    rx: mpsc::Receiver<Command>,
    /// Where other classes' vocodes run, with `EngineOptions::background_vocodes`.
    background: Option<Background>,
    registry: ModelRegistry,
    device: tch::Device,
    options: EngineOptions,
    loaded: HashMap<ModelRef, Pipeline>,
    active: Vec<Active>,
    /// Vocode tasks not yet run, in arrival order.
    vocodes: std::collections::VecDeque<Vocode>,
    held: HeldStates,
    /// Smoothed chunk-steps per second of the step loop.
    steps_per_second: f64,
    /// Smoothed seconds per chunk-step of each shape (a 30 s clip's step costs many 2 s ones').
    step_cost: HashMap<BatchKey, f64>,
    /// Smoothed seconds of one vocode.
    vocode_seconds: f64,
    shares: Shares,
    stats: Arc<EngineStats>,
}

impl EngineThread {
    fn run(mut self) {
        loop {
            // Idle: wait for work. Busy: take what has arrived, at this step boundary.
            if self.active.is_empty() && self.vocodes.is_empty() {
                match self.rx.blocking_recv() {
                    Some(cmd) => self.accept(cmd),
                    None => return,
                }
            }
            self.take_arrivals();
            self.step_round();
            metrics::gauge!(names::BATCH_OCCUPANCY).set(
                self.active
                    .iter()
                    .map(|a| a.state.params().variations as f64)
                    .sum::<f64>(),
            );
        }
    }

    /// Accepts the commands that have arrived, without waiting.
    fn take_arrivals(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            self.accept(cmd);
        }
    }

    /// Whether interactive work is in hand and steps first (`EngineOptions::interactive_first`).
    fn urgent(&self) -> bool {
        self.options.interactive_first
            && (self
                .active
                .iter()
                .any(|a| a.priority == Priority::Interactive)
                || self
                    .vocodes
                    .iter()
                    .any(|v| v.priority == Priority::Interactive))
    }

    /// Between two forwards or vocodes of other classes: takes what has arrived and tells
    /// whether interactive work is now waiting, so that the round stops there and the next
    /// one runs it first (instead of it waiting for every other chunk and vocode in hand).
    fn interactive_arrived(&mut self) -> bool {
        self.take_arrivals();
        self.urgent()
    }

    fn pipeline(&mut self, model: &ModelRef) -> Result<&Pipeline, EngineError> {
        let device = self.device;
        load_once(&mut self.loaded, &self.registry, model, |dir| {
            tracing::info!(model = %model, dir = %dir.display(), device = ?device, "loading model pack");
            Pipeline::load(dir, device)
        })
    }

    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Denoise { req, reply, sent } => {
                let DenoiseRequest {
                    job,
                    spec,
                    from_step,
                    to_step,
                    start,
                    cancel,
                    progress,
                    priority,
                } = req;
                let begun = Instant::now();
                let admitted = self.admit(job, &spec, from_step, to_step, start);
                if priority != Priority::Interactive {
                    // A fresh chunk encodes its prompt here: the others' time, while
                    // interactive work is in hand.
                    self.shares.other += begun.elapsed().as_secs_f64();
                }
                match admitted {
                    Ok(state) if cancel.load(Ordering::Relaxed) => {
                        drop(state);
                        let _ = reply.send(Ok(DenoiseOutcome::Cancelled));
                    }
                    Ok(state) => {
                        let (shape, bytes) = match self.loaded.get(&spec.model) {
                            Some(p) => (p.batch_shape(&state), p.forward_bytes(&state)),
                            None => {
                                let _ = reply.send(Err(EngineError::UnknownModel(spec.model)));
                                return;
                            }
                        };
                        let a = Active {
                            job,
                            key: BatchKey {
                                model: spec.model.clone(),
                                shape,
                            },
                            bytes,
                            state,
                            to_step,
                            cancel,
                            progress,
                            reply,
                            failed: None,
                            priority,
                            chosen: false,
                            sent,
                            admitted: Instant::now(),
                        };
                        if a.state.step() == to_step {
                            self.finish(a);
                        } else {
                            self.active.push(a);
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Vocode(v) => match &self.background {
                Some(_) if v.priority != Priority::Interactive => self.vocode_beside(v),
                _ => self.vocodes.push_back(v),
            },
        }
    }

    /// The state a chunk starts from, checked against the chunk's steps.
    fn restore(
        &mut self,
        job: Uuid,
        spec: &JobSpec,
        step: usize,
        start: Start,
    ) -> Result<DenoiseState, EngineError> {
        let device = self.device;
        let pipeline = self.pipeline(&spec.model)?;
        let (state, source) = match start {
            Start::Fresh => (pipeline.prepare(&generation_params(spec))?, "fresh"),
            Start::Checkpoint(bytes) => {
                (DenoiseState::from_checkpoint(&bytes, device)?, "checkpoint")
            }
            Start::Held => (
                self.held.take(job, step).ok_or(EngineError::NotHeld)?,
                "memory",
            ),
        };
        if source != "fresh" {
            metrics::counter!(names::WORKER_CHUNK_STARTS, "source" => source).increment(1);
        }
        if state.step() != step {
            return Err(ModelError::Checkpoint(format!(
                "checkpoint is at step {}, the task starts at {step}",
                state.step()
            ))
            .into());
        }
        Ok(state)
    }

    fn admit(
        &mut self,
        job: Uuid,
        spec: &JobSpec,
        from_step: usize,
        to_step: usize,
        start: Start,
    ) -> Result<DenoiseState, EngineError> {
        let state = self.restore(job, spec, from_step, start)?;
        if to_step > state.total_steps() || to_step < from_step {
            return Err(ModelError::Input(format!(
                "cannot denoise from step {from_step} to step {to_step} of {}",
                state.total_steps()
            ))
            .into());
        }
        Ok(state)
    }

    /// Steps up to `limit` chunks that pass `pick` (in arrival order), in forwards grouped by
    /// shape; returns the seconds spent. With `short`, forwards last about
    /// `EngineOptions::other_forward` at most, and it stops after the forward during which interactive
    /// work arrived (the chunks not stepped stay unchosen): for other classes' chunks on
    /// devices that run interactive ones first.
    fn step_some(&mut self, pick: impl Fn(&Active) -> bool, limit: usize, short: bool) -> f64 {
        let begun = Instant::now();
        let mut keys: Vec<BatchKey> = Vec::new();
        let mut chosen = 0usize;
        for a in self.active.iter_mut() {
            a.chosen = chosen < limit && pick(a);
            if a.chosen {
                chosen += 1;
                if !keys.contains(&a.key) {
                    keys.push(a.key.clone());
                }
            }
        }
        // The forwards, as indices into `active` (arrivals are appended, so they stay valid).
        let mut forwards: Vec<Vec<usize>> = Vec::new();
        for key in keys {
            let members: Vec<usize> = (0..self.active.len())
                .filter(|&i| self.active[i].chosen && self.active[i].key == key)
                .collect();
            let sizes: Vec<usize> = members.iter().map(|&i| self.active[i].bytes).collect();
            let mut rest = members.as_slice();
            let most = match self.step_cost.get(&key) {
                Some(cost) if short => ((self.options.other_forward.as_secs_f64() / cost).floor()
                    as usize)
                    .clamp(1, self.options.max_batch),
                _ => self.options.max_batch,
            };
            for n in batch_sizes(&sizes, most, self.options.batch_bytes) {
                let (batch, tail) = rest.split_at(n);
                forwards.push(batch.to_vec());
                rest = tail;
            }
        }
        let mut forwards = forwards.into_iter();
        for batch in forwards.by_ref() {
            self.forward(&batch);
            if short && self.interactive_arrived() {
                break;
            }
        }
        // Not stepped this round: no progress to report for them.
        for batch in forwards {
            for i in batch {
                self.active[i].chosen = false;
            }
        }
        begun.elapsed().as_secs_f64()
    }

    /// One denoiser forward over the chunks at `batch` (indices into `active`, same key).
    fn forward(&mut self, batch: &[usize]) {
        let Some(first) = batch.first() else {
            return;
        };
        let Some(pipeline) = self.loaded.get(&self.active[*first].key.model) else {
            return;
        };
        let started = Instant::now();
        let mut states: Vec<&mut DenoiseState> = self
            .active
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| batch.contains(i))
            .map(|(_, a)| &mut a.state)
            .collect();
        let result = pipeline.step_batch(&mut states);
        let n = batch.len();
        metrics::gauge!(names::WORKER_BATCH_OCCUPANCY).set(n as f64);
        match result {
            Ok(()) => {
                let took = started.elapsed().as_secs_f64().max(1e-9);
                let per_step = took / n as f64;
                let key = self.active[*first].key.clone();
                self.step_cost
                    .entry(key)
                    .and_modify(|c| *c = 0.8 * *c + 0.2 * per_step)
                    .or_insert(per_step);
                let rate = n as f64 / took;
                self.steps_per_second = if self.steps_per_second == 0.0 {
                    rate
                } else {
                    0.8 * self.steps_per_second + 0.2 * rate
                };
                metrics::gauge!(names::WORKER_STEPS_PER_SECOND).set(self.steps_per_second);
                metrics::counter!(names::STEPS).increment(n as u64);
                self.stats.forwards.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .chunk_steps
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                let msg = e.to_string();
                for &i in batch {
                    self.active[i].failed = Some(msg.clone());
                }
            }
        }
    }

    /// How many of the other classes' chunks, in arrival order, step within `budget` seconds
    /// at their shapes' recent step cost; at least one once there is any budget and the first
    /// one's cost is still unknown.
    fn others_within(&self, budget: f64) -> usize {
        if budget <= 0.0 {
            return 0;
        }
        let mut spent = 0.0;
        let mut fits = 0;
        for a in self
            .active
            .iter()
            .filter(|a| a.priority != Priority::Interactive)
        {
            spent += self.step_cost.get(&a.key).copied().unwrap_or(0.0);
            if spent > budget {
                break;
            }
            fits += 1;
            if spent == 0.0 {
                // Unknown cost: this one forward measures it.
                break;
            }
        }
        fits
    }

    /// One step for every chunk in hand: one forward per batch of up to `max_batch` chunks of
    /// the same shape (within the memory budget). While interactive chunks are in hand on a
    /// device that runs them first, the others get at most `YIELD_SHARE` of the step loop's
    /// time (so they never stop, and an interactive job runs at nearly its idle speed). Then
    /// finished, cancelled and failed chunks leave the batch.
    fn step_round(&mut self) {
        if self.urgent() {
            let (mut spent, _) = self.run_vocodes(|v| v.priority == Priority::Interactive, false);
            spent += self.step_some(|a| a.priority == Priority::Interactive, usize::MAX, false);
            self.shares.urgent += spent;
            let budget = YIELD_SHARE * self.shares.urgent - self.shares.other;
            let fits = self.others_within(budget);
            if fits > 0 {
                let spent = self.step_some(|a| a.priority != Priority::Interactive, fits, true);
                self.shares.other += spent;
            }
            // A waiting vocode of another class is a chunk of its own: one per round, once the
            // budget left covers one (at the recent vocode time; any budget before the first),
            // so that it does not overrun the share by a whole vocode at every interactive task.
            if YIELD_SHARE * self.shares.urgent - self.shares.other > self.vocode_seconds {
                let mut first = true;
                let (spent, _) = self.run_vocodes(|_| std::mem::take(&mut first), false);
                self.shares.other += spent;
            }
        } else {
            // Interactive work that arrives meanwhile ends this round after the forward or
            // vocode in progress (on devices that run it first).
            self.shares = Shares::default();
            let short = self.options.interactive_first;
            let (_, stopped) = self.run_vocodes(|_| true, short);
            if !stopped {
                self.step_some(|_| true, usize::MAX, short);
            }
        }
        let mut kept = Vec::with_capacity(self.active.len());
        for a in std::mem::take(&mut self.active) {
            if let Some(msg) = a.failed {
                let _ = a.reply.send(Err(EngineError::Step(msg)));
                continue;
            }
            let step = a.state.step();
            if a.chosen {
                let _ = a.progress.send(step);
            }
            if a.cancel.load(Ordering::Relaxed) {
                // Cancellation lands within one denoising step.
                let _ = a.reply.send(Ok(DenoiseOutcome::Cancelled));
                continue;
            }
            if step < a.to_step {
                kept.push(a);
            } else {
                self.finish(a);
            }
        }
        self.active = kept;
    }

    /// A chunk reached its last step: its checkpoint goes back to the runner (which uploads it
    /// while this thread steps the others) and its state stays held for the next chunk.
    fn finish(&mut self, a: Active) {
        tracing::debug!(
            job_id = %a.job,
            priority = a.priority.as_str(),
            waited_ms = (a.admitted - a.sent).as_millis() as u64,
            stepped_ms = a.admitted.elapsed().as_millis() as u64,
            "chunk finished in the engine"
        );
        let r = a.state.to_checkpoint().map_err(EngineError::from);
        if r.is_ok() {
            self.held.insert(a.job, a.state);
        }
        let _ = a.reply.send(r.map(DenoiseOutcome::Done));
    }

    /// Runs the waiting vocodes that pass `pick` (called once per vocode, in order); returns
    /// the seconds spent and whether it stopped early because interactive work arrived (with
    /// `yield_to_interactive`; the vocodes not run keep their order).
    fn run_vocodes(
        &mut self,
        mut pick: impl FnMut(&Vocode) -> bool,
        yield_to_interactive: bool,
    ) -> (f64, bool) {
        let begun = Instant::now();
        let mut waiting = std::mem::take(&mut self.vocodes);
        let mut kept = std::collections::VecDeque::new();
        let mut stopped = false;
        while let Some(v) = waiting.pop_front() {
            if !pick(&v) {
                kept.push_back(v);
                continue;
            }
            let started = Instant::now();
            let r = self.vocode(v.job, &v.spec, v.start);
            let took = started.elapsed().as_secs_f64();
            self.vocode_seconds = if self.vocode_seconds == 0.0 {
                took
            } else {
                0.8 * self.vocode_seconds + 0.2 * took
            };
            let _ = v.reply.send(r);
            if yield_to_interactive && self.interactive_arrived() {
                stopped = true;
                break;
            }
        }
        // Then the ones not reached, then the ones that arrived meanwhile.
        kept.extend(waiting);
        kept.append(&mut self.vocodes);
        self.vocodes = kept;
        (begun.elapsed().as_secs_f64(), stopped)
    }

    /// Hands a vocode to the background vocoder with the job's finished state (held or from its
    /// checkpoint); runs it here if that thread is gone.
    fn vocode_beside(&mut self, v: Vocode) {
        if self.background.is_none() {
            self.vocodes.push_back(v);
            return;
        }
        let state = match self.finished_state(v.job, &v.spec, v.start) {
            Ok(state) => state,
            Err(e) => {
                let _ = v.reply.send(Err(e));
                return;
            }
        };
        let job = vocoder::Job {
            spec: v.spec,
            state,
            reply: v.reply,
        };
        let sent = match &self.background {
            Some(background) => background.send(job),
            None => Err(Box::new(job)),
        };
        if let Err(job) = sent {
            tracing::warn!("the vocoder thread stopped; vocoding on the step loop");
            self.background = None;
            let r = self
                .pipeline(&job.spec.model)
                .and_then(|p| render(p, &job.state));
            let _ = job.reply.send(r);
        }
    }

    /// The job's finished state, which it lets go of (the job ends with its vocode).
    fn finished_state(
        &mut self,
        job: Uuid,
        spec: &JobSpec,
        start: Start,
    ) -> Result<DenoiseState, EngineError> {
        let state = self.restore(job, spec, spec.steps as usize, start)?;
        if !state.is_done() {
            return Err(ModelError::Checkpoint(format!(
                "vocode needs a finished latent; checkpoint is at step {} of {}",
                state.step(),
                state.total_steps()
            ))
            .into());
        }
        self.held.remove(job);
        Ok(state)
    }

    fn vocode(&mut self, job: Uuid, spec: &JobSpec, start: Start) -> Result<Rendered, EngineError> {
        let state = self.finished_state(job, spec, start)?;
        render(self.pipeline(&spec.model)?, &state)
    }
}

/// What `load` makes of `model`'s pack folder, kept in `loaded` from the first use on.
pub(crate) fn load_once<'a, T>(
    loaded: &'a mut HashMap<ModelRef, T>,
    registry: &ModelRegistry,
    model: &ModelRef,
    load: impl FnOnce(&std::path::Path) -> Result<T, ModelError>,
) -> Result<&'a T, EngineError> {
    if !loaded.contains_key(model) {
        let info = registry
            .resolve(&model.name, &model.version)
            .ok_or_else(|| EngineError::UnknownModel(model.clone()))?;
        loaded.insert(model.clone(), load(&info.dir)?);
    }
    loaded
        .get(model)
        .ok_or_else(|| EngineError::UnknownModel(model.clone()))
}

/// Decodes and vocodes a finished state.
fn render(pipeline: &Pipeline, state: &DenoiseState) -> Result<Rendered, EngineError> {
    let waveforms = pipeline.render(state)?;
    Ok(Rendered {
        waveforms,
        sample_rate: pipeline.config().model.sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::batch_sizes;

    #[test]
    fn batches_stop_at_the_count_or_the_memory_budget() {
        // Count only.
        assert_eq!(batch_sizes(&[1; 10], 4, usize::MAX), vec![4, 4, 2]);
        // Budget only: 3 + 3 fits 7, a third does not.
        assert_eq!(batch_sizes(&[3; 5], 32, 7), vec![2, 2, 1]);
        // Mixed sizes, in order; a chunk over the budget runs alone.
        assert_eq!(batch_sizes(&[2, 2, 9, 1, 1], 8, 5), vec![2, 1, 2]);
        assert_eq!(batch_sizes(&[], 8, 5), Vec::<usize>::new());
        assert_eq!(batch_sizes(&[5, 5], 0, usize::MAX), vec![1, 1]);
    }
}
