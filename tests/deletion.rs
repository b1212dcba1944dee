//! Deletion and retention on real farms: DeleteJob removes a job's outputs from the blob store
//! (S3, or the embedded farm's folder), blanks its prompt, keeps its usage record, is
//! idempotent and NOT_FOUND for another tenant (`tutti delete` too); a tenant's retention sets
//! each output's `expires_at`, and the janitor's sweep deletes expired objects so that GetJob
//! hands out no URL for them; an audio-to-audio job's own init clip goes with the job and with
//! the tenant's input retention; the studio's delete button does what DeleteJob does.

#[macro_use]
mod common;

use std::sync::Arc;

use common::browser::Browser;
use common::{request, state, Backend, Farm, FarmOptions};
use tonic::Code;
use tutti_coordinator::store::{JobStore, PgStore, SqliteStore};
use tutti_proto::v1 as pb;
use tutti_shared::blob::{BlobStore, LocalStore};

both_backends!(
    deleted_and_expired_outputs_leave_the_blob_store,
    a_jobs_own_init_clip_leaves_with_the_job_and_with_input_retention,
);

/// The farm's own store and blob store, opened beside it (as an operator tool would).
async fn stores(farm: &Farm, backend: Backend) -> (Arc<dyn JobStore>, Arc<dyn BlobStore>) {
    match backend {
        Backend::Distributed => (
            Arc::new(
                PgStore::connect(&common::pg_url(farm.db()))
                    .await
                    .expect("postgres"),
            ),
            Arc::new(farm.s3()),
        ),
        Backend::Embedded => {
            let data = farm.procs.data_dir();
            (
                Arc::new(
                    SqliteStore::open(&data.join("jobs.db"))
                        .await
                        .expect("sqlite"),
                ),
                Arc::new(LocalStore::new(data.join("blobs"))),
            )
        }
    }
}

async fn exists(blobs: &dyn BlobStore, farm: &Farm, uri: &str) -> bool {
    let key = uri
        .strip_prefix(&farm.uri(""))
        .expect("an output of this farm");
    blobs.get(key).await.expect("blob store").is_some()
}

