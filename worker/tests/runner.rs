//! The worker's task loop on the in-process queue and a local folder (embedded mode's real
//! parts) with the tiny pack: several jobs' chunks in hand at once, each acked with its own
//! result; heartbeats with slots and held jobs; and the same audio, byte for byte, from a
//! worker that batches and holds latents as from one that runs one chunk at a time and reads
//! every checkpoint.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tutti_model::tiny::write_tiny_pack;
use tutti_shared::blob::{BlobStore, LocalStore};
use tutti_shared::job::{checkpoint_key, AudioFormat, JobSpec, ModelRef, SamplerKind, TaskKind};
use tutti_shared::messages::{Outcome, TaskMessage, WorkerEvent};
use tutti_shared::prompt::Controls;
use tutti_shared::taskqueue::{Consumer, MemoryQueue, QueueName, TaskQueue};
use tutti_worker::engine::{Engine, EngineOptions};
use tutti_worker::runner::Worker;
use uuid::Uuid;

const CHUNK: u32 = 4;

fn spec(seed: u64, steps: u32, guidance: f32) -> JobSpec {
    JobSpec {
        model: ModelRef {
            name: "tiny".into(),
            version: "1".into(),
        },
        prompt: format!("test tune number {seed}"),
        negative_prompt: String::new(),
        controls: Controls {
            duration_s: 2.0,
            ..Default::default()
        },
        duration_s: 2.0,
        seed,
        steps,
        guidance_scale: guidance,
        sampler: SamplerKind::FlowEuler,
        variations: 1,
        format: AudioFormat::Wav,
        delivery: Default::default(),
        trace_context: Default::default(),
        init_audio: None,
        song: None,
    }
}

struct Run {
    /// sha256 of each job's audio, by job index.
    audio: Vec<String>,
    heartbeats: Vec<WorkerEvent>,
    /// Jobs held in the first heartbeat after every denoise chunk finished.
    held_before_vocode: Vec<Uuid>,
    jobs: Vec<Uuid>,
    checkpoints_present: bool,
}

/// The next heartbeat, skipping other events.
async fn next_heartbeat(results: &mut Box<dyn Consumer>) -> WorkerEvent {
    loop {
        if let hb @ WorkerEvent::Heartbeat { .. } = next_event(results).await {
            return hb;
        }
    }
}

async fn next_event(results: &mut Box<dyn Consumer>) -> WorkerEvent {
    let d = tokio::time::timeout(Duration::from_secs(60), results.next())
        .await
        .expect("an event in time")
        .expect("results open")
        .expect("delivery");
    let ev = serde_json::from_slice(&d.data).expect("a worker event");
    d.ack().await.expect("ack");
    ev
}

