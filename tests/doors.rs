//! Every door, tried as an attacker and as a careless client would, on real farms: a tenant
//! names only its own objects (another tenant's answers as an absent one does), hostile strings
//! are INVALID_ARGUMENT naming the field with a short message, refusals a retry can pass say
//! when, a refused upload is not kept, and the studio's gateway serves neither other web sites
//! nor foreign host names (a real browser on another origin stores nothing).

#[macro_use]
mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{request, Backend, Farm, FarmOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_types::StatusExt;
use tutti_proto::v1 as pb;
use tutti_proto::v1::batches_client::BatchesClient;
use tutti_shared::blob::BlobStore;

both_backends!(
    hostile_strings_are_refused_naming_the_field,
    refusals_a_retry_passes_say_when,
    the_gateway_serves_only_its_own_origin_and_host,
    a_refused_upload_is_not_kept,
);

async fn farm(backend: Backend, auth: bool) -> Farm {
    Farm::start(FarmOptions {
        workers: 0,
        auth,
        ..FarmOptions::on(backend)
    })
    .await
}

fn invalid(r: Result<tonic::Response<pb::Job>, tonic::Status>, field: &str) {
    let s = r.expect_err(field);
    assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
    assert!(
        s.message().starts_with(&format!("{field}: ")),
        "{field}: {s:?}"
    );
    assert!(
        s.message().len() < 300,
        "a long message: {} bytes",
        s.message().len()
    );
}

async fn hostile_strings_are_refused_naming_the_field(backend: Backend) {
    let farm = farm(backend, false).await;
    let mut c = farm.client().await;
    let with = |f: fn(&mut pb::SubmitGenerationRequest)| {
        let mut r = request("calm piano");
        f(&mut r);
        r
    };
    // NUL reached Postgres as a database error before; SQLite stored it.
    let r = with(|r| r.negative_prompt = "harsh\0noise".into());
    invalid(c.submit_generation(r).await, "negative_prompt");
    let r = with(|r| r.idempotency_key = "key\0".into());
    invalid(c.submit_generation(r).await, "idempotency_key");
    let r = with(|r| r.negative_prompt = "\u{1b}[31mred".into());
    invalid(c.submit_generation(r).await, "negative_prompt");
    let r = with(|r| {
        r.prompt_kind = Some(pb::submit_generation_request::PromptKind::Prompt(
            "piano \u{202E}lanif".into(),
        ))
    });
    invalid(c.submit_generation(r).await, "prompt");
    // A megabyte anywhere is refused with a short message that quotes a short prefix.
    let huge = "x".repeat(1 << 20);
    let mut r = request("calm piano");
    r.labels.insert(huge.clone(), "v".into());
    invalid(c.submit_generation(r).await, "labels");
    let mut r = request("calm piano");
    r.model = Some(pb::ModelRef {
        name: huge.clone(),
        version: String::new(),
    });
    invalid(c.submit_generation(r).await, "model.name");
    let mut r = request("calm piano");
    r.model = Some(pb::ModelRef {
        name: "no-such-model".into(),
        version: huge.clone(),
    });
    invalid(c.submit_generation(r).await, "model.version");
    let structured = pb::StructuredPrompt {
        genre: "ambient".into(),
        structure: vec![huge.clone()],
        ..Default::default()
    };
    let mut r = request("x");
    r.prompt_kind = Some(pb::submit_generation_request::PromptKind::Structured(
        structured,
    ));
    invalid(c.submit_generation(r).await, "structured.structure");
    let s = c
        .list_jobs(pb::ListJobsRequest {
            text: "a\0b".into(),
            ..Default::default()
        })
        .await
        .expect_err("NUL in a search");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(farm.job_count().await, 0);
    // Tabs and newlines are text in a prompt; the job reads back as sent.
    let mut r = request("verse one\n\tchorus");
    r.negative_prompt = "no drums\nno bass".into();
    let job = c
        .submit_generation(r)
        .await
        .expect("multi-line text")
        .into_inner();
    assert_eq!(job.prompt_text, "verse one\n\tchorus");
}

fn retry_delay(s: &tonic::Status) -> Duration {
    s.get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo: {s:?}"))
}

async fn refusals_a_retry_passes_say_when(backend: Backend) {
    let farm = farm(backend, true).await;
    farm.operator(&[
        "tenant",
        "create",
        "rate",
        "--submits-per-second",
        "0.001",
        "--submit-burst",
        "1",
    ]);
    farm.operator(&["tenant", "create", "inflight", "--max-jobs-in-flight", "1"]);
    let rate_key = farm.create_key("rate", false);
    let mut c = farm.client_as(Some(&rate_key)).await;
    c.submit_generation(request("one")).await.expect("first");
    let s = c
        .submit_generation(request("two"))
        .await
        .expect_err("over the rate");
    assert_eq!(s.code(), Code::ResourceExhausted);
    let d = retry_delay(&s);
    assert!((900..=1000).contains(&d.as_secs()), "{d:?}");

    // The same refusal over HTTP says Retry-After in seconds.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}api/jobs", farm.studio_url()))
        .bearer_auth(&rate_key)
        .header("content-type", "application/json")
        .body(r#"{"prompt": "three", "duration_seconds": 2}"#)
        .send()
        .await
        .expect("POST /api/jobs");
    assert_eq!(r.status().as_u16(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((900..=1000).contains(&after), "{after}");

    let mut c = farm
        .client_as(Some(&farm.create_key("inflight", false)))
        .await;
    c.submit_generation(request("one")).await.expect("first");
    let s = c
        .submit_generation(request("two"))
        .await
        .expect_err("over in flight");
    assert!(retry_delay(&s) > Duration::ZERO);
    assert_eq!(farm.job_count().await, 2);
}

/// A request to the studio with these headers (`host` replaces the real one).
async fn studio_call(
    farm: &Farm,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let client = reqwest::Client::new();
    let url = format!("{}{}", farm.studio_url(), path.trim_start_matches('/'));
    let mut r = client
        .request(method.parse().expect("method"), url)
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("studio call")
}

async fn the_gateway_serves_only_its_own_origin_and_host(backend: Backend) {
    let farm = farm(backend, false).await;
    let job = r#"{"prompt": "calm piano", "duration_seconds": 2}"#;
    let own = format!("http://{}", farm.studio_addr);
    let json = ("content-type", "application/json");
    // What a page on another site can send without a preflight: all refused.
    for (why, headers) in [
        ("text/plain", vec![("content-type", "text/plain")]),
        (
            "a form",
            vec![("content-type", "application/x-www-form-urlencoded")],
        ),
        ("no type", vec![]),
        (
            "another origin",
            vec![json, ("origin", "http://evil.example")],
        ),
        ("an opaque origin", vec![json, ("origin", "null")]),
    ] {
        let r = studio_call(&farm, "POST", "/api/jobs", &headers, job).await;
        assert_eq!(r.status().as_u16(), 403, "{why}");
        let body: serde_json::Value =
            serde_json::from_str(&r.text().await.unwrap_or_default()).expect("a JSON error");
        assert_eq!(body["code"], "PERMISSION_DENIED", "{why}");
    }
    // DNS rebinding: a foreign name for this loopback listener reads nothing.
    for path in ["/", "/api/jobs", "/api/info"] {
        let r = studio_call(&farm, "GET", path, &[("host", "evil.example")], "").await;
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    // No CORS for anyone unless configured.
    let r = studio_call(
        &farm,
        "OPTIONS",
        "/api/jobs",
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    )
    .await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(farm.job_count().await, 0, "a refused request stored a job");
    // The page's own requests work: JSON, its own origin, a loopback host.
    let r = studio_call(
        &farm,
        "POST",
        "/api/jobs",
        &[json, ("origin", own.as_str())],
        job,
    )
    .await;
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let r = studio_call(
        &farm,
        "POST",
        "/api/jobs",
        &[json, ("host", "localhost")],
        job,
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(farm.job_count().await, 2);
}

/// Whether the farm's blob store holds `key`.
async fn stored(farm: &Farm, key: &str) -> bool {
    match farm.opts.backend {
        Backend::Distributed => farm.s3().get(key).await.expect("S3 get").is_some(),
        Backend::Embedded => farm.procs.data_dir().join("blobs").join(key).exists(),
    }
}

/// Uploads a manifest through the studio as the tenant of `key`.
async fn upload(
    farm: &Farm,
    key: &str,
    file: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{}api/batches?file={file}", farm.studio_url()))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("upload");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn a_refused_upload_is_not_kept(backend: Backend) {
    // A tenant keeps two uploads at most; refused ones never count.
    let farm = Farm::start(FarmOptions {
        workers: 0,
        auth: true,
        coordinator_env: vec![("TUTTI_MAX_UPLOADS", "2".into())],
        ..FarmOptions::on(backend)
    })
    .await;
    // A tenant of this test alone: the farms of other tests share the bucket.
    let tenant = format!("up{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    farm.operator(&["tenant", "create", &tenant]);
    let api_key = farm.create_key(&tenant, false);
    let key = |body: &[u8], ext: &str| {
        format!(
            "uploads/{tenant}/{}.{ext}",
            hex::encode(Sha256::digest(body))
        )
    };
    let refused: [(&str, &str, &[u8]); 4] = [
        ("unknown column", "m.csv", b"item_id,tempo\na,1\n"),
        (
            "not UTF-8",
            "m.jsonl",
            b"{\"item_id\": \"a\", \"prompt\": \"x\"}\n\xff\xfe\n",
        ),
        (
            "a bad row",
            "m.jsonl",
            b"{\"item_id\": \"a\", \"promt\": \"x\"}\n",
        ),
        ("a line without end", "m.csv", &[b'x'; 200_000]),
    ];
    for (why, file, body) in refused {
        let ext = file.rsplit('.').next().unwrap_or_default();
        let (status, text) = upload(&farm, &api_key, file, "application/octet-stream", body).await;
        assert_eq!(status, 400, "{why}: {text}");
        assert!(
            !stored(&farm, &key(body, ext)).await,
            "{why}: the refused upload was kept"
        );
    }
    let good = b"{\"item_id\": \"a\", \"prompt\": \"calm piano\", \"duration_seconds\": 2}\n";
    let (status, text) = upload(&farm, &api_key, "good.jsonl", "application/x-ndjson", good).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        stored(&farm, &key(good, "jsonl")).await,
        "a submitted manifest is kept"
    );
    // The same file again is the same object: no new upload.
    assert_eq!(
        upload(&farm, &api_key, "good.jsonl", "application/x-ndjson", good)
            .await
            .0,
        200
    );
    let second = b"{\"item_id\": \"b\", \"prompt\": \"calm piano\", \"duration_seconds\": 2}\n";
    assert_eq!(
        upload(
            &farm,
            &api_key,
            "second.jsonl",
            "application/x-ndjson",
            second
        )
        .await
        .0,
        200
    );
    let third = b"{\"item_id\": \"c\", \"prompt\": \"calm piano\", \"duration_seconds\": 2}\n";
    let (status, text) = upload(
        &farm,
        &api_key,
        "third.jsonl",
        "application/x-ndjson",
        third,
    )
    .await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("max_uploads"), "{text}");
    assert!(!stored(&farm, &key(third, "jsonl")).await);
}

/// A Batches client that sends `key`.
async fn batches_as(
    farm: &Farm,
    key: &str,
) -> BatchesClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {key}").parse().expect("header value");
    BatchesClient::with_interceptor(
        farm.channel().await.expect("connect"),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    )
}

fn header(uri: &str, validate_only: bool) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        kind: Some(pb::submit_batch_request::Kind::Header(pb::BatchHeader {
            name: String::new(),
            manifest_uri: uri.into(),
            validate_only,
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn a_tenant_names_only_its_own_objects() {
    let farm = farm(Backend::Distributed, true).await;
    for t in ["alpha", "beta", "ops"] {
        farm.operator(&["tenant", "create", t]);
    }
    let (a, b, admin) = (
        farm.create_key("alpha", false),
        farm.create_key("beta", false),
        farm.create_key("ops", true),
    );
    let s3 = farm.s3();
    let secret = format!("uploads/alpha/{}.jsonl", farm.prefix());
    s3.put(
        &secret,
        "{\"item_id\": \"alpha-secret-item\", \"promt\": \"x\"}\n".into(),
        "application/x-ndjson",
    )
    .await
    .expect("put alpha's manifest");
    let wav = format!("outputs/alpha/{}/0.wav", farm.prefix());
    s3.put(&wav, vec![0u8, 159, 146, 150].into(), "audio/wav")
        .await
        .expect("put a binary");

    // Beta: alpha's objects answer exactly as absent ones, with or without validate_only.
    let mut cb = batches_as(&farm, &b).await;
    let absent = s3.uri(&format!("uploads/beta/{}-absent.jsonl", farm.prefix()));
    let mut answers = Vec::new();
    for uri in [s3.uri(&secret), s3.uri(&wav), absent] {
        for validate_only in [true, false] {
            let s = cb
                .submit_batch(tokio_stream::iter([header(&uri, validate_only)]))
                .await
                .expect_err("not beta's object");
            assert_eq!(s.code(), Code::NotFound, "{uri}: {s:?}");
            assert!(!s.message().contains("alpha-secret-item"));
            answers.push(s.message().to_string());
        }
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "absent and foreign differ: {answers:?}");
    // Malformed URIs are the caller's mistake, not the store's.
    for uri in [
        s3.uri("../x"),
        s3.uri("uploads/beta/../alpha/x"),
        "s3://another-bucket/uploads/beta/x".into(),
    ] {
        let s = cb
            .submit_batch(tokio_stream::iter([header(&uri, true)]))
            .await
            .expect_err("malformed");
        assert_eq!(s.code(), Code::InvalidArgument, "{uri}: {s:?}");
    }
    // An admin key reads only what an operator granted (nothing here).
    let s = batches_as(&farm, &admin)
        .await
        .submit_batch(tokio_stream::iter([header(&s3.uri(&secret), true)]))
        .await
        .expect_err("not granted");
    assert_eq!(s.code(), Code::NotFound);
    // Alpha reads its own: the bad row is reported to it, by item id.
    let r = batches_as(&farm, &a)
        .await
        .submit_batch(tokio_stream::iter([header(&s3.uri(&secret), true)]))
        .await
        .expect("alpha's own manifest")
        .into_inner();
    assert_eq!(r.rejected, 1);
    assert_eq!(r.rejected_items[0].item_id, "alpha-secret-item");
    assert_eq!(farm.job_count().await, 0);
    s3.delete(&[secret, wav]).await.expect("clean up");
}

/// Serves one HTML page on `listener` (another origin than the studio's) until dropped.
async fn serve_page(listener: tokio::net::TcpListener, html: String) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let html = html.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let _ = conn.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                html.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(html.as_bytes()).await;
        });
    }
}

#[tokio::test]
async fn a_page_on_another_site_stores_nothing() {
    let farm = farm(Backend::Embedded, false).await;
    let studio = format!("http://{}", farm.studio_addr);
    // Every way a page can write to another origin without asking: simple fetches (text/plain,
    // a form body, no body), a CORS fetch with JSON (preflighted: no CORS answer), and a form.
    let html = format!(
        r#"<!doctype html><html><body>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" action="{studio}/api/jobs" enctype="text/plain" target="sink">
<input name='{{"prompt": "pwned by a form", "x": "' value='"}}'></form>
<script>
const job = JSON.stringify({{prompt: "pwned", duration_seconds: 2}});
const tries = [
  fetch("{studio}/api/jobs", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: job}}),
  fetch("{studio}/api/jobs", {{method: "POST", mode: "no-cors", body: new URLSearchParams({{prompt: "pwned"}})}}),
  fetch("{studio}/api/batches?file=m.csv", {{method: "POST", mode: "no-cors", body: "item_id,prompt\na,pwned\n"}}),
  fetch("{studio}/api/jobs", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: job}}),
];
document.getElementById("f").submit();
Promise.allSettled(tries).then(r => {{
  window.outcomes = r.map(x => x.status);
  setTimeout(() => {{ document.body.dataset.ready = "true"; }}, 1000);
}});
</script></body></html>"#
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(serve_page(listener, html));
    let b = Browser::start().await;
    // `localhost` vs the studio's 127.0.0.1: another origin and another site.
    b.open(&format!("http://localhost:{port}/")).await;
    let outcomes = b.js("return window.outcomes").await;
    // The preflighted JSON fetch fails in the browser (no CORS answer); the simple ones are
    // sent and refused by the gateway (their answers are opaque to the page).
    assert_eq!(outcomes[3], "rejected", "{outcomes}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        farm.job_count().await,
        0,
        "a page on another site stored a job"
    );
    let uploads = farm.procs.data_dir().join("blobs").join("uploads");
    assert!(!uploads.exists() || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0) == 0);
    b.close().await;
    server.abort();
}
