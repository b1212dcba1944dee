//! Backfill batches end to end on real servers: streamed items and S3 manifests, bad rows
//! reported by line, the results manifest, and resubmission after a coordinator crash.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{request, Backend, Farm, FarmOptions};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tutti_coordinator::batches::{batch_id, item_job_id};
use tutti_proto::v1 as pb;
use tutti_proto::v1::batches_client::BatchesClient;
use tutti_shared::blob::BlobStore;
use uuid::Uuid;

both_backends!(a_streamed_batch_runs_each_item_once_and_writes_its_results);

async fn batches(farm: &Farm) -> BatchesClient<Channel> {
    BatchesClient::connect(format!("http://{}", farm.addr))
        .await
        .expect("connect to the coordinator")
}

fn header(name: &str, manifest_uri: &str) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        kind: Some(pb::submit_batch_request::Kind::Header(pb::BatchHeader {
            name: name.into(),
            manifest_uri: manifest_uri.into(),
            validate_only: false,
            ..Default::default()
        })),
    }
}

fn item(id: &str, line: u64, req: pb::SubmitGenerationRequest) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        kind: Some(pb::submit_batch_request::Kind::Item(pb::BatchItem {
            item_id: id.into(),
            line,
            request: Some(req),
        })),
    }
}

/// A request the tiny pack runs in one denoise chunk and a vocode.
fn quick(prompt: &str) -> pb::SubmitGenerationRequest {
    let mut r = request(prompt);
    r.steps = Some(4);
    r
}

/// Polls GetBatch until the results manifest is written (tolerating a restarting coordinator).
async fn wait_results(farm: &Farm, id: &str, limit: Duration) -> pb::Batch {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut c) = BatchesClient::connect(format!("http://{}", farm.addr)).await {
            if let Ok(b) = c.get_batch(pb::GetBatchRequest { id: id.into() }).await {
                let b = b.into_inner();
                if !b.results_uri.is_empty() {
                    return b;
                }
                assert!(Instant::now() < deadline, "batch did not finish: {b:?}");
            }
        }
        assert!(Instant::now() < deadline, "batch did not finish");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The results manifest, one JSON object per line.
