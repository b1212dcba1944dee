//! The farm end to end on real Postgres, RabbitMQ and S3: coordinator and workers as processes.

mod common;

use std::time::Duration;

use common::{request, state, Farm, FarmOptions};
use sha2::{Digest, Sha256};
use tutti_proto::v1 as pb;
use tutti_shared::blob::BlobStore;

#[tokio::test]
async fn a_job_becomes_a_wav_in_s3_with_every_chunk_recorded() {
    let farm = Farm::start(FarmOptions::default()).await;
    let mut client = farm.client().await;
    let mut req = request("melancholic lo-fi piano, 75 BPM, late night study session");
    req.steps = Some(8); // the tiny pack's chunks are 4 steps: two denoise chunks, then vocode
    let job = client.submit_generation(req).await.expect("submit").into_inner();
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
    assert_eq!(job.prompt_text, "melancholic lo-fi piano, 75 BPM, late night study session");
    let stages: Vec<i32> = job.timings.iter().map(|t| t.stage).collect();
    assert!(stages.contains(&(pb::Stage::Denoise as i32)) && stages.contains(&(pb::Stage::Vocode as i32)));

    // The WAV is in S3, with the requested duration and the pack's sample rate.
    assert_eq!(job.outputs.len(), 1);
    let out = &job.outputs[0];
    assert_eq!(out.uri, format!("s3://{}/outputs/default/{}/0.wav", common::s3_settings().bucket, job.id));
    assert_eq!(out.sample_rate, 16000);
    assert!((out.duration_seconds - 2.0).abs() < 1e-3);
    let key = out.uri.splitn(4, '/').nth(3).expect("key");
    let object = farm.s3().get(key).await.expect("s3 get").expect("object exists");
    let wav = hound::WavReader::new(std::io::Cursor::new(object.to_vec())).expect("wav");
    assert_eq!(wav.spec().sample_rate, 16000);
    assert_eq!(wav.duration(), 32000);
    assert_eq!(hex::encode(Sha256::digest(&object)), out.sha256);

    // The presigned URL downloads the same bytes.
    let fetched = reqwest::get(&out.url).await.expect("download").bytes().await.expect("body");
    assert_eq!(fetched.as_ref(), object.as_ref());

    // The job's history in Postgres shows every chunk: two denoise chunks and the vocode task.
    let events = farm.events(&job.id).await;
    let done: Vec<(Option<i32>, String)> = events
        .iter()
        .filter(|e| e.0 == "chunk_done")
        .map(|e| (e.1, e.3["kind"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(
        done,
        vec![(Some(0), "denoise".into()), (Some(1), "denoise".into()), (Some(2), "vocode".into())]
    );
    assert_eq!(events.iter().filter(|e| e.0 == "succeeded").count(), 1);
}
