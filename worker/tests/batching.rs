//! Continuous step batching and held latents in the engine, on the tiny pack (real libtorch):
//! chunks stepped together equal one chunk at a time bit for bit (on CPU); the memory budget
//! caps a forward's batch; a job continued from the state held in memory equals, bit for bit,
//! one continued from its checkpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tutti_model::tiny::write_tiny_pack;
use tutti_model::DenoiseState;
use tutti_model::Family;
use tutti_shared::job::{AudioFormat, JobSpec, ModelRef, Priority, SamplerKind};
use tutti_shared::prompt::Controls;
use tutti_worker::engine::{
    DenoiseOutcome, DenoiseRequest, Engine, EngineError, EngineOptions, Start,
};
use uuid::Uuid;

fn models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_pack(&dir.path().join("tiny"), 3).expect("tiny pack");
    dir
}

/// An engine on CPU over the tiny pack in `dir`.
fn cpu_engine(dir: &std::path::Path, options: EngineOptions) -> Engine {
    Engine::start(dir.to_path_buf(), tch::Device::Cpu, options).expect("engine")
}

/// Up to `max_batch` chunks a forward, no memory cap, holding `held_bytes` of latents.
fn batching(max_batch: usize, held_bytes: usize) -> EngineOptions {
    EngineOptions {
        max_batch,
        held_bytes,
        batch_bytes: usize::MAX,
        ..EngineOptions::sequential()
    }
}

/// As `batching`, on a CPU worker that runs interactive chunks first (express lane of 2).
fn interactive_first(max_batch: usize, held_bytes: usize) -> EngineOptions {
    EngineOptions {
        interactive_first: true,
        express: 2,
        ..batching(max_batch, held_bytes)
    }
}

/// `n` finished batch jobs of `steps` steps (seeds from `seed` on), their states held by
/// `engine`, waiting for their vocodes.
async fn held_backfill(
    engine: &Engine,
    n: u64,
    seed: u64,
    steps: u32,
    duration_s: f32,
) -> Vec<(Uuid, JobSpec)> {
    let mut finished = Vec::new();
    for i in 0..n {
        let s = spec("finished backfill", seed + i, steps, duration_s, 3.0);
        let job = Uuid::new_v4();
        let mut r = request(job, &s, 0, steps, Start::Fresh);
        r.priority = Priority::Batch;
        done(engine.denoise(r).await);
        finished.push((job, s));
    }
    finished
}

