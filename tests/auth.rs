//! Tenants, API keys, limits and TLS on real farms: a tenant never sees another's jobs, a
//! missing, bad or revoked key is UNAUTHENTICATED, admin keys see every tenant, each limit
//! is RESOURCE_EXHAUSTED naming itself and stores nothing, TLS clients need the CA (and a
//! client certificate under mutual TLS), and the startup config print hides credentials.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{request, Backend, Farm, FarmOptions, KeyedClient, Tls};
use tonic::Code;
use tutti_proto::v1 as pb;
use tutti_proto::v1::generation_client::GenerationClient;

both_backends!(
    tenants_never_see_each_others_jobs,
    a_revoked_key_stops_working_at_once,
    each_limit_is_resource_exhausted_and_stores_nothing,
);

async fn auth_farm(backend: Backend) -> Farm {
    Farm::start(FarmOptions {
        workers: 0,
        auth: true,
        ..FarmOptions::on(backend)
    })
    .await
}

fn get(id: &str) -> pb::GetJobRequest {
    pb::GetJobRequest { id: id.into() }
}

/// The status code of each job RPC a client makes about `id` (Submit, Get, Watch, Cancel,
/// List), for the clients that must get the same answer on all of them.
async fn codes_on_every_rpc(c: &mut KeyedClient, id: &str) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    vec![
        (
            "submit",
            code(c.submit_generation(request("x")).await.map(drop)),
        ),
        ("get", code(c.get_job(get(id)).await.map(drop))),
        (
            "watch",
            code(
                c.watch_job(pb::WatchJobRequest { id: id.into() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "cancel",
            code(
                c.cancel_job(pb::CancelJobRequest { id: id.into() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "list",
            code(c.list_jobs(pb::ListJobsRequest::default()).await.map(drop)),
        ),
    ]
}

async fn listed(c: &mut KeyedClient) -> Vec<String> {
    c.list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect()
}

async fn tenants_never_see_each_others_jobs(backend: Backend) {
    let farm = auth_farm(backend).await;
    for t in ["a", "b", "ops"] {
        farm.operator(&["tenant", "create", t]);
    }
    let (ka, kb, kadmin) = (
        farm.create_key("a", false),
        farm.create_key("b", false),
        farm.create_key("ops", true),
    );
    let mut a = farm.client_as(Some(&ka)).await;
    let mut b = farm.client_as(Some(&kb)).await;
    let mut admin = farm.client_as(Some(&kadmin)).await;
    let ja = a
        .submit_generation(request("a's job"))
        .await
        .expect("a submits")
        .into_inner();
    let jb = b
        .submit_generation(request("b's job"))
        .await
        .expect("b submits")
        .into_inner();

    // To B, A's job does not exist, on every RPC.
    let not_found = b.get_job(get(&ja.id)).await.expect_err("b gets a's job");
    assert_eq!(not_found.code(), Code::NotFound, "{not_found:?}");
    let watch = b
        .watch_job(pb::WatchJobRequest { id: ja.id.clone() })
        .await
        .expect_err("b watches a's job");
    assert_eq!(watch.code(), Code::NotFound, "{watch:?}");
    let cancel = b
        .cancel_job(pb::CancelJobRequest { id: ja.id.clone() })
        .await
        .expect_err("b cancels a's job");
    assert_eq!(cancel.code(), Code::NotFound, "{cancel:?}");
    assert_eq!(listed(&mut b).await, vec![jb.id.clone()]);
    assert_eq!(listed(&mut a).await, vec![ja.id.clone()]);
    let still = a
        .get_job(get(&ja.id))
        .await
        .expect("a gets its job")
        .into_inner();
    assert_ne!(
        common::state(&still),
        pb::JobState::Cancelled,
        "b's cancel changed a's job"
    );

    // No key, a malformed key and a well-formed unknown key: UNAUTHENTICATED on every RPC,
    // and nothing stored.
    let unknown = format!("tt_{}_{}", "0".repeat(12), "0".repeat(64));
    for key in [None, Some("not-a-key"), Some(unknown.as_str())] {
        let mut c = farm.client_as(key).await;
        for (rpc, code) in codes_on_every_rpc(&mut c, &ja.id).await {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with key {key:?}");
        }
    }
    assert_eq!(farm.job_count().await, 2);

    // The admin key sees and acts on every tenant's jobs.
    let mut all = listed(&mut admin).await;
    all.sort();
    let mut want = vec![ja.id.clone(), jb.id.clone()];
    want.sort();
    assert_eq!(all, want);
    admin
        .get_job(get(&jb.id))
        .await
        .expect("admin gets b's job");
    let mut stream = admin
        .watch_job(pb::WatchJobRequest { id: ja.id.clone() })
        .await
        .expect("admin watches a's job")
        .into_inner();
    let first = stream.message().await.expect("event").expect("snapshot");
    assert_eq!(first.job.expect("job").id, ja.id);
    let cancelled = admin
        .cancel_job(pb::CancelJobRequest { id: ja.id.clone() })
        .await
        .expect("admin cancels a's job")
        .into_inner();
    assert_eq!(common::state(&cancelled), pb::JobState::Cancelled);

    // Probes need no key.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(farm.channel().await.expect("channel"));
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tutti.v1.Generation".into(),
        })
        .await
        .expect("health without a key")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

async fn a_revoked_key_stops_working_at_once(backend: Backend) {
    let farm = auth_farm(backend).await;
    farm.operator(&["tenant", "create", "a"]);
    let (k1, k2) = (farm.create_key("a", false), farm.create_key("a", false));
    let mut c1 = farm.client_as(Some(&k1)).await;
    let mut c2 = farm.client_as(Some(&k2)).await;
    let job = c1
        .submit_generation(request("before the revoke"))
        .await
        .expect("submit")
        .into_inner();
    let prefix = &k1[..15];
    assert!(farm.operator(&["key", "list"]).contains(prefix));
    assert!(
        !farm.operator(&["key", "list"]).contains(&k1[16..]),
        "key list shows a secret"
    );
    assert_eq!(
        farm.operator(&["key", "revoke", prefix]),
        format!("revoked {prefix}")
    );
    // The very next call, on the same connection, is refused; the tenant's other key works.
    for (rpc, code) in codes_on_every_rpc(&mut c1, &job.id).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} with a revoked key");
    }
    c2.get_job(get(&job.id))
        .await
        .expect("the other key still works");
    assert_eq!(farm.job_count().await, 1);
}

fn exhausted(r: Result<tonic::Response<pb::Job>, tonic::Status>, limit: &str) {
    let s = r.expect_err(limit);
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().starts_with(&format!("{limit}: ")),
        "{limit}: {s:?}"
    );
}

async fn each_limit_is_resource_exhausted_and_stores_nothing(backend: Backend) {
    let farm = auth_farm(backend).await;
    farm.operator(&["tenant", "create", "inflight", "--max-jobs-in-flight", "1"]);
    farm.operator(&[
        "tenant",
        "create",
        "rate",
        "--submits-per-second",
        "0.001",
        "--submit-burst",
        "1",
    ]);
    farm.operator(&[
        "tenant",
        "create",
        "rules",
        "--priorities",
        "standard,batch",
        "--max-duration",
        "3",
        "--max-steps",
        "5",
    ]);
    assert!(farm
        .operator(&["tenant", "list"])
        .contains("max_jobs_in_flight=1"));

    let mut c = farm
        .client_as(Some(&farm.create_key("inflight", false)))
        .await;
    c.submit_generation(request("one"))
        .await
        .expect("first job");
    exhausted(
        c.submit_generation(request("two")).await,
        "max_jobs_in_flight",
    );
    assert_eq!(farm.tenant_job_count("inflight").await, 1);

    let mut c = farm.client_as(Some(&farm.create_key("rate", false))).await;
    c.submit_generation(request("one"))
        .await
        .expect("first job");
    exhausted(
        c.submit_generation(request("two")).await,
        "submits_per_second",
    );
    assert_eq!(farm.tenant_job_count("rate").await, 1);

    let mut c = farm.client_as(Some(&farm.create_key("rules", false))).await;
    let ok = pb::SubmitGenerationRequest {
        priority: pb::Priority::Standard as i32,
        steps: Some(4),
        ..request("fine")
    };
    c.submit_generation(ok.clone())
        .await
        .expect("within every limit");
    let interactive = pb::SubmitGenerationRequest {
        priority: pb::Priority::Interactive as i32,
        ..ok.clone()
    };
    exhausted(c.submit_generation(interactive).await, "priorities");
    let long = pb::SubmitGenerationRequest {
        duration_seconds: Some(4.0),
        ..ok.clone()
    };
    exhausted(c.submit_generation(long).await, "max_duration_s");
    let many_steps = pb::SubmitGenerationRequest {
        steps: Some(6),
        ..ok.clone()
    };
    exhausted(c.submit_generation(many_steps).await, "max_steps");
    assert_eq!(farm.tenant_job_count("rules").await, 1);
}

/// Runs openssl; panics with its stderr when it fails.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// PEM files of a test PKI: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, both signed by the CA.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let ec = "ec_paramgen_curve:prime256v1";
    let (ca, ca_key) = (p("ca.pem"), p("ca.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        ec,
        "-nodes",
        "-keyout",
        path_str(&ca_key),
        "-out",
        path_str(&ca),
        "-days",
        "2",
        "-subj",
        "/CN=tutti test CA",
    ]);
    let leaf = |kind: &str, usage: &str| {
        let (cert, key) = (p(&format!("{kind}.pem")), p(&format!("{kind}.key")));
        let (csr, ext) = (p(&format!("{kind}.csr")), p(&format!("{kind}.ext")));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n\
                 subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            ),
        )
        .expect("extensions file");
        let subject = format!("/CN=tutti {kind}");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            ec,
            "-nodes",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&csr),
            "-subj",
            &subject,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&ca),
            "-CAkey",
            path_str(&ca_key),
            "-CAcreateserial",
            "-out",
            path_str(&cert),
            "-days",
            "2",
            "-extfile",
            path_str(&ext),
        ]);
        (cert, key)
    };
    Pki {
        server: leaf("server", "serverAuth"),
        client: leaf("client", "clientAuth"),
        ca,
    }
}

