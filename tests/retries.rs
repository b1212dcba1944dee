//! Retries after the fact (RetryJob), on both farms: a cancelled job runs again from its last
//! checkpoint with the same seed and gives the audio an uninterrupted render gives.

#[macro_use]
mod common;

use std::time::Duration;

use common::{request, state, Backend, Farm, FarmOptions};
use tutti_proto::v1 as pb;
use tutti_proto::v1::batches_client::BatchesClient;

both_backends!(
    a_cancelled_job_retried_resumes_and_renders_the_same_audio,
    a_cancelled_batch_retries_its_items_and_rewrites_its_results,
);

async fn retry(farm: &Farm, id: &str) -> Result<pb::Job, tonic::Status> {
    farm.client()
        .await
        .retry_job(pb::RetryJobRequest { id: id.into() })
        .await
        .map(|r| r.into_inner())
}

async fn a_cancelled_job_retried_resumes_and_renders_the_same_audio(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        chunk_steps: 4,
        ..FarmOptions::on(backend)
    })
    .await;
    let mut req = request("slow strings that stop and start again");
    req.steps = Some(40);
    req.duration_seconds = Some(20.0);
    let mut client = farm.client().await;
    let job = client
        .submit_generation(req.clone())
        .await
        .expect("submit")
        .into_inner();

    // A job still running is not retried.
    farm.wait_steps(&job.id, 1, Duration::from_secs(60)).await;
    let refused = retry(&farm, &job.id).await.expect_err("running");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("running"), "{refused:?}");
    let missing = retry(&farm, &uuid::Uuid::new_v4().to_string())
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad = retry(&farm, "not-a-job").await.expect_err("bad id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("id"), "{bad:?}");

    // Cancelled after two chunks: the workers saw its cancel, and the retry lifts it.
    farm.wait_steps(&job.id, 8, Duration::from_secs(60)).await;
    let cancelled = client
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(state(&cancelled), pb::JobState::Cancelled);
    let retried = retry(&farm, &job.id).await.expect("retry");
    assert!(
        matches!(
            state(&retried),
            pb::JobState::Queued | pb::JobState::Running
        ),
        "{retried:?}"
    );
    // Asking again is the same retry.
    let again = retry(&farm, &job.id).await.expect("retry again");
    assert_ne!(state(&again), pb::JobState::Cancelled);

    let done = farm.wait_job(&job.id, Duration::from_secs(240)).await;
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    assert_eq!(done.outputs.len(), 1);
    assert!(
        done.outputs[0].uri.contains(&format!("/{}/0.", job.id)),
        "{}",
        done.outputs[0].uri
    );
    let events = farm.events(&job.id).await;
    let retried: Vec<_> = events.iter().filter(|e| e.0 == "retried").collect();
    assert_eq!(retried.len(), 1, "{events:?}");
    let (_, chunk, _, detail) = retried[0];
    assert!(
        chunk.unwrap_or(0) >= 2,
        "resumed, not restarted: {events:?}"
    );
    assert_eq!(detail["rewound"], false);
    assert_eq!(detail["from"], "cancelled");

    // An ended job that succeeded is not retried.
    let refused = retry(&farm, &job.id).await.expect_err("succeeded");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("succeeded"), "{refused:?}");
    // The studio's route answers the same.
    let r = reqwest::Client::new()
        .post(format!("{}api/jobs/{}/retry", farm.studio_url(), job.id))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("POST /api/jobs/{id}/retry");
    let status = r.status();
    let body = r.text().await.expect("body");
    assert!(status.is_client_error(), "{status} {body}");
    assert!(body.contains("succeeded"), "{body}");

    // Same request, same seed: the same audio as a render that never stopped.
    let fresh = client
        .submit_generation(req)
        .await
        .expect("submit")
        .into_inner();
    let fresh = farm.wait_job(&fresh.id, Duration::from_secs(240)).await;
    assert_eq!(state(&fresh), pb::JobState::Succeeded);
    assert_eq!(fresh.outputs[0].sha256, done.outputs[0].sha256);
}

fn batch_msg(kind: pb::submit_batch_request::Kind) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest { kind: Some(kind) }
}

/// Polls GetBatch until its results manifest is written.
async fn wait_results(c: &mut BatchesClient<tonic::transport::Channel>, id: &str) -> pb::Batch {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let b = c
            .get_batch(pb::GetBatchRequest { id: id.into() })
            .await
            .expect("get batch")
            .into_inner();
        if !b.results_uri.is_empty() {
            return b;
        }
        assert!(std::time::Instant::now() < deadline, "not finished: {b:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn a_cancelled_batch_retries_its_items_and_rewrites_its_results(backend: Backend) {
    use pb::submit_batch_request::Kind;
    let farm = Farm::start(FarmOptions {
        chunk_steps: 4,
        ..FarmOptions::on(backend)
    })
    .await;
    let mut c = BatchesClient::connect(format!("http://{}", farm.addr))
        .await
        .expect("connect");
    let mut quick = request("short piano phrase");
    quick.steps = Some(4);
    let mut long = request("a long slow drone");
    long.steps = Some(40);
    long.duration_seconds = Some(20.0);
    let msgs = vec![
        batch_msg(Kind::Header(pb::BatchHeader {
            name: "retry-me".into(),
            ..Default::default()
        })),
        batch_msg(Kind::Item(pb::BatchItem {
            item_id: "quick".into(),
            line: 1,
            request: Some(quick),
        })),
        batch_msg(Kind::Item(pb::BatchItem {
            item_id: "long".into(),
            line: 2,
            request: Some(long),
        })),
    ];
    let batch = c
        .submit_batch(tokio_stream::iter(msgs))
        .await
        .expect("submit")
        .into_inner()
        .batch
        .expect("batch");
    let long_job =
        tutti_coordinator::batches::item_job_id(batch.id.parse().expect("batch id"), "long")
            .to_string();
    farm.wait_steps(&long_job, 8, Duration::from_secs(120))
        .await;
    c.cancel_batch(pb::CancelBatchRequest {
        id: batch.id.clone(),
    })
    .await
    .expect("cancel");
    let first = wait_results(&mut c, &batch.id).await;
    // The long item at least (the quick one may have waited behind it, batch items share idle
    // capacity).
    assert!(first.cancelled >= 1, "{first:?}");

    // Without the flag a cancelled item stays as it is.
    let none = c
        .retry_batch_items(pb::RetryBatchItemsRequest {
            id: batch.id.clone(),
            include_cancelled: false,
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(none.retried, 0);
    let missing = c
        .retry_batch_items(pb::RetryBatchItemsRequest {
            id: uuid::Uuid::new_v4().to_string(),
            include_cancelled: true,
        })
        .await
        .expect_err("unknown batch");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let r = c
        .retry_batch_items(pb::RetryBatchItemsRequest {
            id: batch.id.clone(),
            include_cancelled: true,
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(r.retried, first.cancelled);
    let reopened = r.batch.expect("batch");
    assert!(reopened.results_uri.is_empty(), "{reopened:?}");
    let done = wait_results(&mut c, &batch.id).await;
    assert_eq!((done.succeeded, done.cancelled), (2, 0), "{done:?}");
    assert_eq!(
        pb::BatchState::try_from(done.state),
        Ok(pb::BatchState::Completed)
    );
    let body = String::from_utf8(farm.fetch(&done.results_uri).await).expect("utf-8");
    let states: Vec<String> = body
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            format!(
                "{}={}",
                v["item_id"].as_str().unwrap_or(""),
                v["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(states, ["quick=succeeded", "long=succeeded"]);
}
