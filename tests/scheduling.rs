//! Scheduling on real servers: interactive work overtakes a running backfill, tenants share
//! by weight, and a preempted batch job resumes to the same audio.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{request, state, Farm, FarmOptions};
use tutti_coordinator::sched::Policy;
use tutti_coordinator::store::{JobStore, PgStore, RetryPolicy, TaskRef};
use tutti_coordinator::validate::NewJob;
use tutti_proto::v1 as pb;
use tutti_shared::job::{AudioFormat, JobSpec, ModelRef, Priority, SamplerKind, TaskKind};
use tutti_shared::messages::{Outcome, TaskMessage};
use tutti_shared::prompt::Controls;
use tutti_shared::queue::Topology;
use tutti_shared::taskqueue::{AmqpQueue, QueueName, TaskQueue};
use uuid::Uuid;

/// A farm whose in-flight bound is its workers' capacity (one task each), so dispatched work
/// does not wait in RabbitMQ where classes no longer apply.
async fn tight_farm(workers: usize) -> Farm {
    Farm::start(FarmOptions {
        workers,
        coordinator_env: vec![
            ("TUTTI_MAX_IN_FLIGHT", workers.to_string()),
            ("TUTTI_BATCH_SHARE", "0.1".into()),
        ],
        // One slot per worker (its heartbeats then bound dispatch to `workers` chunks) and no
        // express lane, so that interactive work must take slots from the backfill
        // (preemption); express lanes are covered by the plan's and the engine's tests.
        env: vec![
            ("TUTTI_MAX_BATCH".into(), "1".into()),
            ("TUTTI_EXPRESS_SLOTS".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await
}

fn job_request(prompt: &str, steps: u32, priority: pb::Priority) -> pb::SubmitGenerationRequest {
    let mut req = request(prompt);
    req.steps = Some(steps);
    req.priority = priority as i32;
    req
}

async fn submit(farm: &Farm, req: pb::SubmitGenerationRequest) -> pb::Job {
    farm.client()
        .await
        .submit_generation(req)
        .await
        .expect("submit")
        .into_inner()
}

/// (id, kind, job, class rank) of every event, in the order of their ids.
async fn all_events(farm: &Farm) -> Vec<(i64, String, Uuid, i16)> {
    sqlx::query_as(
        "SELECT e.id, e.kind, e.job_id, j.priority FROM job_events e \
         JOIN jobs j ON j.id = e.job_id ORDER BY e.id",
    )
    .fetch_all(farm.pg())
    .await
    .expect("events")
}

#[tokio::test]
async fn an_interactive_job_overtakes_a_running_backfill() {
    let farm = tight_farm(2).await;
    let mut batch = Vec::new();
    for i in 0..200 {
        let req = job_request(&format!("backfill item {i}"), 200, pb::Priority::Batch);
        batch.push(submit(&farm, req).await.id);
    }
    // The backfill is under way: its oldest job finished a chunk.
    farm.wait_steps(&batch[0], 4, Duration::from_secs(60)).await;
    let running: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT id, steps_done FROM jobs WHERE state = 'running' AND priority = $1")
            .bind(Priority::Batch.rank())
            .fetch_all(farm.pg())
            .await
            .expect("running jobs");
    // Jobs with at least ten chunks and the vocoder to go (the interactive job has two
    // tasks in all).
    let long_running: Vec<Uuid> = running
        .iter()
        .filter(|(_, done)| *done <= 160)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !long_running.is_empty(),
        "no batch job under way: {running:?}"
    );

    let inter = submit(
        &farm,
        job_request("an interactive jingle", 4, pb::Priority::Interactive),
    )
    .await;
    let inter_id: Uuid = inter.id.parse().expect("uuid");
    let done = farm.wait_job(&inter.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");

    // It finished while every batch job that was well under way at its arrival still runs.
    let unfinished: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running'")
            .bind(&long_running)
            .fetch_all(farm.pg())
            .await
            .expect("jobs");
    assert_eq!(unfinished.len(), long_running.len(), "{long_running:?}");

    // It started within one chunk of its arrival: between its `queued` and its first
    // `dispatched`, batch work went out at most once per slot (the chunks that raced its
    // arrival), not behind the 200-job backlog.
    let events = all_events(&farm).await;
    let queued = events
        .iter()
        .position(|e| e.2 == inter_id && e.1 == "queued")
        .expect("queued");
    let started = events
        .iter()
        .position(|e| e.2 == inter_id && e.1 == "dispatched")
        .expect("dispatched");
    let batch_between = events[queued..started]
        .iter()
        .filter(|e| e.1 == "dispatched" && e.3 == Priority::Batch.rank())
        .count();
    assert!(batch_between <= 2, "{batch_between} batch dispatches first");
    // And batch work kept its share meanwhile: some batch chunk went out while the
    // interactive job ran, or its chunks yielded (preempted) to it.
    let finished = events
        .iter()
        .rposition(|e| e.2 == inter_id)
        .expect("events of the interactive job");
    assert!(
        events[started..=finished]
            .iter()
            .any(|e| e.3 == Priority::Batch.rank() && (e.1 == "dispatched" || e.1 == "preempted")),
        "the backfill stood still"
    );
}

#[tokio::test]
async fn a_preempted_batch_job_resumes_to_the_same_audio() {
    let farm = tight_farm(1).await;
    let prompt = "a long preemptible cello line";
    let reference = submit(&farm, job_request(prompt, 40, pb::Priority::Batch)).await;
    let reference = farm.wait_job(&reference.id, Duration::from_secs(120)).await;
    assert_eq!(state(&reference), pb::JobState::Succeeded, "{reference:?}");

    let job = submit(&farm, job_request(prompt, 40, pb::Priority::Batch)).await;
    farm.wait_steps(&job.id, 4, Duration::from_secs(60)).await;
    let mut interactive = Vec::new();
    for i in 0..3 {
        let req = job_request(&format!("quick sketch {i}"), 4, pb::Priority::Interactive);
        interactive.push(submit(&farm, req).await.id);
    }
    let done = farm.wait_job(&job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    for id in &interactive {
        let j = farm.wait_job(id, Duration::from_secs(60)).await;
        assert_eq!(state(&j), pb::JobState::Succeeded, "{j:?}");
    }
    let events = farm.events(&job.id).await;
    let preempted: Vec<_> = events.iter().filter(|e| e.0 == "preempted").collect();
    assert!(!preempted.is_empty(), "never preempted: {events:?}");
    // It resumed at the chunk it yielded, from that chunk's checkpoint, and ran every chunk
    // once.
    let chunks: Vec<i32> = events
        .iter()
        .filter(|e| e.0 == "chunk_done")
        .filter_map(|e| e.1)
        .collect();
    assert_eq!(chunks, (0..=10).collect::<Vec<_>>());
    let sums = |j: &pb::Job| {
        j.outputs
            .iter()
            .map(|o| o.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(sums(&done).len(), 1);
    assert_eq!(
        sums(&done),
        sums(&reference),
        "preemption changed the audio"
    );
    // The bytes in S3 are the ones the hash names.
    let object = farm.fetch(&done.outputs[0].uri).await;
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&object)),
        done.outputs[0].sha256
    );
}

fn new_job(priority: Priority) -> NewJob {
    NewJob {
        spec: JobSpec {
            model: ModelRef {
                name: "tiny".into(),
                version: "1".into(),
            },
            prompt: "fair share".into(),
            negative_prompt: String::new(),
            controls: Controls {
                duration_s: 2.0,
                bpm: None,
                key: None,
                mode: None,
            },
            duration_s: 2.0,
            seed: 1,
            steps: 4,
            guidance_scale: 3.0,
            sampler: SamplerKind::FlowEuler,
            variations: 1,
            format: AudioFormat::Wav,
            delivery: Default::default(),
            trace_context: Default::default(),
            init_audio: None,
            song: None,
        },
        priority,
        labels: BTreeMap::new(),
        idempotency_key: None,
        request_hash: "fair".into(),
        accepted: pb::SubmitGenerationRequest::default(),
        chunk_steps: 4,
        init_clip: None,
        api_key: None,
    }
}

/// Removes the test's RabbitMQ topology even when an assertion fails.
struct TopologyGuard(String);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        common::remove_topology(&self.0, 0);
    }
}

/// Two tenants with weights 1 and 3 and equal backlogs, over real Postgres and RabbitMQ,
/// workers simulated by the test: completed work splits about 1:3.
#[tokio::test]
async fn tenants_with_weights_one_and_three_get_a_quarter_and_three_quarters() {
    let id = &Uuid::new_v4().simple().to_string()[..12];
    let store = PgStore::connect(&common::pg_url(&format!("tutti_sched_{id}")))
        .await
        .expect("postgres");
    let prefix = format!("test-sched-{id}");
    let _guard = TopologyGuard(prefix.clone());
    let queue = AmqpQueue::new(common::amqp_url(), Topology::new(prefix));
    for _ in 0..60 {
        for tenant in ["one", "three"] {
            store
                .insert_job(tenant, &new_job(Priority::Standard))
                .await
                .expect("insert");
        }
    }
    let policy = Policy {
        weights: "one=1,three=3".parse().expect("weights"),
        ..Policy::default()
    };
    let retry = RetryPolicy {
        max_attempts: 3,
        backoff: Duration::ZERO,
    };
    let mut consumer = queue
        .consume(&[QueueName::Task(TaskKind::Denoise)], 64, "sim")
        .await
        .expect("consume");
    let mut completed: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // A window of 48 completed chunks, while both tenants still have a backlog.
    while completed.values().sum::<usize>() < 48 {
        assert!(Instant::now() < deadline, "stalled at {completed:?}");
        // Two simulated workers of four slots each, alive.
        for w in ["sim-a", "sim-b"] {
            store
                .record_heartbeat(&tutti_coordinator::store::Heartbeat {
                    worker: w,
                    denoise_slots: 4,
                    vocode_slots: 4,
                    express_slots: 0,
                    holds: &[],
                    draining: false,
                    device: "cpu",
                    chunks_per_forward: 0.0,
                    models: &[],
                })
                .await
                .expect("heartbeat");
        }
        tutti_coordinator::dispatcher::dispatch_once(&store, &queue, &policy)
            .await
            .expect("dispatch");
        while let Ok(Some(d)) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
        {
            let d = d.expect("delivery");
            let t: TaskMessage = serde_json::from_slice(&d.data).expect("task");
            d.ack().await.expect("ack");
            let task = TaskRef {
                job: t.job_id,
                chunk: t.chunk,
                attempt: t.attempt,
                worker: "sim-a",
            };
            let outcome = Outcome::Done {
                millis: 1,
                outputs: Vec::new(),
                held: false,
            };
            store
                .record_result(task, &outcome, retry)
                .await
                .expect("result");
            *completed.entry(t.tenant).or_default() += 1;
            if completed.values().sum::<usize>() % 8 == 0 {
                break;
            }
        }
    }
    consumer.close().await;
    let one = completed.get("one").copied().unwrap_or(0) as f64;
    let three = completed.get("three").copied().unwrap_or(0) as f64;
    let share = three / (one + three);
    assert!(
        (share - 0.75).abs() <= 0.75 * 0.15,
        "weight-3 tenant got {share:.2} of the work: {completed:?}"
    );
}
