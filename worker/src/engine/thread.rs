//! The engine thread's step loop: admits chunks and vocodes at step boundaries, runs batched
//! forwards by the policy (`policy`), answers each task, and hands other classes' vocodes to the
//! background vocoder where the device runs interactive work first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tutti_model::pipeline::BatchShape;
use tutti_model::served::ServedModel;
use tutti_model::state::DenoiseState;
use tutti_model::ModelError;
use tutti_shared::job::{JobSpec, ModelRef, Priority};
use tutti_shared::metrics::names;
use tutti_shared::models::ModelRegistry;
use uuid::Uuid;

use super::policy::{batch_sizes, Shares, YIELD_SHARE};
use super::vocoder::{self, Background};
use super::{
    generation_params, load_once, render, Command, DenoiseOutcome, DenoiseRequest, EngineError,
    EngineOptions, EngineStats, Rendered, Start, Vocode,
};
use crate::held::HeldStates;

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
    /// Its share of a forward's activation memory (`ServedModel::forward_bytes`).
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
    /// The span of the task this chunk serves.
    span: tracing::Span,
}

pub(super) struct EngineThread {
    rx: mpsc::Receiver<Command>,
    /// Where other classes' vocodes run, with `EngineOptions::background_vocodes`.
    background: Option<Background>,
    registry: ModelRegistry,
    device: tch::Device,
    options: EngineOptions,
    loaded: HashMap<ModelRef, ServedModel>,
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
    pub(super) fn new(
        rx: mpsc::Receiver<Command>,
        background: Option<Background>,
        registry: ModelRegistry,
        device: tch::Device,
        options: EngineOptions,
        held: HeldStates,
        stats: Arc<EngineStats>,
    ) -> Self {
        Self {
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
            stats,
        }
    }

    pub(super) fn run(mut self) {
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

    fn pipeline(&mut self, model: &ModelRef) -> Result<&ServedModel, EngineError> {
        let (device, precision) = (self.device, self.options.precision);
        load_once(&mut self.loaded, &self.registry, model, |info| {
            let served = ServedModel::open(info, device, precision)?;
            tracing::info!(model = %model, dir = %info.dir.display(), device = ?device, family = served.family(), "loaded model pack");
            Ok(served)
        })
    }

    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Denoise {
                req,
                reply,
                sent,
                span,
            } => {
                let _in_task = span.clone().entered();
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
                            span,
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
            Start::FreshFrom(pcm) => {
                let strength = spec
                    .init_audio
                    .as_ref()
                    .map_or(1.0, |i| f64::from(i.strength));
                let params = generation_params(spec);
                (pipeline.prepare_from_pcm(&params, &pcm, strength)?, "fresh")
            }
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
        let _in_task = a.span.enter();
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
            let r = v.span.in_scope(|| self.vocode(v.job, &v.spec, v.start));
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
        let _in_task = v.span.clone().entered();
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