fn spec(prompt: &str, seed: u64, steps: u32, duration_s: f32, guidance: f32) -> JobSpec {
    JobSpec {
        model: ModelRef {
            name: "tiny".into(),
            version: "1".into(),
        },
        prompt: prompt.into(),
        negative_prompt: String::new(),
        controls: Controls {
            duration_s,
            ..Default::default()
        },
        duration_s,
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

fn request(job: Uuid, spec: &JobSpec, from: u32, to: u32, start: Start) -> DenoiseRequest {
    let (progress, _) = mpsc::unbounded_channel();
    DenoiseRequest {
        job,
        spec: spec.clone(),
        from_step: from as usize,
        to_step: to as usize,
        start,
        cancel: Arc::new(AtomicBool::new(false)),
        progress,
        priority: Priority::Standard,
    }
}

/// Whether two checkpoints hold the same state: step, parameters and latent bit for bit (the
/// bytes themselves may differ: the metadata map is written in no fixed order).
/// A progress channel whose every step adds one to `counter`.
/// A progress sender that counts the steps it reports, and the task reading it:
/// the task ends once the engine has let go of the sender and every report is
/// counted, so awaiting it makes a final count exact.
fn counting(
    counter: &Arc<std::sync::atomic::AtomicUsize>,
) -> (mpsc::UnboundedSender<usize>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let counter = Arc::clone(counter);
    let reader = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (tx, reader)
}

fn same_state(a: &[u8], b: &[u8]) -> bool {
    let a = DenoiseState::from_checkpoint(a, tch::Device::Cpu).expect("checkpoint a");
    let b = DenoiseState::from_checkpoint(b, tch::Device::Cpu).expect("checkpoint b");
    let same = a.step() == b.step() && a.params() == b.params() && a.latent() == b.latent();
    if !same {
        println!(
            "steps {} {}, latent max abs diff {:e}",
            a.step(),
            b.step(),
            (a.latent() - b.latent()).abs().max().double_value(&[])
        );
    }
    same
}

/// Max abs difference of two checkpoints' latents (same step and parameters required).
fn latent_diff(a: &[u8], b: &[u8]) -> f64 {
    let a = DenoiseState::from_checkpoint(a, tch::Device::Cpu).expect("checkpoint a");
    let b = DenoiseState::from_checkpoint(b, tch::Device::Cpu).expect("checkpoint b");
    assert_eq!((a.step(), a.params()), (b.step(), b.params()));
    (a.latent() - b.latent()).abs().max().double_value(&[])
}

fn done(r: Result<DenoiseOutcome, EngineError>) -> Vec<u8> {
    match r.expect("denoise") {
        DenoiseOutcome::Done(bytes) => bytes,
        DenoiseOutcome::Cancelled => panic!("cancelled"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_chunks_equal_one_by_one_bit_for_bit() {
    let dir = models();
    let batched = cpu_engine(dir.path(), batching(4, 0));
    let one_by_one = cpu_engine(dir.path(), EngineOptions::sequential());
    // Different prompts, seeds, steps and guidance; five of one length (more than one forward
    // holds), one of another length (its own batch).
    let jobs: Vec<(Uuid, JobSpec)> = [
        spec("warm lo-fi piano", 1, 6, 2.0, 3.0),
        spec("epic orchestral trailer with drums", 2, 8, 2.0, 5.0),
        spec("jazz", 3, 8, 2.0, 0.0),
        spec("ambient drone, slow", 4, 10, 2.0, 4.0),
        spec("funky disco groove", 5, 7, 2.0, 2.5),
        spec("solo cello", 6, 9, 1.5, 3.0),
        // Over 32 tokens: another text bucket, so its own forwards.
        spec(
            "a very long and winding description of a slow, melancholic piece for solo piano \
             with soft strings, distant rain, tape hiss, a walking upright bass and brushed \
             drums, recorded late at night in a small wooden room",
            7,
            6,
            2.0,
            3.5,
        ),
    ]
    .into_iter()
    .map(|s| (Uuid::new_v4(), s))
    .collect();

    let together = futures::future::join_all(
        jobs.iter()
            .map(|(job, s)| batched.denoise(request(*job, s, 0, s.steps, Start::Fresh))),
    )
    .await;
    let mut alone = Vec::new();
    for (job, s) in &jobs {
        alone.push(done(
            one_by_one
                .denoise(request(*job, s, 0, s.steps, Start::Fresh))
                .await,
        ));
    }
    // Bit for bit: every state's keys are padded to its own text bucket and chunks batch only
    // with chunks of the same latent length and bucket (pipeline's "Batch invariance").
    for ((r, a), (_, s)) in together.into_iter().zip(alone).zip(&jobs) {
        let b = done(r);
        assert!(
            same_state(&b, &a),
            "{:?}: batched differs from one by one (latent diff {:e})",
            s.prompt,
            latent_diff(&b, &a)
        );
    }
    let stats = batched.stats();
    let (forwards, steps) = (
        stats.forwards.load(Ordering::Relaxed),
        stats.chunk_steps.load(Ordering::Relaxed),
    );
    println!("batched: {steps} chunk-steps in {forwards} forwards");
    assert_eq!(steps, 6 + 8 + 8 + 10 + 7 + 9 + 6);
    assert!(
        forwards < steps,
        "no two chunks shared a forward ({forwards} forwards)"
    );
    let seq = one_by_one.stats();
    assert_eq!(
        seq.forwards.load(Ordering::Relaxed),
        seq.chunk_steps.load(Ordering::Relaxed)
    );
}

/// Runs four 2 s jobs at once on an engine of up to 4 chunks a forward and `batch_bytes`;
/// returns the forwards it took.
async fn forwards_with_budget(dir: &std::path::Path, batch_bytes: usize) -> u64 {
    let engine = cpu_engine(
        dir,
        EngineOptions {
            batch_bytes,
            ..batching(4, 0)
        },
    );
    let jobs: Vec<(Uuid, JobSpec)> = (0..4)
        .map(|i| (Uuid::new_v4(), spec("harp arpeggios", i, 5, 2.0, 3.0)))
        .collect();
    for r in futures::future::join_all(
        jobs.iter()
            .map(|(job, s)| engine.denoise(request(*job, s, 0, s.steps, Start::Fresh))),
    )
    .await
    {
        done(r);
    }
    let stats = engine.stats();
    assert_eq!(stats.chunk_steps.load(Ordering::Relaxed), 20);
    stats.forwards.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_caps_the_batch() {
    let dir = models();
    let pipeline =
        tutti_model::pipeline::Pipeline::load(&dir.path().join("tiny"), tch::Device::Cpu)
            .expect("pipeline");
    let state = pipeline
        .prepare(&pipeline.default_params("harp arpeggios", 2.0))
        .expect("state");
    let one = pipeline.forward_bytes(&state);
    assert!(one > 0);
    // Room for any number: all four step together whenever they are all in hand (the first
    // may start alone before the others arrive).
    let roomy = forwards_with_budget(dir.path(), usize::MAX).await;
    // Room for two: at least two forwards per step.
    let two = forwards_with_budget(dir.path(), 2 * one).await;
    // Room for less than one: one chunk a forward.
    let none = forwards_with_budget(dir.path(), one / 2).await;
    println!("forwards: unlimited {roomy}, two chunks {two}, under one chunk {none}");
    assert!(roomy < two, "{roomy} vs {two}");
    assert!((10..20).contains(&two), "{two}");
    assert_eq!(none, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_chunk_leaves_the_batch_and_the_others_finish() {
    let dir = models();
    let engine = cpu_engine(dir.path(), batching(4, 0));
    // Many steps, so that the cancel (set from the progress stream) lands well before the end.
    let s = spec("rain on a tin roof", 9, 150, 2.0, 3.0);
    let (job_a, job_b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = request(job_a, &s, 0, 150, Start::Fresh);
    let (tx, mut rx) = mpsc::unbounded_channel();
    a.progress = tx;
    let cancel = Arc::clone(&a.cancel);
    // Cancel a once it has done two steps.
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(step) = rx.recv().await {
            seen.push(step);
            if step == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
        seen
    });
    let (ra, rb) = tokio::join!(
        engine.denoise(a),
        engine.denoise(request(job_b, &s, 0, 150, Start::Fresh))
    );
    assert!(matches!(ra, Ok(DenoiseOutcome::Cancelled)));
    let seen = watcher.await.expect("watcher");
    assert_eq!(seen[..2], [1, 2]);
    assert!(
        *seen.last().expect("progress") < 150,
        "the cancelled chunk ran to its end"
    );
    // b went on alone and finished all its steps.
    assert!(!done(rb).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_latent_equals_checkpoint() {
    let dir = models();
    let holding = cpu_engine(dir.path(), batching(4, 16 << 20));
    let reading = cpu_engine(dir.path(), EngineOptions::sequential());
    let s = spec("sunny ukulele tune", 21, 8, 2.0, 3.0);
    let job = Uuid::new_v4();

    // Chunks 0..3 and 3..8, then vocode: from memory on one engine...
    let first = done(holding.denoise(request(job, &s, 0, 3, Start::Fresh)).await);
    assert_eq!(holding.holds().step(job), Some(3));
    assert_eq!(holding.holds().jobs(), vec![job]);
    let last_held = done(holding.denoise(request(job, &s, 3, 8, Start::Held)).await);
    assert_eq!(holding.holds().step(job), Some(8));
    let audio_held = holding
        .vocode(job, s.clone(), Start::Held, Priority::Standard)
        .await
        .expect("vocode held");
    assert_eq!(holding.holds().step(job), None, "a vocoded job is let go");

    // ... and from the checkpoints on the other, which holds nothing.
    let first_read = done(reading.denoise(request(job, &s, 0, 3, Start::Fresh)).await);
    assert!(same_state(&first, &first_read));
    assert_eq!(reading.holds().step(job), None);
    assert!(matches!(
        reading.denoise(request(job, &s, 3, 8, Start::Held)).await,
        Err(EngineError::NotHeld)
    ));
    let last_read = done(
        reading
            .denoise(request(job, &s, 3, 8, Start::Checkpoint(first_read)))
            .await,
    );
    assert!(
        same_state(&last_held, &last_read),
        "held and checkpointed chunks differ"
    );
    let audio_read = reading
        .vocode(
            job,
            s.clone(),
            Start::Checkpoint(last_read),
            Priority::Standard,
        )
        .await
        .expect("vocode checkpoint");
    assert_eq!(audio_held.waveforms.len(), 1);
    assert!(audio_held.waveforms == audio_read.waveforms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_chunks_step_first_and_the_others_keep_a_share() {
    let dir = models();
    let engine = cpu_engine(dir.path(), interactive_first(4, 0));
    // Four long batch chunks, counting their steps.
    let steps_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut batch = Vec::new();
    let mut readers = Vec::new();
    for i in 0..4 {
        let s = spec("slow ambient backfill", 40 + i, 120, 2.0, 3.0);
        let mut r = request(Uuid::new_v4(), &s, 0, 120, Start::Fresh);
        let (progress, reader) = counting(&steps_done);
        r.progress = progress;
        readers.push(reader);
        r.priority = Priority::Batch;
        batch.push(engine.denoise(r));
    }
    let interactive = async {
        // Once they are under way, an interactive chunk of 20 steps.
        while steps_done.load(Ordering::Relaxed) < 8 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let s = spec("quick interactive jingle", 99, 20, 2.0, 3.0);
        let mut r = request(Uuid::new_v4(), &s, 0, 20, Start::Fresh);
        r.priority = Priority::Interactive;
        let before = steps_done.load(Ordering::Relaxed);
        done(engine.denoise(r).await);
        steps_done.load(Ordering::Relaxed) - before
    };
    let (batch, during) = tokio::join!(futures::future::join_all(batch), interactive);
    println!("batch chunk-steps while the interactive chunk ran 20 steps: {during}");
    // Stepped together, the four would have done 4 x 20 = 80; with a 10% time share, a few.
    assert!(
        during < 40,
        "batch chunks took {during} steps beside the interactive one"
    );
    // And they were not stopped for good: all finish.
    for r in batch {
        done(r);
    }
    // The last reports may still be in the channels: count them all.
    for reader in readers {
        tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the engine lets go of a finished chunk's progress sender")
            .expect("progress reader");
    }
    assert_eq!(steps_done.load(Ordering::Relaxed), 4 * 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_vocodes_wait_for_their_share_while_interactive_chunks_run() {
    let dir = models();
    let engine = cpu_engine(dir.path(), interactive_first(4, 64 << 20));
    // Six finished backfill jobs, held, waiting for their vocode.
    let finished = held_backfill(&engine, 6, 70, 4, 2.0).await;
    // A long interactive chunk, counting its steps.
    let steps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = spec("quick interactive jingle", 98, 200, 2.0, 3.0);
    let mut r = request(Uuid::new_v4(), &s, 0, 200, Start::Fresh);
    r.progress = counting(&steps).0;
    r.priority = Priority::Interactive;
    let interactive = engine.denoise(r);
    let vocodes = async {
        while steps.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let at_submit = steps.load(Ordering::Relaxed);
        let all = finished.iter().map(|(job, s)| async {
            let r = engine
                .vocode(*job, s.clone(), Start::Held, Priority::Batch)
                .await;
            (r, steps.load(Ordering::Relaxed))
        });
        let results = futures::future::join_all(all).await;
        let last = results.iter().map(|(_, at)| *at).max().unwrap_or(0);
        for (r, _) in results {
            assert_eq!(r.expect("vocode").waveforms.len(), 1);
        }
        last - at_submit
    };
    let (interactive, spread) = tokio::join!(interactive, vocodes);
    done(interactive);
    println!("interactive steps while six batch vocodes ran: {spread}");
    // At most one other vocode per interactive step (and only within the 10% share), unless the
    // interactive chunk ended first; run on arrival, all six would land between two steps.
    assert!(
        spread >= 5 || steps.load(Ordering::Relaxed) >= 199,
        "six batch vocodes ran within {spread} interactive steps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_work_that_arrives_mid_round_does_not_wait_for_the_rest_of_it() {
    let dir = models();
    let engine = cpu_engine(dir.path(), interactive_first(4, 64 << 20));
    // Twelve finished backfill jobs, held; their vocodes all wait in one round.
    let finished = held_backfill(&engine, 12, 120, 2, 8.0).await;
    let vocoded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let vocodes = finished.iter().map(|(job, s)| {
        let (vocoded, engine) = (Arc::clone(&vocoded), engine.clone());
        async move {
            let r = engine
                .vocode(*job, s.clone(), Start::Held, Priority::Batch)
                .await;
            vocoded.fetch_add(1, Ordering::Relaxed);
            assert_eq!(r.expect("vocode").waveforms.len(), 1);
        }
    });
    let interactive = async {
        // Once the round is under way, a short interactive chunk.
        while vocoded.load(Ordering::Relaxed) < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let at_submit = vocoded.load(Ordering::Relaxed);
        let s = spec("quick interactive jingle", 97, 2, 2.0, 3.0);
        let mut r = request(Uuid::new_v4(), &s, 0, 2, Start::Fresh);
        r.priority = Priority::Interactive;
        done(engine.denoise(r).await);
        vocoded.load(Ordering::Relaxed) - at_submit
    };
    let (_, during) = tokio::join!(futures::future::join_all(vocodes), interactive);
    println!("batch vocodes that ended while the interactive chunk waited and ran: {during}");
    // The vocode in progress ends, then the interactive chunk runs first (the others keep a 10%
    // share); had it waited for the round, the eleven vocodes left would all come first.
    assert!(
        during <= 4,
        "{during} batch vocodes ran before the interactive chunk ended"
    );
    assert_eq!(vocoded.load(Ordering::Relaxed), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_chunks_step_in_short_forwards_where_interactive_ones_go_first() {
    let dir = models();
    // Six batch chunks of five steps in hand together, on an engine whose forwards of other
    // classes' chunks may last `other_forward`; returns the forwards run.
    let forwards = |other_forward| {
        let engine = cpu_engine(
            dir.path(),
            EngineOptions {
                other_forward,
                ..interactive_first(8, 0)
            },
        );
        async move {
            let chunks = (0..6).map(|i| {
                let s = spec("long backfill", 150 + i, 5, 4.0, 3.0);
                let mut r = request(Uuid::new_v4(), &s, 0, 5, Start::Fresh);
                r.priority = Priority::Batch;
                engine.denoise(r)
            });
            for r in futures::future::join_all(chunks).await {
                done(r);
            }
            engine.stats().forwards.load(Ordering::Relaxed)
        }
    };
    // No limit: the six step together once they are in hand.
    let unlimited = forwards(std::time::Duration::MAX).await;
    // No time at all: one chunk per forward once the step cost is known (after the first).
    let short = forwards(std::time::Duration::ZERO).await;
    println!("forwards for 6 x 5 chunk-steps: unlimited {unlimited}, short {short}");
    assert!(unlimited <= 10, "{unlimited} forwards without a limit");
    assert!(short >= 6 * 4, "{short} forwards with short ones");
}

/// The nice value of this process's thread named `name`, from /proc.
fn thread_nice(name: &str) -> Option<i64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the command (which is in parentheses): state is field 3, nice 19.
            let rest = stat.rsplit_once(')')?.1;
            return rest.split_whitespace().nth(16)?.parse().ok();
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_vocodes_run_beside_the_step_loop_at_a_lower_priority_and_sound_the_same() {
    let dir = models();
    let engine = cpu_engine(
        dir.path(),
        EngineOptions {
            background_vocodes: true,
            ..interactive_first(4, 64 << 20)
        },
    );
    let reference = cpu_engine(dir.path(), EngineOptions::sequential());
    let classes = [
        Priority::Batch,
        Priority::Standard,
        Priority::Interactive,
        Priority::Batch,
    ];
    for (i, class) in classes.into_iter().enumerate() {
        let s = spec("finished backfill", 200 + i as u64, 4, 3.0, 3.0);
        let job = Uuid::new_v4();
        let mut r = request(job, &s, 0, 4, Start::Fresh);
        r.priority = class;
        done(engine.denoise(r).await);
        let audio = engine
            .vocode(job, s.clone(), Start::Held, class)
            .await
            .expect("vocode");
        // The same job on an engine that vocodes on its step loop.
        let other = Uuid::new_v4();
        let checkpoint = done(
            reference
                .denoise(request(other, &s, 0, 4, Start::Fresh))
                .await,
        );
        let expected = reference
            .vocode(other, s, Start::Checkpoint(checkpoint), class)
            .await
            .expect("reference vocode");
        assert!(
            audio.waveforms == expected.waveforms,
            "{class:?} vocode differs"
        );
        assert_eq!(engine.holds().step(job), None, "a vocoded job is let go");
    }
    // The three of other classes ran on the vocoder thread, the interactive one on the loop.
    assert_eq!(engine.stats().background_vocodes.load(Ordering::Relaxed), 3);
    assert_eq!(
        reference.stats().background_vocodes.load(Ordering::Relaxed),
        0
    );
    assert_eq!(thread_nice("tutti-vocoder"), Some(10));
}
