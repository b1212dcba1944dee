//! `tutti bench serve`: jobs per hour of one worker's engine with continuous step batching
//! against one chunk at a time, on the same seeded arrival trace.
//!
//! The trace: `jobs` jobs arriving at exponential intervals (mean `arrival_ms`), each with a
//! duration and a step count drawn from the given mixes, split into chunks of `chunk_steps`
//! like the coordinator splits them, then vocoded. Each job runs as the farm runs it: chunk
//! after chunk, each chunk a request to the engine, at most `max_batch` chunks in hand (the
//! worker's prefetch), then the vocode. Both runs keep finished chunks' states in memory, so
//! the comparison is batching alone (no S3 here: the benchmark measures the worker's compute).
//! Jobs per hour: jobs over the time from the first arrival to the last job's end.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, Semaphore};
use tutti_shared::job::{chunk_ranges, AudioFormat, JobSpec, ModelRef, SamplerKind};
use tutti_shared::prompt::Controls;
use uuid::Uuid;

use crate::host::read_loadavg;
use crate::model::{write_random_pack, PackSource};
use tutti_model::{device, ModelError, Result};
use tutti_worker::engine::{
    DenoiseOutcome, DenoiseRequest, Engine, EngineError, EngineOptions, Start,
};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pack: PackSource,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub jobs: usize,
    /// Durations (seconds) the jobs draw from, uniformly.
    pub durations_s: Vec<f32>,
    /// Step counts the jobs draw from, uniformly.
    pub steps: Vec<u32>,
    pub chunk_steps: u32,
    /// Mean time between arrivals.
    pub arrival_ms: u64,
    /// Batch capacity of the batching run (`None`: the device's default).
    pub max_batch: Option<usize>,
    pub seed: u64,
    /// libtorch intra-op threads; `None` keeps libtorch's default.
    pub threads: Option<i32>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            pack: PackSource::BuiltinSize,
            device: "auto".into(),
            jobs: 24,
            durations_s: vec![5.0, 10.0],
            steps: vec![25, 50],
            chunk_steps: 10,
            arrival_ms: 200,
            max_batch: None,
            seed: 7,
            threads: None,
        }
    }
}

/// One job of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub at: Duration,
    pub duration_s: f32,
    pub steps: u32,
}

/// The seeded arrival trace.
pub fn trace(opts: &ServeOptions) -> Vec<Arrival> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut at = Duration::ZERO;
    (0..opts.jobs)
        .map(|_| {
            let a = Arrival {
                at,
                duration_s: opts.durations_s[rng.random_range(0..opts.durations_s.len())],
                steps: opts.steps[rng.random_range(0..opts.steps.len())],
            };
            // Exponential inter-arrival times (a Poisson process).
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            at += Duration::from_secs_f64(-u.ln() * opts.arrival_ms as f64 / 1000.0);
            a
        })
        .collect()
}

/// One run over the trace.
#[derive(Debug, Clone)]
pub struct ServeRun {
    pub max_batch: usize,
    pub makespan_s: f64,
    pub jobs_per_hour: f64,
    /// Mean and worst time from arrival to the end of the vocode.
    pub mean_latency_s: f64,
    pub max_latency_s: f64,
    /// Chunks per denoiser forward, on average.
    pub occupancy: f64,
}

#[derive(Debug, Clone)]
pub struct ServeReport {
    pub device: String,
    pub threads: i32,
    pub pack: String,
    pub trace: Vec<Arrival>,
    pub chunk_steps: u32,
    pub batched: ServeRun,
    pub sequential: ServeRun,
    pub loadavg_at_start: Option<f64>,
}

impl ServeReport {
    /// Batched over one-at-a-time jobs per hour.
    pub fn ratio(&self) -> f64 {
        self.batched.jobs_per_hour / self.sequential.jobs_per_hour
    }

    pub fn to_markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "## tutti bench serve\n");
        let _ = writeln!(o, "- pack: {}", self.pack);
        let _ = writeln!(
            o,
            "- device: {}, {} libtorch threads{}",
            self.device,
            self.threads,
            self.loadavg_at_start
                .map(|l| format!(", load average {l:.2} at start"))
                .unwrap_or_default()
        );
        let steps: u32 = self.trace.iter().map(|a| a.steps).sum();
        let audio: f32 = self.trace.iter().map(|a| a.duration_s).sum();
        let _ = writeln!(
            o,
            "- trace: {} jobs over {:.1} s of arrivals, {steps} steps and {audio:.0} s of audio in all, chunks of {} steps",
            self.trace.len(),
            self.trace.last().map_or(0.0, |a| a.at.as_secs_f64()),
            self.chunk_steps
        );
        let _ = writeln!(
            o,
            "\n| worker | makespan s | jobs/hour | mean latency s | max latency s | chunks per forward |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        );
        for (name, r) in [
            (
                format!("continuous batching (max {})", self.batched.max_batch),
                &self.batched,
            ),
            ("one chunk at a time".to_string(), &self.sequential),
        ] {
            let _ = writeln!(
                o,
                "| {name} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
                r.makespan_s, r.jobs_per_hour, r.mean_latency_s, r.max_latency_s, r.occupancy
            );
        }
        let _ = writeln!(
            o,
            "\nJobs per hour, batched over one at a time: **{:.2}x**",
            self.ratio()
        );
        o
    }
}