/// Plays a small coordinator: every job's chunk `c` at once, then chunk `c + 1`, then the
/// vocode tasks; returns each job's audio hash and the heartbeats seen.
async fn run_jobs(options: EngineOptions, specs: &[JobSpec]) -> Run {
    let models = tempfile::tempdir().expect("tempdir");
    write_tiny_pack(&models.path().join("tiny"), 5).expect("tiny pack");
    let blobs_dir = tempfile::tempdir().expect("tempdir");
    let blobs = Arc::new(LocalStore::new(blobs_dir.path()));
    let queue = MemoryQueue::new();
    let engine =
        Engine::start(models.path().to_path_buf(), tch::Device::Cpu, options).expect("engine");
    let worker = Worker {
        name: "w-test".into(),
        queue: Arc::new(queue.clone()),
        stages: vec![TaskKind::Denoise, TaskKind::Vocode],
        prefetch: 2,
        engine,
        blobs: blobs.clone(),
        outage_budget: std::time::Duration::ZERO,
    };
    let (stop, shutdown) = watch::channel(false);
    let running = tokio::spawn(worker.run(shutdown));
    let mut results = queue
        .consume(&[QueueName::Results], 64, "test")
        .await
        .expect("consume results");
    let jobs: Vec<Uuid> = specs.iter().map(|_| Uuid::new_v4()).collect();
    let chunks = specs
        .iter()
        .map(|s| s.steps.div_ceil(CHUNK))
        .max()
        .unwrap_or(0);
    let mut heartbeats = Vec::new();
    let mut audio = HashMap::new();
    let mut held_before_vocode = Vec::new();
    for chunk in 0..=chunks {
        if chunk == chunks {
            // All jobs end their denoising together here (same chunk count).
            if let WorkerEvent::Heartbeat { holds, .. } = next_heartbeat(&mut results).await {
                held_before_vocode = holds;
            }
        }
        let mut waiting = HashSet::new();
        for (i, (job, s)) in jobs.iter().zip(specs).enumerate() {
            let denoise_chunks = s.steps.div_ceil(CHUNK);
            if chunk > denoise_chunks {
                continue;
            }
            let (kind, from, to) = if chunk == denoise_chunks {
                (TaskKind::Vocode, s.steps, s.steps)
            } else {
                (
                    TaskKind::Denoise,
                    chunk * CHUNK,
                    ((chunk + 1) * CHUNK).min(s.steps),
                )
            };
            let task = TaskMessage {
                job_id: *job,
                tenant: "t".into(),
                chunk,
                attempt: 1,
                kind,
                from_step: from,
                to_step: to,
                spec: s.clone(),
                priority: Default::default(),
            };
            let body = serde_json::to_vec(&task).expect("task");
            queue
                .publish(QueueName::Task(kind), &body)
                .await
                .expect("publish");
            waiting.insert((i, *job));
        }
        while !waiting.is_empty() {
            match next_event(&mut results).await {
                WorkerEvent::Result {
                    job_id,
                    chunk: c,
                    outcome,
                    ..
                } => {
                    assert_eq!(c, chunk);
                    let i = jobs.iter().position(|j| *j == job_id).expect("our job");
                    match outcome {
                        Outcome::Done { outputs, .. } => {
                            if let Some(o) = outputs.first() {
                                audio.insert(i, o.sha256.clone());
                            }
                        }
                        other => panic!("job {i} chunk {chunk}: {other:?}"),
                    }
                    waiting.remove(&(i, job_id));
                }
                hb @ WorkerEvent::Heartbeat { .. } => heartbeats.push(hb),
                WorkerEvent::Progress { .. } | WorkerEvent::DeadLetter { .. } => {}
            }
        }
    }
    // Wait for one more heartbeat (every 2 s) after the work, then drain.
    heartbeats.push(next_heartbeat(&mut results).await);
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the worker stops")
        .expect("worker task");
    let mut checkpoints_present = true;
    for (job, s) in jobs.iter().zip(specs) {
        for c in 0..s.steps.div_ceil(CHUNK) {
            let present = blobs
                .get(&checkpoint_key(*job, c))
                .await
                .expect("get")
                .is_some();
            checkpoints_present &= present;
        }
    }
    Run {
        audio: (0..specs.len())
            .map(|i| audio.get(&i).cloned().expect("audio for every job"))
            .collect(),
        heartbeats,
        held_before_vocode,
        jobs,
        checkpoints_present,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_latents_give_the_same_audio_as_checkpoints_and_heartbeats_report_them() {
    // Same chunk count (3 chunks of up to 4 steps), different steps, seeds and guidance.
    let specs = [
        spec(1, 10, 3.0),
        spec(2, 9, 5.0),
        spec(3, 12, 1.0),
        spec(4, 11, 4.0),
    ];
    // Batched forwards (bit-identical to one chunk at a time on CPU: worker/tests/batching.rs),
    // latents held between chunks...
    let batched = run_jobs(
        EngineOptions {
            max_batch: 4,
            held_bytes: 16 << 20,
            batch_bytes: usize::MAX,
            ..EngineOptions::sequential()
        },
        &specs,
    )
    .await;
    // ... against one chunk at a time reading every checkpoint.
    let sequential = run_jobs(EngineOptions::sequential(), &specs).await;
    assert_eq!(batched.audio, sequential.audio);
    // Checkpoints are written either way (the fallback for another worker).
    assert!(batched.checkpoints_present && sequential.checkpoints_present);

    let first = batched.heartbeats.first().expect("a heartbeat");
    match first {
        WorkerEvent::Heartbeat {
            worker,
            denoise_slots,
            vocode_slots,
            draining,
            models,
            ..
        } => {
            assert_eq!(
                (worker.as_str(), *denoise_slots, *vocode_slots, *draining),
                ("w-test", 4, 2, false)
            );
            // The packs it serves, for the model catalogue.
            assert_eq!(models, &["tiny@1".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    // Denoised jobs are held until vocoded; the sequential worker holds nothing.
    let mut held = batched.held_before_vocode.clone();
    let mut jobs = batched.jobs.clone();
    held.sort();
    jobs.sort();
    assert_eq!(held, jobs);
    assert!(sequential.held_before_vocode.is_empty());
    // Every job was vocoded, so the last heartbeat holds none of them.
    match batched.heartbeats.last() {
        Some(WorkerEvent::Heartbeat { holds, .. }) => assert!(holds.is_empty(), "{holds:?}"),
        other => panic!("{other:?}"),
    }
    match sequential.heartbeats.first() {
        Some(WorkerEvent::Heartbeat { denoise_slots, .. }) => assert_eq!(*denoise_slots, 1),
        other => panic!("{other:?}"),
    }
    // What operators see: the device, and chunks per forward over the last minute (one chunk
    // at a time on the sequential worker; up to its 4 slots on the batched one).
    let fill = |run: &Run| match run.heartbeats.last() {
        Some(WorkerEvent::Heartbeat {
            device,
            chunks_per_forward,
            ..
        }) => (device.clone(), *chunks_per_forward),
        other => panic!("{other:?}"),
    };
    assert_eq!(fill(&sequential), ("cpu".to_string(), 1.0));
    let (device, batched_fill) = fill(&batched);
    assert_eq!(device, "cpu");
    assert!(
        (1.0..=4.0).contains(&batched_fill),
        "chunks per forward {batched_fill}"
    );
}
