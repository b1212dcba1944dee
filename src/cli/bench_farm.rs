//! `tutti bench farm`: what the farm itself costs, with a tiny pack so that model time is
//! small. It starts its own farm (a coordinator and workers as child processes of this
//! binary, on the configured Postgres, RabbitMQ and S3, with a fresh database and queue
//! prefix), then measures:
//! 1. overhead: jobs one at a time, end to end through the farm, against the same jobs
//!    (same validated spec) run in-process on the engine; the farm's own time is the
//!    difference, per job;
//! 2. interactive under backfill: p95 latency of interactive jobs while a batch saturates the
//!    farm, against the same jobs on the idle farm;
//! 3. submits per second sustained by concurrent clients for a duration.

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tonic::transport::Channel;
use tutti::process_farm::{ProcessFarm, Servers};
use tutti_coordinator::validate::Validator;
use tutti_proto::v1 as pb;
use tutti_proto::v1::generation_client::GenerationClient;
use tutti_shared::job::chunk_ranges;
use tutti_shared::models::ModelRegistry;
use tutti_worker::engine::{DenoiseOutcome, DenoiseRequest, Engine, EngineOptions, Start};
use uuid::Uuid;

use super::bench_timeline;

#[derive(Debug, Args)]
pub(crate) struct FarmBenchArgs {
    /// Jobs of the overhead run (one at a time).
    #[arg(long, default_value_t = 50)]
    jobs: usize,
    /// Interactive jobs per latency run (idle, then under the backfill).
    #[arg(long, default_value_t = 20)]
    interactive: usize,
    /// Batch jobs of the backfill.
    #[arg(long, default_value_t = 200)]
    backfill: usize,
    /// Clip length of the backfill's jobs, in seconds (the interactive jobs' clips are 2 s):
    /// longer clips put more model time and the same farm traffic per chunk.
    #[arg(long, default_value_t = 2.0)]
    backfill_seconds: f32,
    /// How long to sustain submits.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 64)]
    submitters: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// libtorch threads per worker: 1 makes each worker stand in for one device (one core),
    /// so that on a small machine the workers do not slow each other down.
    #[arg(long, default_value_t = 1)]
    worker_threads: i32,
    /// Postgres server (the benchmark creates its own database there).
    #[arg(
        long,
        env = "TUTTI_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pg: String,
    /// RabbitMQ (the benchmark uses its own queue prefix and removes its queues afterwards).
    #[arg(
        long,
        env = "TUTTI_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
}

/// The farm's processes; killed, and its queues and database removed, on drop (the database
/// stays, for a look at its `job_events`, with `TUTTI_BENCH_KEEP_DB=1`).
struct BenchFarm {
    farm: ProcessFarm,
    /// The benchmark's own database, for the report's breakdown of where the time went.
    db_url: String,
    workers: Vec<String>,
    addr: std::net::SocketAddr,
    children: Vec<Child>,
}

impl Drop for BenchFarm {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.farm.remove_topology(&self.workers);
        if std::env::var_os("TUTTI_BENCH_KEEP_DB").is_none() {
            self.farm.drop_database();
        }
    }
}