fn validate(opts: &ServeOptions) -> Result<()> {
    let bad = |m: &str| Err(ModelError::Input(m.to_string()));
    if opts.jobs == 0 || opts.chunk_steps == 0 || opts.max_batch == Some(0) {
        return bad("jobs, chunk steps and max batch must be positive");
    }
    if opts.durations_s.is_empty() || opts.steps.is_empty() || opts.steps.contains(&0) {
        return bad("give at least one duration and one positive step count");
    }
    if opts
        .durations_s
        .iter()
        .any(|d| !(d.is_finite() && *d > 0.0))
    {
        return bad("durations must be positive");
    }
    if opts.threads.is_some_and(|n| n < 1) {
        return bad("threads must be positive");
    }
    Ok(())
}

/// Runs the trace on a batching engine and on a one-chunk-at-a-time engine.
pub async fn run(opts: &ServeOptions) -> Result<ServeReport> {
    validate(opts)?;
    if let Some(n) = opts.threads {
        tch::set_num_threads(n);
    }
    let dev = device::select(&opts.device)?;
    let loadavg_at_start = read_loadavg();
    let scratch;
    let (dir, pack) = match &opts.pack {
        PackSource::Dir(d) => (d.clone(), format!("pack {}", d.display())),
        other => {
            scratch = tempfile::Builder::new().prefix("tutti-bench-").tempdir()?;
            let source = write_random_pack(scratch.path(), other)?;
            (scratch.path().to_path_buf(), source)
        }
    };
    let model = TraceModel::read(&dir)?;
    let arrivals = trace(opts);
    let max_batch = opts
        .max_batch
        .unwrap_or(EngineOptions::default_for(dev).max_batch);
    let defaults = EngineOptions::default_for(dev);
    let mut runs = Vec::new();
    for b in [max_batch, 1] {
        let engine = Engine::start(
            dir.clone(),
            dev,
            EngineOptions {
                max_batch: b,
                // What batching itself buys: no cap for a latency policy this trace (no
                // interactive jobs) does not need.
                other_forward: std::time::Duration::MAX,
                ..defaults
            },
        )
        .map_err(engine_err)?;
        eprintln!("bench serve: warm-up (max batch {b})");
        warm_up(&engine, &model, opts).await?;
        eprintln!("bench serve: {} jobs, max batch {b}", arrivals.len());
        runs.push(serve(&engine, &model, &arrivals, opts.chunk_steps, b).await?);
    }
    let sequential = runs
        .pop()
        .ok_or_else(|| ModelError::Input("no run".into()))?;
    let batched = runs
        .pop()
        .ok_or_else(|| ModelError::Input("no run".into()))?;
    Ok(ServeReport {
        device: format!("{dev:?}").to_lowercase(),
        threads: tch::get_num_threads(),
        pack,
        trace: arrivals,
        chunk_steps: opts.chunk_steps,
        batched,
        sequential,
        loadavg_at_start,
    })
}

fn engine_err(e: EngineError) -> ModelError {
    match e {
        EngineError::Model(m) => m,
        other => ModelError::Input(other.to_string()),
    }
}

/// The pack a trace runs on and what its jobs ask of it: the mel family's benchmark settings
/// (flow Euler, guidance 4, as before), or a Stable Audio pack's own sampler and guidance.
#[derive(Debug, Clone)]
struct TraceModel {
    model: ModelRef,
    sampler: SamplerKind,
    guidance_scale: f32,
}

impl TraceModel {
    fn read(dir: &std::path::Path) -> Result<Self> {
        let info = tutti_model::families::read_info(dir)?;
        Ok(Self {
            model: ModelRef {
                name: info.name,
                version: info.version,
            },
            sampler: info.defaults.sampler,
            guidance_scale: info.defaults.guidance_scale,
        })
    }
}

fn job_spec(model: &TraceModel, i: usize, duration_s: f32, steps: u32) -> JobSpec {
    const PROMPTS: [&str; 4] = [
        "lo-fi hip hop with mellow piano and soft drums",
        "energetic house track with a driving bass line",
        "a sorrowful string quartet, slow and quiet",
        "bright acoustic guitar folk tune",
    ];
    JobSpec {
        model: model.model.clone(),
        prompt: PROMPTS[i % PROMPTS.len()].into(),
        negative_prompt: String::new(),
        controls: Controls {
            duration_s,
            bpm: Some(70.0 + 10.0 * (i % 8) as f32),
            ..Default::default()
        },
        duration_s,
        seed: i as u64,
        steps,
        guidance_scale: model.guidance_scale,
        sampler: model.sampler,
        variations: 1,
        format: AudioFormat::Wav,
        delivery: Default::default(),
        trace_context: Default::default(),
        init_audio: None,
        song: None,
    }
}