/// `tutti list` through the CLI client over TLS. Under mutual TLS 1.3 a refused client's
/// answer can fail to come at all; the answer timeout turns that into a failure, not a hang.
fn cli_list(farm: &Farm, ca: &Path, extra: &[&str]) -> std::process::Output {
    farm.command("list")
        .args([
            "--server",
            &format!("http://{}", farm.addr),
            "--tls-ca",
            path_str(ca),
            "--answer-timeout",
            "15s",
        ])
        .args(extra)
        .output()
        .expect("tutti list")
}

/// Whether a plaintext client gets an answer from the farm's port.
async fn plaintext_works(farm: &Farm) -> bool {
    match GenerationClient::connect(format!("http://{}", farm.addr)).await {
        Ok(mut c) => c.list_jobs(pb::ListJobsRequest::default()).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn tls_clients_need_the_ca_and_mutual_tls_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path(), "farm");
    let other = make_pki(dir.path(), "other");
    let mut farm = Farm::start(FarmOptions {
        workers: 0,
        tls: Some(Tls {
            ca: pki.ca.clone(),
            cert: pki.server.0.clone(),
            key: pki.server.1.clone(),
            client_ca: None,
            client: None,
        }),
        ..Default::default()
    })
    .await;
    let mut c = farm.client_as(None).await;
    c.list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("a client that trusts the CA");
    assert!(
        !plaintext_works(&farm).await,
        "a plaintext client got an answer"
    );
    // A client that trusts another CA does not connect.
    let real = farm.opts.tls.clone().expect("tls");
    farm.opts.tls = Some(Tls {
        ca: other.ca.clone(),
        ..real.clone()
    });
    assert!(
        farm.channel().await.is_err(),
        "a client that trusts another CA connected"
    );
    farm.opts.tls = Some(real);
    let out = cli_list(&farm, &pki.ca, &[]);
    assert!(
        out.status.success(),
        "tutti list --tls-ca: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Mutual TLS: the same farm restarted to require client certificates.
    farm.kill_coordinator();
    if let Some(tls) = farm.opts.tls.as_mut() {
        tls.client_ca = Some(pki.ca.clone());
        tls.client = Some(pki.client.clone());
    }
    farm.start_coordinator().await;
    let mut c = farm.client_as(None).await;
    c.list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("a client with a certificate");
    if let Some(tls) = farm.opts.tls.as_mut() {
        tls.client = None;
    }
    // No answer at all counts as refused: the rejection of a TLS 1.3 client certificate comes
    // after the handshake, and a call queued on that connection may never hear of it.
    let refused = match farm.channel().await {
        Ok(ch) => {
            let mut c = GenerationClient::new(ch);
            let call = c.list_jobs(pb::ListJobsRequest::default());
            tokio::time::timeout(std::time::Duration::from_secs(15), call)
                .await
                .map_or(true, |answer| answer.is_err())
        }
        Err(_) => true,
    };
    assert!(
        refused,
        "a client without a certificate got an answer under mutual TLS"
    );
    assert!(
        !cli_list(&farm, &pki.ca, &[]).status.success(),
        "tutti list without a client certificate"
    );
    let out = cli_list(
        &farm,
        &pki.ca,
        &[
            "--tls-client-cert",
            path_str(&pki.client.0),
            "--tls-client-key",
            path_str(&pki.client.1),
        ],
    );
    assert!(
        out.status.success(),
        "tutti list with a client certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_startup_config_print_hides_credentials() {
    let db = format!(
        "tutti_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let pg = common::pg_url(&db).replacen(
        "postgres://postgres@",
        "postgres://postgres:pg-pass-1234@",
        1,
    );
    assert!(
        pg.contains("pg-pass-1234"),
        "TUTTI_TEST_PG must be postgres://postgres@...: {pg}"
    );
    let out = Command::new(common::bin())
        .args(["coordinator", "--migrate-only"])
        .env("RUST_LOG", "info")
        .env("TUTTI_LOG_FORMAT", "text")
        .env("TUTTI_DATABASE_URL", format!("{pg}?password=pg-pass-1234"))
        .env(
            "TUTTI_AMQP_URL",
            "amqp://guest:amqp-pass-5678@127.0.0.1:5672/%2f",
        )
        .env("AWS_ACCESS_KEY_ID", "tutti")
        .env("AWS_SECRET_ACCESS_KEY", "s3-secret-9012")
        .env("TUTTI_AUTH", "required")
        .output()
        .expect("run tutti coordinator");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("starting coordinator"), "{log}");
    assert!(
        log.contains("postgres:***@") && log.contains("guest:***@"),
        "{log}"
    );
    for secret in ["pg-pass-1234", "amqp-pass-5678", "s3-secret-9012"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