async fn results(farm: &Farm, b: &pb::Batch) -> Vec<serde_json::Value> {
    let body = farm.fetch(&b.results_uri).await;
    String::from_utf8(body)
        .expect("utf-8 results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn a_streamed_batch_runs_each_item_once_and_writes_its_results(backend: Backend) {
    let farm = Farm::start(FarmOptions::on(backend)).await;
    let mut client = batches(&farm).await;
    let mut too_short = quick("too short");
    too_short.duration_seconds = Some(0.1);
    let msgs = vec![
        header("catalog-1", ""),
        item("a", 1, quick("lo-fi piano")),
        item("b", 2, quick("dark synthwave")),
        item("c", 3, too_short),
        item("d", 4, quick("string quartet")),
    ];
    // validate_only: the same report, nothing stored.
    let mut checking = msgs.clone();
    if let Some(pb::submit_batch_request::Kind::Header(h)) = checking[0].kind.as_mut() {
        h.validate_only = true;
    }
    let checked = client
        .submit_batch(tokio_stream::iter(checking))
        .await
        .expect("check")
        .into_inner();
    assert_eq!((checked.accepted, checked.rejected), (3, 1));
    assert_eq!(checked.rejected_items[0].line, 3);
    assert!(checked.batch.is_none(), "a check returned a batch");
    let listed = client
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.batches.is_empty(), "a check stored a batch");
    assert_eq!(farm.job_count().await, 0, "a check stored jobs");
    let r = client
        .submit_batch(tokio_stream::iter(msgs.clone()))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!((r.accepted, r.existing, r.rejected), (3, 0, 1));
    assert_eq!(r.rejected_items[0].line, 3);
    assert_eq!(r.rejected_items[0].item_id, "c");
    assert!(
        r.rejected_items[0].error.starts_with("duration_seconds"),
        "{:?}",
        r.rejected_items
    );
    let batch = r.batch.expect("batch");
    let id: Uuid = batch.id.parse().expect("batch id");
    assert_eq!(id, batch_id("default", "catalog-1"));

    let done = wait_results(&farm, &batch.id, Duration::from_secs(120)).await;
    // ListBatches: the tenant's batches newest first, with the same view as GetBatch, paged.
    let later = client
        .submit_batch(tokio_stream::iter([
            header("catalog-2", ""),
            item("z", 1, quick("late addition")),
        ]))
        .await
        .expect("submit")
        .into_inner();
    let later = later.batch.expect("batch");
    let page = client
        .list_batches(pb::ListBatchesRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.batches.len(), 1);
    assert_eq!(page.batches[0].id, later.id, "newest first");
    let rest = client
        .list_batches(pb::ListBatchesRequest {
            page_size: 1,
            page_token: page.next_page_token.clone(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.batches.len(), 1);
    assert_eq!(rest.batches[0].id, batch.id);
    assert_eq!(rest.batches[0].succeeded, 3);
    assert!(rest.next_page_token.is_empty());
    let bad = client
        .list_batches(pb::ListBatchesRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect_err("too big a page");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("page_size: "),
        "{}",
        bad.message()
    );
    // The results manifest has a presigned URL too.
    assert!(!done.results_url.is_empty());
    assert_eq!(
        farm.fetch(&done.results_url).await,
        farm.fetch(&done.results_uri).await
    );
    assert_eq!(
        pb::BatchState::try_from(done.state),
        Ok(pb::BatchState::Completed)
    );
    assert_eq!(
        (
            done.total,
            done.succeeded,
            done.rejected,
            done.queued,
            done.running
        ),
        (4, 3, 1, 0, 0)
    );
    assert!(done.items_per_second > 0.0);
    assert_eq!(done.eta_seconds, Some(0));
    assert_eq!(
        done.results_uri,
        farm.uri(&format!("batches/default/{id}/results.jsonl"))
    );

    // One line per item in line order: outputs at keys derived from (batch, item), with the
    // sha256 of the bytes stored there; the rejected row with its rule.
    let lines = results(&farm, &done).await;
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["item_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    for l in lines.iter().filter(|l| l["item_id"] != "c") {
        let job = item_job_id(id, l["item_id"].as_str().expect("item id"));
        assert_eq!(l["state"], "succeeded", "{l}");
        assert_eq!(l["job_id"], job.to_string());
        let out = &l["outputs"][0];
        let uri = out["uri"].as_str().expect("uri");
        assert_eq!(uri, farm.uri(&format!("outputs/default/{job}/0.wav")));
        let bytes = farm.fetch(uri).await;
        assert_eq!(out["sha256"], hex::encode(Sha256::digest(&bytes)));
        assert!((out["duration_seconds"].as_f64().expect("duration") - 2.0).abs() < 1e-3);
    }
    assert_eq!(lines[2]["state"], "rejected");
    assert_eq!(lines[2]["line"], 3);
    assert!(lines[2]["error"]["message"]
        .as_str()
        .expect("error")
        .starts_with("duration_seconds"));

    // ListBatchItems pages and filters.
    let rejected = client
        .list_batch_items(pb::ListBatchItemsRequest {
            id: batch.id.clone(),
            state: pb::BatchItemState::Rejected as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rejected.items.len(), 1);
    assert_eq!(
        (rejected.items[0].item_id.as_str(), rejected.items[0].line),
        ("c", 3)
    );
    let page = client
        .list_batch_items(pb::ListBatchItemsRequest {
            id: batch.id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.items.len(), 2);
    let rest = client
        .list_batch_items(pb::ListBatchItemsRequest {
            id: batch.id.clone(),
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let all: Vec<String> = page
        .items
        .iter()
        .chain(&rest.items)
        .map(|i| i.item_id.clone())
        .collect();
    assert_eq!(all, ["a", "b", "c", "d"]);

    // The same submission again adds nothing and leaves the written results as they are.
    let again = client
        .submit_batch(tokio_stream::iter(msgs))
        .await
        .expect("resubmit")
        .into_inner();
    assert_eq!((again.accepted, again.existing, again.rejected), (0, 3, 1));
    // Its three jobs and catalog-2's one.
    assert_eq!(farm.job_count().await, 4);
    let after = again.batch.expect("batch");
    assert_eq!(after.results_uri, done.results_uri);
}

#[tokio::test]
async fn a_manifest_in_s3_reports_bad_rows_by_line_and_runs_the_good_ones() {
    let farm = Farm::start(FarmOptions::default()).await;
    // A tenant names manifests under its own prefix (`manifests/<tenant>/`).
    let key = format!("manifests/default/{}/catalog.jsonl", farm.prefix());
    let manifest = [
        r#"{"item_id": "intro", "prompt": "ambient pads", "duration_seconds": 2, "steps": 4, "seed": 1}"#,
        r#"{"item_id": "broken", "prompt": "#,
        r#"{"item_id": "nomodel", "prompt": "x", "model": "no-such-model"}"#,
        "",
        r#"{"id": "outro", "genre": "jazz", "instruments": ["piano"], "duration_seconds": 2, "steps": 4, "seed": 2}"#,
        r#"{"item_id": "typo", "promt": "x"}"#,
    ]
    .join("\n");
    let s3 = farm.s3();
    s3.put(&key, manifest.into(), "application/x-ndjson")
        .await
        .expect("upload the manifest");
    let uri = s3.uri(&key);
    let mut client = batches(&farm).await;
    let r = client
        .submit_batch(tokio_stream::iter([header("", &uri)]))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!((r.accepted, r.rejected), (2, 3), "{r:?}");
    let lines: Vec<u64> = r.rejected_items.iter().map(|i| i.line).collect();
    assert_eq!(lines, [2, 3, 6]);
    assert!(r.rejected_items[1].error.contains("no-such-model"));
    assert!(r.rejected_items[2].error.contains("promt"));
    let batch = r.batch.expect("batch");
    assert_eq!(batch.manifest_uri, uri);
    // The manifest's URI names the batch.
    assert_eq!(batch.id, batch_id("default", &uri).to_string());

    let done = wait_results(&farm, &batch.id, Duration::from_secs(120)).await;
    assert_eq!((done.succeeded, done.rejected), (2, 2), "{done:?}");
    let results = results(&farm, &done).await;
    let states: BTreeMap<String, String> = results
        .iter()
        .map(|l| {
            (
                l["item_id"].as_str().unwrap_or_default().to_string(),
                l["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(states["intro"], "succeeded");
    assert_eq!(states["outro"], "succeeded");
    assert_eq!(states["nomodel"], "rejected");
    assert_eq!(states["typo"], "rejected");
    assert!(
        !states.contains_key("broken"),
        "a row without an item id is only reported"
    );
}

#[tokio::test]
async fn resubmitting_after_a_coordinator_crash_runs_every_item_exactly_once() {
    let mut farm = Farm::start(FarmOptions::default()).await;
    let items: Vec<pb::SubmitBatchRequest> = (0..16)
        .map(|i| {
            let mut r = quick(&format!("take {i}"));
            r.seed = Some(i);
            item(&format!("item-{i:02}"), i + 1, r)
        })
        .collect();
    let id = batch_id("default", "crash");

    // The first submission sends half the items, pauses (the coordinator stores what it has)
    // and is cut off by a SIGKILL of the coordinator while the first items run.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let first_half = items[..8].to_vec();
    let stream = async_stream(header("crash", ""), first_half, release_rx);
    let mut client = batches(&farm).await;
    let submit = tokio::spawn(async move { client.submit_batch(stream).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = batches(&farm)
            .await
            .get_batch(pb::GetBatchRequest { id: id.to_string() })
            .await;
        if let Ok(b) = b {
            let b = b.into_inner();
            if b.total == 8 && b.succeeded >= 1 {
                assert_eq!(pb::BatchState::try_from(b.state), Ok(pb::BatchState::Open));
                break;
            }
        }
        assert!(Instant::now() < deadline, "the first items did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    farm.kill_coordinator();
    assert!(
        submit.await.expect("submit task").is_err(),
        "the cut-off submission failed"
    );
    drop(release_tx);
    farm.start_coordinator().await;

    // The whole manifest again: the first half is found, the second added.
    let mut all = vec![header("crash", "")];
    all.extend(items.iter().cloned());
    let r = batches(&farm)
        .await
        .submit_batch(tokio_stream::iter(all))
        .await
        .expect("resubmit")
        .into_inner();
    assert_eq!((r.accepted, r.existing, r.rejected), (8, 8, 0));
    let done = wait_results(&farm, &id.to_string(), Duration::from_secs(180)).await;
    assert_eq!((done.total, done.succeeded), (16, 16), "{done:?}");

    // Exactly once: one job per item at its derived id, one output each, one line each.
    assert_eq!(farm.job_count().await, 16);
    let outputs: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT job_id, count(*) FROM outputs GROUP BY job_id")
            .fetch_all(farm.pg())
            .await
            .expect("outputs");
    let expected: HashSet<Uuid> = (0..16)
        .map(|i| item_job_id(id, &format!("item-{i:02}")))
        .collect();
    assert_eq!(
        outputs.iter().map(|o| o.0).collect::<HashSet<_>>(),
        expected
    );
    assert!(outputs.iter().all(|o| o.1 == 1), "{outputs:?}");
    let lines = results(&farm, &done).await;
    assert_eq!(lines.len(), 16);
    assert!(lines.iter().all(|l| l["state"] == "succeeded"));
    let s3 = farm.s3();
    for job in &expected {
        assert!(s3
            .get(&format!("outputs/default/{job}/0.wav"))
            .await
            .expect("s3")
            .is_some());
    }
}

/// A request stream: the header and items, then open (sending nothing) until `release`.
fn async_stream(
    header: pb::SubmitBatchRequest,
    items: Vec<pb::SubmitBatchRequest>,
    release: tokio::sync::oneshot::Receiver<()>,
) -> impl tokio_stream::Stream<Item = pb::SubmitBatchRequest> {
    use futures::StreamExt;
    let head = futures::stream::iter(std::iter::once(header).chain(items));
    let tail = futures::stream::once(async move {
        let _ = release.await;
    })
    .filter_map(|_| async { None });
    head.chain(tail)
}

#[tokio::test]
async fn the_cli_submits_a_csv_file_and_watches_it_to_its_results() {
    let farm = Farm::start(FarmOptions::default()).await;
    let csv = farm.dir().join("catalog.csv");
    std::fs::write(
        &csv,
        "item_id,prompt,duration_seconds,steps,seed,labels\n\
         first,\"piano, slow\",2,4,1,team=catalog\n\
         second,drums,2,4,2,\n\
         third,bass,2,500,3,\n",
    )
    .expect("write the manifest");
    let server = format!("http://{}", farm.addr);
    let csv_path = csv.clone();
    let cli = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tutti"))
            .args(["batch", "submit", "--watch"])
            .arg(&csv_path)
            .env("TUTTI_SERVER", &server)
            .output()
            .expect("run tutti");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    });
    let (ok, stdout, stderr) = tokio::time::timeout(Duration::from_secs(120), cli)
        .await
        .expect("the CLI finished")
        .expect("join");
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("accepted 2  already held 0  rejected 1"),
        "{stdout}"
    );
    assert!(stderr.contains("line 4: third: steps"), "{stderr}");
    assert!(stdout.contains("2 succeeded"), "{stdout}");
    let name = format!("file://{}", csv.canonicalize().expect("path").display());
    let id = batch_id("default", &name);
    assert!(
        stdout.contains(&format!(
            "results    {}",
            farm.uri(&format!("batches/default/{id}/results.jsonl"))
        )),
        "{stdout}"
    );
}