/// Loads the pack and touches every shape of the trace once.
async fn warm_up(engine: &Engine, model: &TraceModel, opts: &ServeOptions) -> Result<()> {
    for (i, d) in opts.durations_s.iter().enumerate() {
        let spec = job_spec(model, i, *d, 2);
        one_job(engine, spec, 2).await?;
    }
    Ok(())
}

/// One job as the farm runs it: its chunks in order, then the vocode.
async fn one_job(engine: &Engine, spec: JobSpec, chunk_steps: u32) -> Result<()> {
    one_job_gated(engine, spec, chunk_steps, None).await
}

/// The worker's slots: denoise chunks in hand (its batch capacity) and vocode tasks (one).
struct Slots {
    denoise: Semaphore,
    vocode: Semaphore,
}

async fn slot(s: Option<&Semaphore>) -> Result<Option<tokio::sync::SemaphorePermit<'_>>> {
    match s {
        Some(s) => s
            .acquire()
            .await
            .map(Some)
            .map_err(|e| ModelError::Input(e.to_string())),
        None => Ok(None),
    }
}

async fn one_job_gated(
    engine: &Engine,
    spec: JobSpec,
    chunk_steps: u32,
    slots: Option<&Slots>,
) -> Result<()> {
    let job = Uuid::new_v4();
    for (from, to) in chunk_ranges(spec.steps, chunk_steps) {
        // A chunk in hand takes a slot (the worker's prefetch) until it is done.
        let _slot = slot(slots.map(|s| &s.denoise)).await?;
        let (progress, _) = mpsc::unbounded_channel();
        let start = if from == 0 { Start::Fresh } else { Start::Held };
        let out = engine
            .denoise(DenoiseRequest {
                job,
                spec: spec.clone(),
                from_step: from as usize,
                to_step: to as usize,
                start,
                cancel: Arc::new(AtomicBool::new(false)),
                progress,
                priority: tutti_shared::job::Priority::Standard,
            })
            .await
            .map_err(engine_err)?;
        if let DenoiseOutcome::Cancelled = out {
            return Err(ModelError::Input("a benchmark chunk was cancelled".into()));
        }
    }
    let _slot = slot(slots.map(|s| &s.vocode)).await?;
    let rendered = engine
        .vocode(
            job,
            spec,
            Start::Held,
            tutti_shared::job::Priority::Standard,
        )
        .await
        .map_err(engine_err)?;
    if rendered.waveforms.is_empty() {
        return Err(ModelError::Input("vocode returned no audio".into()));
    }
    Ok(())
}

async fn serve(
    engine: &Engine,
    model: &TraceModel,
    arrivals: &[Arrival],
    chunk_steps: u32,
    max_batch: usize,
) -> Result<ServeRun> {
    let slots = Slots {
        denoise: Semaphore::new(max_batch),
        vocode: Semaphore::new(1),
    };
    let stats = engine.stats();
    let (f0, c0) = (
        stats.forwards.load(Ordering::Relaxed),
        stats.chunk_steps.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let slots = &slots;
    let jobs = arrivals.iter().enumerate().map(|(i, a)| {
        let spec = job_spec(model, i, a.duration_s, a.steps);
        async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + a.at)).await;
            one_job_gated(engine, spec, chunk_steps, Some(slots)).await?;
            Ok::<f64, ModelError>((t0.elapsed() - a.at).as_secs_f64())
        }
    });
    let latencies = futures::future::try_join_all(jobs).await?;
    let makespan_s = t0.elapsed().as_secs_f64();
    let forwards = stats.forwards.load(Ordering::Relaxed) - f0;
    let chunk_steps_done = stats.chunk_steps.load(Ordering::Relaxed) - c0;
    Ok(ServeRun {
        max_batch,
        makespan_s,
        jobs_per_hour: arrivals.len() as f64 * 3600.0 / makespan_s,
        mean_latency_s: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
        max_latency_s: latencies.iter().copied().fold(0.0, f64::max),
        occupancy: chunk_steps_done as f64 / forwards.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_is_seeded_and_mixed() {
        let opts = ServeOptions::default();
        let a = trace(&opts);
        assert_eq!(a, trace(&opts));
        assert_eq!(a.len(), 24);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().any(|x| x.steps == 25) && a.iter().any(|x| x.steps == 50));
        assert!(a.iter().any(|x| x.duration_s == 5.0) && a.iter().any(|x| x.duration_s == 10.0));
        let other = trace(&ServeOptions {
            seed: 8,
            ..ServeOptions::default()
        });
        assert_ne!(a, other);
    }
}