async fn deleted_and_expired_outputs_leave_the_blob_store(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        auth: true,
        ..FarmOptions::on(backend)
    })
    .await;
    farm.operator(&["tenant", "create", "acme", "--retain-outputs-days", "2"]);
    farm.operator(&["tenant", "create", "beta"]);
    let (acme, beta) = (
        farm.create_key("acme", false),
        farm.create_key("beta", false),
    );
    let (store, blobs) = stores(&farm, backend).await;
    let mut a = farm.client_as(Some(&acme)).await;
    let mut first = Vec::new();
    for prompt in ["a secret tune to delete", "a tune that expires"] {
        let job = a
            .submit_generation(request(prompt))
            .await
            .expect("submit")
            .into_inner();
        let done = common::wait_ended(&mut a, &job.id).await;
        assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
        first.push(done);
    }
    let (doomed, expiring) = (&first[0], &first[1]);
    let out = &doomed.outputs[0];
    assert!(exists(blobs.as_ref(), &farm, &out.uri).await);
    // Retention: expires two days after it was stored; the URL does not outlive it.
    let expires = out.expires_at.as_ref().expect("expires_at").seconds;
    let now = chrono::Utc::now().timestamp();
    assert!((expires - (now + 2 * 86_400)).abs() < 300, "{out:?}");
    assert!(!out.deleted && !out.url.is_empty());

    // Another tenant cannot delete it.
    let mut b = farm.client_as(Some(&beta)).await;
    let refused = b
        .delete_job(pb::DeleteJobRequest {
            id: doomed.id.clone(),
        })
        .await
        .expect_err("another tenant's job");
    assert_eq!(refused.code(), Code::NotFound);
    let bad = a
        .delete_job(pb::DeleteJobRequest { id: "nope".into() })
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(exists(blobs.as_ref(), &farm, &out.uri).await);

    // The CLI deletes it: the object is gone, the prompt blanked, the usage kept.
    let server = format!("http://{}", farm.addr);
    let cli = std::process::Command::new(common::bin())
        .args([
            "delete",
            &doomed.id,
            "--server",
            &server,
            "--api-key",
            &acme,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tutti delete");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(printed.contains("url      (deleted)"), "{printed}");
    assert!(printed.contains("deleted  "), "{printed}");
    assert!(!exists(blobs.as_ref(), &farm, &out.uri).await);
    let gone = a
        .get_job(pb::GetJobRequest {
            id: doomed.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(gone.deleted_at.is_some());
    assert_eq!(gone.prompt_text, "");
    let req = gone.request.as_ref().expect("request");
    assert_eq!(req.prompt_kind, None);
    assert_eq!(req.seed, doomed.request.as_ref().and_then(|r| r.seed));
    assert!(gone.outputs[0].deleted && gone.outputs[0].url.is_empty());
    // Idempotent.
    let again = a
        .delete_job(pb::DeleteJobRequest {
            id: doomed.id.clone(),
        })
        .await
        .expect("delete again")
        .into_inner();
    assert_eq!(again.deleted_at, gone.deleted_at);
    let usage = a
        .get_usage(pb::GetUsageRequest::default())
        .await
        .expect("usage")
        .into_inner();
    assert_eq!(usage.totals[0].jobs, 2, "the deleted job's usage stays");

    // The janitor's sweep, two days on: the expiring output's object goes, and GetJob gives
    // no URL for it.
    let later = chrono::Utc::now() + chrono::Duration::days(3);
    let swept = tutti_coordinator::janitor::expire_outputs(store.as_ref(), blobs.as_ref(), later)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    let expired_uri = &expiring.outputs[0].uri;
    assert!(!exists(blobs.as_ref(), &farm, expired_uri).await);
    let now_job = a
        .get_job(pb::GetJobRequest {
            id: expiring.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(now_job.outputs[0].deleted && now_job.outputs[0].url.is_empty());
    assert_eq!(
        now_job.prompt_text, "a tune that expires",
        "only the object expires"
    );

    // A batch: `tutti batch delete` deletes its items' jobs and their objects; before that,
    // manifest retention deletes its results manifest and GetBatch gives no URL for it.
    let csv = farm.dir().join("few.csv");
    std::fs::write(
        &csv,
        "item_id,prompt,duration_seconds,steps\nonly,a batch tune,2,4\n",
    )
    .expect("manifest");
    let tutti = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .args(["--server", &server, "--api-key", &acme])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tutti");
        assert!(
            out.status.success(),
            "tutti {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let csv_arg = csv.display().to_string();
    let submitted = tutti(&["batch", "submit", "--watch", &csv_arg]);
    assert!(submitted.contains("1 succeeded"), "{submitted}");
    let name = format!("file://{}", csv.canonicalize().expect("path").display());
    let batch = tutti_coordinator::batches::batch_id("acme", &name).to_string();
    let item_job = a
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs
        .into_iter()
        .find(|j| j.prompt_text.contains("a batch tune"))
        .expect("the item's job");
    assert!(exists(blobs.as_ref(), &farm, &item_job.outputs[0].uri).await);

    farm.operator(&["tenant", "limits", "acme", "--retain-manifests-days", "1"]);
    let results = format!("batches/acme/{batch}/results.jsonl");
    assert!(blobs.get(&results).await.expect("blob store").is_some());
    let mut batches = tutti_proto::v1::batches_client::BatchesClient::with_interceptor(
        farm.channel().await.expect("channel"),
        common::WithKey::bearer(Some(&acme)),
    );
    let get = pb::GetBatchRequest { id: batch.clone() };
    let before = batches
        .get_batch(get.clone())
        .await
        .expect("get")
        .into_inner();
    assert!(!before.results_url.is_empty());
    let swept = tutti_coordinator::janitor::expire_manifests(store.as_ref(), blobs.as_ref(), later)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    assert!(blobs.get(&results).await.expect("blob store").is_none());
    let after = batches.get_batch(get).await.expect("get").into_inner();
    assert!(after.results_url.is_empty(), "{after:?}");

    let out = tutti(&["batch", "delete", &batch]);
    assert!(out.contains("deleted    1 items' jobs"), "{out}");
    assert!(!exists(blobs.as_ref(), &farm, &item_job.outputs[0].uri).await);
    let again = tutti(&["batch", "delete", &batch]);
    assert!(again.contains("deleted    0 items' jobs"), "{again}");
}

/// An audio-to-audio job stores its init clip for itself alone (`inputs/<tenant>/<clip>.wav`,
/// in S3 or the embedded farm's folder): DeleteJob removes it with the outputs, and the input
/// retention sweep removes another job's, leaving the job and its output as they were.
async fn a_jobs_own_init_clip_leaves_with_the_job_and_with_input_retention(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        auth: true,
        packs: Some(common::packs::stable_audio),
        ..FarmOptions::on(backend)
    })
    .await;
    farm.operator(&["tenant", "create", "acme", "--retain-inputs-days", "1"]);
    let acme = farm.create_key("acme", false);
    let (store, blobs) = stores(&farm, backend).await;
    let mut a = farm.client_as(Some(&acme)).await;
    let clip = common::sine_wav(1.0, 44_100, 2);
    let clips = || async { blobs.list("inputs/acme/", 100).await.expect("list") };

    let mut jobs = Vec::new();
    for prompt in ["a clip to delete", "a clip that expires"] {
        let before = clips().await;
        let mut req = request(prompt);
        req.model = Some(pb::ModelRef {
            name: "stable-audio-open-small".into(),
            version: String::new(),
        });
        req.duration_seconds = Some(1.0);
        req.init_audio = clip.clone();
        req.init_strength = Some(0.5);
        let job = a.submit_generation(req).await.expect("submit").into_inner();
        let done = common::wait_ended(&mut a, &job.id).await;
        assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
        let own: Vec<String> = clips()
            .await
            .into_iter()
            .filter(|k| !before.contains(k))
            .collect();
        assert_eq!(own.len(), 1, "one clip of its own: {own:?}");
        assert_eq!(
            blobs.get(&own[0]).await.expect("get").as_deref(),
            Some(clip.as_slice()),
            "the clip as sent"
        );
        jobs.push((done, own[0].clone()));
    }
    let ((deleted, deleted_clip), (kept, kept_clip)) = (&jobs[0], &jobs[1]);

    a.delete_job(pb::DeleteJobRequest {
        id: deleted.id.clone(),
    })
    .await
    .expect("delete");
    assert!(blobs.get(deleted_clip).await.expect("get").is_none());
    assert!(!exists(blobs.as_ref(), &farm, &deleted.outputs[0].uri).await);
    assert!(
        blobs.get(kept_clip).await.expect("get").is_some(),
        "another job's clip stays"
    );

    // Input retention, two days on: the other clip goes; its job and output stay.
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    let swept = tutti_coordinator::janitor::expire_inputs(store.as_ref(), blobs.as_ref(), later)
        .await
        .expect("sweep");
    assert_eq!(
        swept, 1,
        "only the job that was not deleted had a clip left"
    );
    assert!(blobs.get(kept_clip).await.expect("get").is_none());
    assert!(clips().await.is_empty());
    let after = a
        .get_job(pb::GetJobRequest {
            id: kept.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(state(&after), pb::JobState::Succeeded);
    assert!(exists(blobs.as_ref(), &farm, &after.outputs[0].uri).await);
    let again = tutti_coordinator::janitor::expire_inputs(store.as_ref(), blobs.as_ref(), later)
        .await
        .expect("sweep again");
    assert_eq!(again, 0, "a cleared job is not swept twice");
}

/// The studio's delete button: two clicks, and the card shows the job deleted, without audio.
#[tokio::test]
async fn the_studio_deletes_a_job_from_its_card() {
    let farm = Farm::start(FarmOptions::on(Backend::Distributed)).await;
    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    b.fill("#f-genre", "folk").await;
    b.fill("#f-duration", "2").await;
    b.click("#submit").await;
    let card = "#jobs article.job";
    b.wait_js(
        &format!("const c = document.querySelector('{card}'); return !!c && c.dataset.state === 'succeeded' && !!c.querySelector('audio')"),
        "the job to play",
    )
    .await;
    let id = b
        .js(&format!(
            "return document.querySelector('{card}').dataset.jobId"
        ))
        .await;
    let id = id.as_str().expect("job id").to_string();
    b.click(&format!("{card} .delete")).await;
    assert_eq!(
        b.text(&format!("{card} .delete")).await,
        "Really delete?",
        "the first click only arms it"
    );
    b.click(&format!("{card} .delete")).await;
    b.wait_js(
        &format!("const c = document.querySelector('{card}'); return c.dataset.deleted === 'true' && !c.querySelector('audio')"),
        "the card to show the job deleted",
    )
    .await;
    assert!(b
        .text(&format!("{card} .status"))
        .await
        .starts_with("deleted"));
    b.screenshot("deleted").await;
    let job = farm
        .client()
        .await
        .get_job(pb::GetJobRequest { id })
        .await
        .expect("get")
        .into_inner();
    assert!(job.deleted_at.is_some() && job.outputs[0].deleted);
    b.close().await;
}
