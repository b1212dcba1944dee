//! The farm end to end, on real Postgres, RabbitMQ and S3 (coordinator and workers as
//! processes) and, for the tests under `both_backends!`, embedded too (`tutti dev`).

#[macro_use]
mod common;

use std::time::Duration;

use common::{request, state, Backend, Farm, FarmOptions};
use sha2::{Digest, Sha256};
use tutti_proto::v1 as pb;

both_backends!(
    a_job_becomes_a_wav_with_every_chunk_recorded,
    a_restart_loses_and_duplicates_nothing,
    a_cancelled_job_stops_within_its_chunk_and_stays_cancelled,
    the_same_seed_and_parameters_give_byte_identical_audio,
);

async fn a_job_becomes_a_wav_with_every_chunk_recorded(backend: Backend) {
    let farm = Farm::start(FarmOptions::on(backend)).await;
    let mut client = farm.client().await;
    let mut req = request("melancholic lo-fi piano, 75 BPM, late night study session");
    req.steps = Some(8); // the tiny pack's chunks are 4 steps: two denoise chunks, then vocode
    let job = client
        .submit_generation(req)
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(state(&job), pb::JobState::Queued);

    // Watch the job to its end through the progress stream.
    let mut stream = client
        .watch_job(pb::WatchJobRequest { id: job.id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut kinds = Vec::new();
    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("watch stalled")
        .expect("stream")
    {
        kinds.push(pb::job_event::Kind::try_from(ev.kind).expect("kind"));
        last = ev.job;
    }
    let job = last.expect("final job");
    assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
    assert_eq!(kinds.first(), Some(&pb::job_event::Kind::Snapshot));
    assert_eq!(kinds.last(), Some(&pb::job_event::Kind::Succeeded));
    assert!(kinds.contains(&pb::job_event::Kind::OutputReady));
    assert_eq!((job.steps_done, job.steps_total), (8, 8));
    assert_eq!(
        job.prompt_text,
        "melancholic lo-fi piano, 75 BPM, late night study session"
    );
    let stages: Vec<i32> = job.timings.iter().map(|t| t.stage).collect();
    assert!(
        stages.contains(&(pb::Stage::Denoise as i32))
            && stages.contains(&(pb::Stage::Vocode as i32))
    );

    // The WAV is in the blob store (S3, or the embedded folder), with the requested duration
    // and the pack's sample rate.
    assert_eq!(job.outputs.len(), 1);
    let out = &job.outputs[0];
    assert_eq!(
        out.uri,
        farm.uri(&format!("outputs/default/{}/0.wav", job.id))
    );
    assert_eq!(out.sample_rate, 16000);
    assert_eq!(out.channels, 1);
    assert!((out.duration_seconds - 2.0).abs() < 1e-3);
    let object = farm.fetch(&out.uri).await;
    let wav = hound::WavReader::new(std::io::Cursor::new(object.clone())).expect("wav");
    assert_eq!(wav.spec().sample_rate, 16000);
    assert_eq!(wav.duration(), 32000);
    assert_eq!(hex::encode(Sha256::digest(&object)), out.sha256);

    // The presigned (or file://) URL gives the same bytes.
    let fetched = farm.fetch(&out.url).await;
    assert_eq!(fetched, object);

    // The job's history in the store shows every chunk: two denoise chunks and the vocode task.
    let events = farm.events(&job.id).await;
    let done: Vec<(Option<i32>, String)> = events
        .iter()
        .filter(|e| e.0 == "chunk_done")
        .map(|e| (e.1, e.3["kind"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(
        done,
        vec![
            (Some(0), "denoise".into()),
            (Some(1), "denoise".into()),
            (Some(2), "vocode".into())
        ]
    );
    assert_eq!(events.iter().filter(|e| e.0 == "succeeded").count(), 1);
}

async fn submit(farm: &Farm, req: pb::SubmitGenerationRequest) -> pb::Job {
    farm.client()
        .await
        .submit_generation(req)
        .await
        .expect("submit")
        .into_inner()
}

fn long_request(prompt: &str, steps: u32) -> pb::SubmitGenerationRequest {
    let mut req = request(prompt);
    req.steps = Some(steps);
    req.duration_seconds = Some(20.0);
    req
}

/// Chunk indices of a job's `chunk_done` events with the worker that did each.
async fn chunks_done(farm: &Farm, id: &str) -> Vec<(i32, String)> {
    farm.events(id)
        .await
        .into_iter()
        .filter(|e| e.0 == "chunk_done")
        .map(|e| {
            (
                e.1.unwrap_or(-1),
                e.3["worker"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn assert_each_chunk_once(chunks: &[(i32, String)]) {
    let idx: Vec<i32> = chunks.iter().map(|c| c.0).collect();
    let expected: Vec<i32> = (0..idx.len() as i32).collect();
    assert_eq!(idx, expected, "every chunk exactly once, in order");
}

#[tokio::test]
async fn two_workers_share_a_stream_of_jobs_and_each_completes_once() {
    let farm = Farm::start(FarmOptions {
        workers: 2,
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let mut req = request(&format!("upbeat house groove number {i}"));
        req.steps = Some(12);
        req.duration_seconds = Some(6.0);
        ids.push(submit(&farm, req).await.id);
    }
    for id in &ids {
        let job = farm.wait_job(id, Duration::from_secs(120)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        assert_eq!(job.outputs.len(), 1);
        let events = farm.events(id).await;
        assert_eq!(events.iter().filter(|e| e.0 == "succeeded").count(), 1);
        assert_each_chunk_once(&chunks_done(&farm, id).await);
    }
    let workers: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT worker FROM tasks WHERE state = 'done' ORDER BY worker")
            .fetch_all(farm.pg())
            .await
            .expect("workers");
    assert_eq!(workers.len(), 2, "both workers took tasks: {workers:?}");
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_only_its_chunk() {
    let mut farm = Farm::start(FarmOptions {
        workers: 2,
        ..Default::default()
    })
    .await;
    let job = submit(&farm, long_request("slow ambient pad in D minor", 120)).await;
    farm.wait_steps(&job.id, 30, Duration::from_secs(60)).await;
    // Kill whichever worker holds the job's chunk right now.
    // (Between chunks no task is in hand for a moment, so look until one is.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT worker FROM tasks WHERE job_id = $1::uuid AND state = 'dispatched' AND worker IS NOT NULL",
        )
        .bind(&job.id)
        .fetch_optional(farm.pg())
        .await
        .expect("query tasks");
        if let Some((w,)) = row {
            break w;
        }
        assert!(std::time::Instant::now() < deadline, "no chunk in hand");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let victim: usize = holder
        .trim_start_matches('w')
        .parse()
        .expect("worker index");
    farm.kill_worker(victim);

    // Generous: 30 chunks on a loaded 2-core machine.
    let done = farm.wait_job(&job.id, Duration::from_secs(300)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    assert_eq!(done.outputs.len(), 1);
    let chunks = chunks_done(&farm, &job.id).await;
    assert_each_chunk_once(&chunks);
    // The victim's last chunk came before its death; from there the survivor carried the job
    // on from checkpoints (no chunk, and so not chunk 0 which starts from noise, ran twice).
    let survivor = format!("w{}", 1 - victim);
    let last_of_victim = chunks.iter().rposition(|c| c.1 == holder);
    let resumed_at = last_of_victim.map_or(0, |i| i + 1);
    assert!(resumed_at < chunks.len(), "{chunks:?}");
    assert!(
        chunks[resumed_at..].iter().all(|c| c.1 == survivor),
        "{chunks:?}"
    );
    let retried: Vec<_> = farm
        .events(&job.id)
        .await
        .into_iter()
        .filter(|e| e.0 == "dispatched")
        .collect();
    assert_eq!(
        retried.len(),
        chunks.len(),
        "the chunk in hand was redelivered, not re-dispatched"
    );
}

/// Distributed: the coordinator is SIGKILLed while its worker goes on. Embedded: `tutti dev`
/// itself (store, queue and workers) is SIGKILLed mid-job and started again on the same folder.
async fn a_restart_loses_and_duplicates_nothing(backend: Backend) {
    let mut farm = Farm::start(FarmOptions::on(backend)).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            submit(&farm, long_request(&format!("restart test {i}"), 40))
                .await
                .id,
        );
    }
    farm.wait_steps(&ids[0], 8, Duration::from_secs(60)).await;
    farm.kill_coordinator();
    tokio::time::sleep(Duration::from_secs(1)).await;
    farm.start_coordinator().await;
    let mut requeued = 0;
    for id in &ids {
        let job = farm.wait_job(id, Duration::from_secs(240)).await;
        assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");
        assert_eq!(job.outputs.len(), 1);
        let events = farm.events(id).await;
        assert_eq!(events.iter().filter(|e| e.0 == "succeeded").count(), 1);
        requeued += events.iter().filter(|e| e.0 == "requeued").count();
        // Every chunk done once: the ones after the restart started from checkpoints.
        assert_each_chunk_once(&chunks_done(&farm, id).await);
    }
    if backend == Backend::Embedded {
        // The in-process queue died with the process: what it held went out again.
        assert!(requeued > 0, "the restart caught no task in flight");
    }
}

async fn a_cancelled_job_stops_within_its_chunk_and_stays_cancelled(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        chunk_steps: 100,
        ..FarmOptions::on(backend)
    })
    .await;
    let job = submit(&farm, long_request("endless drone", 200)).await;
    farm.wait_steps(&job.id, 5, Duration::from_secs(60)).await;
    let cancelled = farm
        .client()
        .await
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(state(&cancelled), pb::JobState::Cancelled);
    // The worker stops mid-chunk and says so; the coordinator drops that result.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = farm.events(&job.id).await;
        if let Some(e) = events.iter().find(|e| e.0 == "stale_result") {
            assert_eq!(e.3["outcome"], "cancelled", "{events:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no word from the worker: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = farm.wait_job(&job.id, Duration::from_secs(5)).await;
    assert_eq!(state(&again), pb::JobState::Cancelled);
    assert!(
        again.steps_done < 100,
        "stopped inside the first chunk: {}",
        again.steps_done
    );
    assert!(again.outputs.is_empty());
    let events = farm.events(&job.id).await;
    assert_eq!(
        events.iter().filter(|e| e.0 == "dispatched").count(),
        1,
        "{events:?}"
    );
    // Cancelling again changes nothing.
    let twice = farm
        .client()
        .await
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(state(&twice), pb::JobState::Cancelled);
}

#[tokio::test]
async fn garbage_on_a_task_queue_is_dead_lettered_and_the_queue_keeps_flowing() {
    let farm = Farm::start(FarmOptions::default()).await;
    let conn =
        lapin::Connection::connect(&common::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("amqp");
    let ch = tutti_shared::queue::confirm_channel(&conn)
        .await
        .expect("channel");
    let dead = format!("{}.dead", farm.prefix());
    let before = farm.queue_counts(&dead).await.map(|c| c.0).unwrap_or(0);
    tutti_shared::queue::publish_bytes(
        &ch,
        "",
        &format!("{}.denoise", farm.prefix()),
        b"\x00not a task{",
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("publish garbage");
    let job = submit(&farm, request("after the garbage")).await;
    let job = farm.wait_job(&job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&job), pb::JobState::Succeeded);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while farm.queue_counts(&dead).await.map(|c| c.0).unwrap_or(0) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "garbage never reached {dead}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operator API says who refused it, from which queue, and why.
    let mut operator =
        pb::operator_client::OperatorClient::new(farm.channel().await.expect("channel"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let letter = loop {
        let q = operator
            .get_queues(pb::GetQueuesRequest::default())
            .await
            .expect("queues")
            .into_inner();
        if let Some(d) = q.dead_letters.into_iter().next() {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter's cause recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (letter.refused_by.as_str(), letter.queue.as_str()),
        ("w0", "denoise")
    );
    assert_eq!(letter.size_bytes, 12);
    assert!(
        !letter.error.is_empty() && letter.at.is_some(),
        "{letter:?}"
    );
}

async fn the_same_seed_and_parameters_give_byte_identical_audio(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        workers: 2,
        ..FarmOptions::on(backend)
    })
    .await;
    let mut req = request("deterministic waltz in G major, 90 BPM");
    req.steps = Some(10);
    req.variations = 2;
    let a = submit(&farm, req.clone()).await;
    let b = submit(&farm, req.clone()).await;
    req.seed = Some(43);
    let c = submit(&farm, req).await;
    let a = farm.wait_job(&a.id, Duration::from_secs(60)).await;
    let b = farm.wait_job(&b.id, Duration::from_secs(60)).await;
    let c = farm.wait_job(&c.id, Duration::from_secs(60)).await;
    let sums = |j: &pb::Job| {
        j.outputs
            .iter()
            .map(|o| o.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(sums(&a).len(), 2);
    assert_eq!(sums(&a), sums(&b));
    assert_ne!(sums(&a)[0], sums(&a)[1], "variations differ");
    assert_ne!(sums(&a), sums(&c), "another seed gives other audio");
}

/// Held latents change no byte of the audio: the same requests through a worker that keeps
/// latents between chunks and through one that reads every checkpoint from S3 give identical
/// files. (Batched forwards are not compared byte for byte: on CPU they differ by float
/// reassociation, see worker/tests/batching.rs.)
#[tokio::test]
async fn a_worker_holding_latents_and_one_reading_checkpoints_give_identical_audio() {
    async fn hashes(worker_flags: &[&str]) -> Vec<Vec<String>> {
        let mut farm = Farm::start(FarmOptions {
            workers: 0,
            chunk_steps: 4,
            ..Default::default()
        })
        .await;
        farm.add_worker(worker_flags);
        farm.wait_for_consumers(1).await;
        let mut jobs = Vec::new();
        for (seed, steps, guidance) in [(1, 10, 3.0), (2, 12, 5.0), (3, 8, 1.5), (4, 11, 4.0)] {
            let mut req = request("batched or not, the same waltz");
            req.seed = Some(seed);
            req.steps = Some(steps);
            req.guidance_scale = Some(guidance);
            jobs.push(submit(&farm, req).await);
        }
        let mut sums = Vec::new();
        for j in jobs {
            let done = farm.wait_job(&j.id, Duration::from_secs(120)).await;
            assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
            sums.push(done.outputs.iter().map(|o| o.sha256.clone()).collect());
        }
        sums
    }
    let held = hashes(&["--max-batch", "1"]).await;
    let read = hashes(&["--max-batch", "1", "--held-latents-mb", "0"]).await;
    assert_eq!(held.len(), 4);
    assert_eq!(held, read);
}

#[tokio::test]
async fn sigterm_drains_a_worker_after_the_chunk_in_hand() {
    let mut farm = Farm::start(FarmOptions {
        workers: 2,
        chunk_steps: 30,
        ..Default::default()
    })
    .await;
    let job = submit(&farm, long_request("draining strings", 60)).await;
    farm.wait_steps(&job.id, 3, Duration::from_secs(60)).await;
    let (holder,): (String,) = sqlx::query_as(
        "SELECT worker FROM tasks WHERE job_id = $1::uuid AND chunk = 0 AND worker IS NOT NULL",
    )
    .bind(&job.id)
    .fetch_one(farm.pg())
    .await
    .expect("chunk 0 has a worker");
    let victim: usize = holder
        .trim_start_matches('w')
        .parse()
        .expect("worker index");
    let status = farm.terminate_worker(victim);
    assert!(
        status.success(),
        "a drained worker exits cleanly: {status:?}"
    );
    let done = farm.wait_job(&job.id, Duration::from_secs(120)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    let chunks = chunks_done(&farm, &job.id).await;
    assert_each_chunk_once(&chunks);
    assert_eq!(
        chunks[0].1, holder,
        "the chunk in hand was finished by the draining worker"
    );
    assert!(
        chunks[1..].iter().all(|c| c.1 != holder),
        "no work taken after SIGTERM: {chunks:?}"
    );
    let dispatched = farm
        .events(&job.id)
        .await
        .into_iter()
        .filter(|e| e.0 == "dispatched")
        .count();
    assert_eq!(dispatched, chunks.len(), "nothing was redone");
}

/// Checkpoints serve a running job only: once it has succeeded they leave the bucket and its
/// output stays (the store suite shows that a running job keeps its own).
#[tokio::test]
async fn the_checkpoints_of_a_finished_job_are_deleted() {
    use tutti_shared::blob::BlobStore;
    let farm = Farm::start(FarmOptions {
        coordinator_env: vec![("TUTTI_CHECKPOINT_GRACE", "1s".into())],
        ..Default::default()
    })
    .await;
    let mut req = request("a short tune that leaves nothing behind");
    req.steps = Some(8); // two denoise chunks of 4: checkpoints 0 and 1
    let job = submit(&farm, req).await;
    let done = farm.wait_job(&job.id, Duration::from_secs(60)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    let id: uuid::Uuid = job.id.parse().expect("job id");
    let s3 = farm.s3();
    let keys: Vec<String> = (0..2)
        .map(|c| tutti_shared::job::checkpoint_key(id, c))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = Vec::new();
        for k in &keys {
            if s3.get(k).await.expect("get").is_some() {
                left.push(k.clone());
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoints still there: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The output stays.
    let output = &done.outputs[0];
    assert!(!output.sha256.is_empty());
    let key = output
        .uri
        .strip_prefix(&format!("s3://{}/", common::s3_settings().bucket))
        .expect("an s3 uri");
    assert!(s3.get(key).await.expect("get").is_some(), "output gone");
}
