//! Vocodes of other classes than interactive, on a thread of their own at a lower CPU priority,
//! for devices that run interactive chunks first (CPU; `EngineOptions::background_vocodes`).
//!
//! A vocode cannot be split, and on CPU one of a long clip takes as long as dozens of denoise
//! steps: run on the step loop's thread, it made interactive work that arrived wait for it
//! (100-150 ms for a 10 s clip under `tutti bench farm --backfill-seconds 10`). Here it runs
//! beside the step loop, and the OS gives the step loop the CPU first. Nothing interactive ever
//! waits for this thread, which would invert the priorities: interactive vocodes stay on the
//! step loop.
//!
//! The thread loads its own copy of each pack's final stage (`ServedRenderer`: a mel pack's decoder and vocoder, a Stable Audio pack's VAE decoder; on the first
//! vocode it gets): libtorch modules are not `Sync`, the step loop's copy stays locked for whole
//! forwards, and a render half shared under a lock of its own would make an interactive vocode
//! on the step loop wait for a niced render (priority inversion).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use tutti_model::device::Precision;

use tokio::sync::oneshot;
use tutti_shared::job::{JobSpec, ModelRef};
use tutti_shared::models::ModelRegistry;

use super::{load_once, EngineError, EngineStats, Rendered};

use tutti_model::served::ServedRenderer;
use tutti_model::state::DenoiseState;

/// How much lower than the step loop the vocoder thread runs (Linux nice values: at 10 a
/// thread gets about a tenth of the CPU a busy nice-0 thread gets).
const NICE: i32 = 10;

/// A finished job's state to vocode.
pub(crate) struct Job {
    pub(crate) spec: JobSpec,
    pub(crate) state: DenoiseState,
    pub(crate) reply: oneshot::Sender<Result<Rendered, EngineError>>,
}

/// The handle of the vocoder thread; the thread ends when the handle is dropped.
pub(crate) struct Background {
    tx: mpsc::Sender<Job>,
}

impl Background {
    pub(crate) fn start(
        registry: ModelRegistry,
        device: tch::Device,
        precision: Precision,
        stats: Arc<EngineStats>,
    ) -> Result<Self, EngineError> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tutti-vocoder".into())
            .spawn(move || run(rx, registry, device, precision, stats))
            .map_err(|e| EngineError::Packs(format!("spawning the vocoder thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Queues a vocode; gives it back if the thread is gone.
    pub(crate) fn send(&self, job: Job) -> Result<(), Box<Job>> {
        self.tx.send(job).map_err(|e| Box::new(e.0))
    }
}

fn run(
    rx: mpsc::Receiver<Job>,
    registry: ModelRegistry,
    device: tch::Device,
    precision: Precision,
    stats: Arc<EngineStats>,
) {
    let _guard = tch::no_grad_guard();
    // Per thread on Linux: the id of this thread, not of the process.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::warn!(error = %e, "could not lower the vocoder thread's priority");
    }
    let mut loaded: HashMap<ModelRef, ServedRenderer> = HashMap::new();
    while let Ok(job) = rx.recv() {
        let model = &job.spec.model;
        let rendered = load_once(&mut loaded, &registry, model, |info| {
            tracing::info!(model = %model, dir = %info.dir.display(), "loading a pack's decoder and vocoder for background vocodes");
            ServedRenderer::open(info, device, precision)
        })
        .and_then(|r| Ok(r.render(&job.state)?));
        stats.background_vocodes.fetch_add(1, Ordering::Relaxed);
        let _ = job.reply.send(rendered);
    }
}