impl BenchFarm {
    async fn start(a: &FarmBenchArgs) -> anyhow::Result<Self> {
        let servers = Servers {
            pg: a.pg.clone(),
            amqp: a.amqp.clone(),
            s3: None,
        };
        let exe = std::env::current_exe().context("locating this binary")?;
        let farm = ProcessFarm::new(exe, servers, "bench")?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("binding a free port")?;
        let mut bench = Self {
            db_url: farm.db_url(),
            workers: (0..a.workers).map(|i| format!("bench-w{i}")).collect(),
            addr,
            children: Vec::new(),
            farm,
        };
        let coordinator = bench
            .farm
            .coordinator(addr)?
            // Dispatched work bounded by what the workers run at once: the backlog waits
            // in Postgres, where classes apply.
            .env("TUTTI_MAX_IN_FLIGHT", a.workers.to_string())
            .spawn()
            .context("starting tutti coordinator")?;
        bench.children.push(coordinator);
        for name in bench.workers.clone() {
            let worker = bench
                .farm
                .worker(&name)?
                .env("TUTTI_TORCH_THREADS", a.worker_threads.to_string())
                .spawn()
                .context("starting tutti worker")?;
            bench.children.push(worker);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if bench.client().await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("the bench coordinator did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(bench)
    }

    async fn client(&self) -> anyhow::Result<GenerationClient<Channel>> {
        Ok(GenerationClient::connect(format!("http://{}", self.addr)).await?)
    }

    fn models(&self) -> std::path::PathBuf {
        self.farm.models_dir()
    }
}

fn request(i: usize, priority: pb::Priority) -> pb::SubmitGenerationRequest {
    clip(i, priority, 2.0)
}

fn clip(i: usize, priority: pb::Priority, seconds: f32) -> pb::SubmitGenerationRequest {
    pb::SubmitGenerationRequest {
        prompt_kind: Some(pb::submit_generation_request::PromptKind::Prompt(format!(
            "benchmark groove number {i}"
        ))),
        duration_seconds: Some(seconds),
        seed: Some(i as u64),
        steps: Some(8),
        priority: priority as i32,
        ..Default::default()
    }
}

/// Submits and follows a job to its end; returns its id and the end-to-end time.
async fn run_one(
    client: &mut GenerationClient<Channel>,
    req: pb::SubmitGenerationRequest,
) -> anyhow::Result<(Uuid, Duration)> {
    let t0 = Instant::now();
    let job = client.submit_generation(req).await?.into_inner();
    let mut stream = client
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(ev) = stream.message().await? {
        last = ev.job;
    }
    let took = t0.elapsed();
    let state = last.map(|j| j.state).unwrap_or_default();
    if state != pb::JobState::Succeeded as i32 {
        bail!("job {} ended in state {state}", job.id);
    }
    let id = job.id.parse().context("the job's id")?;
    Ok((id, took))
}

/// The latency run's `n` interactive jobs (the same requests each run), one after the other:
/// their end-to-end times and ids.
async fn run_interactive(
    client: &mut GenerationClient<Channel>,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Uuid>)> {
    let (mut times, mut ids) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (id, took) = run_one(client, request(2_000_000 + i, pb::Priority::Interactive)).await?;
        times.push(took);
        ids.push(id);
    }
    Ok((times, ids))
}

/// The same job on the engine in this process: every denoise chunk, then the vocoder.
async fn run_in_process(
    engine: &Engine,
    validator: &Validator,
    req: &pb::SubmitGenerationRequest,
) -> anyhow::Result<Duration> {
    let job = validator.validate(req)?;
    let t0 = Instant::now();
    let job_id = Uuid::new_v4();
    let mut checkpoint: Option<Vec<u8>> = None;
    for (from, to) in chunk_ranges(job.spec.steps, job.chunk_steps) {
        let (progress, _rx) = tokio::sync::mpsc::unbounded_channel();
        let start = match checkpoint.take() {
            Some(c) => Start::Checkpoint(c),
            None => Start::Fresh,
        };
        let req = DenoiseRequest {
            job: job_id,
            spec: job.spec.clone(),
            from_step: from as usize,
            to_step: to as usize,
            start,
            cancel: Arc::new(AtomicBool::new(false)),
            progress,
            priority: tutti_shared::job::Priority::Interactive,
        };
        match engine.denoise(req).await? {
            DenoiseOutcome::Done(c) => checkpoint = Some(c),
            DenoiseOutcome::Cancelled => bail!("cancelled"),
        }
    }
    let rendered = engine
        .vocode(
            job_id,
            job.spec.clone(),
            Start::Checkpoint(checkpoint.context("no checkpoint")?),
            tutti_shared::job::Priority::Interactive,
        )
        .await?;
    // What a worker's vocode does after rendering: the gain stage and the encoder.
    for mut wave in rendered.waveforms {
        let (ch, rate) = (rendered.channels, rendered.sample_rate);
        let _ =
            tutti_shared::loudness::normalize(&mut wave, ch, rate, job.spec.delivery.loudness_lufs);
        let _ = tutti_shared::encode::encode(
            job.spec.format,
            &wave,
            ch,
            rate,
            job.spec.delivery.bitrate_kbps,
        );
    }
    Ok(t0.elapsed())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted_ms(v: &[Duration]) -> Vec<f64> {
    let mut out: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    out.sort_by(f64::total_cmp);
    out
}

pub(crate) async fn run(a: FarmBenchArgs) -> anyhow::Result<()> {
    let farm = BenchFarm::start(&a).await?;
    let models = farm.models();
    let mut client = farm.client().await?;
    // Warm up: the workers load the pack on their first task.
    for i in 0..a.workers.max(2) {
        run_one(
            &mut client,
            request(1_000_000 + i, pb::Priority::Interactive),
        )
        .await?;
    }

    // 1. Overhead: the farm against the same jobs in process.
    let mut farm_times = Vec::new();
    let reqs: Vec<_> = (0..a.jobs)
        .map(|i| request(i, pb::Priority::Interactive))
        .collect();
    for r in &reqs {
        farm_times.push(run_one(&mut client, r.clone()).await?.1);
    }
    let device = tutti_model::device::select("cpu")?;
    // The same threads as a farm worker, so that the difference is the farm's own time.
    tch::set_num_threads(a.worker_threads);
    let engine = Engine::start(models.clone(), device, EngineOptions::default_for(device))?;
    let validator = Validator::new(ModelRegistry::scan(&models)?, None, 0)?;
    run_in_process(&engine, &validator, &reqs[0]).await?;
    let mut local_times = Vec::new();
    for r in &reqs {
        local_times.push(run_in_process(&engine, &validator, r).await?);
    }
    let mut overhead: Vec<f64> = farm_times
        .iter()
        .zip(&local_times)
        .map(|(f, l)| (f.as_secs_f64() - l.as_secs_f64()) * 1000.0)
        .collect();
    overhead.sort_by(f64::total_cmp);
    let farm_ms = sorted_ms(&farm_times);
    let local_ms = sorted_ms(&local_times);

    // 2. Interactive latency, idle and under a backfill.
    let (idle, idle_ids) = run_interactive(&mut client, a.interactive).await?;
    for i in 0..a.backfill {
        client
            .submit_generation(clip(3_000_000 + i, pb::Priority::Batch, a.backfill_seconds))
            .await?;
    }
    let (busy, busy_ids) = run_interactive(&mut client, a.interactive).await?;
    // Saturated to the end: some backfill job had not ended (a started one is running).
    let mut backlog_left = false;
    for state in [pb::JobState::Queued, pb::JobState::Running] {
        backlog_left |= client
            .list_jobs(pb::ListJobsRequest {
                state: state as i32,
                page_size: 1,
                ..Default::default()
            })
            .await
            .map(|r| !r.into_inner().jobs.is_empty())
            .unwrap_or(false);
    }
    let idle_ms = sorted_ms(&idle);
    let busy_ms = sorted_ms(&busy);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let pool = sqlx::PgPool::connect(&farm.db_url)
        .await
        .context("connecting to the benchmark's database")?;
    let idle_parts = bench_timeline::breakdown(&pool, &idle_ids, mean(&idle_ms)).await?;
    let busy_parts = bench_timeline::breakdown(&pool, &busy_ids, mean(&busy_ms)).await?;
    pool.close().await;

    // 3. Submits per second, sustained.
    let submitted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..a.submitters {
        let mut c = farm.client().await?;
        let (submitted, failed, until) = (submitted.clone(), failed.clone(), t0 + a.duration);
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < until {
                let req = request(10_000_000 + s * 1_000_000 + i, pb::Priority::Batch);
                match c.submit_generation(req).await {
                    Ok(_) => submitted.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = submitted.load(Ordering::Relaxed) as f64 / secs;

    let p95_ratio = quantile(&busy_ms, 0.95) / quantile(&idle_ms, 0.95);
    println!("# tutti bench farm\n");
    println!(
        "tiny pack, 8 steps in chunks of 4, 2 s clips; {} worker process(es) on CPU, {} libtorch \
         thread(s) each; coordinator, Postgres, RabbitMQ and S3 on this machine ({} CPUs)\n",
        a.workers,
        a.worker_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "## 1. Farm overhead per job ({} jobs, one at a time)\n",
        a.jobs
    );
    println!("| | median ms | p99 ms | goal |\n|---|---|---|---|");
    println!(
        "| end to end through the farm | {:.1} | {:.1} | |",
        quantile(&farm_ms, 0.5),
        quantile(&farm_ms, 0.99)
    );
    println!(
        "| same jobs in process (engine) | {:.1} | {:.1} | |",
        quantile(&local_ms, 0.5),
        quantile(&local_ms, 0.99)
    );
    println!(
        "| **farm's own time** (difference, per job) | **{:.1}** | **{:.1}** | median <= 30 |\n",
        quantile(&overhead, 0.5),
        quantile(&overhead, 0.99)
    );
    println!(
        "## 2. Interactive latency under a backfill of {} batch jobs of {} s ({} jobs each)\n",
        a.backfill, a.backfill_seconds, a.interactive
    );
    println!("| | median ms | p95 ms |\n|---|---|---|");
    println!(
        "| idle farm | {:.1} | {:.1} |",
        quantile(&idle_ms, 0.5),
        quantile(&idle_ms, 0.95)
    );
    println!(
        "| during the backfill | {:.1} | {:.1} |",
        quantile(&busy_ms, 0.5),
        quantile(&busy_ms, 0.95)
    );
    println!(
        "\n**p95 ratio: {p95_ratio:.2}** (goal <= 1.25); backfill still under way at the end: {}\n",
        if backlog_left {
            "yes"
        } else {
            "no (it did not saturate the whole run)"
        }
    );
    println!(
        "Where the interactive jobs' time went, from their `job_events`:\n\n{}",
        bench_timeline::table(&idle_parts, &busy_parts)
    );
    println!(
        "## 3. Submits\n\n**{rate:.0} submits/s** sustained for {:.0} s by {} clients \
         ({} accepted, {} failed; goal >= 1,000/s)",
        secs,
        a.submitters,
        submitted.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    drop(farm);
    Ok(())
}
